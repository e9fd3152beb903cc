//! The command lines of `tracehook-sysbench` and `noop-server` (clap), kept here so
//! that a test can check every command line the documents quote against them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::{detector, e2e, load};

/// The system benchmarks of BENCHMARKS.md. Build first:
/// `cargo build --release -p tracehook -p tracehook-sysbench`; it finds `tracehook`
/// and `noop-server` next to itself.
#[derive(Debug, Parser)]
#[command(name = "tracehook-sysbench")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// HTTPS load: tracehook against the no-op server, HTTP/1.1 and HTTP/2.
    Load {
        /// Seconds per oha run.
        #[arg(long, default_value_t = load::Options::default().duration)]
        duration: u64,
        /// Throughput rounds per server, body and protocol.
        #[arg(long, default_value_t = load::Options::default().rounds)]
        rounds: usize,
        /// Requests per second of the latency phase.
        #[arg(long, default_value_t = load::Options::default().rate)]
        rate: u32,
        /// HTTP/1.1 connections (HTTP/2: connections / 8 connections × 8 streams).
        #[arg(long, default_value_t = load::Options::default().connections)]
        connections: usize,
        /// Do not pin the servers to CPU 1 and oha to CPU 0.
        #[arg(long)]
        no_pin: bool,
        /// A malloc to try as well (a third server with it in `LD_PRELOAD`).
        #[arg(long)]
        preload: Option<PathBuf>,
        /// Serve against a real control plane (live caches, the reconciler and the
        /// Pod watch running) instead of `--no-cluster`.
        #[arg(long)]
        cluster: bool,
    },
    /// Pod creations through a real API server with and without the webhook.
    E2e {
        /// Creations per mode and concurrency.
        #[arg(long, default_value_t = e2e::Options::default().pods)]
        pods: usize,
        /// Alternations between the modes per concurrency.
        #[arg(long, default_value_t = e2e::Options::default().chunks)]
        chunks: usize,
        /// Length of a CPU profile of the API server with the webhook and one without
        /// (0: none), taken after the measurements.
        #[arg(long, default_value_t = e2e::Options::default().profile_seconds)]
        profile_seconds: u64,
    },
    /// exec → TLS listener with a generated certificate.
    Startup {
        #[arg(long, default_value_t = 30)]
        runs: usize,
    },
    /// Cache sync and memory with many namespaces and instances.
    Caches {
        #[arg(long, default_value_t = 1000)]
        namespaces: usize,
        #[arg(long, default_value_t = 100)]
        instances: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// The missed-injection detector's memory with many Pods (all missing).
    Detector {
        #[arg(long, default_value_t = detector::Options::default().pods)]
        pods: usize,
        #[arg(long, default_value_t = detector::Options::default().namespaces)]
        namespaces: usize,
        #[arg(long, default_value_t = detector::Options::default().runs)]
        runs: usize,
    },
    /// Many Jaeger instances at once on kwok.
    Reconciler {
        #[arg(long, default_value_t = 500)]
        instances: usize,
        #[arg(long, default_value_t = 10)]
        per_namespace: usize,
        /// Seconds to watch the idle reconciler afterwards.
        #[arg(long, default_value_t = 60)]
        idle: u64,
    },
    /// An AdmissionReview as a real API server sends it (a Deployment's Pod, created
    /// by the ReplicaSet controller), written byte for byte for the load's bodies.
    Capture {
        #[arg(long, default_value = CAPTURED_REVIEW)]
        out: PathBuf,
    },
    /// The admission step in a loop, for callgrind or perf.
    AdmitLoop {
        #[arg(long, value_enum, default_value_t = Shape::Typical)]
        shape: Shape,
        #[arg(long, default_value_t = 2000)]
        iterations: usize,
    },
}

/// Where `capture` writes by default, relative to the workspace (the load sends it).
pub const CAPTURED_REVIEW: &str = "tests/data/reviews/deployment-pod-from-apiserver.json";

/// The Pod an `admit-loop` admits (`pods::MINIMAL`, `TYPICAL`, `LARGE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shape {
    Minimal,
    Typical,
    Large,
}

/// `noop-server`: the baseline of the load benchmark.
#[derive(Debug, Parser)]
#[command(name = "noop-server")]
pub struct NoopArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long = "tls-cert-file")]
    pub cert: PathBuf,
    #[arg(long = "tls-key-file")]
    pub key: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `tracehook-sysbench …` and `noop-server …` command line quoted in the
    /// documents, continuation lines joined and comments dropped.
    fn quoted_command_lines() -> Vec<(String, Vec<String>)> {
        let root = crate::workspace_root();
        let mut found = Vec::new();
        for doc in [
            "README.md",
            "BENCHMARKS.md",
            "sysbench/src/bin/noop-server.rs",
        ] {
            let text = std::fs::read_to_string(root.join(doc)).expect("reading a document");
            let joined = text.replace("\\\n", " ");
            for line in joined.lines() {
                let line = line.split(" # ").next().unwrap_or_default();
                let words: Vec<&str> = line.split_whitespace().collect();
                let start = words.iter().position(|w| {
                    w.trim_start_matches('`') == "target/release/tracehook-sysbench"
                        || w.trim_start_matches('`') == "noop-server"
                });
                let Some(start) = start else { continue };
                let args: Vec<String> = words[start..]
                    .iter()
                    .map(|w| w.trim_matches('`').to_owned())
                    .collect();
                if args.len() > 1 && !args[1].is_empty() && !args[1].starts_with('(') {
                    found.push((format!("{doc}: {}", line.trim()), args));
                }
            }
        }
        found
    }

    #[test]
    fn every_documented_command_line_parses() {
        let lines = quoted_command_lines();
        let sysbench = lines
            .iter()
            .filter(|(_, a)| a[0].ends_with("tracehook-sysbench"))
            .count();
        let noop = lines.iter().filter(|(_, a)| a[0] == "noop-server").count();
        // README's list, BENCHMARKS.md's runs and the noop-server synopsis at least.
        assert!(sysbench >= 10, "found only {sysbench}: {lines:#?}");
        assert!(noop >= 1, "found no noop-server command line: {lines:#?}");
        for (where_, args) in &lines {
            let parsed = if args[0] == "noop-server" {
                NoopArgs::try_parse_from(args).map(drop)
            } else {
                Cli::try_parse_from(args).map(drop)
            };
            if let Err(e) = parsed {
                panic!("{where_} does not parse: {e}");
            }
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli = Cli::try_parse_from(["tracehook-sysbench", "load", "--no-pin"]).unwrap();
        let Command::Load {
            duration,
            no_pin,
            preload,
            cluster,
            ..
        } = cli.command
        else {
            panic!("not load: {cli:?}");
        };
        assert_eq!(duration, load::Options::default().duration);
        assert!(no_pin);
        assert_eq!(preload, None);
        assert!(!cluster, "--no-cluster unless asked");
        let cli = Cli::try_parse_from(["tracehook-sysbench", "admit-loop"]).unwrap();
        assert!(matches!(
            cli.command,
            Command::AdmitLoop {
                shape: Shape::Typical,
                iterations: 2000
            }
        ));
    }

    #[test]
    fn unknown_flags_are_refused() {
        assert!(Cli::try_parse_from(["tracehook-sysbench", "e2e", "--pod", "3"]).is_err());
        assert!(NoopArgs::try_parse_from(["noop-server", "--listen", "127.0.0.1:1"]).is_err());
    }
}
