//! What a native sidecar costs a Pod's start (issue 15.2): create → Ready on the real
//! node for the same Pod plain, injected with each flavor, and injected with the
//! jaeger-agent flavor but without the sidecar's startupProbe (the Pod tracehook would
//! write, taken from a dry run, the probe removed, created as already injected): the
//! difference between the last two is what the probe costs, the rest the app starting
//! after the sidecar instead of beside it. A fifth kind is the jaeger-agent flavor as a plain sidecar
//! (`tracehook.dev/native-sidecar: "false"`): it starts beside the app, not before it,
//! and gates nothing (only a livenessProbe). Rounds create one Pod of each kind at the
//! same moment, so every kind sees the same node. A second table takes each Pod's start
//! apart into the steps the watch saw: the sidecar running, the sidecar started (its
//! startupProbe passed), the app running, Ready. The figures are printed (BENCHMARKS.md
//! quotes a run); only that every Pod became Ready, with the sidecar it should have,
//! and that its steps came in that order, is asserted.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::stats::Summary;
use crate::world::*;

/// Pods of each kind: 20, or `TRACEHOOK_READY_PODS` (BENCHMARKS.md's run: 50).
fn pods_per_kind() -> usize {
    std::env::var("TRACEHOOK_READY_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Plain,
    JaegerAgent,
    OtelCollector,
    JaegerAgentNoProbe,
    JaegerAgentPlainSidecar,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Plain,
        Kind::JaegerAgent,
        Kind::OtelCollector,
        Kind::JaegerAgentNoProbe,
        Kind::JaegerAgentPlainSidecar,
    ];

    fn slug(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::JaegerAgent => "jaeger-agent",
            Kind::OtelCollector => "otel-collector",
            Kind::JaegerAgentNoProbe => "no-probe",
            Kind::JaegerAgentPlainSidecar => "plain-sidecar",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Kind::Plain => "plain",
            Kind::JaegerAgent => "jaeger-agent",
            Kind::OtelCollector => "otel-collector",
            Kind::JaegerAgentNoProbe => "jaeger-agent, no startupProbe",
            Kind::JaegerAgentPlainSidecar => "jaeger-agent, plain sidecar",
        }
    }

    /// Containers (init containers, containers) the stored Pod has.
    fn containers(self) -> (usize, usize) {
        match self {
            Kind::Plain => (0, 1),
            Kind::JaegerAgentPlainSidecar => (0, 2),
            _ => (1, 1),
        }
    }
}

fn pod(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": "ready"},
                     "annotations": annotations},
        "spec": pod_spec(vec![spans_container("app", &[], json!([]))]),
    })
}

/// When the watch first saw each step of a Pod's start (the test's clock).
#[derive(Clone, Copy, Debug, Default)]
struct Seen {
    sidecar_running: Option<Instant>,
    /// `started: true` on the sidecar: its startupProbe passed (or, with none, the
    /// kubelet saw it running).
    sidecar_started: Option<Instant>,
    app_running: Option<Instant>,
    ready: Option<Instant>,
}

impl Seen {
    fn update(&mut self, pod: &Pod, now: Instant) {
        let Some(status) = pod.status.as_ref() else {
            return;
        };
        let statuses = status.init_container_statuses.iter().flatten();
        for c in statuses.chain(status.container_statuses.iter().flatten()) {
            let running = c.state.as_ref().is_some_and(|s| s.running.is_some());
            if c.name == "app" {
                if running {
                    self.app_running.get_or_insert(now);
                }
                continue;
            }
            if running {
                self.sidecar_running.get_or_insert(now);
            }
            if running && c.started == Some(true) {
                self.sidecar_started.get_or_insert(now);
            }
        }
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        if ready {
            self.ready.get_or_insert(now);
        }
    }
}

/// The Pod tracehook writes for the jaeger-agent flavor (a server-side dry run),
/// without the sidecar's startupProbe, for creating as it is.
async fn without_probe(pods: &Api<Pod>, namespace: &str) -> Value {
    let sent: Pod = serde_json::from_value(pod(
        namespace,
        "template",
        json!({"tracehook.dev/sidecar-flavor": "jaeger-agent"}),
    ))
    .expect("a Pod");
    let dry = pods
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &sent,
        )
        .await
        .expect("a dry run");
    let mut pod = serde_json::to_value(dry).expect("JSON");
    assert_eq!(
        pod["spec"]["initContainers"][0]["name"], "jaeger-agent",
        "{pod}"
    );
    pod["spec"]["initContainers"][0]
        .as_object_mut()
        .expect("a container")
        .remove("startupProbe")
        .expect("the sidecar has a startupProbe");
    // Only what a client sends: the API server fills in the rest again.
    let metadata = pod["metadata"].take();
    pod["metadata"] = json!({
        "namespace": namespace,
        "labels": metadata["labels"],
        "annotations": metadata["annotations"],
    });
    pod.as_object_mut().expect("an object").remove("status");
    pod
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_to_ready_plain_and_injected() {
    let _up = backend_up().await;
    let namespace = unique("ready");
    labelled_namespace(&namespace, json!({}));
    let client = world().cluster.client().await.expect("a client");
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let no_probe = without_probe(&pods, &namespace).await;

    // When each step of each Pod was first seen, from a watch of the namespace.
    let seen: Arc<Mutex<BTreeMap<String, Seen>>> = Arc::default();
    let watch = {
        let (pods, seen) = (pods.clone(), seen.clone());
        tokio::spawn(async move {
            let mut events = std::pin::pin!(watcher::watcher(pods, watcher::Config::default()));
            while let Some(event) = events.next().await {
                if let Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) = event {
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    seen.lock()
                        .expect("lock")
                        .entry(name)
                        .or_default()
                        .update(&pod, Instant::now());
                }
            }
        })
    };

    let mut took: BTreeMap<Kind, Vec<Duration>> = BTreeMap::new();
    let mut steps: BTreeMap<Kind, [Vec<Duration>; 4]> = BTreeMap::new();
    let rounds = pods_per_kind();
    for round in 0..rounds {
        let mut created = Vec::new();
        for kind in Kind::ALL {
            let name = format!("r{round:02}-{}", kind.slug());
            let manifest = match kind {
                Kind::Plain => pod(&namespace, &name, json!({"tracehook.dev/inject": "false"})),
                Kind::JaegerAgent => pod(
                    &namespace,
                    &name,
                    json!({"tracehook.dev/sidecar-flavor": "jaeger-agent"}),
                ),
                Kind::OtelCollector => pod(
                    &namespace,
                    &name,
                    json!({"tracehook.dev/sidecar-flavor": "otel-collector"}),
                ),
                Kind::JaegerAgentPlainSidecar => pod(
                    &namespace,
                    &name,
                    json!({"tracehook.dev/sidecar-flavor": "jaeger-agent",
                           "tracehook.dev/native-sidecar": "false"}),
                ),
                Kind::JaegerAgentNoProbe => {
                    let mut p = no_probe.clone();
                    p["metadata"]["name"] = name.clone().into();
                    p
                }
            };
            let manifest: Pod = serde_json::from_value(manifest).expect("a Pod");
            let sent = Instant::now();
            let stored = pods
                .create(&PostParams::default(), &manifest)
                .await
                .expect("created");
            let spec = stored.spec.as_ref().expect("a spec");
            let containers = (
                spec.init_containers.as_ref().map_or(0, Vec::len),
                spec.containers.len(),
            );
            assert_eq!(
                containers,
                kind.containers(),
                "{name}: (init containers, containers)"
            );
            created.push((kind, name, sent));
        }
        for (kind, name, sent) in created {
            let deadline = Instant::now() + Duration::from_secs(120);
            let at = loop {
                let steps = seen.lock().expect("lock").get(&name).copied();
                if let Some(at) = steps.filter(|s| s.ready.is_some()) {
                    break at;
                }
                assert!(Instant::now() < deadline, "{name} not Ready in 120 s");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            let ready = at.ready.expect("Ready");
            took.entry(kind).or_default().push(ready - sent);
            // The steps, each from the one before; a plain Pod has no sidecar, and a
            // plain sidecar starts beside the app, so theirs start at the app.
            let app = at.app_running.expect("the app ran before Ready");
            let (running, started) = match kind {
                Kind::Plain | Kind::JaegerAgentPlainSidecar => (app, app),
                _ => {
                    let running = at.sidecar_running.expect("the sidecar ran");
                    let started = at.sidecar_started.expect("the sidecar started");
                    assert!(
                        sent <= running && running <= started && started <= app,
                        "{name}: steps out of order: {at:?}"
                    );
                    (running, started)
                }
            };
            assert!(app <= ready, "{name}: Ready before the app ran: {at:?}");
            let parts = [
                running - sent,
                started - running,
                app - started,
                ready - app,
            ];
            let kind_steps = steps.entry(kind).or_default();
            for (all, part) in kind_steps.iter_mut().zip(parts) {
                all.push(part);
            }
            let _ = pods
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
        }
    }
    watch.abort();

    eprintln!(
        "\ncreate → Ready on the real node, {rounds} Pods of each kind (one of each per round):"
    );
    eprintln!("| kind | p50 ms | p90 ms | p99 ms | max ms |\n|---|---|---|---|---|");
    for (kind, v) in took {
        let s = Summary::of(&v);
        eprintln!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            kind.name(),
            s.p50,
            s.p90,
            s.p99,
            s.max
        );
    }
    eprintln!(
        "\nthe steps, each from the one before, as the watch saw them, p50 (p90) ms \
         (a plain Pod's and a plain sidecar's steps start at the app):"
    );
    eprintln!(
        "| kind | create → sidecar running | → sidecar started | → app running | → Ready |\n\
         |---|---|---|---|---|"
    );
    for (kind, parts) in steps {
        let cells: Vec<String> = parts
            .iter()
            .map(|v| {
                let s = Summary::of(v);
                format!("{:.0} ({:.0})", s.p50, s.p90)
            })
            .collect();
        eprintln!("| {} | {} |", kind.name(), cells.join(" | "));
    }
    kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
}
