//! Removing everything a real node put on the host, whether the node stopped cleanly or
//! its owner was SIGKILLed (containers outlive their shim, which outlives containerd).
//!
//! [`sweep`] is the host half of the teardown (REAL-NODE.md, steps 4 and 5): it needs
//! no cluster, only what is on the machine and the [`Record`] the start wrote before it
//! changed anything. It runs at the end of every teardown, at the start of every real
//! node (so a killed run is cleaned before the next one), and from
//! `testcluster-real-node cleanup`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::host::{self, STATE_ROOT};
use super::network::{self, BRIDGE, GUARD_TABLE, POD_CIDR};

/// Sysctls the node changes or may change, restored to their recorded values: the
/// bridge plugin and we set `ip_forward`; the kubelet "fixes" the six kernel tunables
/// of `setupKernelTunables` (vm.overcommit_memory, kernel.panic, ...) unless
/// `protectKernelDefaults`, which would refuse to start on this host's values;
/// kube-proxy sets conntrack timeouts unless configured not to.
const SYSCTLS: [&str; 17] = [
    "net/ipv4/ip_forward",
    "net/ipv6/conf/all/forwarding",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/ipv4/conf/all/route_localnet",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_tcp_timeout_established",
    "net/netfilter/nf_conntrack_tcp_timeout_close_wait",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "net/netfilter/nf_conntrack_udp_timeout",
    "net/netfilter/nf_conntrack_udp_timeout_stream",
];

/// Fixed paths outside [`STATE_ROOT`] that the node's programs create when missing
/// (the kubelet makes /var/log/containers and, through mount(8), /run/mount; the others
/// are defaults our configuration moves away, listed in case a default slips through).
/// Removed at teardown only if the record says they did not exist before.
const FIXED_PATHS: [&str; 17] = [
    "/var/log/containers",
    "/var/log/pods",
    "/run/mount",
    "/run/containerd",
    "/var/lib/containerd",
    "/opt/containerd",
    "/run/nri",
    "/var/lib/cni",
    "/etc/cni",
    "/opt/cni",
    "/var/lib/kubelet",
    "/etc/kubernetes",
    "/etc/cdi",
    "/var/run/cdi",
    "/run/runc",
    "/run/netns",
    "/usr/libexec/kubernetes",
];

/// Process names of the node's daemons (a process is ours if its name starts with one
/// of these and its command line mentions [`STATE_ROOT`]). `containerd` also matches
/// the shims (`containerd-shim-runc-v2`, comm `containerd-shim`).
const DAEMONS: [&str; 5] = ["kubelet", "kube-proxy", "coredns", "ctr", "containerd"];

/// What the host looked like before a node changed it: `STATE_ROOT/record.json`,
/// written before the first change and removed last.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub sysctls: Vec<(String, String)>,
    /// [`FIXED_PATHS`] that did not exist.
    pub absent: Vec<String>,
    pub nft_tables: Vec<String>,
    /// KUBE-*/CNI-* chains that existed (`tool table chain`).
    pub chains: Vec<String>,
    /// The node's binaries (for `kube-proxy --cleanup`).
    pub node_bin: Option<PathBuf>,
}

pub fn record_path() -> PathBuf {
    host::root().join("record.json")
}

impl Record {
    pub fn capture(node_bin: &Path) -> Record {
        Record {
            sysctls: SYSCTLS
                .iter()
                .filter_map(|k| host::read_sysctl(k).map(|v| ((*k).to_owned(), v)))
                .collect(),
            absent: FIXED_PATHS
                .iter()
                .filter(|p| std::fs::symlink_metadata(p).is_err())
                .map(|p| (*p).to_owned())
                .collect(),
            nft_tables: network::nft_tables(),
            chains: network::kube_chains(),
            node_bin: Some(node_bin.to_owned()),
        }
    }

    pub fn save(&self) -> Result<()> {
        let json = serde_json::json!({
            "sysctls": self.sysctls.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
            "absent": self.absent,
            "nft_tables": self.nft_tables,
            "chains": self.chains,
            "node_bin": self.node_bin.as_ref().map(|p| p.display().to_string()),
        });
        std::fs::create_dir_all(host::root())?;
        let tmp = record_path().with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&json)?)?;
        std::fs::rename(&tmp, record_path())?;
        Ok(())
    }

    /// The record of an earlier start, if any (a damaged one counts as none).
    pub fn load() -> Option<Record> {
        let text = std::fs::read_to_string(record_path()).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        let strings = |key: &str| -> Vec<String> {
            json.get(key)
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        };
        Some(Record {
            sysctls: json
                .get("sysctls")
                .and_then(|v| v.as_array())
                .into_iter()
                .flatten()
                .filter_map(|pair| {
                    Some((
                        pair.get(0)?.as_str()?.to_owned(),
                        pair.get(1)?.as_str()?.to_owned(),
                    ))
                })
                .collect(),
            absent: strings("absent"),
            nft_tables: strings("nft_tables"),
            chains: strings("chains"),
            node_bin: json
                .get("node_bin")
                .and_then(|v| v.as_str())
                .map(PathBuf::from),
        })
    }
}

/// The node daemons still running (any run's: one node per machine).
pub fn node_processes() -> Vec<host::Proc> {
    let me = std::process::id();
    host::processes()
        .into_iter()
        .filter(|p| {
            p.pid != me
                && p.state != 'Z'
                && DAEMONS.iter().any(|d| p.comm.starts_with(d))
                && p.cmdline.contains(STATE_ROOT)
        })
        .collect()
}

fn kill_all(pids: &[u32], what: &str, errors: &mut Vec<String>) {
    for pid in pids {
        host::kill(*pid, libc::SIGKILL);
    }
    let left = host::wait_gone(pids, Duration::from_secs(10));
    if !left.is_empty() {
        errors.push(format!("{what} survived SIGKILL: {left:?}"));
    }
}

/// Removes everything of a real node from the host, in REAL-NODE.md's order, and
/// restores what the record says. Idempotent; every step runs even if an earlier one
/// failed (the errors are joined into the result).
pub fn sweep() -> Result<()> {
    let record = Record::load();
    let mut errors: Vec<String> = Vec::new();

    // Daemons of a killed or abandoned run (normally already stopped): the kubelet
    // first, so it restarts nothing; the shims last, after their containers.
    let daemons = node_processes();
    let not_shim = |p: &&host::Proc| !p.comm.starts_with("containerd-shim");
    for group in [
        &["kubelet", "kube-proxy", "coredns", "ctr"][..],
        &["containerd"][..],
    ] {
        let pids: Vec<u32> = daemons
            .iter()
            .filter(not_shim)
            .filter(|p| group.iter().any(|g| p.comm.starts_with(g)))
            .map(|p| p.pid)
            .collect();
        kill_all(&pids, "node daemons", &mut errors);
    }

    // Containers outlive their shim's death signal: SIGKILL everything in the kubepods
    // cgroups (their shim, alive still, reaps them), until nothing is left.
    for _ in 0..50 {
        let pids = host::kubepods_pids();
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            host::kill(*pid, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = host::kubepods_pids();
    if !left.is_empty() {
        errors.push(format!("container processes survived SIGKILL: {left:?}"));
    }

    // Then the shims of this node's containerd.
    let shims: Vec<u32> = node_processes()
        .iter()
        .filter(|p| p.comm.starts_with("containerd-shim"))
        .map(|p| p.pid)
        .collect();
    kill_all(&shims, "containerd shims", &mut errors);

    // kube-proxy's own cleanup (iptables, ipvs and nftables modes), then the kubelet's
    // chains and whatever kube-proxy missed, then tables nobody had before.
    if let Some(bin) = record.as_ref().and_then(|r| r.node_bin.clone()) {
        let kube_proxy = bin.join("kube-proxy");
        if kube_proxy.is_file() {
            // Exits non-zero when a mode has nothing to clean (no ipvs here); what it
            // missed is removed below, and the leftover check has the last word.
            let _ = std::process::Command::new(&kube_proxy)
                .arg("--cleanup")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
    let chains_before = record.as_ref().map(|r| r.chains.as_slice());
    network::remove_kube_chains(chains_before, &mut errors);
    let tables_before = record.as_ref().map(|r| r.nft_tables.as_slice());

    // Mounts under the state directory (container root filesystems, shm, network
    // namespaces, the kubelet's volumes and its rshared bind of its root dir), deepest
    // first; the network namespaces go with them, and the Pods' veths with those.
    if let Err(e) = host::unmount_under(host::root()) {
        errors.push(format!("{e:#}"));
    }
    if let Some(r) = &record
        && r.absent.iter().any(|p| p == "/run/containerd")
        && let Err(e) = host::unmount_under(Path::new("/run/containerd"))
    {
        errors.push(format!("{e:#}"));
    }

    // The kubepods cgroups, deepest first (a cgroup whose last process just died may
    // need a moment before rmdir succeeds).
    for _ in 0..20 {
        let dirs = host::kubepods_cgroups();
        if dirs.is_empty() {
            break;
        }
        for d in dirs {
            let _ = std::fs::remove_dir(&d);
        }
        if !host::kubepods_cgroups().is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let left = host::kubepods_cgroups();
    if !left.is_empty() {
        errors.push(format!("cgroups left: {left:?}"));
    }

    // veths still on the bridge, the bridge, the guard and kube-proxy's tables.
    for port in network::bridge_ports() {
        // A veth also goes by itself once its namespace is gone; only one that stays
        // is a problem.
        if let Err(e) = host::run("ip", &["link", "del", &port])
            && network::bridge_ports().contains(&port)
        {
            errors.push(format!("{e:#}"));
        }
    }
    for link in [BRIDGE, network::TEST_SINK] {
        if std::path::Path::new("/sys/class/net").join(link).exists()
            && let Err(e) = host::run("ip", &["link", "del", link])
        {
            errors.push(format!("{e:#}"));
        }
    }
    network::delete_nft_tables(tables_before, &mut errors);

    // Conntrack entries of Pod flows (exit status 1 just means "none").
    if host::have("conntrack") {
        for flag in ["-s", "-d", "-r", "-q"] {
            let _ = host::run("conntrack", &["-D", flag, POD_CIDR]);
        }
    }

    // Sysctls back to their recorded values.
    if let Some(r) = &record {
        for (key, value) in &r.sysctls {
            if host::read_sysctl(key).as_deref() != Some(value.as_str())
                && let Err(e) = host::write_sysctl(key, value)
            {
                errors.push(format!("{e:#}"));
            }
        }
    }

    // Fixed paths the run created; symlinks into our state in ones it didn't.
    if let Some(r) = &record {
        for p in &r.absent {
            if let Err(e) = host::remove_tree(Path::new(p)) {
                errors.push(format!("{e:#}"));
            }
        }
    }
    remove_links_into_state(Path::new("/var/log/containers"));

    // Last the state directory itself (with the record): only once nothing is mounted
    // under it, never across a filesystem boundary.
    if errors.is_empty()
        && let Err(e) = host::remove_tree(host::root())
    {
        errors.push(format!("{e:#}"));
    }
    if !errors.is_empty() {
        bail!(
            "cleaning up the real node left problems (state kept in {STATE_ROOT}):\n  {}",
            errors.join("\n  ")
        );
    }
    Ok(())
}

fn remove_links_into_state(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        if let Ok(target) = std::fs::read_link(e.path())
            && target.starts_with(STATE_ROOT)
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// What of a real node is on this host now (empty when clean): state directory,
/// processes, containers, mounts, cgroups, bridge, veths, nft tables, KUBE-* chains.
/// Sysctls are compared only while a record exists (otherwise nothing says what they
/// were).
pub fn leftovers() -> Vec<String> {
    let mut out = Vec::new();
    if host::root().exists() {
        out.push(format!("{STATE_ROOT} exists"));
    }
    for p in node_processes() {
        out.push(format!("process {} ({}): {}", p.pid, p.comm, p.cmdline));
    }
    let pids = host::kubepods_pids();
    if !pids.is_empty() {
        out.push(format!("processes in kubepods cgroups: {pids:?}"));
    }
    for m in host::mount_points() {
        if m.starts_with(STATE_ROOT)
            || m.starts_with("/run/containerd")
            || m.starts_with("/var/lib/kubelet")
        {
            out.push(format!("mount {}", m.display()));
        }
    }
    let cgroups = host::kubepods_cgroups();
    if !cgroups.is_empty() {
        let tops: Vec<String> = cgroups
            .iter()
            .filter(|c| c.ends_with("kubepods"))
            .map(|c| c.display().to_string())
            .collect();
        out.push(format!(
            "{} kubepods cgroups under {}",
            cgroups.len(),
            tops.join(", ")
        ));
    }
    for link in [BRIDGE, network::TEST_SINK] {
        if Path::new("/sys/class/net").join(link).exists() {
            out.push(format!("link {link}"));
        }
    }
    for port in network::bridge_ports() {
        out.push(format!("veth {port} on {BRIDGE}"));
    }
    for t in network::nft_tables() {
        if t == format!("inet {GUARD_TABLE}") || t.ends_with(" kube-proxy") {
            out.push(format!("nft table {t}"));
        }
    }
    for c in network::kube_chains() {
        if c.contains(" KUBE-") {
            out.push(format!("chain {c}"));
        }
    }
    if let Some(r) = Record::load() {
        for (key, value) in &r.sysctls {
            let now = host::read_sysctl(key).unwrap_or_default();
            if now != *value {
                out.push(format!("sysctl {key} = {now} (was {value})"));
            }
        }
    }
    out
}

/// The standalone cleanup (`testcluster-real-node cleanup`): takes the machine-wide
/// lock without waiting (so a running node is never torn down under its owner; `force`
/// skips that), kills what is left of any real node and sweeps the host. Returns what
/// it found before cleaning (empty if the host was clean).
pub fn cleanup(force: bool) -> Result<Vec<String>> {
    let lock = match host::NodeLock::try_acquire()? {
        Some(lock) => Some(lock),
        None if force => None,
        None => bail!(
            "a real node is running ({}; held by {}); stop it first, or pass --force",
            host::lock_owner(),
            host::describe_holders()
        ),
    };
    let found = leftovers();
    let result = sweep().context("sweeping the real node's leftovers");
    if let Some(lock) = lock {
        lock.release();
    }
    result?;
    let left = leftovers();
    if !left.is_empty() {
        bail!("still on the host after cleanup:\n  {}", left.join("\n  "));
    }
    Ok(found)
}
