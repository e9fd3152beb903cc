//! Locating (and if needed building) the control-plane binaries.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// Every binary a [`crate::Cluster`] runs; `bin_dir` must contain all of them.
pub const REQUIRED_BINARIES: [&str; 6] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
];

/// Environment variable naming a directory with prebuilt (from source) binaries; when
/// set, [`binaries`] uses it instead of running `tests/cluster/build.sh`.
pub const BIN_ENV: &str = "TRACEHOOK_K8S_BIN";

/// `tests/cluster/build.sh` of this checkout.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/cluster/build.sh")
}

/// The directory holding the control-plane binaries.
///
/// `$TRACEHOOK_K8S_BIN` if set; otherwise runs `tests/cluster/build.sh` (instant when
/// its cache is complete, a long cold build otherwise), streaming its progress to our
/// stderr and taking the last line of its stdout. Missing binaries are an error, never
/// a skip. The result is memoized for the process.
pub fn binaries() -> Result<PathBuf> {
    static CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = cache.as_ref() {
        return Ok(dir.clone());
    }
    let dir = match std::env::var_os(BIN_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => run_build_script(&[])?,
    };
    check_bin_dir(&dir)?;
    *cache = Some(dir.clone());
    Ok(dir)
}

/// Runs `tests/cluster/build.sh ARGS`, stderr streamed to ours; returns the last
/// stdout line (the bin directory).
pub fn run_build_script(args: &[&str]) -> Result<PathBuf> {
    run_script(
        &build_script(),
        args,
        &format!(
            "Set {BIN_ENV} to a directory with {} to use other binaries",
            REQUIRED_BINARIES.join(", ")
        ),
    )
}

/// Runs the build script `script ARGS`, stderr streamed to ours; returns the last
/// stdout line (its output directory). `hint` ends the error message.
pub(crate) fn run_script(script: &Path, args: &[&str], hint: &str) -> Result<PathBuf> {
    let mut child = Command::new("bash")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("running {}", script.display()))?;
    let mut last = String::new();
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading build.sh output")?;
        if !line.trim().is_empty() {
            last = line.trim().to_owned();
        }
    }
    let status = child.wait().context("waiting for build.sh")?;
    if !status.success() {
        bail!(
            "{} failed ({status}); its progress and error are above. {hint}",
            script.display()
        );
    }
    if last.is_empty() {
        bail!("{} printed no bin directory", script.display());
    }
    Ok(PathBuf::from(last))
}

/// Checks `dir` holds every executable in [`REQUIRED_BINARIES`].
pub fn check_bin_dir(dir: &Path) -> Result<()> {
    let missing: Vec<&str> = REQUIRED_BINARIES
        .iter()
        .copied()
        .filter(|name| {
            !std::fs::metadata(dir.join(name))
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
        .collect();
    if !missing.is_empty() {
        bail!(
            "control-plane binaries missing from {}: {} (build them with \
             `cargo xtask cluster build`, i.e. tests/cluster/build.sh, or point {BIN_ENV} \
             at a directory that has them)",
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}
