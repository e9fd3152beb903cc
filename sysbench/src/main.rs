//! `tracehook-sysbench`: the system benchmarks of BENCHMARKS.md (`--help` lists the
//! subcommands and their flags, defined in `cli.rs`).
//!
//! Build first: `cargo build --release -p tracehook -p tracehook-sysbench`, then run
//! `target/release/tracehook-sysbench …` (it finds `tracehook` and `noop-server` next to
//! itself). `e2e`, `caches`, `detector`, `reconciler`, `capture` and `load --cluster` start their own local control plane (testcluster).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser as _;
use tracehook_sysbench::cli::{Cli, Command, Shape};
use tracehook_sysbench::{capture, detector, e2e, footprint, load, pods, reconciler};

/// The allocator of the `tracehook` binary, so that `admit-loop` profiles what it runs.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        Command::Load {
            duration,
            rounds,
            rate,
            connections,
            no_pin,
            preload,
            cluster,
        } => load::run(&load::Options {
            duration,
            rounds,
            rate,
            connections,
            pin: !no_pin,
            preload,
            cluster,
        }),
        Command::E2e {
            pods,
            chunks,
            profile_seconds,
        } => {
            let opts = e2e::Options {
                pods,
                chunks,
                profile_seconds,
                ..e2e::Options::default()
            };
            runtime()?.block_on(e2e::run(&opts))
        }
        Command::Startup { runs } => footprint::startup(runs),
        Command::Capture { out } => runtime()?.block_on(capture::run(&out)),
        Command::Caches {
            namespaces,
            instances,
            runs,
        } => runtime()?.block_on(footprint::caches(namespaces, instances, runs)),
        Command::Detector {
            pods,
            namespaces,
            runs,
        } => runtime()?.block_on(detector::run(&detector::Options {
            pods,
            namespaces,
            runs,
        })),
        Command::Reconciler {
            instances,
            per_namespace,
            idle,
        } => runtime()?.block_on(reconciler::run(
            instances,
            per_namespace,
            Duration::from_secs(idle),
        )),
        Command::AdmitLoop { shape, iterations } => admit_loop(shape, iterations),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// `server::admit` and the response encoding in a loop, for callgrind or perf:
/// `valgrind --tool=callgrind target/release/tracehook-sysbench admit-loop`.
fn admit_loop(shape: Shape, iterations: usize) -> Result<()> {
    let shape = match shape {
        Shape::Minimal => pods::MINIMAL,
        Shape::Typical => pods::TYPICAL,
        Shape::Large => pods::LARGE,
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
