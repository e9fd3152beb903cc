//! The real node (`Options { real_node: true, .. }`): Pods run, logs, DNS and Services
//! work, Pod traffic stays on the machine, and nothing is left on the host, neither
//! after a normal teardown nor after the owning process is SIGKILLed.
//!
//! Needs root and the output of tests/node/build.sh (run on demand); fails, never
//! skips, when the node cannot start. One real node per machine: the tests take turns
//! (a mutex here, the machine-wide lock across processes).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use testcluster::{BRIDGE, Cluster, GUARD_TABLE, Options, REAL_NODE_NAME, STATE_ROOT};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn real_node_options() -> Options {
    Options {
        real_node: true,
        ..Options::default()
    }
}

// ----- kubectl helpers -----

fn kubectl(cluster: &Cluster, args: &[&str]) -> Result<Output> {
    Ok(cluster.kubectl(args).stdin(Stdio::null()).output()?)
}

fn kubectl_ok(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let out = kubectl(cluster, args)?;
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn apply(cluster: &Cluster, docs: &[serde_json::Value]) -> Result<()> {
    let mut child = cluster
        .kubectl(["apply", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": docs });
    child
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(list.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "kubectl apply failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn wait_ready(cluster: &Cluster, ns: &str, pods: &[&str]) -> Result<()> {
    let mut args = vec!["wait", "-n", ns, "--for=condition=Ready", "--timeout=120s"];
    let names: Vec<String> = pods.iter().map(|p| format!("pod/{p}")).collect();
    args.extend(names.iter().map(String::as_str));
    let out = kubectl(cluster, &args)?;
    if !out.status.success() {
        let describe = kubectl(cluster, &["describe", "pods", "-n", ns])?;
        bail!(
            "Pods {pods:?} not Ready: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&describe.stdout)
        );
    }
    Ok(())
}

/// `kubectl exec` in the Pod's only container: (success, stdout + stderr).
fn exec(cluster: &Cluster, ns: &str, pod: &str, cmd: &[&str]) -> Result<(bool, String)> {
    let mut args = vec!["exec", "-n", ns, pod, "--"];
    args.extend_from_slice(cmd);
    let out = kubectl(cluster, &args)?;
    Ok((
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    ))
}

/// A busybox Pod pinned to the real node.
fn busybox_pod(cluster: &Cluster, ns: &str, name: &str, script: &str) -> Result<serde_json::Value> {
    let info = cluster
        .real_node()
        .context("the cluster has no real node")?;
    let image = info
        .image("busybox")
        .context("no busybox image in the node build")?;
    Ok(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": ns, "labels": { "app": name } },
        "spec": {
            "nodeSelector": { testcluster::REAL_NODE_LABEL: "true" },
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "main",
                "image": image,
                "command": ["sh", "-c", script],
            }],
        },
    }))
}

// ----- host state -----

fn cmd(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|e| format!("<{program} failed: {e}>"))
}

/// Everything a real node could leave on the host, read independently of the library.
#[derive(Debug, PartialEq, Eq)]
struct HostState {
    links: Vec<String>,
    bridges: Vec<String>,
    veths: Vec<String>,
    /// iptables-save and ip6tables-save: chain declarations and rules, counters dropped.
    iptables: Vec<String>,
    nft_tables: Vec<String>,
    /// `nft list ruleset` with counters dropped.
    nft_ruleset: Vec<String>,
    mounts: Vec<String>,
    cgroups: Vec<String>,
    sysctls: Vec<String>,
    paths: Vec<String>,
    processes: Vec<String>,
}

const SYSCTLS: [&str; 10] = [
    "net.ipv4.ip_forward",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.conf.all.route_localnet",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
];

const PATHS: [&str; 11] = [
    STATE_ROOT,
    testcluster::LOCK_PATH,
    "/run/containerd",
    "/var/lib/containerd",
    "/var/lib/kubelet",
    "/var/log/containers",
    "/var/log/pods",
    "/run/mount",
    "/var/lib/cni",
    "/etc/cni",
    "/opt/containerd",
];

fn link_names(kind: &str) -> Vec<String> {
    cmd("ip", &["-o", "link", "show", "type", kind])
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect()
}

fn host_state() -> HostState {
    let mut iptables = Vec::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        for line in cmd(tool, &[]).lines() {
            if line.starts_with('#') {
                continue;
            }
            // ":CHAIN POLICY [packets:bytes]" → without the counters.
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            iptables.push(format!("{tool}: {line}"));
        }
    }
    let mounts = std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let mp = l.split(' ').nth(1).unwrap_or_default();
            mp.starts_with(STATE_ROOT)
                || mp.starts_with("/run/containerd")
                || mp.starts_with("/var/lib/kubelet")
                || mp.starts_with("/run/netns")
        })
        .map(str::to_owned)
        .collect();
    let cgroups = std::fs::read_dir("/sys/fs/cgroup")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path().join("kubepods"))
                .filter(|p| p.exists())
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    let sysctls = SYSCTLS
        .iter()
        .map(|s| {
            let path = Path::new("/proc/sys").join(s.replace('.', "/"));
            format!(
                "{s} = {}",
                std::fs::read_to_string(path).unwrap_or_default().trim()
            )
        })
        .collect();
    let paths = PATHS
        .iter()
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| (*p).to_owned())
        .collect();
    HostState {
        links: cmd("ip", &["-o", "link", "show"])
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            .collect(),
        bridges: link_names("bridge"),
        veths: link_names("veth"),
        iptables,
        nft_tables: cmd("nft", &["list", "tables"])
            .lines()
            .map(str::to_owned)
            .collect(),
        nft_ruleset: cmd("nft", &["list", "ruleset"])
            .lines()
            .map(without_counters)
            .collect(),
        mounts,
        cgroups,
        sysctls,
        paths,
        processes: node_processes(),
    }
}

/// `counter packets N bytes M` → `counter`.
fn without_counters(line: &str) -> String {
    match line.find("counter packets ") {
        Some(i) => {
            let rest = &line[i + "counter packets ".len()..];
            // Skip "N bytes M".
            let tail: Vec<&str> = rest.splitn(4, ' ').collect();
            format!("{}counter {}", &line[..i], tail.get(3).unwrap_or(&""))
        }
        None => line.to_owned(),
    }
}

/// Live processes of a node: the daemons and shims (their command lines mention the
/// state directory) and anything in the kubepods cgroups.
fn node_processes() -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
        let daemon = ["kubelet", "kube-proxy", "coredns", "containerd", "ctr"]
            .iter()
            .any(|d| comm.starts_with(d));
        let is_node = (daemon && cmdline.contains(STATE_ROOT)) || cgroup.contains("/kubepods");
        if is_node {
            out.push(format!("{pid}: {cmdline}"));
        }
    }
    out
}

fn assert_same(before: &HostState, after: &HostState) {
    let mut diffs = Vec::new();
    macro_rules! cmp {
        ($($f:ident),*) => {$(
            if before.$f != after.$f {
                let gone: Vec<_> = before.$f.iter().filter(|x| !after.$f.contains(x)).collect();
                let new: Vec<_> = after.$f.iter().filter(|x| !before.$f.contains(x)).collect();
                diffs.push(format!("{}: now also {new:#?}, no longer {gone:#?}", stringify!($f)));
            }
        )*};
    }
    cmp!(
        links,
        bridges,
        veths,
        iptables,
        nft_tables,
        nft_ruleset,
        mounts,
        cgroups,
        sysctls,
        paths,
        processes
    );
    assert!(
        diffs.is_empty(),
        "the host is not as before the real node:\n{}",
        diffs.join("\n")
    );
}

/// A host without a real node: whatever an earlier (killed) run left is swept first,
/// so the baseline is the host's own state.
fn clean_baseline() -> Result<HostState> {
    testcluster::cleanup_real_node(false)?;
    let state = host_state();
    ensure!(
        !state.bridges.contains(&BRIDGE.to_owned()),
        "{BRIDGE} exists after the cleanup"
    );
    Ok(state)
}

/// The guard's counter for packets from the bridge to another interface.
fn guard_counter() -> u64 {
    let text = cmd("nft", &["list", "table", "inet", GUARD_TABLE]);
    text.lines()
        .filter(|l| l.contains(&format!("iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\"")))
        .filter_map(|l| l.split("counter packets ").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn elapsed(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

// ----- the tests -----

/// (1) A busybox Pod runs, `kubectl logs` works, DNS resolves the API server's name and
/// a Service's, a ClusterIP Service is reachable from a Pod, and other names are
/// NXDOMAIN (no forwarder).
#[test]
fn busybox_pod_logs_dns_and_cluster_ip() -> Result<()> {
    let _serial = serial();
    let t0 = Instant::now();
    let cluster = Cluster::start(real_node_options())?;
    let info = cluster.real_node().context("no real node")?;
    eprintln!(
        "cluster with real node up in {} (node Ready after {:?})",
        elapsed(t0),
        info.ready_after
    );
    let ns = "rn-basic";
    testcluster_block_on(cluster.create_namespace(ns))?;

    let t = Instant::now();
    let mut server = busybox_pod(
        &cluster,
        ns,
        "web",
        "mkdir -p /www && echo tracehook-real-node-ok > /www/index.html && exec httpd -f -p 8080 -h /www",
    )?;
    server["spec"]["containers"][0]["readinessProbe"] =
        serde_json::json!({ "tcpSocket": { "port": 8080 }, "periodSeconds": 1 });
    let client = busybox_pod(
        &cluster,
        ns,
        "client",
        "echo hello from busybox on the real node; exec sleep 3600",
    )?;
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "web", "namespace": ns },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] },
    });
    apply(&cluster, &[server, client, service])?;
    wait_ready(&cluster, ns, &["client", "web"])?;
    eprintln!("first Pods Ready {} after apply", elapsed(t));

    let node = kubectl_ok(
        &cluster,
        &[
            "get",
            "pod",
            "-n",
            ns,
            "client",
            "-o",
            "jsonpath={.spec.nodeName}",
        ],
    )?;
    assert_eq!(node, REAL_NODE_NAME);
    let logs = kubectl_ok(&cluster, &["logs", "-n", ns, "client"])?;
    assert!(
        logs.contains("hello from busybox on the real node"),
        "logs: {logs:?}"
    );

    let (ok, out) = exec(
        &cluster,
        ns,
        "client",
        &["nslookup", "kubernetes.default.svc.cluster.local"],
    )?;
    assert!(
        ok && out.contains("10.0.0.1"),
        "nslookup kubernetes.default: {out}"
    );
    let cluster_ip = kubectl_ok(
        &cluster,
        &[
            "get",
            "svc",
            "-n",
            ns,
            "web",
            "-o",
            "jsonpath={.spec.clusterIP}",
        ],
    )?;
    let (ok, out) = exec(
        &cluster,
        ns,
        "client",
        &["nslookup", &format!("web.{ns}.svc.cluster.local")],
    )?;
    assert!(ok && out.contains(&cluster_ip), "nslookup web: {out}");
    let (ok, out) = exec(&cluster, ns, "client", &["nslookup", "www.example.com"])?;
    assert!(
        !ok || out.contains("NXDOMAIN"),
        "an outside name resolved (no forwarder expected): {out}"
    );

    // kube-proxy programs the Service a moment after its endpoints appear.
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in [
        format!("http://{cluster_ip}/"),
        format!("http://web.{ns}.svc.cluster.local/"),
    ] {
        loop {
            let (ok, out) = exec(
                &cluster,
                ns,
                "client",
                // Not wget's -T: Debian's static busybox 1.35 segfaults with it.
                &["timeout", "5", "wget", "-q", "-O", "-", &url],
            )?;
            if ok && out.contains("tracehook-real-node-ok") {
                break;
            }
            assert!(Instant::now() < deadline, "GET {url} from a Pod: {out}");
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    // In-cluster clients (tracehook installed with Helm) reach the API server through
    // the `kubernetes` Service. (busybox's own TLS offers ciphers Go's TLS refuses, so
    // this checks the connection; tracehook's Pods do the rest.)
    let (ok, out) = exec(
        &cluster,
        ns,
        "client",
        &["sh", "-c", "nc -w 3 kubernetes.default.svc 443 < /dev/null"],
    )?;
    assert!(ok, "the API server from a Pod: {out}");
    let t = Instant::now();
    drop(cluster);
    eprintln!("teardown {}", elapsed(t));
    let left = testcluster::real_node_leftovers();
    assert!(left.is_empty(), "left: {left:#?}");
    Ok(())
}

/// A local black hole for the guard test: a bridge without ports (no dummy driver in
/// this kernel) with a route for TEST-NET-2 (198.51.100.0/24). Had the guard let a
/// packet through, the host would forward it into this interface, where it has nowhere
/// to go: nothing is ever sent off the machine.
///
/// Not TEST-NET-1: on these machines 192.0.2.0/24 is eth0's own network (192.0.2.1 is
/// the default gateway).
struct Sink;

const SINK: &str = "rnsink0";
const OUTSIDE: &str = "198.51.100.1";

impl Sink {
    fn new() -> Result<Sink> {
        let _ = Command::new("ip").args(["link", "del", SINK]).output();
        for args in [
            &["link", "add", SINK, "type", "bridge"][..],
            &["link", "set", SINK, "up"][..],
            &["route", "add", "198.51.100.0/24", "dev", SINK][..],
        ] {
            let out = Command::new("ip").args(args).output()?;
            ensure!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Sink)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", SINK]).output();
    }
}

/// (2) A Pod has no default route, and a packet it routes out anyway (to TEST-NET-2,
/// 198.51.100.1, which the host routes into a local dummy interface) is dropped by the
/// guard: its counter goes up.
#[test]
fn pods_have_no_default_route_and_the_guard_drops_egress() -> Result<()> {
    let _serial = serial();
    let cluster = Cluster::start(real_node_options())?;
    let ns = "rn-guard";
    testcluster_block_on(cluster.create_namespace(ns))?;
    let mut pod = busybox_pod(&cluster, ns, "probe", "exec sleep 3600")?;
    // NET_ADMIN only to add a route inside its own network namespace.
    pod["spec"]["containers"][0]["securityContext"] =
        serde_json::json!({ "capabilities": { "add": ["NET_ADMIN"] } });
    apply(&cluster, &[pod])?;
    wait_ready(&cluster, ns, &["probe"])?;

    let (ok, routes) = exec(&cluster, ns, "probe", &["ip", "route"])?;
    assert!(ok, "ip route: {routes}");
    assert!(
        !routes.lines().any(|l| l.starts_with("default")),
        "a Pod has a default route:\n{routes}"
    );
    assert!(
        routes.contains("10.0.0.0/24 via 10.244.0.1"),
        "no route to the Services:\n{routes}"
    );
    let (ok, table) = exec(&cluster, ns, "probe", &["cat", "/proc/net/route"])?;
    assert!(ok, "{table}");
    assert!(
        !table
            .lines()
            .skip(1)
            .any(|l| l.split_whitespace().nth(1) == Some("00000000")),
        "/proc/net/route has a default route:\n{table}"
    );
    let (ok, out) = exec(&cluster, ns, "probe", &["nc", "-w", "1", OUTSIDE, "9"])?;
    assert!(
        !ok && out.contains("unreachable"),
        "without a route, {OUTSIDE} must be unreachable from a Pod: {out}"
    );

    // The guard is in place and forwarding is on: only the guard stops what follows.
    let guard = cmd("nft", &["list", "table", "inet", GUARD_TABLE]);
    assert!(
        guard.contains(&format!("iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\"")),
        "guard table: {guard}"
    );
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?.trim(),
        "1"
    );
    // No masquerade for Pods: the bridge plugin's ipMasq would add CNI-* nat chains.
    let nat = cmd("iptables-save", &["-t", "nat"]);
    assert!(!nat.contains(":CNI-"), "CNI masquerade chains: {nat}");

    let sink = Sink::new()?;
    let before = guard_counter();
    // Each attempt sends at least one TCP SYN (busybox nc has no UDP mode).
    let (ok, out) = exec(
        &cluster,
        ns,
        "probe",
        &[
            "sh",
            "-c",
            &format!(
                "ip route add 198.51.100.0/24 via 10.244.0.1 || exit 1; \
                 for i in 1 2 3; do nc -w 1 {OUTSIDE} 9 </dev/null; done; ip route"
            ),
        ],
    )?;
    assert!(
        ok && out.contains("198.51.100.0/24 via 10.244.0.1"),
        "{out}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while guard_counter() < before + 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let after = guard_counter();
    drop(sink);
    assert!(
        after >= before + 3,
        "the guard dropped {} packets (before {before}, after {after}); pod said: {out}",
        after.saturating_sub(before)
    );
    assert!(testcluster::guard_drops()? >= after);
    drop(cluster);
    let left = testcluster::real_node_leftovers();
    assert!(left.is_empty(), "left: {left:#?}");
    Ok(())
}

/// (3) Dropping the cluster leaves the host exactly as before: bridges, veths,
/// iptables and nftables, mounts, cgroups, sysctls, paths, processes.
#[test]
fn teardown_leaves_the_host_as_it_was() -> Result<()> {
    let _serial = serial();
    let before = clean_baseline()?;
    let cluster = Cluster::start(real_node_options())?;
    let ns = "rn-teardown";
    testcluster_block_on(cluster.create_namespace(ns))?;
    let pod = busybox_pod(&cluster, ns, "web", "exec httpd -f -p 8080")?;
    let service = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "web", "namespace": ns },
        "spec": { "selector": { "app": "web" }, "ports": [{ "port": 80, "targetPort": 8080 }] },
    });
    apply(&cluster, &[pod, service])?;
    wait_ready(&cluster, ns, &["web"])?;

    // While it runs, the node is visible everywhere the check looks.
    let during = host_state();
    assert!(during.bridges.contains(&BRIDGE.to_owned()), "{during:#?}");
    assert!(!during.veths.is_empty(), "no veth: {during:#?}");
    assert!(
        during.iptables.iter().any(|l| l.contains("KUBE-FIREWALL")),
        "{:#?}",
        during.iptables
    );
    assert!(
        during
            .nft_tables
            .iter()
            .any(|t| t == &format!("table inet {GUARD_TABLE}")),
        "{:#?}",
        during.nft_tables
    );
    assert!(
        during.nft_tables.iter().any(|t| t == "table ip kube-proxy"),
        "{:#?}",
        during.nft_tables
    );
    assert!(!during.mounts.is_empty(), "no mounts: {during:#?}");
    assert!(!during.cgroups.is_empty(), "no kubepods cgroups");
    assert!(
        during
            .sysctls
            .iter()
            .any(|s| s == "net.ipv4.ip_forward = 1"),
        "{:#?}",
        during.sysctls
    );

    let t = Instant::now();
    drop(cluster);
    eprintln!("teardown {}", elapsed(t));
    assert_same(&before, &host_state());
    let left = testcluster::real_node_leftovers();
    assert!(left.is_empty(), "left: {left:#?}");
    Ok(())
}

/// Runs `testcluster-real-node hold` (a cluster with a real node and a running Pod),
/// SIGKILLs it once the Pod is Ready, and returns the container processes that survive
/// it (they outlive their shim's death signal) and the helper's cluster directory.
fn start_and_kill_holder() -> Result<(Vec<u32>, PathBuf)> {
    let t = Instant::now();
    let mut helper = Command::new(env!("CARGO_BIN_EXE_testcluster-real-node"))
        .arg("hold")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = helper.stdout.take().context("helper stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(dir) = line.strip_prefix("READY ") {
                let _ = tx.send(PathBuf::from(dir));
            }
        }
    });
    let dir = match rx.recv_timeout(Duration::from_secs(300)) {
        Ok(dir) => dir,
        Err(_) => {
            let _ = helper.kill();
            let _ = helper.wait();
            bail!("the helper did not report READY within 300 s");
        }
    };
    eprintln!(
        "helper holds a real node with a Ready Pod after {}",
        elapsed(t)
    );
    helper.kill()?; // SIGKILL
    helper.wait()?;
    // Its children die by their death signal; the containers stay.
    std::thread::sleep(Duration::from_millis(500));
    let containers = walk_procs(Path::new("/sys/fs/cgroup/pids/kubepods"));
    Ok((containers, dir))
}

fn walk_procs(dir: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_procs(&e.path()));
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s[s.rfind(')')? + 2..].chars().next()? != 'Z'))
        .unwrap_or(false)
}

/// (4a) After the process holding the real node is SIGKILLed, its containers survive;
/// `testcluster-real-node cleanup` (the shell entry) leaves the host as before.
#[test]
fn sigkilled_holder_is_cleaned_by_the_cleanup_entry() -> Result<()> {
    let _serial = serial();
    let before = clean_baseline()?;
    let (containers, dir) = start_and_kill_holder()?;
    assert!(
        !containers.is_empty() && containers.iter().all(|p| alive(*p)),
        "expected the held Pod's containers to outlive the helper: {containers:?}"
    );
    assert!(!testcluster::real_node_leftovers().is_empty());

    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_testcluster-real-node"))
        .arg("cleanup")
        .output()?;
    assert!(
        out.status.success(),
        "cleanup failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("cleanup {}", elapsed(t));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(containers.iter().all(|p| !alive(*p)), "{containers:?}");
    assert_same(&before, &host_state());
    let out = Command::new(env!("CARGO_BIN_EXE_testcluster-real-node"))
        .arg("check")
        .output()?;
    assert!(
        out.status.success(),
        "check: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

/// (4b) The same, swept by the next start instead: the new node runs, the old
/// containers are gone, and after its teardown the host is as before.
#[test]
fn sigkilled_holder_is_swept_by_the_next_start() -> Result<()> {
    let _serial = serial();
    let before = clean_baseline()?;
    let (containers, dir) = start_and_kill_holder()?;
    assert!(
        !containers.is_empty() && containers.iter().all(|p| alive(*p)),
        "expected the held Pod's containers to outlive the helper: {containers:?}"
    );
    let cluster = Cluster::start(real_node_options())?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(containers.iter().all(|p| !alive(*p)), "{containers:?}");
    let pods = kubectl_ok(&cluster, &["get", "pods", "-A", "-o", "name"])?;
    assert!(pods.trim().is_empty(), "a fresh cluster has Pods: {pods}");
    drop(cluster);
    assert_same(&before, &host_state());
    Ok(())
}

/// `Cluster::create_namespace` from a plain test (its own small runtime).
fn testcluster_block_on<F: std::future::Future<Output = Result<()>>>(f: F) -> Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
}
