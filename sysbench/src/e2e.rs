//! Item 3: Pod creation through the real API server, with the webhook registered and
//! without, in one run. Chunks of creations alternate between the modes so that the
//! cluster's own drift (etcd growing, compaction, other load) falls on all; the
//! registration is checked by a dry-run create before every chunk.
//!
//! Two more modes take the added latency apart: a call that changes nothing (the
//! webhook registered, the Pod annotated `tracehook.dev/inject: "false"`), and the
//! injected Pod stored without a call (`tracehook inject`'s output of the same Pod,
//! the webhook unregistered). With `--profile-seconds`, a CPU profile of the API
//! server is taken while Pods are created one at a time with the webhook and without.
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
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt as _};
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
    /// Length of each of the API server's CPU profiles; 0: none.
    pub profile_seconds: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pods: 2000,
            concurrencies: vec![1, 16],
            chunks: 4,
            profile_seconds: 0,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Mode {
    /// No webhook registered, the plain Pod.
    Without,
    /// The webhook registered and called, the Pod annotated out: no patch.
    Called,
    /// No webhook registered, the Pod as tracehook injects it.
    Preinjected,
    /// The webhook registered, the plain Pod: injected.
    With,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Without => "without webhook",
            Mode::Called => "called, no patch",
            Mode::Preinjected => "injected Pod, no call",
            Mode::With => "with webhook",
        }
    }

    fn registered(self) -> bool {
        matches!(self, Mode::Called | Mode::With)
    }

    fn injected(self) -> bool {
        matches!(self, Mode::Preinjected | Mode::With)
    }

    /// The Pod this mode creates.
    fn pod(self, name: &str) -> Result<Pod> {
        let mut pod = plain_pod(name);
        match self {
            Mode::Without | Mode::With => {}
            Mode::Called => {
                pod["metadata"]["annotations"] = json!({"tracehook.dev/inject": "false"});
            }
            Mode::Preinjected => pod = offline_injected(pod)?,
        }
        Ok(serde_json::from_value(pod)?)
    }

    /// The Pods this mode creates, one per name, built before any creation is timed:
    /// the mode's Pod once (for `Preinjected`, one run of the injection), then renamed.
    fn pods(self, names: impl Iterator<Item = String>) -> Result<Vec<Pod>> {
        let template = self.pod("template")?;
        Ok(names
            .map(|name| {
                let mut pod = template.clone();
                pod.metadata.name = Some(name);
                pod
            })
            .collect())
    }
}

/// The modes in the order of even chunks (odd chunks run them backwards): the
/// registration changes twice per chunk.
const MODES: [Mode; 4] = [Mode::Without, Mode::Preinjected, Mode::Called, Mode::With];

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
    check_offline_injection(&setup, &mut serial).await?;
    for &concurrency in &opts.concurrencies {
        let measured = measure(&setup, opts, concurrency, &mut serial).await?;
        report_concurrency(concurrency, &measured, &mut tables)?;
    }
    let profiles = if opts.profile_seconds > 0 {
        profile_apiserver(&setup, opts.profile_seconds, &mut serial).await?
    } else {
        String::new()
    };
    let mut report = report(opts, &tables, &setup.webhook)?;
    report.push_str(&profiles);
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
        let mut order = MODES;
        if chunk % 2 == 1 {
            order.reverse();
        }
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
    let without = summaries[&Mode::Without];
    for mode in [Mode::Called, Mode::Preinjected, Mode::With] {
        let s = summaries[&mode];
        writeln!(
            tables.added,
            "| {concurrency} | {} | {:.3} | {:.3} | {:.3} |",
            mode.name(),
            s.mean - without.mean,
            s.p50 - without.p50,
            s.p99 - without.p99
        )?;
    }
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
    writeln!(report, "\n### Added latency (mode − without webhook)\n")?;
    writeln!(report, "| concurrency | mode | mean ms | p50 ms | p99 ms |")?;
    writeln!(report, "|---|---|---|---|---|")?;
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

fn plain_pod(name: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "bench"}},
        "spec": {
            "schedulerName": "tracehook-sysbench-unscheduled",
            "containers": [{"name": "app", "image": "registry.example/app:1"}]
        }
    })
}

/// The Pod as `tracehook inject` gives it, with the defaults of `tracehook serve` and
/// the instance the webhook picks (`obs/test`, the only one).
fn offline_injected(pod: serde_json::Value) -> Result<serde_json::Value> {
    let options = tracehook::inject_command::Options {
        settings: tracehook::inject::Settings::default(),
        instance: Some(tracehook::inject::InstanceRef::new("obs", "test")),
        flavor: None,
        namespace: Some(NAMESPACE.to_owned()),
    };
    let (mut docs, reports) =
        tracehook::inject_command::inject_values(&serde_json::to_string(&pod)?, &options)?;
    match (docs.pop(), docs.is_empty()) {
        (Some(pod), true) => Ok(pod),
        _ => bail!("tracehook inject gave not one document: {reports:?}"),
    }
}

/// The Pod stored for `Preinjected` must be the one stored for `With`, or the modes
/// compare different Pods: both are created by dry run (the webhook registered; the
/// pre-injected Pod carries the marker, so the call changes nothing) and compared
/// without their names and the random suffix of the token volume.
async fn check_offline_injection(setup: &Setup, serial: &mut usize) -> Result<()> {
    set_mode(&setup.client, &setup.api, &setup.config, Mode::With, serial).await?;
    let dry_run = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let mut stored = Vec::new();
    for mode in [Mode::With, Mode::Preinjected] {
        *serial += 1;
        let pod = mode.pod(&format!("check-{serial}"))?;
        let pod = setup.api.create(&dry_run, &pod).await?;
        stored.push(comparable(&pod)?);
    }
    if stored[0] != stored[1] {
        bail!(
            "the pre-injected Pod is not the injected one:\nwebhook: {}\noffline: {}",
            stored[0],
            stored[1]
        );
    }
    Ok(())
}

/// The spec and annotations of a stored Pod, the token volume's random suffix removed.
fn comparable(pod: &Pod) -> Result<String> {
    let spec = pod.spec.as_ref().context("a Pod without spec")?;
    let mut text = serde_json::to_string(&(spec, &pod.metadata.annotations))?;
    for volume in spec.volumes.iter().flatten() {
        if volume.name.starts_with("kube-api-access-") {
            text = text.replace(&volume.name, "kube-api-access");
        }
    }
    Ok(text)
}

/// CPU profiles of the API server, `seconds` long, while Pods are created one at a
/// time with the webhook and without; written to the run's directory for
/// `go tool pprof`. Returns the report's paragraph.
async fn profile_apiserver(setup: &Setup, seconds: u64, serial: &mut usize) -> Result<String> {
    let mut text = String::from("\n### CPU profiles of the API server\n\n");
    for mode in [Mode::Without, Mode::With] {
        set_mode(&setup.client, &setup.api, &setup.config, mode, serial).await?;
        let done = std::sync::atomic::AtomicBool::new(false);
        let first = *serial;
        let profile = async {
            let request = http::Request::get(format!("/debug/pprof/profile?seconds={seconds}"))
                .body(Vec::new())?;
            let mut body = setup.client.request_stream(request).await?;
            let mut bytes = Vec::new();
            futures::AsyncReadExt::read_to_end(&mut body, &mut bytes).await?;
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            anyhow::Ok(bytes)
        };
        let create = async {
            let mut latencies = Vec::new();
            let mut i = first;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let pod = mode.pod(&format!("profiled-{i}"))?;
                let started = Instant::now();
                let stored = setup.api.create(&PostParams::default(), &pod).await?;
                latencies.push(started.elapsed());
                if injected(&stored) != mode.injected() {
                    bail!(
                        "profiled-{i} {}: injected = {}",
                        mode.name(),
                        injected(&stored)
                    );
                }
            }
            anyhow::Ok((latencies, i))
        };
        let (bytes, (latencies, last)) = tokio::try_join!(profile, create)?;
        *serial = last;
        let file = setup
            .dir
            .join(format!("apiserver-{}.pprof", mode.name().replace(' ', "-")));
        std::fs::write(&file, bytes)?;
        writeln!(
            text,
            "- {}: {} creations in the profile's {seconds} s ({}); `go tool pprof -top {}`",
            mode.name(),
            latencies.len(),
            Summary::of(&latencies),
            file.display()
        )?;
    }
    Ok(text)
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
    if mode.registered() {
        cluster::register(client, config).await?;
    } else {
        cluster::unregister(client).await?;
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
                &Mode::With.pod(&format!("probe-{serial}"))?,
            )
            .await?;
        if injected(&probe) == mode.registered() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the API server does not see the webhook {}registered",
                if mode.registered() { "" } else { "un" }
            );
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
    let pods = mode.pods((first..first + n).map(|i| format!("pod-{i}")))?;
    let results: Vec<Result<Duration>> = stream::iter(pods)
        .map(|pod| async move {
            let started = Instant::now();
            let stored = api.create(&PostParams::default(), &pod).await?;
            let took = started.elapsed();
            if injected(&stored) != mode.injected() {
                bail!(
                    "{} {}: injected = {}",
                    pod.name_any(),
                    mode.name(),
                    injected(&stored)
                );
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
