//! Item 5: the reconciler at scale. 500 `Jaeger` instances created at once (16 in
//! flight) on a cluster whose kwok node runs their Pods, the time until every one is
//! `Running`, the API requests tracehook made per instance, and its writes while
//! nothing changes.
//!
//! tracehook's requests are told apart in the API server's audit log: its kube client
//! sends no User-Agent, this driver's client sends `tracehook-sysbench`, and the
//! control-plane components and kwok send their own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::{Value, json};
use testcluster::Cluster;
use tracehook::crd::{Jaeger, Phase};

use crate::cluster::{self, Webhook};
use crate::sys;

const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
- level: Metadata
";

const USER_AGENT: &str = "tracehook-sysbench";

/// A cluster that audits every request, its tenant namespaces, and tracehook serving.
struct Setup {
    dir: PathBuf,
    audit: PathBuf,
    client: Client,
    webhook: Webhook,
    cluster: Cluster,
}

/// What the run measured, and when (for the audit log).
struct Measured {
    created: Duration,
    running: Duration,
    busy: Counts,
    quiet: Counts,
    memory_after: String,
    memory_idle: String,
}

pub async fn run(instances: usize, per_namespace: usize, idle: Duration) -> Result<()> {
    let Setup {
        dir,
        audit,
        client,
        webhook,
        cluster,
    } = set_up(instances, per_namespace).await?;
    let measured = measure(&client, webhook, &audit, instances, per_namespace, idle).await?;
    let report = report(&measured, instances, per_namespace, idle)?;
    println!("{report}");
    std::fs::write(dir.join("report.md"), &report)?;
    drop(cluster);
    Ok(())
}

async fn set_up(instances: usize, per_namespace: usize) -> Result<Setup> {
    let dir = crate::run_dir("reconciler")?;
    println!("{}", sys::describe_machine());
    let policy = dir.join("audit-policy.yaml");
    std::fs::write(&policy, AUDIT_POLICY)?;
    let audit = dir.join("audit.log");
    let started = Instant::now();
    let cluster = Cluster::start(testcluster::Options {
        apiserver_args: vec![
            format!("--audit-policy-file={}", policy.display()),
            format!("--audit-log-path={}", audit.display()),
            "--audit-log-maxsize=4096".to_owned(),
            "--audit-log-format=json".to_owned(),
            // Two ClusterIP Services per instance: testcluster's /24 holds 126 instances.
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
        ],
        ..testcluster::Options::default()
    })?;
    println!("cluster up in {:.1} s", started.elapsed().as_secs_f64());
    let client = labelled_client(&cluster).await?;
    cluster::install_crd(&client).await?;
    cluster::create_namespace(&client, "tracehook", json!({})).await?;
    let namespaces = instances.div_ceil(per_namespace);
    for n in 0..namespaces {
        cluster::create_namespace(&client, &format!("tenant-{n:03}"), json!({})).await?;
    }

    let mut webhook = Webhook::start(&cluster, &dir, &[])?;
    webhook.wait_ready(Duration::from_secs(60))?;
    wait_for_lease(&client).await?;
    // Let the start-up requests (lists, watches, the Lease) settle before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    Ok(Setup {
        dir,
        audit,
        client,
        webhook,
        cluster,
    })
}

/// Creates the instances at once, waits until all are Running, then idles; counts
/// tracehook's requests in both periods from the audit log. Stops the webhook.
async fn measure(
    client: &Client,
    webhook: Webhook,
    audit: &Path,
    instances: usize,
    per_namespace: usize,
    idle: Duration,
) -> Result<Measured> {
    let t0 = SystemTime::now();
    let started = Instant::now();
    create_instances(client, instances, per_namespace).await?;
    let created = started.elapsed();
    println!(
        "{instances} instances created in {:.1} s",
        created.as_secs_f64()
    );
    let running = wait_running(client, instances, started).await?;
    let t1 = SystemTime::now();
    println!(
        "all {instances} Running after {:.1} s",
        running.as_secs_f64()
    );
    let memory_after = webhook.memory();

    // Idle: nothing changes; watch events from status updates of other controllers
    // still arrive.
    tokio::time::sleep(idle).await;
    let t2 = SystemTime::now();
    let memory_idle = webhook.memory();
    drop(webhook);
    // The audit log is written asynchronously (batched backend): give it a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;

    Ok(Measured {
        created,
        running,
        busy: count(audit, t0, t1)?,
        quiet: count(audit, t1, t2)?,
        memory_after: memory_after.to_string(),
        memory_idle: memory_idle.to_string(),
    })
}

async fn create_instances(client: &Client, instances: usize, per_namespace: usize) -> Result<()> {
    cluster::create_instances(client, instances, |i| {
        (
            format!("tenant-{:03}", i / per_namespace),
            format!("jaeger-{}", i % per_namespace),
        )
    })
    .await
}

/// Polls until every instance is `Running`; how long that took from `started`.
async fn wait_running(client: &Client, instances: usize, started: Instant) -> Result<Duration> {
    let api: Api<Jaeger> = Api::all(client.clone());
    let mut last_report = Instant::now();
    loop {
        let list = api.list(&ListParams::default()).await?;
        let running = list
            .items
            .iter()
            .filter(|j| j.status.as_ref().and_then(|s| s.phase.as_ref()) == Some(&Phase::Running))
            .count();
        if running == instances {
            return Ok(started.elapsed());
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            println!(
                "  {:.0} s: {running} of {instances} Running",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("only {running} of {instances} instances Running after 30 minutes");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn report(m: &Measured, instances: usize, per_namespace: usize, idle: Duration) -> Result<String> {
    let Measured {
        created,
        running,
        busy,
        quiet,
        memory_after,
        memory_idle,
    } = m;
    let mut report = String::new();
    writeln!(
        report,
        "\n### {instances} `Jaeger` instances ({per_namespace} per namespace) created at once, on kwok\n"
    )?;
    writeln!(report, "| what | figure |\n|---|---|")?;
    writeln!(
        report,
        "| all created (16 in flight) | {:.1} s |",
        created.as_secs_f64()
    )?;
    writeln!(
        report,
        "| all `Running` (from the first create) | {:.1} s |",
        running.as_secs_f64()
    )?;
    writeln!(
        report,
        "| tracehook's API requests until then | {} ({:.1} per instance; {} writes, {:.1} per instance) |",
        busy.total,
        busy.total as f64 / instances as f64,
        busy.writes,
        busy.writes as f64 / instances as f64
    )?;
    writeln!(
        report,
        "| tracehook's requests over {} s idle | {} ({} writes: {:.1} writes per minute) |",
        idle.as_secs(),
        quiet.total,
        quiet.writes,
        quiet.writes as f64 * 60.0 / idle.as_secs_f64()
    )?;
    writeln!(
        report,
        "| tracehook serve memory when all Running | {memory_after} |"
    )?;
    writeln!(
        report,
        "| tracehook serve memory after the idle period | {memory_idle} |"
    )?;
    request_tables(&mut report, busy, quiet, instances)?;
    crate::end_report(&mut report)?;
    Ok(report)
}

/// tracehook's requests by verb and resource, busy and idle.
fn request_tables(
    report: &mut String,
    busy: &Counts,
    quiet: &Counts,
    instances: usize,
) -> Result<()> {
    writeln!(
        report,
        "\ntracehook's requests until all Running, by verb and resource:\n"
    )?;
    writeln!(
        report,
        "| verb | resource | requests | per instance |\n|---|---|---|---|"
    )?;
    for ((verb, resource), n) in &busy.by_kind {
        writeln!(
            report,
            "| {verb} | {resource} | {n} | {:.2} |",
            *n as f64 / instances as f64
        )?;
    }
    if !quiet.by_kind.is_empty() {
        writeln!(report, "\ntracehook's requests while idle:\n")?;
        writeln!(report, "| verb | resource | requests |\n|---|---|---|")?;
        for ((verb, resource), n) in &quiet.by_kind {
            writeln!(report, "| {verb} | {resource} | {n} |")?;
        }
    }
    Ok(())
}

/// An admin client that says who it is, so that its requests are not counted as
/// tracehook's.
async fn labelled_client(cluster: &Cluster) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(cluster.kubeconfig_path())?;
    let mut config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Ok(Client::try_from(config)?)
}

async fn wait_for_lease(client: &Client) -> Result<()> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "tracehook");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let held = leases
            .get_opt(tracehook::reconciler::LEASE_NAME)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .is_some_and(|h| !h.is_empty());
        if held {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nobody holds the reconciler's Lease");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    writes: u64,
    by_kind: BTreeMap<(String, String), u64>,
}

/// tracehook's requests in the audit log received in `[from, to)`.
fn count(audit: &Path, from: SystemTime, to: SystemTime) -> Result<Counts> {
    let text =
        std::fs::read_to_string(audit).with_context(|| format!("reading {}", audit.display()))?;
    let (from, to) = (micros(from), micros(to));
    let mut counts = Counts::default();
    for line in text.lines() {
        let Ok(event) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let agent = event.get("userAgent").and_then(Value::as_str).unwrap_or("");
        if !agent.is_empty() {
            continue;
        }
        let user = event
            .pointer("/user/username")
            .and_then(Value::as_str)
            .unwrap_or("");
        if user.starts_with("system:") {
            continue;
        }
        let Some(at) = event
            .get("requestReceivedTimestamp")
            .and_then(Value::as_str)
            .and_then(parse_rfc3339_micros)
        else {
            continue;
        };
        if at < from || at >= to {
            continue;
        }
        let verb = event.get("verb").and_then(Value::as_str).unwrap_or("?");
        let resource = event
            .pointer("/objectRef/resource")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let resource = match event
            .pointer("/objectRef/subresource")
            .and_then(Value::as_str)
        {
            Some(sub) => format!("{resource}/{sub}"),
            None => resource.to_owned(),
        };
        counts.total += 1;
        if matches!(
            verb,
            "create" | "update" | "patch" | "delete" | "deletecollection"
        ) {
            counts.writes += 1;
        }
        *counts
            .by_kind
            .entry((verb.to_owned(), resource))
            .or_default() += 1;
    }
    Ok(counts)
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// `2026-01-02T03:04:05.678901Z` → microseconds since the epoch.
fn parse_rfc3339_micros(s: &str) -> Option<i64> {
    let ts: k8s_openapi::jiff::Timestamp = s.parse().ok()?;
    Some(ts.as_microsecond())
}
