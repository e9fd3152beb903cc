//! `cargo xtask image`: tracehook's image without Docker, from the release binary, under
//! the chart's default name (`image.repository:appVersion`), by
//! tests/node/tracehook-image.sh (the same files in the same places as the
//! Dockerfile's runtime stage); imported into the real node when one is up.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{state_dir, workspace_root};

/// The chart's default image: `image.repository` in values.yaml and `appVersion` in
/// Chart.yaml.
pub fn default_name(root: &Path) -> Result<String> {
    let values = std::fs::read_to_string(root.join("charts/tracehook/values.yaml"))?;
    let chart = std::fs::read_to_string(root.join("charts/tracehook/Chart.yaml"))?;
    let field = |text: &str, key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    let repository = field(&values, "repository:").context("image.repository in values.yaml")?;
    let version = field(&chart, "appVersion:").context("appVersion in Chart.yaml")?;
    Ok(format!("{repository}:{version}"))
}

/// Builds the release binary and the image; returns the tarball.
pub fn build() -> Result<PathBuf> {
    let root = workspace_root();
    println!(
        "building the release binary (cargo build --release --bin tracehook; a cold build takes several minutes)"
    );
    let status = crate::cargo()
        .args(["build", "--release", "--locked", "--bin", "tracehook"])
        .status()?;
    if !status.success() {
        bail!("cargo build --release failed ({status})");
    }
    let name = default_name(root)?;
    let tar = root.join("target/image/tracehook.tar");
    let out = Command::new("bash")
        .arg(root.join("tests/node/tracehook-image.sh"))
        .arg(root.join("target/release/tracehook"))
        .arg(&tar)
        .arg(&name)
        .output()
        .context("running tests/node/tracehook-image.sh")?;
    if !out.status.success() {
        bail!(
            "tests/node/tracehook-image.sh failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let digests = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let (id, manifest) = digests.split_once('\t').unwrap_or((&digests, ""));
    let size = std::fs::metadata(&tar)?.len();
    println!(
        "{name}: {} ({:.1} MiB)",
        tar.display(),
        size as f64 / (1 << 20) as f64
    );
    println!("  image ID {id}\n  manifest {manifest}");
    if testcluster::detached_node_pids(&state_dir())?.is_empty() {
        println!("no real node is up (cargo xtask cluster up --real-node): not imported");
    } else {
        testcluster::import_image(&tar)?;
        println!("imported into the real node's containerd");
    }
    Ok(tar)
}
