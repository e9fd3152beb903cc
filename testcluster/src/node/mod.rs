//! A real node beside kwok: kubelet, containerd (with Debian's runc), CNI bridge,
//! kube-proxy and CoreDNS on this machine, joined to the cluster's control plane.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use testcluster::{Cluster, Options};
//! let cluster = Cluster::start(Options { real_node: true, ..Options::default() })?;
//! let node = cluster.real_node().expect("started with real_node");
//! let busybox = node.image("busybox").expect("in the node build"); // "busybox:1.35"
//! // ... Pods with nodeSelector {"tracehook.dev/real-node": "true"} (or no selector) ...
//! drop(cluster); // the whole teardown, host included
//! # Ok(()) }
//! ```
//!
//! It needs root and the binaries and image tarballs of `tests/node/build.sh` (run on
//! demand, see [`node_dir`]); a start that cannot bring the node up is an error.
//! Startup adds about 2 s to the control plane's (node Ready ≈ 1 s after the kubelet
//! starts); a busybox Pod is Ready about 2 s after it is applied.
//!
//! # Scheduling
//! The node is [`REAL_NODE_NAME`], labelled `tracehook.dev/real-node=true`
//! ([`REAL_NODE_LABEL`]). In a real-node cluster the kwok node is tainted
//! `tracehook.dev/kwok=true:NoSchedule` ([`KWOK_TAINT`]), so every Pod without a
//! toleration (a Deployment's, the reconciler's backend, the demo's HotROD) runs on the
//! real node; tests should still pin theirs with the label (or `nodeName`). Images are
//! only those imported from the node build ([`RealNodeInfo::images`], e.g.
//! `busybox:1.35`, `jaegertracing/jaeger:2.12.0`,
//! `otel/opentelemetry-collector-contrib:0.140.0`); every pull goes to
//! `http://127.0.0.1:9` and fails at once.
//!
//! # Network
//! Pods live on the bridge [`BRIDGE`] (`10.244.0.1/24`: the node IP, their gateway and
//! their DNS server) with routes only to their subnet and to the Service range
//! ([`SERVICE_CIDR`]), no masquerade, and the nft table `inet tracehook_guard`
//! ([`GUARD_TABLE`], counted by [`guard_drops`]) drops anything forwarded between the
//! bridge and another interface (and between two other interfaces: `ip_forward`, 1
//! while the node runs, must not make the host a router). CoreDNS answers `cluster.local` and NXDOMAIN for
//! everything else; nothing of the host's DNS reaches a Pod. Pods reach the API server
//! as in-cluster clients do, through the `kubernetes` Service (10.0.0.1:443), whose
//! endpoint is the node IP: the API server listens on every address and the guard's
//! input chain accepts its port only from loopback and the bridge.
//!
//! # One node per machine
//! The bridge, the kubelet's and kube-proxy's ports (10248, 10250, 10249, 10256), port
//! 53 on the bridge, `/var/lib/kubelet/device-plugins` and the iptables chains are
//! global, so a start takes an exclusive lock on [`LOCK_PATH`]: it **waits** (up to 10
//! minutes, printing the holder) while a node of another process runs, and **fails at
//! once** if a detached node holds it. All state is in [`STATE_ROOT`]; logs are in the
//! cluster's `logs/` (`containerd.log`, `kubelet.log`, `kube-proxy.log`, `coredns.log`,
//! `ctr-import.log`).
//!
//! # Teardown
//! Dropping the cluster tears the node down in this order: processes started with
//! [`Cluster::spawn_attached`] still running (a webhook's reconciler would recreate
//! Pods), then kube-controller-manager and kube-scheduler; all Pods deleted while the
//! kubelet runs; kube-proxy, CoreDNS, kubelet, containerd; the API server, kwok and
//! etcd; then the host sweep: leftover container processes, shims, `kube-proxy
//! --cleanup`, the kubelet's KUBE-* chains (v4 and v6), mounts under the state
//! directory, kubepods cgroups, veths, bridge, guard and kube-proxy tables, the
//! iptables-nft tables nobody had before, Pod conntrack entries, sysctls (`ip_forward`
//! and the kernel tunables the kubelet changes), the fixed paths the run created
//! (`/var/log/containers`, `/run/mount`, `/var/lib/kubelet`, `/var/lib/cni`), the state
//! directory. What to restore comes from a record written before the start changed
//! anything. If the owning process is SIGKILLed, the containers outlive it: the next
//! start sweeps them first, and so does [`cleanup_real_node`] (shell:
//! `testcluster-real-node cleanup`, or `cargo run -p testcluster --bin
//! testcluster-real-node -- cleanup`). [`real_node_leftovers`] (`testcluster-real-node
//! check`) lists what is on the host.
//!
//! # Detached (`cargo xtask cluster up --real-node`)
//! [`Cluster::start_detached`] with `real_node: true` leaves the node running too; its
//! processes hold the machine-wide lock (they inherit it) and are listed in
//! [`Detached::node_pids`](crate::Detached::node_pids) and `DIR/node-pids`
//! ([`detached_node_pids`]). [`stop_detached`](crate::stop_detached) recognises a
//! real-node directory and runs the same ordered teardown and sweep. For xtask:
//!
//! ```text
//! up:     Cluster::start_detached(&dir, Options { real_node, ..Options::default() })
//! status: testcluster::detached_node_pids(&dir)? (NodeComponent::ALL.len() when up)
//! down:   testcluster::stop_detached(&dir) (unchanged)
//! ```
//! `testcluster-real-node up DIR` / `down DIR` do the same from a shell.

mod host;
mod network;
mod teardown;
mod usage;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt as _};

pub use host::{LOCK_PATH, STATE_ROOT};
pub use network::{BRIDGE, GUARD_TABLE, NODE_IP as REAL_NODE_IP, POD_CIDR, SERVICE_CIDR};
pub use usage::{Usage, task_pid};

use crate::process::{self, Mode};
use crate::{Cluster, Component, progress, write_private};

/// The real node's name (`--hostname-override`).
pub const REAL_NODE_NAME: &str = "realnode-0";
/// Label on the real node (value `"true"`), for a nodeSelector.
pub const REAL_NODE_LABEL: &str = "tracehook.dev/real-node";
/// Taint key (value `"true"`, effect `NoSchedule`) on the kwok node of a real-node
/// cluster.
pub const KWOK_TAINT: &str = "tracehook.dev/kwok";
/// Environment variable naming the node build's output (with `bin/` and `images/`);
/// when unset, [`node_dir`] runs `tests/node/build.sh`.
pub const NODE_DIR_ENV: &str = "TRACEHOOK_NODE_DIR";

/// The kubelet's healthz port (127.0.0.1) and kube-proxy's healthz port (127.0.0.1).
const KUBELET_HEALTHZ: u16 = 10248;
const KUBE_PROXY_HEALTHZ: u16 = 10256;

/// Binaries the node runs from the node build's `bin/`.
const NODE_BINARIES: [&str; 10] = [
    "kubelet",
    "kube-proxy",
    "containerd",
    "ctr",
    "containerd-shim-runc-v2",
    "coredns",
    "bridge",
    "loopback",
    "host-local",
    "portmap",
];
/// Host programs it needs (Debian packages runc, iptables, nftables, iproute2, mount).
const HOST_PROGRAMS: [&str; 10] = [
    "runc",
    "iptables",
    "ip6tables",
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
    "ip6tables-restore",
    "nft",
    "ip",
    "mount",
];
/// containerd's runtime: Debian's runc (1.1.5 works on this kernel).
const RUNC: &str = "/usr/sbin/runc";
/// The sandbox image (`pinned_images.sandbox`), built as pause-3.10.tar.
const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// The node's CoreDNS Corefile (placeholders filled in at start).
const COREFILE: &str = include_str!("../../../tests/node/coredns/Corefile.example");

/// One process of the real node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NodeComponent {
    Containerd,
    CoreDns,
    Kubelet,
    KubeProxy,
}

impl NodeComponent {
    /// In start order.
    pub const ALL: [NodeComponent; 4] = [
        NodeComponent::Containerd,
        NodeComponent::CoreDns,
        NodeComponent::Kubelet,
        NodeComponent::KubeProxy,
    ];

    /// The binary's name (also the log file's stem and the `node-pids` key).
    pub fn name(self) -> &'static str {
        match self {
            NodeComponent::Containerd => "containerd",
            NodeComponent::CoreDns => "coredns",
            NodeComponent::Kubelet => "kubelet",
            NodeComponent::KubeProxy => "kube-proxy",
        }
    }

    pub fn from_name(name: &str) -> Option<NodeComponent> {
        NodeComponent::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for NodeComponent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What a cluster's real node offers ([`Cluster::real_node`]).
#[derive(Clone, Debug)]
pub struct RealNodeInfo {
    /// [`REAL_NODE_NAME`].
    pub name: &'static str,
    /// [`REAL_NODE_IP`].
    pub ip: Ipv4Addr,
    /// The node build's output directory (`bin/`, `images/`).
    pub node_dir: PathBuf,
    /// The imported images, as named in `images/images.tsv` (`busybox:1.35`,
    /// `jaegertracing/jaeger:2.12.0`, ...).
    pub images: Vec<String>,
    /// From the cluster's start until the node was Ready (and kube-proxy healthy).
    pub ready_after: Option<Duration>,
}

impl RealNodeInfo {
    /// The imported image whose repository is `repo` (`"busybox"` → `"busybox:1.35"`).
    pub fn image(&self, repo: &str) -> Option<&str> {
        self.images
            .iter()
            .map(String::as_str)
            .find(|i| i.rsplit_once(':').is_some_and(|(r, _)| r == repo))
    }
}

/// Runs `ctr -n k8s.io ARGS` against the real node's containerd (one per machine, up
/// attached or detached), e.g. `images import IMAGE.tar` or `images tag A B`: its
/// output, or an error with it.
pub fn ctr(args: &[&str]) -> Result<String> {
    let out = Command::new(node_dir()?.join("bin").join("ctr"))
        .arg("--address")
        .arg(state("containerd/containerd.sock"))
        .args(["-n", "k8s.io"])
        .args(args)
        .output()
        .context("running ctr")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("ctr {}: {text}", args.join(" "));
    }
    Ok(text)
}

/// Imports an image archive (`docker save` or OCI layout, linux/amd64) into the real
/// node's containerd, where the kubelet finds it without pulling.
pub fn import_image(tar: &Path) -> Result<String> {
    ctr(&[
        "images",
        "import",
        "--platform",
        "linux/amd64",
        &tar.display().to_string(),
    ])
}

/// The output directory of `tests/node/build.sh` (`bin/` and `images/`).
///
/// `$TRACEHOOK_NODE_DIR` if set; otherwise runs the script (about a second when its
/// cache is complete, a long build otherwise), taking the last line of its stdout.
/// Missing binaries or images are an error. Memoized for the process.
pub fn node_dir() -> Result<PathBuf> {
    static CACHE: Mutex<Option<PathBuf>> = Mutex::new(None);
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = cache.as_ref() {
        return Ok(dir.clone());
    }
    let dir = match std::env::var_os(NODE_DIR_ENV) {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => crate::bins::run_script(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/node/build.sh"),
            &[],
            &format!("Set {NODE_DIR_ENV} to a directory with the node's bin/ and images/"),
        )?,
    };
    let missing: Vec<&str> = NODE_BINARIES
        .iter()
        .copied()
        .filter(|b| !dir.join("bin").join(b).is_file())
        .collect();
    if !missing.is_empty() {
        bail!(
            "real-node binaries missing from {}/bin: {} (tests/node/build.sh builds them)",
            dir.display(),
            missing.join(", ")
        );
    }
    if !dir.join("images/images.tsv").is_file() {
        bail!(
            "{}/images/images.tsv is missing (tests/node/build.sh writes it)",
            dir.display()
        );
    }
    *cache = Some(dir.clone());
    Ok(dir)
}

/// The images of the node build: (tarball, image name), from `images/images.tsv`.
fn images(node_dir: &Path) -> Result<Vec<(PathBuf, String)>> {
    let tsv = node_dir.join("images/images.tsv");
    let text =
        std::fs::read_to_string(&tsv).with_context(|| format!("reading {}", tsv.display()))?;
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let mut cols = line.split('\t');
        let (Some(file), Some(name)) = (cols.next(), cols.next()) else {
            bail!("bad line in {}: {line:?}", tsv.display());
        };
        let path = node_dir.join("images").join(file);
        if !path.is_file() {
            bail!("{} lists {file}, which is missing", tsv.display());
        }
        out.push((path, name.to_owned()));
    }
    if !out.iter().any(|(_, n)| n == PAUSE_IMAGE) {
        bail!("{} has no {PAUSE_IMAGE} (the sandbox image)", tsv.display());
    }
    Ok(out)
}

/// Lists what a real node left on this host (empty when clean): the state directory,
/// node processes, container processes, mounts, kubepods cgroups, the bridge and its
/// veths, the guard and kube-proxy nft tables, KUBE-* chains, and (while a start's
/// record exists) changed sysctls.
pub fn real_node_leftovers() -> Vec<String> {
    teardown::leftovers()
}

/// Removes whatever a real node left on this host (after a SIGKILLed test, say): the
/// same sweep a start runs. Fails without touching anything if a node is running (the
/// machine-wide lock is held), unless `force`. Returns what it found (empty: the host
/// was clean). Shell: `cargo run -p testcluster --bin testcluster-real-node -- cleanup`.
pub fn cleanup_real_node(force: bool) -> Result<Vec<String>> {
    teardown::cleanup(force)
}

/// The packets the guard table dropped so far (both directions), from its counters.
pub fn guard_drops() -> Result<u64> {
    network::guard_drops()
}

/// Pids of a detached cluster's real node (`dir/node-pids`, live ones only).
pub fn detached_node_pids(dir: &Path) -> Result<Vec<(NodeComponent, u32)>> {
    let path = dir.join("node-pids");
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, pid) = line
            .split_once(' ')
            .with_context(|| format!("bad line {line:?} in {}", path.display()))?;
        let c = NodeComponent::from_name(name)
            .with_context(|| format!("unknown node component {name:?} in {}", path.display()))?;
        let pid: u32 = pid.trim().parse().context("bad pid")?;
        if process::is_ours(pid, STATE_ROOT) {
            out.push((c, pid));
        }
    }
    Ok(out)
}

/// The real node of one cluster (shared between the cluster and its start/teardown).
#[derive(Debug)]
pub(crate) struct RealNode {
    node_dir: PathBuf,
    images: Vec<(PathBuf, String)>,
    lock: Mutex<Option<host::NodeLock>>,
    children: Mutex<BTreeMap<NodeComponent, Child>>,
    /// `ctr images import` runs, started before the control plane boots.
    imports: Mutex<Vec<(String, Child)>>,
    coredns_health: u16,
    coredns_ready: u16,
    ready_after: Mutex<Option<Duration>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

fn state(sub: &str) -> PathBuf {
    host::root().join(sub)
}

/// `--kubelet-client-certificate/key` (a `system:masters` pair, so the kubelet's
/// webhook authorizer lets the API server read logs),
/// `--kubelet-preferred-address-types=InternalIP` (the node's name does not resolve),
/// and the addresses that let Pods reach the API server.
pub(crate) fn apiserver_args(cluster: &Cluster) -> Vec<String> {
    vec![
        format!(
            "--kubelet-client-certificate={}",
            path(&cluster.pki("apiserver-kubelet-client.crt"))
        ),
        format!(
            "--kubelet-client-key={}",
            path(&cluster.pki("apiserver-kubelet-client.key"))
        ),
        "--kubelet-preferred-address-types=InternalIP".into(),
        // Pods reach the API server through the `kubernetes` Service, whose endpoint is
        // the advertised address: the node IP on the bridge. The guard's input chain
        // refuses the port on every other interface.
        "--bind-address=0.0.0.0".into(),
        format!("--advertise-address={}", network::NODE_IP),
    ]
}

/// Before the control plane boots: checks, the lock, the sweep of an earlier run, the
/// record, certificates, the host network, containerd and the image imports.
pub(crate) fn prepare(cluster: &Cluster) -> Result<()> {
    let t0 = cluster.started;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("a real node needs root (bridge, nftables, mounts, cgroups)");
    }
    let missing: Vec<&str> = HOST_PROGRAMS
        .iter()
        .copied()
        .filter(|p| !host::have(p))
        .collect();
    if !missing.is_empty() {
        bail!(
            "a real node needs {} on this host (Debian packages runc, iptables, nftables, \
             iproute2, mount; tests/node/build.sh installs them)",
            missing.join(", ")
        );
    }
    if !Path::new(RUNC).is_file() {
        bail!("a real node runs {RUNC} (Debian package runc), which is missing");
    }
    let node_dir = node_dir()?;
    let images = images(&node_dir)?;

    let node_lock = host::NodeLock::acquire(host::LOCK_WAIT)?;
    node_lock.set_owner(&match cluster.mode {
        Mode::Detached => format!("detached {}", cluster.dir.display()),
        Mode::Attached => format!(
            "pid {} ({}), cluster {}",
            std::process::id(),
            std::env::args().next().unwrap_or_default(),
            cluster.dir.display()
        ),
    })?;
    let found = teardown::leftovers();
    if !found.is_empty() {
        eprintln!(
            "[testcluster] sweeping what an earlier real node left:\n  {}",
            found.join("\n  ")
        );
    }
    teardown::sweep().context("sweeping an earlier real node's leftovers")?;
    let left = teardown::leftovers();
    if !left.is_empty() {
        bail!(
            "an earlier real node's leftovers survived the sweep:\n  {}",
            left.join("\n  ")
        );
    }
    std::fs::create_dir_all(host::root())?;
    teardown::Record::capture(&node_dir.join("bin")).save()?;

    let node = Arc::new(RealNode {
        node_dir,
        images,
        lock: Mutex::new(Some(node_lock)),
        children: Mutex::new(BTreeMap::new()),
        imports: Mutex::new(Vec::new()),
        coredns_health: free_port()?,
        coredns_ready: free_port()?,
        ready_after: Mutex::new(None),
    });
    // From here on the cluster's teardown includes the node's.
    *lock(&cluster.node) = Some(node.clone());

    node.write_files(cluster)?;
    network::install_guard(cluster.ports.apiserver)?;
    network::create_bridge()?;
    host::write_sysctl("net/ipv4/ip_forward", "1")?;
    // Pod → ClusterIP → Pod on the same bridge needs the bridged reply to pass
    // conntrack (it is 1 on these hosts; restored from the record either way).
    if host::read_sysctl("net/bridge/bridge-nf-call-iptables").as_deref() == Some("0") {
        host::write_sysctl("net/bridge/bridge-nf-call-iptables", "1")?;
    }
    progress(
        t0,
        format_args!("real node: bridge {BRIDGE}, guard, ip_forward"),
    );

    node.spawn(cluster, NodeComponent::Containerd)?;
    node.wait_containerd(cluster)?;
    node.start_imports(cluster)?;
    progress(
        t0,
        format_args!("real node: containerd up, importing images"),
    );
    Ok(())
}

/// After the control plane is up: kwok's taint, CoreDNS, kubelet, kube-proxy; returns
/// once the node is Ready and kube-proxy healthy.
pub(crate) async fn start(cluster: &Cluster) -> Result<()> {
    let t0 = cluster.started;
    let node = lock(&cluster.node)
        .clone()
        .ok_or_else(|| anyhow!("the real node was not prepared"))?;
    let client = cluster.client().await?;
    taint_kwok(&client).await?;

    node.spawn(cluster, NodeComponent::CoreDns)?;
    node.finish_imports(cluster).await?;
    progress(t0, format_args!("real node: images imported"));
    let ready = SocketAddr::from(([127, 0, 0, 1], node.coredns_ready));
    node.wait(
        cluster,
        "CoreDNS /ready",
        NodeComponent::CoreDns,
        || async move { Ok(http_status(ready, "/ready")? == 200) },
    )
    .await?;
    progress(
        t0,
        format_args!("real node: CoreDNS ready on {REAL_NODE_IP}:53"),
    );

    node.spawn(cluster, NodeComponent::Kubelet)?;
    node.spawn(cluster, NodeComponent::KubeProxy)?;
    node.wait(
        cluster,
        &format!("node {REAL_NODE_NAME} to be Ready"),
        NodeComponent::Kubelet,
        || real_node_ready(&client),
    )
    .await?;
    progress(t0, format_args!("real node: {REAL_NODE_NAME} Ready"));
    let healthz = SocketAddr::from(([127, 0, 0, 1], KUBE_PROXY_HEALTHZ));
    node.wait(
        cluster,
        "kube-proxy /healthz",
        NodeComponent::KubeProxy,
        || async move { Ok(http_status(healthz, "/healthz")? == 200) },
    )
    .await?;
    *lock(&node.ready_after) = Some(t0.elapsed());
    progress(t0, format_args!("real node: kube-proxy healthy"));
    Ok(())
}

impl RealNode {
    fn bin(&self, name: &str) -> PathBuf {
        self.node_dir.join("bin").join(name)
    }

    fn write_files(&self, cluster: &Cluster) -> Result<()> {
        for d in [
            "pki",
            "containerd/certs.d/_default",
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "kubelet-pki",
            "pod-logs",
            "volume-plugins",
            "runc",
            "s",
        ] {
            std::fs::create_dir_all(state(d))?;
        }
        let ca_key = std::fs::read_to_string(cluster.pki("ca.key")).context("reading ca.key")?;
        let ca_cert = std::fs::read_to_string(cluster.pki("ca.crt")).context("reading ca.crt")?;
        let pki = crate::certs::node_pki(&ca_key, REAL_NODE_NAME, REAL_NODE_IP)?;
        write_private(
            &cluster.pki("apiserver-kubelet-client.crt"),
            &pki.apiserver_kubelet_client.0,
        )?;
        write_private(
            &cluster.pki("apiserver-kubelet-client.key"),
            &pki.apiserver_kubelet_client.1,
        )?;
        write_private(&state("pki/ca.crt"), &ca_cert)?;
        write_private(&state("pki/kubelet.crt"), &pki.kubelet_serving.0)?;
        write_private(&state("pki/kubelet.key"), &pki.kubelet_serving.1)?;
        let server = cluster.api_url();
        write_private(
            &state("kubelet.kubeconfig"),
            &kubeconfig(server, &ca_cert, &pki.kubelet_client),
        )?;
        write_private(
            &state("kube-proxy.kubeconfig"),
            &kubeconfig(server, &ca_cert, &pki.kube_proxy_client),
        )?;

        let sock = path(&state("containerd/containerd.sock"));
        let toml = format!(
            r#"# testcluster's real node (see testcluster/src/node/mod.rs).
version = 4
root = "{root}"
state = "{state_dir}"
imports = []

[plugins.'io.containerd.server.v1.grpc']
  address = "{sock}"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "{sock}.ttrpc"
[plugins.'io.containerd.server.v1.debug']
  address = ""
[plugins.'io.containerd.server.v1.metrics']
  address = ""
# Not /opt/containerd, /run/containerd/s, /run/nri: nothing outside the state dir.
[plugins.'io.containerd.internal.v1.opt']
  path = "{opt}"
[plugins.'io.containerd.shim.v1.manager']
  socket_dir = "{shim_sockets}"
[plugins.'io.containerd.nri.v1.nri']
  disable = true

[plugins.'io.containerd.cri.v1.runtime']
  # No CAP_SYS_RESOURCE here: without this runc cannot lower oom_score_adj and every
  # sandbox fails ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "{RUNC}"
        Root = "{runc_root}"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{cni_bin}"]
    conf_dir = "{cni_conf}"
    max_conf_num = 1

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "{certs_d}"

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
"#,
            root = path(&state("containerd/root")),
            state_dir = path(&state("containerd/state")),
            opt = path(&state("containerd/opt")),
            shim_sockets = path(&state("s")),
            runc_root = path(&state("runc")),
            cni_bin = path(&self.node_dir.join("bin")),
            cni_conf = path(&state("cni/net.d")),
            certs_d = path(&state("containerd/certs.d")),
        );
        std::fs::write(state("containerd/config.toml"), toml)?;
        // Every registry, whatever the image's host: a closed loopback port, so a
        // missing image fails at once and no pull ever leaves the machine.
        std::fs::write(
            state("containerd/certs.d/_default/hosts.toml"),
            "server = \"http://127.0.0.1:9\"\n\n\
             [host.\"http://127.0.0.1:9\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
        )?;
        std::fs::write(
            state("cni/net.d/10-tracehook.conflist"),
            serde_json::to_vec_pretty(&network::cni_conflist(&path(&state("cni/ipam"))))?,
        )?;

        let corefile = COREFILE
            .replace("@ADDR@", &REAL_NODE_IP.to_string())
            .replace("@PORT@", "53")
            .replace("@KUBECONFIG@", &path(&cluster.kubeconfig_path()))
            .replace("@HEALTH@", &format!("127.0.0.1:{}", self.coredns_health))
            .replace("@READY@", &format!("127.0.0.1:{}", self.coredns_ready));
        std::fs::write(state("Corefile"), corefile)?;
        // Empty: nothing of the host's resolvers reaches a Pod.
        std::fs::write(state("resolv.conf"), "")?;

        let kubelet = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": false,
            "cgroupDriver": "cgroupfs",
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{sock}"),
            "address": REAL_NODE_IP.to_string(),
            "port": 10250,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": KUBELET_HEALTHZ,
            "tlsCertFile": path(&state("pki/kubelet.crt")),
            "tlsPrivateKeyFile": path(&state("pki/kubelet.key")),
            "rotateCertificates": false,
            "serverTLSBootstrap": false,
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": true },
                "x509": { "clientCAFile": path(&state("pki/ca.crt")) },
            },
            "authorization": { "mode": "Webhook" },
            "clusterDomain": "cluster.local",
            "clusterDNS": [REAL_NODE_IP.to_string()],
            "resolvConf": path(&state("resolv.conf")),
            "podLogsDir": path(&state("pod-logs")),
            // Not /usr/libexec/kubernetes/kubelet-plugins/volume/exec (it creates it).
            "volumePluginDir": path(&state("volume-plugins")),
            "staticPodPath": "",
            // Never collect the imported images (nothing could pull them back).
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "maxPods": 110,
            // Its default, -999, needs CAP_SYS_RESOURCE.
            "oomScoreAdj": 0,
            "shutdownGracePeriod": "0s",
        });
        std::fs::write(
            state("kubelet-config.json"),
            serde_json::to_vec_pretty(&kubelet)?,
        )?;

        let kube_proxy = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": { "kubeconfig": path(&state("kube-proxy.kubeconfig")) },
            "hostnameOverride": REAL_NODE_NAME,
            "mode": "nftables",
            // Not a listener: overrides the node IP kube-proxy would take from the Node.
            "bindAddress": REAL_NODE_IP.to_string(),
            "healthzBindAddress": format!("127.0.0.1:{KUBE_PROXY_HEALTHZ}"),
            "metricsBindAddress": "127.0.0.1:10249",
            "nodePortAddresses": [format!("{REAL_NODE_IP}/32")],
            "clusterCIDR": POD_CIDR,
            "oomScoreAdj": 0,
            // Zero means "leave the host's value": the defaults (24 h, 1 h) would
            // change global conntrack sysctls.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
                "udpTimeout": "0s",
                "udpStreamTimeout": "0s",
            },
            "iptables": { "localhostNodePorts": false },
        });
        std::fs::write(
            state("kube-proxy-config.json"),
            serde_json::to_vec_pretty(&kube_proxy)?,
        )?;
        Ok(())
    }

    fn command(&self, c: NodeComponent) -> Command {
        let mut cmd = Command::new(self.bin(c.name()));
        // containerd finds its shim on PATH; the kubelet runs iptables, mount, ...
        cmd.env(
            "PATH",
            format!(
                "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                path(&self.node_dir.join("bin"))
            ),
        );
        let args: Vec<String> = match c {
            NodeComponent::Containerd => {
                vec!["--config".into(), path(&state("containerd/config.toml"))]
            }
            NodeComponent::CoreDns => vec!["-conf".into(), path(&state("Corefile"))],
            NodeComponent::Kubelet => vec![
                format!("--config={}", path(&state("kubelet-config.json"))),
                format!("--kubeconfig={}", path(&state("kubelet.kubeconfig"))),
                format!("--hostname-override={REAL_NODE_NAME}"),
                format!("--node-ip={REAL_NODE_IP}"),
                format!("--root-dir={}", path(&state("kubelet"))),
                format!("--cert-dir={}", path(&state("kubelet-pki"))),
                format!("--node-labels={REAL_NODE_LABEL}=true"),
                "--v=1".into(),
            ],
            NodeComponent::KubeProxy => vec![
                format!("--config={}", path(&state("kube-proxy-config.json"))),
                "--v=1".into(),
            ],
        };
        cmd.args(args);
        cmd
    }

    fn spawn(&self, cluster: &Cluster, c: NodeComponent) -> Result<()> {
        let mut cmd = self.command(c);
        process::configure(&mut cmd, cluster.mode, &cluster.node_log_path(c))?;
        if cluster.mode == Mode::Detached
            && let Some(fd) = lock(&self.lock).as_ref().map(|l| l.fd())
        {
            // A detached node holds the machine-wide lock through its own processes:
            // they inherit the locked descriptor (cleared close-on-exec in the child
            // only).
            // SAFETY: fcntl is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cluster
            .spawner
            .spawn(cmd)
            .with_context(|| format!("starting {}", self.bin(c.name()).display()))?;
        let mut children = lock(&self.children);
        if let Some(mut old) = children.insert(c, child) {
            let _ = old.kill();
            let _ = old.wait();
        }
        let text: String = children
            .iter()
            .map(|(c, child)| format!("{} {}\n", c.name(), child.id()))
            .collect();
        std::fs::write(cluster.dir.join("node-pids"), text)?;
        Ok(())
    }

    /// Error (with its log's tail) if a node process has exited.
    fn check_alive(&self, cluster: &Cluster) -> Result<()> {
        let mut children = lock(&self.children);
        for (c, child) in children.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                let log = cluster.node_log_path(*c);
                bail!(
                    "{c} exited ({status})\n--- last lines of {} ---\n{}\n---",
                    log.display(),
                    process::log_tail(&log, 40)
                );
            }
        }
        drop(children);
        cluster.check_alive()
    }

    /// Polls `check` until true; fails when a process dies or after the cluster's
    /// timeout, with `blame`'s log.
    async fn wait<F, Fut>(
        &self,
        cluster: &Cluster,
        what: &str,
        blame: NodeComponent,
        mut check: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool>>,
    {
        let deadline = Instant::now() + cluster.opts.timeout;
        let mut last = None;
        loop {
            self.check_alive(cluster)
                .with_context(|| format!("while waiting for {what}"))?;
            match tokio::time::timeout(Duration::from_secs(5), check()).await {
                Ok(Ok(true)) => return Ok(()),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => last = Some(e),
                Err(_) => last = Some(anyhow!("check timed out after 5s")),
            }
            if Instant::now() >= deadline {
                let log = cluster.node_log_path(blame);
                bail!(
                    "{what}: not ready after {:?}{}\n--- last lines of {} ---\n{}\n---",
                    cluster.opts.timeout,
                    last.map(|e| format!(" (last error: {e:#})"))
                        .unwrap_or_default(),
                    log.display(),
                    process::log_tail(&log, 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn ctr(&self) -> Command {
        let mut cmd = Command::new(self.bin("ctr"));
        cmd.arg("--address")
            .arg(state("containerd/containerd.sock"))
            .args(["-n", "k8s.io"]);
        cmd
    }

    fn wait_containerd(&self, cluster: &Cluster) -> Result<()> {
        let deadline = Instant::now() + cluster.opts.timeout;
        loop {
            self.check_alive(cluster)
                .context("while waiting for containerd")?;
            let ok = self
                .ctr()
                .arg("version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let log = cluster.node_log_path(NodeComponent::Containerd);
                bail!(
                    "containerd did not answer on its socket after {:?}\n{}",
                    cluster.opts.timeout,
                    process::log_tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn start_imports(&self, cluster: &Cluster) -> Result<()> {
        let log = cluster.dir.join("logs").join("ctr-import.log");
        let mut imports = lock(&self.imports);
        for (tar, name) in &self.images {
            let mut cmd = self.ctr();
            cmd.args(["images", "import", "--platform", "linux/amd64"])
                .arg(tar);
            // Attached even for a detached cluster: the imports end before the start.
            process::configure(&mut cmd, Mode::Attached, &log)?;
            let child = cluster
                .spawner
                .spawn(cmd)
                .with_context(|| format!("importing {}", tar.display()))?;
            imports.push((name.clone(), child));
        }
        Ok(())
    }

    async fn finish_imports(&self, cluster: &Cluster) -> Result<()> {
        let deadline = Instant::now() + cluster.opts.timeout;
        while !self.imports_done(cluster)? {
            if Instant::now() >= deadline {
                bail!("image imports not done after {:?}", cluster.opts.timeout);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// Reaps finished imports; true when none is left, an error if one failed.
    fn imports_done(&self, cluster: &Cluster) -> Result<bool> {
        let mut imports = lock(&self.imports);
        let mut i = 0;
        while i < imports.len() {
            match imports[i].1.try_wait()? {
                Some(status) if status.success() => {
                    imports.remove(i);
                }
                Some(status) => {
                    let log = cluster.dir.join("logs").join("ctr-import.log");
                    bail!(
                        "importing {} failed ({status})\n{}",
                        imports[i].0,
                        process::log_tail(&log, 20)
                    );
                }
                None => i += 1,
            }
        }
        Ok(imports.is_empty())
    }

    /// Stops the node's processes in teardown order (kube-proxy, CoreDNS, kubelet,
    /// containerd), each SIGTERM then SIGKILL after `grace`.
    fn stop_processes(&self, grace: Duration) {
        let mut children = std::mem::take(&mut *lock(&self.children));
        for c in [
            NodeComponent::KubeProxy,
            NodeComponent::CoreDns,
            NodeComponent::Kubelet,
            NodeComponent::Containerd,
        ] {
            if let Some(child) = children.remove(&c) {
                process::terminate_all(vec![(c, child)], grace);
            }
        }
        for (_, mut child) in std::mem::take(&mut *lock(&self.imports)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Cluster {
    /// The real node, if this cluster has one (`Options::real_node`).
    pub fn real_node(&self) -> Option<RealNodeInfo> {
        let node = lock(&self.node).clone()?;
        Some(RealNodeInfo {
            name: REAL_NODE_NAME,
            ip: REAL_NODE_IP,
            node_dir: node.node_dir.clone(),
            images: node.images.iter().map(|(_, n)| n.clone()).collect(),
            ready_after: *lock(&node.ready_after),
        })
    }

    /// The log file of one of the real node's processes.
    pub fn node_log_path(&self, c: NodeComponent) -> PathBuf {
        self.dir.join("logs").join(format!("{}.log", c.name()))
    }
}

/// The first half of a real node's teardown, while the control plane still runs:
/// processes that recreate Pods, kube-controller-manager and kube-scheduler stopped;
/// every Pod deleted (the kubelet stops the containers, CNI DEL frees veths and IPs);
/// kube-proxy, CoreDNS, kubelet and containerd stopped. Best effort: what fails here,
/// [`finish`]'s sweep removes.
pub(crate) fn drain(cluster: &Cluster, node: &RealNode, grace: Duration) {
    let t0 = Instant::now();
    stop_attached(cluster);
    let recreators: Vec<(Component, Child)> = {
        let mut children = cluster.lock_children();
        [Component::ControllerManager, Component::Scheduler]
            .into_iter()
            .filter_map(|c| children.remove(&c).map(|child| (c, child)))
            .collect()
    };
    process::terminate_all(recreators, grace);
    let kubeconfig = cluster.kubeconfig_path();
    let kubelet_runs = lock(&node.children)
        .get_mut(&NodeComponent::Kubelet)
        .is_some_and(|k| matches!(k.try_wait(), Ok(None)));
    if let Err(e) = crate::block_on(delete_all_pods(&kubeconfig, kubelet_runs)) {
        eprintln!("[testcluster] deleting the real node's Pods: {e:#}");
    }
    node.stop_processes(grace);
    progress(t0, format_args!("real node drained"));
}

/// The second half, after the control plane stopped: the host sweep, then the lock.
pub(crate) fn finish(node: Arc<RealNode>) {
    let t0 = Instant::now();
    // Processes started in the meantime (none expected) would hold nothing: stop all.
    node.stop_processes(Duration::from_secs(2));
    if let Err(e) = teardown::sweep() {
        eprintln!("[testcluster] {e:#}");
    }
    let left = teardown::leftovers();
    if !left.is_empty() {
        eprintln!(
            "[testcluster] the real node left (run `testcluster-real-node cleanup`):\n  {}",
            left.join("\n  ")
        );
    }
    if let Some(l) = lock(&node.lock).take() {
        l.release();
    }
    progress(t0, format_args!("real node swept"));
}

/// SIGTERMs (SIGKILL after 5 s) the processes started with `spawn_attached` that still
/// run as our children: a webhook's reconciler recreates what the teardown deletes.
/// They would die with the cluster's spawner thread a moment later anyway.
fn stop_attached(cluster: &Cluster) {
    let me = std::process::id();
    let pids: Vec<u32> = std::mem::take(&mut *lock(&cluster.attached))
        .into_iter()
        .filter(|pid| {
            host::processes()
                .iter()
                .any(|p| p.pid == *pid && p.ppid == me && p.state != 'Z')
        })
        .collect();
    for pid in &pids {
        host::kill(*pid, libc::SIGTERM);
    }
    for pid in host::wait_gone(&pids, Duration::from_secs(5)) {
        host::kill(pid, libc::SIGKILL);
    }
}

async fn taint_kwok(client: &kube::Client) -> Result<()> {
    let patch = serde_json::json!({
        "spec": { "taints": [{ "key": KWOK_TAINT, "value": "true", "effect": "NoSchedule" }] },
    });
    Api::<Node>::all(client.clone())
        .patch(
            crate::NODE_NAME,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .context("tainting the kwok node")?;
    Ok(())
}

async fn real_node_ready(client: &kube::Client) -> Result<bool> {
    let Some(node) = Api::<Node>::all(client.clone())
        .get_opt(REAL_NODE_NAME)
        .await?
    else {
        return Ok(false);
    };
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    // The node lifecycle controller removes the not-ready taint a moment after Ready;
    // until then nothing schedules.
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == "node.kubernetes.io/not-ready"));
    Ok(ready && !tainted)
}

/// Deletes every Pod (grace 1 s) and, if the kubelet runs, waits up to 60 s until none
/// is left on the real node, then up to 10 s for the bridge's veths to go. Without a
/// kubelet the Pods are deleted at once (grace 0); the sweep stops their containers.
async fn delete_all_pods(kubeconfig: &Path, kubelet_runs: bool) -> Result<()> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig)?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await?;
    let client = kube::Client::try_from(config)?;
    let all: Api<Pod> = Api::all(client.clone());
    let dp = DeleteParams {
        grace_period_seconds: Some(if kubelet_runs { 1 } else { 0 }),
        ..DeleteParams::default()
    };
    for pod in all.list(&ListParams::default()).await? {
        let ns = pod.namespace().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api.delete(&pod.name_any(), &dp).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e).context("deleting a Pod"),
        }
    }
    if !kubelet_runs {
        return Ok(());
    }
    let on_node = ListParams::default().fields(&format!("spec.nodeName={REAL_NODE_NAME}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = all.list(&on_node).await?;
        if left.items.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!(
                "Pods still on {REAL_NODE_NAME} after 60 s: {:?}",
                left.items.iter().map(|p| p.name_any()).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !network::bridge_ports().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The real-node part of `stop_detached`: if `dir` is a detached cluster with a real
/// node, stops what recreates Pods, deletes the Pods, stops the node's processes, and
/// returns how many were running. `None` if it has no node.
pub(crate) fn stop_detached_node(
    dir: &Path,
    live: &[(Component, u32)],
    marker: &str,
) -> Option<usize> {
    if !dir.join("node-pids").exists() {
        return None;
    }
    let recreators: Vec<u32> = live
        .iter()
        .filter(|(c, _)| matches!(c, Component::ControllerManager | Component::Scheduler))
        .map(|(_, pid)| *pid)
        .collect();
    crate::terminate_pids(&recreators, marker, Duration::from_secs(10));
    let node = detached_node_pids(dir).unwrap_or_default();
    let kubelet_runs = node.iter().any(|(c, _)| *c == NodeComponent::Kubelet);
    if let Err(e) = crate::block_on(delete_all_pods(&dir.join("kubeconfig"), kubelet_runs)) {
        eprintln!("[testcluster] deleting the real node's Pods: {e:#}");
    }
    for c in [
        NodeComponent::KubeProxy,
        NodeComponent::CoreDns,
        NodeComponent::Kubelet,
        NodeComponent::Containerd,
    ] {
        let pids: Vec<u32> = node
            .iter()
            .filter(|(n, _)| *n == c)
            .map(|(_, p)| *p)
            .collect();
        crate::terminate_pids(&pids, STATE_ROOT, Duration::from_secs(10));
    }
    Some(node.len())
}

/// The host sweep after a detached node's control plane stopped, under the lock (free
/// now that the node's processes are gone). If another node holds it (this one had
/// died and a test started its own), nothing is swept.
pub(crate) fn sweep_detached(marker: &str) -> Result<()> {
    let lock = host::NodeLock::try_acquire()?;
    if lock.is_none() && host::lock_owner() != format!("detached {marker}") {
        eprintln!(
            "[testcluster] not sweeping the host: another real node runs ({})",
            host::lock_owner()
        );
        return Ok(());
    }
    let swept = teardown::sweep();
    if let Some(l) = lock {
        l.release();
    }
    swept?;
    let left = teardown::leftovers();
    if !left.is_empty() {
        bail!("the real node left:\n  {}", left.join("\n  "));
    }
    Ok(())
}

fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("picking a free port")?;
    Ok(l.local_addr()?.port())
}

/// The status code of `GET path` over plain HTTP/1.0.
fn http_status(addr: SocketAddr, path: &str) -> Result<u16> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    resp.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from {addr}{path}"))
}

/// A kubeconfig with the certificates embedded.
fn kubeconfig(server: &str, ca_pem: &str, (cert, key): &(String, String)) -> String {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: testcluster\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
         users:\n\
         - name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n\
         - name: testcluster\n  context:\n    cluster: testcluster\n    user: node\n\
         current-context: testcluster\n",
        b64(ca_pem),
        b64(cert),
        b64(key),
    )
}
