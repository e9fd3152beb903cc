//! Issue 12: the memory of the missed-injection detector's Pod watch.
//!
//! `detector`: a cluster with `--namespaces` labelled namespaces, one `Jaeger` instance
//! and `--pods` Pods spread over them, created before tracehook runs, so every one is
//! *missing* its sidecar (the detector's worst case: each is decided and reported).
//! The Pods name a scheduler nobody serves: nothing else acts on them. Then, `--runs`
//! times each, exec of `tracehook serve` without the reconciler (no leader, so no Pod
//! watch) and with it (the leader's detector watches every Pod); for the second, the
//! time until `tracehook_pods_missing_sidecar` sums to `--pods`, and the memory of both
//! once settled.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::cluster::{self, Webhook};
use crate::sys::{self, Memory};

pub struct Options {
    pub pods: usize,
    pub namespaces: usize,
    pub runs: usize,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            pods: 5000,
            namespaces: 50,
            runs: 3,
        }
    }
}

pub async fn run(opts: &Options) -> Result<()> {
    let dir = crate::run_dir("detector")?;
    println!("{}", sys::describe_machine());
    let (cluster, client) = cluster::start().await?;
    let created = populate(&client, opts).await?;
    println!(
        "{} namespaces, 1 instance and {} Pods created in {:.1} s",
        opts.namespaces,
        opts.pods,
        created.as_secs_f64()
    );
    cluster.create_namespace("tracehook").await?;
    let mut rows = Vec::new();
    for run in 0..opts.runs {
        for (mode, args, detects) in [
            (
                "without the reconciler (no Pod watch)",
                &["--no-reconciler"][..],
                false,
            ),
            (
                "leader with the detector",
                &["--missing-scan-interval", "1s"][..],
                true,
            ),
        ] {
            let mut webhook = Webhook::start(&cluster, &dir, args)?;
            webhook.wait_ready(Duration::from_secs(120))?;
            let reported = if detects {
                Some(wait_reported(
                    &webhook,
                    opts.pods,
                    Duration::from_secs(300),
                )?)
            } else {
                None
            };
            tokio::time::sleep(Duration::from_secs(5)).await;
            let soon = webhook.memory();
            tokio::time::sleep(Duration::from_secs(25)).await;
            rows.push((run, mode, reported, soon, webhook.memory()));
            drop(webhook);
        }
    }
    let report = report(opts, &rows)?;
    println!("{report}");
    std::fs::write(dir.join("report.md"), &report)?;
    drop(cluster);
    Ok(())
}

/// Namespaces, the instance and the Pods; the time it took.
async fn populate(client: &kube::Client, opts: &Options) -> Result<Duration> {
    let started = Instant::now();
    let namespaces: Vec<String> = (0..opts.namespaces)
        .map(|i| format!("app-{i:03}"))
        .collect();
    stream::iter(namespaces.clone())
        .map(|ns| {
            let client = client.clone();
            async move {
                cluster::create_namespace(
                    &client,
                    &ns,
                    json!({"tracehook.dev/injection": "enabled"}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    cluster::create_namespace(client, "obs", json!({})).await?;
    cluster::create_instance(client, "obs", "test").await?;
    stream::iter(0..opts.pods)
        .map(|i| {
            let api: Api<Pod> = Api::namespaced(client.clone(), &namespaces[i % namespaces.len()]);
            async move {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {"name": format!("web-{i:05}"), "labels": {"app": "web"}},
                    "spec": {
                        "schedulerName": "tracehook-sysbench-unscheduled",
                        "containers": [{"name": "app", "image": "registry.example/app:1"}]
                    }
                }))?;
                api.create(&PostParams::default(), &pod).await?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(started.elapsed())
}

/// Polls `/metrics` until `tracehook_pods_missing_sidecar` sums to `pods`; the time
/// from exec.
fn wait_reported(webhook: &Webhook, pods: usize, timeout: Duration) -> Result<Duration> {
    loop {
        let missing: f64 = metrics(webhook.probe_port)
            .lines()
            .filter(|l| l.starts_with("tracehook_pods_missing_sidecar{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if missing as usize >= pods {
            return Ok(webhook.started.elapsed());
        }
        if webhook.started.elapsed() > timeout {
            bail!("{missing} of {pods} Pods reported missing after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn metrics(port: u16) -> String {
    crate::load::http_get(port, "/metrics").unwrap_or_default()
}

fn report(
    opts: &Options,
    rows: &[(usize, &str, Option<Duration>, Memory, Memory)],
) -> Result<String> {
    let mut report = String::new();
    writeln!(
        report,
        "\n### {} Pods missing the sidecar in {} labelled namespaces: the detector's memory ({} runs)\n",
        opts.pods, opts.namespaces, opts.runs
    )?;
    writeln!(
        report,
        "| run | tracehook serve | all reported after (from exec) | VmRSS MiB 5 s later | VmRSS MiB 30 s later | VmHWM MiB |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|")?;
    for (run, mode, reported, soon, later) in rows {
        writeln!(
            report,
            "| {} | {mode} | {} | {:.1} | {:.1} | {:.1} |",
            run + 1,
            reported.map_or("–".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            soon.rss_kib as f64 / 1024.0,
            later.rss_kib as f64 / 1024.0,
            later.hwm_kib as f64 / 1024.0
        )?;
    }
    writeln!(
        report,
        "\nother busy processes at the end: {}",
        sys::busy_processes()
    )?;
    Ok(report)
}
