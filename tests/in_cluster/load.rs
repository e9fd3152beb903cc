//! A steady stream of Pod creations through the real API server, in two namespaces at
//! the same rate: one labelled for injection (the webhook is called) and one not (the
//! same load without the webhook), so every step of an operation has its own baseline
//! measured in the same seconds. Each Pod is deleted as soon as it is created (it is
//! bound to no node), so the stream leaves nothing behind and the node runs nothing.
//!
//! A creation is counted as:
//! - `injected` / `not injected`: the API server created it, with or without the sidecar;
//! - `refused`: the API server answered with an error (with `failurePolicy: Fail`, a
//!   webhook that cannot answer shows up here);
//! - `unreachable`: no answer from the API server at all (it was restarting).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::stats::Summary;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Injected,
    NotInjected,
    Refused(String),
    Unreachable(String),
}

#[derive(Clone, Debug)]
pub struct Record {
    /// Into the labelled namespace.
    pub hooked: bool,
    /// When the creation was sent, from the start of the load.
    pub at: Duration,
    pub latency: Duration,
    pub outcome: Outcome,
}

pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    records: Arc<Mutex<Vec<Record>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A Pod as workloads make them: one container, bound to no node, so it runs nowhere.
fn pod() -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "generateName": "load-",
            "labels": {"app": "load", "tracehook.test/load": "true"},
        },
        "spec": {
            "nodeSelector": {"tracehook.test/nowhere": "true"},
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "app",
                "image": "busybox:1.35",
                "command": ["sleep", "3600"],
            }],
        },
    }))
    .expect("a Pod")
}

impl Load {
    /// Starts `per_second` creations per second into each of `hooked` and `plain`, as
    /// an open loop (a creation is sent on time even when earlier ones are slow).
    pub fn start(
        cluster: &'static testcluster::Cluster,
        hooked: &str,
        plain: &str,
        per_second: u32,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let records = Arc::new(Mutex::new(Vec::new()));
        let started = Instant::now();
        let (hooked, plain) = (hooked.to_owned(), plain.to_owned());
        let thread = {
            let (stop, records) = (stop.clone(), records.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("a runtime");
                rt.block_on(async move {
                    let client = cluster.client().await.expect("a client");
                    let apis = [
                        (true, Api::<Pod>::namespaced(client.clone(), &hooked)),
                        (false, Api::<Pod>::namespaced(client, &plain)),
                    ];
                    let mut tick = tokio::time::interval(Duration::from_secs(1) / per_second);
                    let mut tasks = tokio::task::JoinSet::new();
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        for (is_hooked, api) in &apis {
                            let (api, records, is_hooked) =
                                (api.clone(), records.clone(), *is_hooked);
                            tasks.spawn(async move {
                                let record = create(&api, is_hooked, started).await;
                                records.lock().expect("records").push(record);
                            });
                        }
                        while tasks.try_join_next().is_some() {}
                    }
                    while tasks.join_next().await.is_some() {}
                });
            })
        };
        Load {
            started,
            stop,
            records,
            thread: Some(thread),
        }
    }

    /// Now, on the load's clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// Stops sending, waits for the answers in flight, and returns every record.
    pub fn stop(mut self) -> Vec<Record> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("the load thread");
        }
        let mut records = std::mem::take(&mut *self.records.lock().expect("records"));
        records.sort_by_key(|r| r.at);
        records
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

async fn create(api: &Api<Pod>, hooked: bool, started: Instant) -> Record {
    let at = started.elapsed();
    let sent = Instant::now();
    let result = api.create(&PostParams::default(), &pod()).await;
    let latency = sent.elapsed();
    let outcome = match result {
        Ok(created) => {
            let injected = created
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key("tracehook.dev/status"));
            if let Some(name) = created.metadata.name.as_deref() {
                let _ = api
                    .delete(name, &DeleteParams::default().grace_period(0))
                    .await;
            }
            if injected {
                Outcome::Injected
            } else {
                Outcome::NotInjected
            }
        }
        Err(kube::Error::Api(status)) => Outcome::Refused(format!(
            "{} {}: {}",
            status.code, status.reason, status.message
        )),
        Err(other) => Outcome::Unreachable(other.to_string()),
    };
    Record {
        hooked,
        at,
        latency,
        outcome,
    }
}

/// The figures of one stream in one window.
#[derive(Debug, Default)]
pub struct Figures {
    pub sent: usize,
    pub injected: usize,
    pub not_injected: usize,
    pub refused: Vec<String>,
    pub unreachable: usize,
    /// Latencies of the answered creations (ms).
    pub latency: Summary,
}

pub fn figures<'a>(records: impl Iterator<Item = &'a Record>) -> Figures {
    let mut f = Figures::default();
    let mut answered = Vec::new();
    for r in records {
        f.sent += 1;
        match &r.outcome {
            Outcome::Injected => f.injected += 1,
            Outcome::NotInjected => f.not_injected += 1,
            Outcome::Refused(why) => f.refused.push(why.clone()),
            Outcome::Unreachable(_) => f.unreachable += 1,
        }
        if !matches!(r.outcome, Outcome::Unreachable(_)) {
            answered.push(r.latency);
        }
    }
    f.latency = Summary::of(&answered);
    f
}

/// One step of the run: its name and its window on the load's clock.
#[derive(Clone, Debug)]
pub struct Step {
    pub name: String,
    pub from: Duration,
    pub to: Duration,
}

impl Step {
    pub fn figures(&self, records: &[Record], hooked: bool) -> Figures {
        figures(
            records
                .iter()
                .filter(|r| r.hooked == hooked && r.at >= self.from && r.at < self.to),
        )
    }
}

/// The table the run prints (and BENCHMARKS.md quotes).
pub fn table(steps: &[Step], records: &[Record]) -> String {
    let mut out = String::from(
        "| step | seconds | with webhook: sent / injected / not injected / refused / unreachable | p50 ms | p99 ms | without: sent / refused / unreachable | p50 ms | p99 ms |\n|---|---|---|---|---|---|---|---|\n",
    );
    for s in steps {
        let (h, p) = (s.figures(records, true), s.figures(records, false));
        out += &format!(
            "| {} | {:.0} | {} / {} / {} / {} / {} | {:.1} | {:.1} | {} / {} / {} | {:.1} | {:.1} |\n",
            s.name,
            (s.to - s.from).as_secs_f64(),
            h.sent,
            h.injected,
            h.not_injected,
            h.refused.len(),
            h.unreachable,
            h.latency.p50,
            h.latency.p99,
            p.sent,
            p.refused.len(),
            p.unreachable,
            p.latency.p50,
            p.latency.p99,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(hooked: bool, at: u64, latency: u64, outcome: Outcome) -> Record {
        Record {
            hooked,
            at: Duration::from_secs(at),
            latency: Duration::from_millis(latency),
            outcome,
        }
    }

    #[test]
    fn figures_count_outcomes_and_take_quantiles_of_answered_creations() {
        let mut records: Vec<Record> = (1..=100)
            .map(|i| record(true, 1, i, Outcome::Injected))
            .collect();
        records.push(record(true, 1, 9_999, Outcome::Unreachable("down".into())));
        records.push(record(true, 1, 7, Outcome::Refused("500".into())));
        records.push(record(false, 1, 1, Outcome::NotInjected));
        records.push(record(true, 5, 1, Outcome::NotInjected));
        let step = Step {
            name: "s".into(),
            from: Duration::from_secs(1),
            to: Duration::from_secs(2),
        };
        let f = step.figures(&records, true);
        assert_eq!(
            (
                f.sent,
                f.injected,
                f.not_injected,
                f.refused.len(),
                f.unreachable
            ),
            (102, 100, 0, 1, 1)
        );
        assert_eq!(f.latency.p50, 50.0);
        assert_eq!(f.latency.p99, 99.0);
    }
}
