//! tracehook's system benchmarks (item 2–5 of BENCHMARKS.md): the HTTPS load against
//! the no-op baseline, Pod creation through a real API server with and without the
//! webhook, start-up and cache sync, memory footprint, and the reconciler at scale.
//! The engine micro-benchmarks are criterion benches in `benches/`.
//!
//! Every figure a run prints is measured in that run; ratios compare runs made side by
//! side, so that other load on the machine falls on both.

#[path = "../../benches/support/mod.rs"]
mod support;

// One copy of these helpers, shared with the integration tests.
#[path = "../../tests/common/crd.rs"]
mod crd;
#[path = "../../tests/common/http.rs"]
mod raw_http;
#[path = "../../tests/common/registration.rs"]
mod registration;

pub use support::context as admit_context;
pub use support::pods;

pub mod capture;
pub mod cli;
pub mod cluster;
pub mod detector;
pub mod e2e;
pub mod footprint;
pub mod load;
pub mod reconciler;
pub mod stats;
pub mod sys;

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bench lives in the workspace")
}

/// A release binary next to this one (`target/release/NAME`), which must be built
/// already: `cargo build --release -p tracehook -p tracehook-sysbench`.
pub fn release_binary(name: &str) -> Result<PathBuf> {
    let here = std::env::current_exe()?;
    let dir = here.parent().map(Path::to_path_buf).unwrap_or_default();
    let path = dir.join(name);
    if !path.exists() {
        bail!(
            "{} is missing: run `cargo build --release -p tracehook -p tracehook-sysbench` first",
            path.display()
        );
    }
    if !dir.ends_with("release") {
        eprintln!(
            "warning: {} is not a release build; figures will not be representative",
            path.display()
        );
    }
    Ok(path)
}

/// A directory for one run's files under `target/sysbench/`.
pub fn run_dir(what: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("target").join("sysbench").join(what);
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// `dir/certs` with a CA, a serving certificate for 127.0.0.1 and its key, made by
/// `tracehook certs` unless they are there already.
pub fn certificates(dir: &Path) -> Result<PathBuf> {
    let certs = dir.join("certs");
    if !certs.join("tls.crt").exists() {
        let status = std::process::Command::new(release_binary("tracehook")?)
            .args(["certs", "--out"])
            .arg(&certs)
            .stdout(std::process::Stdio::null())
            .status()?;
        if !status.success() {
            bail!("tracehook certs failed");
        }
    }
    Ok(certs)
}

/// The last line of every report: what else was busy on the machine at the end, so a
/// reader can judge the figures.
pub fn end_report(report: &mut String) -> std::fmt::Result {
    use std::fmt::Write as _;
    writeln!(
        report,
        "\nother busy processes at the end: {}",
        sys::busy_processes()
    )
}

/// `tracehook serve` against the cluster of `kubeconfig`, listening on `port`, its
/// probes on `probe_port`: the arguments and environment, added to `cmd`.
pub fn serve_with_cluster(
    cmd: &mut std::process::Command,
    kubeconfig: &std::path::Path,
    port: u16,
    probe_port: u16,
) {
    cmd.env("KUBECONFIG", kubeconfig)
        .arg("serve")
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--probe-listen")
        .arg(format!("127.0.0.1:{probe_port}"));
}

/// `tracehook serve` without a cluster (`--no-cluster --instance obs/test`) listening
/// on `port`, its probes on `probe_port`: the arguments, added to `cmd`.
pub fn serve_without_cluster(cmd: &mut std::process::Command, port: u16, probe_port: u16) {
    cmd.args([
        "serve",
        "--no-cluster",
        "--instance",
        "obs/test",
        "--listen",
    ])
    .arg(format!("127.0.0.1:{port}"))
    .arg("--probe-listen")
    .arg(format!("127.0.0.1:{probe_port}"));
}
