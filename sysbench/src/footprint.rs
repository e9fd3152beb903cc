//! Item 4: start-up and footprint.
//!
//! - `startup`: exec of `tracehook serve --no-cluster` with no certificate files (so a
//!   CA and serving certificate are generated) until its TLS listener accepts a
//!   connection. The listener is bound only once the certificate is loaded.
//! - `caches`: a cluster with 1,000 namespaces and 100 `Jaeger` instances; exec of
//!   `tracehook serve` against it until `/readyz` is 200 (TLS up and every reflector
//!   cache synced), then its resident memory once settled.

use std::fmt::Write as _;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use futures::{StreamExt as _, TryStreamExt as _, stream};
use serde_json::json;

use crate::cluster::{self, Webhook};
use crate::stats::Summary;
use crate::sys::{self, Memory};

pub fn startup(runs: usize) -> Result<()> {
    let tracehook = crate::release_binary("tracehook")?;
    println!("{}", sys::describe_machine());
    let mut samples = Vec::new();
    let mut memory = Vec::new();
    for _ in 0..runs {
        let port = sys::free_port();
        let probe_port = sys::free_port();
        let started = Instant::now();
        let mut cmd = Command::new(&tracehook);
        crate::serve_without_cluster(&mut cmd, port, probe_port);
        let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let ready = loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break Some(started.elapsed());
            }
            if started.elapsed() > Duration::from_secs(10) {
                break None;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        std::thread::sleep(Duration::from_millis(200));
        memory.push(Memory::of(child.id()).unwrap_or_default());
        let _ = child.kill();
        let _ = child.wait();
        match ready {
            Some(d) => samples.push(d),
            None => bail!("tracehook serve did not listen within 10 s"),
        }
    }
    let s = Summary::of(&samples);
    let mut report = String::new();
    writeln!(
        report,
        "\n### exec → TLS listener accepting, fresh certificate generated ({runs} runs)\n"
    )?;
    writeln!(report, "| mean ms | p50 ms | p90 ms | min ms | max ms |")?;
    writeln!(report, "|---|---|---|---|---|")?;
    writeln!(
        report,
        "| {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
        s.mean, s.p50, s.p90, s.min, s.max
    )?;
    let rss = memory.iter().map(|m| m.rss_kib).max().unwrap_or(0);
    writeln!(
        report,
        "\nVmRSS 200 ms after start, idle, no cluster: {:.1} MiB (largest of the runs)",
        rss as f64 / 1024.0
    )?;
    crate::end_report(&mut report)?;
    println!("{report}");
    Ok(())
}

pub async fn caches(namespaces: usize, instances: usize, runs: usize) -> Result<()> {
    let dir = crate::run_dir("caches")?;
    println!("{}", sys::describe_machine());
    let (cluster, client) = cluster::start().await?;
    let started = Instant::now();
    stream::iter(0..namespaces)
        .map(|i| {
            let client = client.clone();
            async move {
                cluster::create_namespace(
                    &client,
                    &format!("team-{i:04}"),
                    json!({"tracehook.dev/injection": "enabled", "team": format!("t{i}")}),
                )
                .await
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    cluster::create_instances(&client, instances, |i| {
        (
            format!("team-{:04}", i * (namespaces / instances.max(1)).max(1)),
            "jaeger".to_owned(),
        )
    })
    .await?;
    println!(
        "{namespaces} namespaces and {instances} Jaeger instances created in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut synced = Vec::new();
    let mut memory = Vec::new();
    for _ in 0..runs {
        let mut webhook = Webhook::start(&cluster, &dir, &["--no-reconciler"])?;
        synced.push(webhook.wait_ready(Duration::from_secs(60))?);
        tokio::time::sleep(Duration::from_secs(3)).await;
        memory.push(webhook.memory());
        drop(webhook);
    }
    let s = Summary::of(&synced);
    let mut report = String::new();
    writeln!(
        report,
        "\n### {namespaces} namespaces, {instances} `Jaeger` instances: exec → /readyz 200 (caches synced), {runs} runs\n"
    )?;
    writeln!(report, "| mean ms | p50 ms | min ms | max ms |")?;
    writeln!(report, "|---|---|---|---|")?;
    writeln!(
        report,
        "| {:.0} | {:.0} | {:.0} | {:.0} |",
        s.mean, s.p50, s.min, s.max
    )?;
    writeln!(report, "\nMemory 3 s after ready, per run:\n")?;
    for m in &memory {
        writeln!(report, "- {m}")?;
    }
    crate::end_report(&mut report)?;
    println!("{report}");
    std::fs::write(dir.join("report.md"), &report)?;
    drop(cluster);
    Ok(())
}
