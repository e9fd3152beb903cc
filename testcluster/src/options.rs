//! What a cluster is started with: [`Options`] and the loopback [`Ports`] it picks.

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};

/// What [`Cluster::start`](crate::Cluster::start) needs to know; `Options::default()`
/// is the usual choice.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory with the binaries; `None` means [`binaries()`](crate::binaries).
    pub bin_dir: Option<PathBuf>,
    /// Upper bound for each readiness wait (etcd, API server, ServiceAccount, node).
    pub timeout: Duration,
    /// Extra kube-apiserver flags, appended after ours (a later flag wins), e.g.
    /// `--audit-log-path=...`.
    pub apiserver_args: Vec<String>,
    /// Also run a real node ([`REAL_NODE_NAME`](crate::REAL_NODE_NAME); needs root and
    /// `tests/node/build.sh`'s output, see [`node_dir`](crate::node_dir)). The kwok
    /// node stays, tainted [`KWOK_TAINT`](crate::KWOK_TAINT).
    pub real_node: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            bin_dir: None,
            timeout: Duration::from_secs(120),
            apiserver_args: Vec::new(),
            real_node: false,
        }
    }
}

/// The loopback ports a cluster listens on (fixed for its lifetime, so restarts keep
/// them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub etcd_client: u16,
    pub etcd_peer: u16,
    pub apiserver: u16,
    pub controller_manager: u16,
    pub scheduler: u16,
}

impl Ports {
    /// Asks the kernel for distinct free ports (all held open until all are chosen).
    pub(crate) fn pick() -> Result<Ports> {
        let listeners = (0..5)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<Vec<_>>>()
            .context("picking free loopback ports")?;
        let p: Vec<u16> = listeners
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<std::io::Result<_>>()?;
        Ok(Ports {
            etcd_client: p[0],
            etcd_peer: p[1],
            apiserver: p[2],
            controller_manager: p[3],
            scheduler: p[4],
        })
    }
}
