//! Item 3: Pod creation through the real API server, with the webhook registered and
//! without, in one run. Chunks of creations alternate between the two modes so that
//! the cluster's own drift (etcd growing, compaction, other load) falls on both; the
//! registration is checked by a dry-run create before every chunk.
//!
//! The Pods name a scheduler that does not exist, so that nothing acts on them after
//! creation: the measured work is admission and storage alone.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, stream};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::Client;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::cluster::{self, Webhook};
use crate::stats::Summary;
use crate::sys;

pub const NAMESPACE: &str = "bench";

#[derive(Clone, Debug)]
pub struct Options {
    /// Creations per mode and concurrency.
    pub pods: usize,
    pub concurrencies: Vec<usize>,
    /// Alternations between the modes per concurrency.
    pub chunks: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pods: 2000,
            concurrencies: vec![1, 16],
            chunks: 4,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    Without,
    With,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Without => "without webhook",
            Mode::With => "with webhook",
        }
    }
}

/// The cluster, the webhook and its registration that every concurrency runs against.
struct Setup {
    dir: std::path::PathBuf,
    client: Client,
    webhook: Webhook,
    config: MutatingWebhookConfiguration,
    api: Api<Pod>,
    // Dropped last: the webhook goes first.
    _cluster: testcluster::Cluster,
}

/// What one concurrency measured: per mode the latencies and the time they took, and
/// the webhook's calls as the API server and tracehook saw them.
struct Measured {
    samples: BTreeMap<Mode, (Vec<Duration>, Duration)>,
    apiserver: WebhookHistogram,
    /// tracehook's own handler duration (sum, count) over the run.
    ours: (f64, f64),
}

/// The three tables of the report, filled a concurrency at a time.
#[derive(Default)]
struct Tables {
    creations: String,
    added: String,
    apiserver: String,
}

pub async fn run(opts: &Options) -> Result<()> {
    let setup = set_up().await?;
    let mut tables = Tables::default();
    let mut serial = 0usize;
    for &concurrency in &opts.concurrencies {
        let measured = measure(&setup, opts, concurrency, &mut serial).await?;
        report_concurrency(concurrency, &measured, &mut tables)?;
    }
    let report = report(opts, &tables, &setup.webhook)?;
    println!("{report}");
    std::fs::write(setup.dir.join("report.md"), &report)?;
    println!("(also in {})", setup.dir.join("report.md").display());
    drop(setup);
    Ok(())
}

async fn set_up() -> Result<Setup> {
    let dir = crate::run_dir("e2e")?;
    println!("{}", sys::describe_machine());
    let (cluster, client) = cluster::start().await?;
    cluster::create_namespace(&client, "obs", json!({})).await?;
    cluster::create_instance(&client, "obs", "test").await?;
    cluster::create_namespace(
        &client,
        NAMESPACE,
        json!({"tracehook.dev/injection": "enabled"}),
    )
    .await?;
    wait_for_service_account(&client, NAMESPACE).await?;
    let mut webhook = Webhook::start(&cluster, &dir, &["--no-reconciler"])?;
    webhook.wait_ready(Duration::from_secs(60))?;
    let config = cluster::webhook_configuration(&webhook)?;
    let api: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    Ok(Setup {
        dir,
        client,
        webhook,
        config,
        api,
        _cluster: cluster,
    })
}

/// `opts.pods` creations per mode at one concurrency, the modes alternating in
/// `opts.chunks` chunks.
async fn measure(
    setup: &Setup,
    opts: &Options,
    concurrency: usize,
    serial: &mut usize,
) -> Result<Measured> {
    let Setup {
        client,
        webhook,
        config,
        api,
        ..
    } = setup;
    let before = WebhookHistogram::parse(&cluster::apiserver_metrics(client).await?);
    let ours_before = our_duration(webhook);
    let mut samples: BTreeMap<Mode, (Vec<Duration>, Duration)> = BTreeMap::new();
    let per_chunk = opts.pods.div_ceil(opts.chunks);
    for chunk in 0..opts.chunks {
        let order = if chunk % 2 == 0 {
            [Mode::Without, Mode::With]
        } else {
            [Mode::With, Mode::Without]
        };
        for mode in order {
            set_mode(client, api, config, mode, serial).await?;
            let n = per_chunk.min(opts.pods - chunk * per_chunk);
            let started = Instant::now();
            let latencies = create_pods(api, mode, concurrency, n, serial).await?;
            let entry = samples.entry(mode).or_default();
            entry.1 += started.elapsed();
            entry.0.extend(latencies);
        }
    }
    let after = WebhookHistogram::parse(&cluster::apiserver_metrics(client).await?);
    let ours_after = our_duration(webhook);
    Ok(Measured {
        samples,
        apiserver: after.minus(&before),
        ours: (ours_after.0 - ours_before.0, ours_after.1 - ours_before.1),
    })
}

fn report_concurrency(concurrency: usize, measured: &Measured, tables: &mut Tables) -> Result<()> {
    let mut summaries = BTreeMap::new();
    for (mode, (latencies, elapsed)) in &measured.samples {
        let s = Summary::of(latencies);
        println!("concurrency {concurrency}, {}: {s}", mode.name());
        writeln!(
            tables.creations,
            "| {concurrency} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
            mode.name(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            s.mean,
            s.p50,
            s.p90,
            s.p99,
            s.max
        )?;
        summaries.insert(*mode, s);
    }
    let (with, without) = (summaries[&Mode::With], summaries[&Mode::Without]);
    writeln!(
        tables.added,
        "| {concurrency} | {:.3} | {:.3} | {:.3} |",
        with.mean - without.mean,
        with.p50 - without.p50,
        with.p99 - without.p99
    )?;
    let delta = &measured.apiserver;
    let (sum, count) = measured.ours;
    writeln!(
        tables.apiserver,
        "| {concurrency} | {} | {:.3} | {} | {} | {:.3} |",
        delta.count,
        1e3 * delta.sum / delta.count.max(1) as f64,
        delta.quantile_text(0.5),
        delta.quantile_text(0.99),
        if count > 0.0 {
            1e3 * sum / count
        } else {
            f64::NAN
        }
    )?;
    writeln!(
        tables.apiserver,
        "|   | buckets (le → calls) | {} | | | |",
        delta.buckets_text()
    )?;
    Ok(())
}

fn report(opts: &Options, tables: &Tables, webhook: &Webhook) -> Result<String> {
    let mut report = String::new();
    writeln!(
        report,
        "\n### {} Pod creations per mode and concurrency, in {} alternating chunks\n",
        opts.pods, opts.chunks
    )?;
    writeln!(
        report,
        "| concurrency | mode | creates/s | mean ms | p50 ms | p90 ms | p99 ms | max ms |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    report.push_str(&tables.creations);
    writeln!(report, "\n### Added latency (with − without)\n")?;
    writeln!(report, "| concurrency | mean ms | p50 ms | p99 ms |")?;
    writeln!(report, "|---|---|---|---|")?;
    report.push_str(&tables.added);
    writeln!(
        report,
        "\n### The API server's `apiserver_admission_webhook_admission_duration_seconds` for `inject.tracehook.dev` (the calls of this run)\n"
    )?;
    writeln!(
        report,
        "| concurrency | calls | mean ms | p50 (bucket interpolation) | p99 (bucket interpolation) | tracehook's own handler mean ms |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    report.push_str(&tables.apiserver);
    writeln!(
        report,
        "\ntracehook serve after the run: {}",
        webhook.memory()
    )?;
    crate::end_report(&mut report)?;
    Ok(report)
}

pub async fn wait_for_service_account(client: &Client, namespace: &str) -> Result<()> {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sas.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!("no default ServiceAccount in {namespace}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

fn pod(name: &str) -> Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "schedulerName": "tracehook-sysbench-unscheduled",
            "containers": [{"name": "app", "image": "registry.example/app:1"}]
        }
    }))?)
}

fn injected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("tracehook.dev/status"))
}

/// Registers or unregisters the webhook and waits until a dry-run create shows it.
async fn set_mode(
    client: &Client,
    api: &Api<Pod>,
    config: &MutatingWebhookConfiguration,
    mode: Mode,
    serial: &mut usize,
) -> Result<()> {
    match mode {
        Mode::With => cluster::register(client, config).await?,
        Mode::Without => cluster::unregister(client).await?,
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        *serial += 1;
        let probe = api
            .create(
                &PostParams {
                    dry_run: true,
                    ..PostParams::default()
                },
                &pod(&format!("probe-{serial}"))?,
            )
            .await?;
        if injected(&probe) == (mode == Mode::With) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the API server does not see the webhook {}", mode.name());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn create_pods(
    api: &Api<Pod>,
    mode: Mode,
    concurrency: usize,
    n: usize,
    serial: &mut usize,
) -> Result<Vec<Duration>> {
    let first = *serial;
    *serial += n;
    let results: Vec<Result<Duration>> = stream::iter(first..first + n)
        .map(|i| async move {
            let pod = pod(&format!("pod-{i}"))?;
            let started = Instant::now();
            let stored = api.create(&PostParams::default(), &pod).await?;
            let took = started.elapsed();
            if injected(&stored) != (mode == Mode::With) {
                bail!("pod-{i} {}: injected = {}", mode.name(), injected(&stored));
            }
            Ok(took)
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    results
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .context("creating Pods")
}

/// (sum, count) of tracehook's own `tracehook_admission_duration_seconds`.
fn our_duration(webhook: &Webhook) -> (f64, f64) {
    let metrics = crate::load::http_get(webhook.probe_port, "/metrics").unwrap_or_default();
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (
        value("tracehook_admission_duration_seconds_sum"),
        value("tracehook_admission_duration_seconds_count"),
    )
}

/// The API server's histogram of our webhook's admission duration, summed over its
/// label combinations.
#[derive(Clone, Debug, Default)]
struct WebhookHistogram {
    /// Upper bound (seconds; +Inf as infinity) → cumulative count.
    buckets: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

const METRIC: &str = "apiserver_admission_webhook_admission_duration_seconds";

impl WebhookHistogram {
    fn parse(text: &str) -> WebhookHistogram {
        let mut buckets: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
        let mut out = WebhookHistogram::default();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(METRIC) else {
                continue;
            };
            if !rest.contains(r#"name="inject.tracehook.dev""#) {
                continue;
            }
            let Some((labels, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            if labels.starts_with("_bucket") {
                let le = labels
                    .split("le=\"")
                    .nth(1)
                    .and_then(|v| v.split('"').next())
                    .map(|v| {
                        if v == "+Inf" {
                            f64::INFINITY
                        } else {
                            v.parse().unwrap_or(f64::NAN)
                        }
                    })
                    .unwrap_or(f64::NAN);
                let entry = buckets.entry(le.to_bits()).or_insert((le, 0));
                entry.1 += value as u64;
            } else if labels.starts_with("_sum") {
                out.sum += value;
            } else if labels.starts_with("_count") {
                out.count += value as u64;
            }
        }
        out.buckets = buckets.into_values().collect();
        out.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        out
    }

    fn minus(&self, before: &WebhookHistogram) -> WebhookHistogram {
        WebhookHistogram {
            buckets: self
                .buckets
                .iter()
                .map(|(le, n)| {
                    let was = before
                        .buckets
                        .iter()
                        .find(|(b, _)| b == le)
                        .map_or(0, |(_, n)| *n);
                    (*le, n - was)
                })
                .collect(),
            sum: self.sum - before.sum,
            count: self.count - before.count,
        }
    }

    /// Prometheus' `histogram_quantile`: linear within the bucket that holds it.
    fn quantile_text(&self, q: f64) -> String {
        let rank = q * self.count as f64;
        let mut lower = (0.0, 0u64);
        for &(le, n) in &self.buckets {
            if n as f64 >= rank {
                if le.is_infinite() {
                    return format!("> {} ms", lower.0 * 1e3);
                }
                let within = (rank - lower.1 as f64) / (n - lower.1).max(1) as f64;
                let v = lower.0 + (le - lower.0) * within;
                return format!(
                    "{:.2} ms (bucket {}–{} ms)",
                    v * 1e3,
                    lower.0 * 1e3,
                    le * 1e3
                );
            }
            lower = (le, n);
        }
        "n/a".to_owned()
    }

    fn buckets_text(&self) -> String {
        self.buckets
            .iter()
            .map(|(le, n)| {
                if le.is_infinite() {
                    format!("+Inf: {n}")
                } else {
                    format!("{}: {n}", le)
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}
