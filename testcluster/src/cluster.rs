//! The [`Cluster`] type: starting the control plane, waiting for it, its accessors,
//! and stopping it on drop.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::process::{self, Mode, Spawner};
use crate::{
    Component, NODE_NAME, Options, Ports, binaries, block_on, check_bin_dir, node, progress,
};

/// A running control plane. See the crate docs.
pub struct Cluster {
    pub(crate) dir: PathBuf,
    /// The temporary directory, deleted on drop (`None` when detached).
    pub(crate) temp: Mutex<Option<tempfile::TempDir>>,
    pub(crate) bin_dir: PathBuf,
    pub(crate) ports: Ports,
    pub(crate) api_url: String,
    pub(crate) opts: Options,
    pub(crate) mode: Mode,
    pub(crate) children: Mutex<BTreeMap<Component, Child>>,
    /// Whether dropping kills the children (false once a detached start succeeded).
    pub(crate) owns_children: bool,
    pub(crate) started: Instant,
    /// The real node (`Options::real_node`), torn down first by `shutdown`.
    pub(crate) node: Mutex<Option<std::sync::Arc<node::RealNode>>>,
    /// Pids started by `spawn_attached` (a real node's teardown stops them first).
    pub(crate) attached: Mutex<Vec<u32>>,
    // Dropped last: joined after the children are gone.
    pub(crate) spawner: Spawner,
}

impl Cluster {
    /// Starts a cluster in a fresh temporary directory and waits until it is usable.
    ///
    /// Blocking; fine to call from async tests (the waits run on a helper thread with
    /// their own runtime).
    pub fn start(opts: Options) -> Result<Cluster> {
        let temp = tempfile::Builder::new()
            .prefix("testcluster-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let dir = temp.path().to_owned();
        Cluster::start_in(dir, Some(temp), Mode::Attached, opts)
    }

    pub(crate) fn start_in(
        dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        mode: Mode,
        opts: Options,
    ) -> Result<Cluster> {
        let started = Instant::now();
        let bin_dir = match &opts.bin_dir {
            Some(d) => {
                check_bin_dir(d)?;
                d.clone()
            }
            None => binaries()?,
        };
        let ports = Ports::pick()?;
        let cluster = Cluster {
            api_url: format!("https://127.0.0.1:{}", ports.apiserver),
            dir,
            temp: Mutex::new(temp),
            bin_dir,
            ports,
            opts,
            mode,
            children: Mutex::new(BTreeMap::new()),
            owns_children: true,
            started,
            node: Mutex::new(None),
            attached: Mutex::new(Vec::new()),
            spawner: Spawner::new()?,
        };
        cluster.write_files()?;
        if cluster.opts.real_node {
            node::prepare(&cluster)?;
        }
        progress(
            started,
            format_args!("starting control plane in {}", cluster.dir.display()),
        );
        block_on(cluster.boot())?;
        if cluster.opts.real_node {
            block_on(node::start(&cluster))?;
        }
        progress(
            started,
            format_args!("cluster ready at {}", cluster.api_url),
        );
        Ok(cluster)
    }

    pub(crate) fn lock_children(&self) -> MutexGuard<'_, BTreeMap<Component, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn spawn(&self, c: Component) -> Result<()> {
        let mut cmd = self.command(c);
        process::configure(&mut cmd, self.mode, &self.log_path(c))?;
        let child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("starting {}", self.bin_dir.join(c.name()).display()))?;
        let mut children = self.lock_children();
        if let Some(mut old) = children.insert(c, child) {
            // Not expected (callers stop first), but never leak a process.
            let _ = old.kill();
            let _ = old.wait();
        }
        process::write_pids(&self.dir.join("pids"), &children)
    }

    /// Error (with its log's tail) if any component we started has exited.
    pub(crate) fn check_alive(&self) -> Result<()> {
        let mut children = self.lock_children();
        for (c, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let c = *c;
                children.remove(&c);
                bail!("{c} exited ({status})\n{}", self.log_excerpt(c));
            }
        }
        Ok(())
    }

    pub(crate) fn log_excerpt(&self, c: Component) -> String {
        let log = self.log_path(c);
        format!(
            "--- last lines of {} ---\n{}\n---",
            log.display(),
            process::log_tail(&log, 40)
        )
    }

    /// Polls `check` until it returns true, failing fast when a process dies and after
    /// `opts.timeout` with `blame`'s log.
    pub(crate) async fn wait_for<F, Fut>(
        &self,
        what: &str,
        blame: Component,
        mut check: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + self.opts.timeout;
        let mut last = None;
        loop {
            self.check_alive()
                .with_context(|| format!("while waiting for {what}"))?;
            match tokio::time::timeout(Duration::from_secs(5), check()).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow!("check timed out after 5s")),
            }
            if Instant::now() >= deadline {
                let last = last
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default();
                bail!(
                    "{what}: not ready after {:?}{last}\n{}",
                    self.opts.timeout,
                    self.log_excerpt(blame)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn boot(&self) -> Result<()> {
        let t0 = self.started;
        self.spawn(Component::Etcd)?;
        self.wait_etcd().await?;
        progress(t0, format_args!("etcd ready"));

        self.spawn(Component::ApiServer)?;
        let client = self.client().await?;
        self.wait_apiserver(&client).await?;
        progress(t0, format_args!("kube-apiserver ready at {}", self.api_url));

        self.spawn(Component::ControllerManager)?;
        self.spawn(Component::Scheduler)?;
        self.spawn(Component::Kwok)?;
        self.create_node(&client).await?;
        self.wait_for(
            "the ServiceAccount default/default (created by kube-controller-manager)",
            Component::ControllerManager,
            || service_account_exists(&client, "default"),
        )
        .await?;
        progress(t0, format_args!("kube-controller-manager working"));
        self.wait_for(
            &format!("node {NODE_NAME} to be Ready (kwok)"),
            Component::Kwok,
            || node_ready(&client),
        )
        .await?;
        progress(t0, format_args!("node {NODE_NAME} Ready"));
        Ok(())
    }

    pub(crate) async fn wait_etcd(&self) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.etcd_client));
        self.wait_for("etcd /health", Component::Etcd, || async move {
            etcd_healthy(addr)
        })
        .await
    }

    pub(crate) async fn wait_apiserver(&self, client: &kube::Client) -> Result<()> {
        self.wait_for("kube-apiserver /readyz", Component::ApiServer, || async {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let body = client.request_text(req).await?;
            Ok(body.trim() == "ok")
        })
        .await
    }

    pub(crate) async fn create_node(&self, client: &kube::Client) -> Result<()> {
        let node: Node = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": NODE_NAME,
                "annotations": {
                    "kwok.x-k8s.io/node": "fake",
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "type": "kwok",
                    "kubernetes.io/hostname": NODE_NAME,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                },
            },
            "status": {
                "allocatable": { "cpu": "32", "memory": "256Gi", "pods": "1000" },
                "capacity": { "cpu": "32", "memory": "256Gi", "pods": "1000" },
            },
        }))?;
        match Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(e).context("creating the kwok node"),
        }
    }

    // ----- accessors -----

    /// The cluster's state directory (PKI, kubeconfig, etcd data, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Admin kubeconfig (client certificate in `system:masters`, certs embedded).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// `https://127.0.0.1:<port>`.
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// PEM file of the CA that signed the API server's serving certificate and the
    /// admin client certificate.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.pki("ca.crt")
    }

    /// The log file of one component (stdout and stderr; restarts append).
    pub fn log_path(&self, c: Component) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", c.name()))
    }

    /// A new admin client for the caller's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = Kubeconfig::read_from(self.kubeconfig_path())?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// `kubectl --kubeconfig <admin kubeconfig> ARGS` (not yet run).
    pub fn kubectl<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(self.bin_dir.join("kubectl"));
        // Its discovery cache in the cluster's directory, not ~/.kube/cache (which
        // would keep one entry per cluster ever started).
        cmd.arg("--kubeconfig")
            .arg(self.kubeconfig_path())
            .arg("--cache-dir")
            .arg(self.dir.join("kube-cache"))
            .args(args);
        cmd
    }

    /// Starts another process (a webhook under test, say) tied to the cluster like its
    /// own components: stdout and stderr appended to `log`, and killed by the death
    /// signal when the cluster's spawner thread ends (for [`shared`](crate::shared), when the test
    /// process exits), so a failing test leaves no orphan. The caller owns the `Child`.
    pub fn spawn_attached(&self, mut cmd: Command, log: &Path) -> Result<Child> {
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        process::configure(&mut cmd, Mode::Attached, log)?;
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = self
            .spawner
            .spawn(cmd)
            .with_context(|| format!("starting {program}"))?;
        self.attached
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        Ok(child)
    }

    /// The API server's `gitVersion` (`v1.35.4` for the pinned build).
    pub async fn server_version(&self) -> Result<String> {
        Ok(self.client().await?.apiserver_version().await?.git_version)
    }

    /// Creates a namespace and waits for its `default` ServiceAccount (without it the
    /// ServiceAccount admission plugin rejects Pods).
    pub async fn create_namespace(&self, name: &str) -> Result<()> {
        let client = self.client().await?;
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({ "metadata": { "name": name } }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        self.wait_for(
            &format!("the ServiceAccount {name}/default"),
            Component::ControllerManager,
            || service_account_exists(&client, name),
        )
        .await
    }

    /// does). Set `TESTCLUSTER_KEEP_DIR=1` to keep the directory for its logs.
    pub(crate) fn shutdown(&self, grace: Duration) {
        // A real node first (needs the API server to delete its Pods), swept last.
        let node = self.node.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(n) = &node {
            node::drain(self, n, grace);
        }
        // etcd last, so the API server doesn't spend its shutdown retrying it.
        let (etcd, others): (Vec<(Component, Child)>, Vec<_>) =
            std::mem::take(&mut *self.lock_children())
                .into_iter()
                .partition(|(c, _)| *c == Component::Etcd);
        process::terminate_all(others, grace);
        process::terminate_all(etcd, grace);
        if let Some(n) = node {
            node::finish(n);
        }
        let temp = self.temp.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(temp) = temp
            && std::env::var_os("TESTCLUSTER_KEEP_DIR").is_some()
        {
            let kept = temp.keep();
            eprintln!("[testcluster] kept {}", kept.display());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.owns_children {
            self.shutdown(Duration::from_secs(10));
        }
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("api_url", &self.api_url)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

pub(crate) fn etcd_healthy(addr: SocketAddr) -> Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.starts_with("HTTP/1.") && resp.contains(r#""health":"true""#))
}

pub(crate) async fn service_account_exists(client: &kube::Client, ns: &str) -> Result<bool> {
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt("default")
        .await?
        .is_some())
}

pub(crate) async fn node_ready(client: &kube::Client) -> Result<bool> {
    let node = Api::<Node>::all(client.clone()).get_opt(NODE_NAME).await?;
    Ok(node
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
}
