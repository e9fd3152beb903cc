//! Detached clusters (`cargo xtask cluster up`/`down`): started to outlive this
//! process, found again by their pid file, and stopped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::process::{self, Mode};
use crate::{Cluster, Component, NodeComponent, Options, detached_node_pids, node};

/// What [`Cluster::start_detached`] leaves running.
#[derive(Clone, Debug)]
pub struct Detached {
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
    pub api_url: String,
    pub bin_dir: PathBuf,
    pub pids: Vec<(Component, u32)>,
    /// The real node's processes (empty without `Options::real_node`; also in
    /// `dir/node-pids`, see [`detached_node_pids`]).
    pub node_pids: Vec<(NodeComponent, u32)>,
    pub startup: Duration,
}

impl Cluster {
    /// Starts a cluster whose processes outlive this process (new session, no death
    /// signal), with its state in `dir` (created; must not exist or be empty): the
    /// kubeconfig at `dir/kubeconfig`, logs in `dir/logs/`, pids in `dir/pids`. Stop it
    /// with [`stop_detached`]. On failure everything started is killed and `dir` is
    /// kept for its logs.
    pub fn start_detached(dir: &Path, opts: Options) -> Result<Detached> {
        if dir.exists()
            && std::fs::read_dir(dir)
                .with_context(|| format!("reading {}", dir.display()))?
                .next()
                .is_some()
        {
            bail!("{} already exists and is not empty", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir.canonicalize()?;
        let mut cluster = Cluster::start_in(dir, None, Mode::Detached, opts)?;
        cluster.owns_children = false;
        let pids = cluster
            .lock_children()
            .iter()
            .map(|(c, child)| (*c, child.id()))
            .collect();
        let node_pids = detached_node_pids(&cluster.dir)?;
        Ok(Detached {
            dir: cluster.dir.clone(),
            kubeconfig: cluster.kubeconfig_path(),
            api_url: cluster.api_url.clone(),
            bin_dir: cluster.bin_dir.clone(),
            pids,
            node_pids,
            startup: cluster.started.elapsed(),
        })
    }
}

/// The live processes of a detached cluster in `dir` (empty if none is running).
pub fn detached_pids(dir: &Path) -> Result<Vec<(Component, u32)>> {
    let pids = dir.join("pids");
    if !pids.exists() {
        return Ok(Vec::new());
    }
    let marker = dir.canonicalize()?.display().to_string();
    Ok(process::read_pids(&pids)?
        .into_iter()
        .filter(|(_, pid)| process::is_ours(*pid, &marker))
        .collect())
}

/// Stops a detached cluster (SIGTERM, SIGKILL after 10 s) and removes `dir`. Only
/// processes whose command line mentions `dir` are signalled. Returns how many were
/// running.
pub fn stop_detached(dir: &Path) -> Result<usize> {
    if !dir.exists() {
        return Ok(0);
    }
    let marker = dir.canonicalize()?.display().to_string();
    let live = detached_pids(dir)?;
    let node = node::stop_detached_node(dir, &live, &marker);
    // etcd last, so the API server doesn't spend its shutdown retrying it.
    let pids_where = |etcd: bool| -> Vec<u32> {
        live.iter()
            .filter(|(c, _)| (*c == Component::Etcd) == etcd)
            .map(|(_, pid)| *pid)
            .collect()
    };
    for pids in [pids_where(false), pids_where(true)] {
        terminate_pids(&pids, &marker, Duration::from_secs(10));
    }
    if node.is_some() {
        node::sweep_detached(&marker)?;
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    Ok(live.len() + node.unwrap_or(0))
}

/// SIGTERM `pids`, wait up to `grace` for them to go, SIGKILL the rest (only pids whose
/// command line still mentions `marker`).
pub(crate) fn terminate_pids(pids: &[u32], marker: &str, grace: Duration) {
    for pid in pids {
        process::sigterm(*pid);
    }
    let deadline = Instant::now() + grace;
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|pid| process::is_ours(*pid, marker))
            .collect();
        if left.is_empty() {
            return;
        }
        if Instant::now() >= deadline {
            for pid in left {
                // SAFETY: plain kill(2) of a process verified to be ours.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(200));
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
