//! A real, local Kubernetes control plane for tracehook's tests.
//!
//! [`Cluster::start`] runs etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok (which simulates the node `kwok-node-0`, so scheduled Pods
//! become Running) as child processes on free loopback ports, with all state (PKI,
//! kubeconfig, etcd data, one log file per process) in a temporary directory. The
//! binaries are the official ones built from source by `tests/cluster/build.sh` (see
//! [`binaries`]); nothing is faked.
//!
//! Startup takes a few seconds (etcd, then the API server's `/readyz`, then the
//! controller-manager proves itself by creating the `default` ServiceAccount, then kwok
//! marks the node Ready). Share one cluster between the tests of a test binary with
//! [`shared`].
//!
//! # No orphans
//! Dropping a [`Cluster`] SIGTERMs its processes, SIGKILLs what is left after a grace
//! period, reaps them and deletes the directory. If the test process dies without
//! dropping it (a panic with `panic = abort`, SIGKILL, the test harness exiting with a
//! shared cluster), the kernel kills the children: each is spawned with
//! `PR_SET_PDEATHSIG(SIGKILL)`. That signal fires when the *thread* that spawned the
//! child exits, not the process, so every cluster owns a dedicated spawner thread that
//! performs all its `fork`/`exec`s (including restarts) and lives exactly as long as the
//! cluster; [`shared`]'s cluster is never dropped, so its spawner thread lives until the
//! process exits (an `atexit` hook also stops it cleanly and removes its directory).
//!
//! `cargo xtask cluster up` starts the same cluster detached ([`Cluster::start_detached`]:
//! `setsid`, no death signal, state and a pid file in a directory you choose) and
//! `cargo xtask cluster down` stops it ([`stop_detached`]).
//!
//! # A real node
//! `Options { real_node: true, .. }` adds a real node beside kwok's (kubelet, containerd,
//! CNI bridge, kube-proxy, CoreDNS; root only, one per machine); Pods then run for real
//! on [`REAL_NODE_NAME`]. See [`node`] for scheduling, network isolation, the
//! machine-wide lock, the teardown and the detached mode; [`cleanup_real_node`] removes
//! what a killed run left.

mod bins;
mod certs;
mod cluster;
mod config;
mod detached;
mod faults;
pub mod node;
mod options;
mod process;
mod shared;

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

pub use bins::{
    BIN_ENV, REQUIRED_BINARIES, binaries, build_script, check_bin_dir, run_build_script,
};
pub use cluster::Cluster;
use detached::terminate_pids;
pub use detached::{Detached, detached_pids, stop_detached};
pub use node::{
    BRIDGE, GUARD_TABLE, KWOK_TAINT, LOCK_PATH, NODE_DIR_ENV, NodeComponent, POD_CIDR,
    REAL_NODE_IP, REAL_NODE_LABEL, REAL_NODE_NAME, RealNodeInfo, SERVICE_CIDR, STATE_ROOT,
    cleanup_real_node, ctr, detached_node_pids, guard_drops, import_image, node_dir,
    real_node_leftovers,
};
pub use options::{Options, Ports};
pub use process::Component;
pub use shared::{shared, shared_real_node, try_shared};

/// Name of the simulated node every cluster has.
pub const NODE_NAME: &str = "kwok-node-0";

// ----- helpers -----

fn progress(t0: Instant, msg: std::fmt::Arguments<'_>) {
    eprintln!("[testcluster +{:.1}s] {msg}", t0.elapsed().as_secs_f64());
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Runs `fut` to completion on a fresh thread with its own runtime, so blocking
/// callers work from inside an async runtime too.
fn block_on<F>(fut: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a tokio runtime")
                .block_on(fut)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
