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
pub mod node;
mod process;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::Api;
use kube::api::PostParams;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use bins::{
    BIN_ENV, REQUIRED_BINARIES, binaries, build_script, check_bin_dir, run_build_script,
};
pub use node::{
    BRIDGE, GUARD_TABLE, KWOK_TAINT, LOCK_PATH, NODE_DIR_ENV, NodeComponent, POD_CIDR,
    REAL_NODE_IP, REAL_NODE_LABEL, REAL_NODE_NAME, RealNodeInfo, SERVICE_CIDR, STATE_ROOT,
    cleanup_real_node, ctr, detached_node_pids, guard_drops, node_dir, real_node_leftovers,
};
pub use process::Component;
use process::{Mode, Spawner};

/// Name of the simulated node every cluster has.
pub const NODE_NAME: &str = "kwok-node-0";

/// kwok's default node and pod stages (Ready nodes with lease heartbeats; scheduled
/// Pods become Running at once).
const KWOK_STAGES: &str = include_str!("kwok-stages.yaml");

/// What [`Cluster::start`] needs to know; `Options::default()` is the usual choice.
#[derive(Clone, Debug)]
pub struct Options {
    /// Directory with the binaries; `None` means [`binaries()`].
    pub bin_dir: Option<PathBuf>,
    /// Upper bound for each readiness wait (etcd, API server, ServiceAccount, node).
    pub timeout: Duration,
    /// Extra kube-apiserver flags, appended after ours (a later flag wins), e.g.
    /// `--audit-log-path=...`.
    pub apiserver_args: Vec<String>,
    /// Also run a real node ([`REAL_NODE_NAME`]; needs root and `tests/node/build.sh`'s
    /// output, see [`node_dir`]). The kwok node stays, tainted [`KWOK_TAINT`].
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
    fn pick() -> Result<Ports> {
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

/// A running control plane. See the crate docs.
pub struct Cluster {
    dir: PathBuf,
    /// The temporary directory, deleted on drop (`None` when detached).
    temp: Mutex<Option<tempfile::TempDir>>,
    bin_dir: PathBuf,
    ports: Ports,
    api_url: String,
    opts: Options,
    mode: Mode,
    children: Mutex<BTreeMap<Component, Child>>,
    /// Whether dropping kills the children (false once a detached start succeeded).
    owns_children: bool,
    started: Instant,
    /// The real node (`Options::real_node`), torn down first by `shutdown`.
    node: Mutex<Option<std::sync::Arc<node::RealNode>>>,
    /// Pids started by `spawn_attached` (a real node's teardown stops them first).
    attached: Mutex<Vec<u32>>,
    // Dropped last: joined after the children are gone.
    spawner: Spawner,
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

    fn start_in(
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

    fn write_files(&self) -> Result<()> {
        for sub in [
            "pki",
            "logs",
            "etcd",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            std::fs::create_dir_all(self.dir.join(sub))?;
        }
        let pki = certs::generate()?;
        for (name, pem) in [
            ("ca.crt", &pki.ca_cert),
            ("ca.key", &pki.ca_key),
            ("apiserver.crt", &pki.serving_cert),
            ("apiserver.key", &pki.serving_key),
            ("admin.crt", &pki.admin_cert),
            ("admin.key", &pki.admin_key),
            ("front-proxy-ca.crt", &pki.front_proxy_ca_cert),
            ("front-proxy-client.crt", &pki.front_proxy_client_cert),
            ("front-proxy-client.key", &pki.front_proxy_client_key),
            ("sa.key", &pki.sa_key),
            ("sa.pub", &pki.sa_pub),
        ] {
            write_private(&self.pki(name), pem)?;
        }
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kubeconfig = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: testcluster\n  cluster:\n    server: {}\n    certificate-authority-data: {}\n\
             users:\n\
             - name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
             contexts:\n\
             - name: testcluster\n  context:\n    cluster: testcluster\n    user: admin\n\
             current-context: testcluster\n",
            self.api_url,
            b64(&pki.ca_cert),
            b64(&pki.admin_cert),
            b64(&pki.admin_key),
        );
        write_private(&self.kubeconfig_path(), &kubeconfig)?;
        // Our own kwok configuration (so no ~/.kwok/kwok.yaml leaks in) holding kwok's
        // default stages: the kwok binary has none built in and exits "no stages found".
        // No KwokConfiguration document: one from a file is not defaulted (kwok then
        // fails "node leases parallelism must be greater than 0"); without it kwok
        // uses its defaulted built-in options.
        write_private(&self.dir.join("kwok.yaml"), KWOK_STAGES)?;
        Ok(())
    }

    fn pki(&self, name: &str) -> PathBuf {
        self.dir.join("pki").join(name)
    }

    /// The command line of one component (ports and paths are fixed, so a restart runs
    /// the same command).
    fn command(&self, c: Component) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(c.name()));
        let p = &self.ports;
        let path = |p: PathBuf| p.display().to_string();
        let kubeconfig = path(self.kubeconfig_path());
        let etcd_client = format!("http://127.0.0.1:{}", p.etcd_client);
        let etcd_peer = format!("http://127.0.0.1:{}", p.etcd_peer);
        let args: Vec<String> = match c {
            Component::Etcd => vec![
                "--name=testcluster".into(),
                format!("--data-dir={}", path(self.dir.join("etcd"))),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=testcluster={etcd_peer}"),
                "--unsafe-no-fsync=true".into(),
            ],
            Component::ApiServer => {
                let mut a = vec![
                    "--bind-address=127.0.0.1".into(),
                    "--advertise-address=127.0.0.1".into(),
                    format!("--secure-port={}", p.apiserver),
                    format!("--etcd-servers={etcd_client}"),
                    format!("--tls-cert-file={}", path(self.pki("apiserver.crt"))),
                    format!("--tls-private-key-file={}", path(self.pki("apiserver.key"))),
                    format!("--client-ca-file={}", path(self.pki("ca.crt"))),
                    "--authorization-mode=Node,RBAC".into(),
                    format!("--service-account-issuer={}", self.api_url),
                    format!("--service-account-key-file={}", path(self.pki("sa.pub"))),
                    format!(
                        "--service-account-signing-key-file={}",
                        path(self.pki("sa.key"))
                    ),
                    "--service-cluster-ip-range=10.0.0.0/24".into(),
                    "--allow-privileged=true".into(),
                    // Aggregation layer (front proxy); routed to endpoints, as there is
                    // no kube-proxy.
                    format!(
                        "--requestheader-client-ca-file={}",
                        path(self.pki("front-proxy-ca.crt"))
                    ),
                    "--requestheader-allowed-names=front-proxy-client".into(),
                    "--requestheader-username-headers=X-Remote-User".into(),
                    "--requestheader-group-headers=X-Remote-Group".into(),
                    "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
                    format!(
                        "--proxy-client-cert-file={}",
                        path(self.pki("front-proxy-client.crt"))
                    ),
                    format!(
                        "--proxy-client-key-file={}",
                        path(self.pki("front-proxy-client.key"))
                    ),
                    "--enable-aggregator-routing=true".into(),
                    // Graceful shutdown in ~2 s instead of the request timeout (60 s):
                    // without it, open watches (controller-manager, scheduler, kwok) keep
                    // the HTTP server's Shutdown waiting, and restart_apiserver hits the
                    // SIGKILL deadline. Requests during shutdown get a Retry-After.
                    "--shutdown-send-retry-after=true".into(),
                ];
                if self.opts.real_node {
                    a.extend(node::apiserver_args(self));
                }
                a.extend(self.opts.apiserver_args.iter().cloned());
                a
            }
            Component::ControllerManager => vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                format!(
                    "--service-account-private-key-file={}",
                    path(self.pki("sa.key"))
                ),
                format!("--root-ca-file={}", path(self.pki("ca.crt"))),
                format!("--cluster-signing-cert-file={}", path(self.pki("ca.crt"))),
                format!("--cluster-signing-key-file={}", path(self.pki("ca.key"))),
                "--controllers=*".into(),
                "--use-service-account-credentials=true".into(),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", p.controller_manager),
                format!("--cert-dir={}", path(self.dir.join(c.name()))),
            ],
            Component::Scheduler => vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", p.scheduler),
                format!("--cert-dir={}", path(self.dir.join(c.name()))),
            ],
            Component::Kwok => vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--config={}", path(self.dir.join("kwok.yaml"))),
                "--manage-all-nodes=false".into(),
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake".into(),
                "--cidr=10.0.0.1/24".into(),
                "--node-ip=10.0.0.1".into(),
                "--node-lease-duration-seconds=40".into(),
            ],
        };
        cmd.args(args);
        cmd
    }

    fn lock_children(&self) -> MutexGuard<'_, BTreeMap<Component, Child>> {
        self.children.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, c: Component) -> Result<()> {
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
    fn check_alive(&self) -> Result<()> {
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

    fn log_excerpt(&self, c: Component) -> String {
        let log = self.log_path(c);
        format!(
            "--- last lines of {} ---\n{}\n---",
            log.display(),
            process::log_tail(&log, 40)
        )
    }

    /// Polls `check` until it returns true, failing fast when a process dies and after
    /// `opts.timeout` with `blame`'s log.
    async fn wait_for<F, Fut>(&self, what: &str, blame: Component, mut check: F) -> Result<()>
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

    async fn boot(&self) -> Result<()> {
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

    async fn wait_etcd(&self) -> Result<()> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.ports.etcd_client));
        self.wait_for("etcd /health", Component::Etcd, || async move {
            etcd_healthy(addr)
        })
        .await
    }

    async fn wait_apiserver(&self, client: &kube::Client) -> Result<()> {
        self.wait_for("kube-apiserver /readyz", Component::ApiServer, || async {
            let req = http::Request::get("/readyz").body(Vec::new())?;
            let body = client.request_text(req).await?;
            Ok(body.trim() == "ok")
        })
        .await
    }

    async fn create_node(&self, client: &kube::Client) -> Result<()> {
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
    /// signal when the cluster's spawner thread ends (for [`shared`], when the test
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

    // ----- fault injection -----

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

    /// Kills every process and removes the temporary directory (also what `Drop`
    /// does). Set `TESTCLUSTER_KEEP_DIR=1` to keep the directory for its logs.
    fn shutdown(&self, grace: Duration) {
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

// ----- the shared cluster -----

static SHARED: OnceLock<Result<Cluster, String>> = OnceLock::new();
static SHARED_REAL_NODE: OnceLock<Result<Cluster, String>> = OnceLock::new();

/// One cluster for the whole test binary, started on first use.
///
/// Never dropped: its spawner thread (see the crate docs) lives until the process
/// exits, so the children's death signal fires only then; an `atexit` hook also
/// terminates them and deletes the directory when the test harness exits normally.
/// Tests sharing it should use their own namespaces. Panics if the cluster can't start
/// (every later call panics with the same message, without retrying).
pub fn shared() -> &'static Cluster {
    match try_shared() {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    }
}

/// [`shared`] returning the startup error instead of panicking.
pub fn try_shared() -> Result<&'static Cluster> {
    start_shared(&SHARED, Options::default(), "the shared test cluster")
}

/// [`shared`] with a real node (`Options { real_node: true, .. }`): one per test
/// binary, torn down (node and host sweep included) by the same `atexit` hook. A
/// SIGKILLed binary leaves the node's containers behind; the next start sweeps them.
pub fn shared_real_node() -> &'static Cluster {
    let opts = Options {
        real_node: true,
        ..Options::default()
    };
    match start_shared(&SHARED_REAL_NODE, opts, "the shared real-node cluster") {
        Ok(c) => c,
        Err(e) => panic!("{e:#}"),
    }
}

fn start_shared(
    cell: &'static OnceLock<Result<Cluster, String>>,
    opts: Options,
    what: &str,
) -> Result<&'static Cluster> {
    let r = cell.get_or_init(|| match Cluster::start(opts) {
        Ok(c) => {
            static AT_EXIT: std::sync::Once = std::sync::Once::new();
            // SAFETY: registering a plain extern "C" fn.
            AT_EXIT.call_once(|| unsafe {
                libc::atexit(stop_shared_at_exit);
            });
            Ok(c)
        }
        Err(e) => Err(format!("starting {what} failed: {e:#}")),
    });
    r.as_ref().map_err(|e| anyhow!("{e}"))
}

extern "C" fn stop_shared_at_exit() {
    for cell in [&SHARED, &SHARED_REAL_NODE] {
        if let Some(Ok(c)) = cell.get() {
            c.shutdown(Duration::from_secs(5));
        }
    }
}

// ----- detached clusters (cargo xtask cluster up/down) -----

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
fn terminate_pids(pids: &[u32], marker: &str, grace: Duration) {
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

fn etcd_healthy(addr: SocketAddr) -> Result<bool> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    Ok(resp.starts_with("HTTP/1.") && resp.contains(r#""health":"true""#))
}

async fn service_account_exists(client: &kube::Client, ns: &str) -> Result<bool> {
    Ok(Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .get_opt("default")
        .await?
        .is_some())
}

async fn node_ready(client: &kube::Client) -> Result<bool> {
    let node = Api::<Node>::all(client.clone()).get_opt(NODE_NAME).await?;
    Ok(node
        .and_then(|n| n.status)
        .and_then(|s| s.conditions)
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")))
}
