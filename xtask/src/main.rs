//! `cargo xtask …`: developer tasks.
//!
//! ```text
//! cargo xtask cluster build [--regenerate]   build the control-plane binaries (tests/cluster/build.sh)
//! cargo xtask cluster up [--real-node]        start a local cluster in target/cluster/ and return when ready
//! cargo xtask cluster status                 is it up?
//! cargo xtask cluster down                   stop it and remove target/cluster/
//! cargo xtask demo [--kwok]                  the demo: cluster and real node (or kwok), tracehook,
//!                                            HotROD injected, one request's trace from Jaeger
//! cargo xtask demo down                      stop the demo and the cluster
//! cargo xtask image                          tracehook's image (no Docker), imported into a real node that is up
//! ```
//!
//! `up` runs the same control plane the tests use (the `testcluster` crate), detached
//! from this process: `KUBECONFIG=target/cluster/kubeconfig kubectl get ns`.

mod demo;
mod image;
mod waterfall;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, bail};
use testcluster::{Cluster, Component, Options};

const USAGE: &str = "usage: cargo xtask cluster <build [--regenerate] | up [--real-node] | status | down> | cargo xtask demo [--kwok | down] | cargo xtask image";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["cluster", "build"] => build(&[]),
        ["cluster", "build", "--regenerate"] => build(&["--regenerate"]),
        ["cluster", "up"] => up(false),
        ["cluster", "up", "--real-node"] => up(true),
        ["cluster", "status"] => status(),
        ["cluster", "down"] => down(),
        ["demo"] => demo::up(false),
        ["demo", "--kwok"] => demo::up(true),
        ["demo", "down"] => demo::down(),
        ["image"] => image::build().map(drop),
        ["help" | "--help" | "-h"] | [] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `cargo`, without what `cargo run` set for xtask itself (`CARGO_PKG_*`,
/// `CARGO_MANIFEST_*`, …): a nested build that inherits them builds tracehook anew
/// instead of reusing what `cargo build` made (a 6-minute release build each time).
fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO"));
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR" {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(workspace_root());
    cmd
}

fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
}

/// `target/cluster/` of the workspace.
fn state_dir() -> PathBuf {
    workspace_root().join("target").join("cluster")
}

fn build(args: &[&str]) -> Result<()> {
    let bin = testcluster::run_build_script(args)?;
    testcluster::check_bin_dir(&bin)?;
    println!("{}", bin.display());
    Ok(())
}

/// `real_node`: a real kubelet, containerd, CNI, kube-proxy and CoreDNS beside kwok
/// (root; binaries and images from tests/node/build.sh).
fn up(real_node: bool) -> Result<()> {
    let dir = state_dir();
    let live = testcluster::detached_pids(&dir)?;
    if live.len() == Component::ALL.len() {
        println!("cluster already up ({})", describe(&dir));
        return Ok(());
    }
    if !live.is_empty() {
        bail!(
            "cluster in {} is partially up ({}); run `cargo xtask cluster down` first",
            dir.display(),
            list(&live)
        );
    }
    if dir.exists() {
        eprintln!("removing stale cluster state in {}", dir.display());
        std::fs::remove_dir_all(&dir)?;
    }
    let up = Cluster::start_detached(
        &dir,
        Options {
            real_node,
            ..Options::default()
        },
    )?;
    println!(
        "cluster up in {:.1}s at {} ({})",
        up.startup.as_secs_f64(),
        up.api_url,
        list(&up.pids)
    );
    println!("  export KUBECONFIG={}", up.kubeconfig.display());
    println!("  kubectl: {}", up.bin_dir.join("kubectl").display());
    println!("  logs: {}", up.dir.join("logs").display());
    Ok(())
}

fn status() -> Result<()> {
    let dir = state_dir();
    let live = testcluster::detached_pids(&dir)?;
    if live.is_empty() {
        println!("cluster down");
    } else if live.len() == Component::ALL.len() {
        println!("cluster up ({})", describe(&dir));
    } else {
        println!("cluster partially up: {}", list(&live));
    }
    Ok(())
}

fn down() -> Result<()> {
    let dir = state_dir();
    if !dir.exists() {
        println!("cluster not up");
        return Ok(());
    }
    let n = testcluster::stop_detached(&dir)?;
    println!("stopped {n} processes, removed {}", dir.display());
    Ok(())
}

fn describe(dir: &Path) -> String {
    format!("KUBECONFIG={}", dir.join("kubeconfig").display())
}

fn list(pids: &[(Component, u32)]) -> String {
    pids.iter()
        .map(|(c, pid)| format!("{c} {pid}"))
        .collect::<Vec<_>>()
        .join(", ")
}
