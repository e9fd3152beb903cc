//! Fault injection: stopping, killing and restarting one component of a running
//! cluster.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::process;
use crate::{Cluster, Component, progress};

impl Cluster {
    /// Stops one component (SIGTERM, SIGKILL after 30 s). No-op if it isn't running.
    /// Needs a tokio runtime (with time).
    pub async fn stop_component(&self, c: Component) -> Result<()> {
        let child = self.lock_children().remove(&c);
        if let Some(mut child) = child {
            process::sigterm(child.id());
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    child.kill()?;
                    child.wait()?;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            progress(self.started, format_args!("{c} stopped"));
        }
        process::write_pids(&self.dir.join("pids"), &self.lock_children())
    }

    /// Starts a stopped component with its original command line (same ports, same
    /// data) and waits until it serves: etcd healthy (and the API server ready again if
    /// it runs), the API server ready; the others just started.
    pub async fn start_component(&self, c: Component) -> Result<()> {
        if self.lock_children().contains_key(&c) {
            bail!("{c} is already running");
        }
        self.spawn(c)?;
        match c {
            Component::Etcd => {
                self.wait_etcd().await?;
                if self.lock_children().contains_key(&Component::ApiServer) {
                    self.wait_apiserver(&self.client().await?).await?;
                }
            }
            Component::ApiServer => self.wait_apiserver(&self.client().await?).await?,
            _ => {}
        }
        progress(self.started, format_args!("{c} started"));
        Ok(())
    }

    /// SIGKILLs one component (a crash, no graceful shutdown) and reaps it; bring it
    /// back with [`Cluster::start_component`]. No-op if it isn't running.
    pub fn kill_component(&self, c: Component) -> Result<()> {
        let child = self.lock_children().remove(&c);
        if let Some(mut child) = child {
            child.kill()?;
            child.wait()?;
            progress(self.started, format_args!("{c} killed"));
        }
        process::write_pids(&self.dir.join("pids"), &self.lock_children())
    }

    /// [`Cluster::stop_component`] then [`Cluster::start_component`]. Graceful stops
    /// take about 2 s for the API server and 7 s for etcd (its gRPC graceful stop
    /// waits up to its request timeout for the API server's watch streams).
    pub async fn restart_component(&self, c: Component) -> Result<()> {
        self.stop_component(c).await?;
        self.start_component(c).await
    }

    pub async fn stop_apiserver(&self) -> Result<()> {
        self.stop_component(Component::ApiServer).await
    }

    pub async fn start_apiserver(&self) -> Result<()> {
        self.start_component(Component::ApiServer).await
    }

    /// Stops and restarts kube-apiserver (same port, certificates, etcd); returns once
    /// `/readyz` is ok again.
    pub async fn restart_apiserver(&self) -> Result<()> {
        self.restart_component(Component::ApiServer).await
    }

    pub async fn stop_etcd(&self) -> Result<()> {
        self.stop_component(Component::Etcd).await
    }

    pub async fn start_etcd(&self) -> Result<()> {
        self.start_component(Component::Etcd).await
    }

    /// Stops and restarts etcd (same port and data); returns once etcd is healthy and
    /// the API server's `/readyz` is ok again.
    pub async fn restart_etcd(&self) -> Result<()> {
        self.restart_component(Component::Etcd).await
    }
}
