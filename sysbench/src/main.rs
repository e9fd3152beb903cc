//! `tracehook-sysbench`: the system benchmarks of BENCHMARKS.md.
//!
//! ```text
//! tracehook-sysbench load     [--duration S] [--rounds N] [--rate R] [--connections C] [--no-pin] [--preload LIB]
//! tracehook-sysbench e2e      [--pods N] [--chunks N]
//! tracehook-sysbench startup  [--runs N]
//! tracehook-sysbench caches   [--namespaces N] [--instances N] [--runs N]
//! tracehook-sysbench reconciler [--instances N] [--per-namespace N] [--idle S]
//! tracehook-sysbench admit-loop [--shape minimal|typical|large] [--iterations N]
//! ```
//!
//! Build first: `cargo build --release -p tracehook -p tracehook-sysbench`, then run
//! `target/release/tracehook-sysbench …` (it finds `tracehook` and `noop-server` next to
//! itself). `e2e` and `caches` start their own local control plane (testcluster).

use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use tracehook_sysbench::{e2e, footprint, load, pods, reconciler};

const USAGE: &str = "usage: tracehook-sysbench <load|e2e|startup|caches|reconciler|admit-loop> [flags] (see the crate docs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `--flag value` pairs after the subcommand.
struct Flags<'a>(&'a [String]);

impl Flags<'_> {
    fn has(&self, name: &str) -> bool {
        self.0.iter().any(|a| a == name)
    }

    fn get<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.0.iter().position(|a| a == name) {
            None => Ok(default),
            Some(i) => {
                let v = self
                    .0
                    .get(i + 1)
                    .with_context(|| format!("{name} needs a value"))?;
                v.parse().map_err(|e| anyhow::anyhow!("{name} {v}: {e}"))
            }
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let Some((command, rest)) = args.split_first() else {
        bail!("{USAGE}");
    };
    let flags = Flags(rest);
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command.as_str() {
        "load" => {
            let d = load::Options::default();
            load::run(&load::Options {
                duration: flags.get("--duration", d.duration)?,
                rounds: flags.get("--rounds", d.rounds)?,
                rate: flags.get("--rate", d.rate)?,
                connections: flags.get("--connections", d.connections)?,
                pin: !flags.has("--no-pin"),
                preload: flags
                    .has("--preload")
                    .then(|| flags.get("--preload", String::new()))
                    .transpose()?
                    .map(Into::into),
            })
        }
        "e2e" => {
            let d = e2e::Options::default();
            let opts = e2e::Options {
                pods: flags.get("--pods", d.pods)?,
                chunks: flags.get("--chunks", d.chunks)?,
                ..d
            };
            runtime()?.block_on(e2e::run(&opts))
        }
        "startup" => footprint::startup(flags.get("--runs", 30)?),
        "caches" => runtime()?.block_on(footprint::caches(
            flags.get("--namespaces", 1000)?,
            flags.get("--instances", 100)?,
            flags.get("--runs", 5)?,
        )),
        "reconciler" => runtime()?.block_on(reconciler::run(
            flags.get("--instances", 500)?,
            flags.get("--per-namespace", 10)?,
            std::time::Duration::from_secs(flags.get("--idle", 60)?),
        )),
        "admit-loop" => admit_loop(
            &flags.get("--shape", "typical".to_owned())?,
            flags.get("--iterations", 2000)?,
        ),
        _ => bail!("{USAGE}"),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `server::admit` and the response encoding in a loop, for callgrind or perf:
/// `valgrind --tool=callgrind target/release/tracehook-sysbench admit-loop`.
fn admit_loop(shape: &str, iterations: usize) -> Result<()> {
    let shape = match shape {
        "minimal" => pods::MINIMAL,
        "typical" => pods::TYPICAL,
        "large" => pods::LARGE,
        other => bail!("unknown shape {other}"),
    };
    let ctx = tracehook_sysbench::admit_context();
    let body = serde_json::to_vec(&pods::review(&pods::pod(shape), "profile"))?;
    let mut bytes = 0;
    for _ in 0..iterations {
        let response = futures::executor::block_on(tracehook::server::admit(&ctx, &body))
            .map_err(anyhow::Error::msg)?;
        bytes += response.into_review_json().len();
    }
    println!("{iterations} admissions, {bytes} bytes answered");
    Ok(())
}
