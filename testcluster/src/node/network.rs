//! The real node's network: the bridge, the nft guard that keeps Pod traffic on the
//! machine, the CNI configuration, and removing what the kubelet, kube-proxy and CNI
//! leave in iptables and nftables.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::host::{have, run, run_stdin};

/// The bridge the Pods' veths attach to (created before the kubelet starts).
pub const BRIDGE: &str = "rn0";
/// The bridge's address: the node IP, the Pods' gateway and their DNS server.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 1);
/// The Pods' subnet (host-local IPAM; kube-proxy's `clusterCIDR`).
pub const POD_CIDR: &str = "10.244.0.0/24";
/// testcluster's Service range (`--service-cluster-ip-range`): the only route Pods get
/// besides their own subnet.
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
/// The portless bridge testcluster's guard test routes TEST-NET-2 into (a local black
/// hole); removed by the sweep too, in case that test was killed.
pub const TEST_SINK: &str = "rnsink0";
/// `table inet <GUARD_TABLE>`: drops everything forwarded between the bridge and any
/// other interface, with a counter per direction.
pub const GUARD_TABLE: &str = "tracehook_guard";

/// Installs (or replaces) the guard table. Matching by interface name, so it works
/// before the bridge exists; priority -50 runs it before any filter chain. Besides the
/// bridge's two directions it drops what is forwarded between two other interfaces:
/// `ip_forward` was 0 before the node, and turning it on must not make the host a
/// router for eth0.
///
/// The API server listens on every address (`apiserver_port`) so that Pods reach it at
/// the node IP, as in-cluster clients do through the `kubernetes` Service; the input
/// chain accepts that port only from loopback and the bridge.
pub fn install_guard(apiserver_port: u16) -> Result<()> {
    let script = format!(
        "table inet {GUARD_TABLE} {{}}\n\
         delete table inet {GUARD_TABLE}\n\
         table inet {GUARD_TABLE} {{\n\
         \x20 chain forward {{\n\
         \x20   type filter hook forward priority -50; policy accept;\n\
         \x20   iifname \"{BRIDGE}\" oifname != \"{BRIDGE}\" counter drop\n\
         \x20   oifname \"{BRIDGE}\" iifname != \"{BRIDGE}\" counter drop\n\
         \x20   iifname != \"{BRIDGE}\" oifname != \"{BRIDGE}\" counter drop\n\
         \x20 }}\n\
         \x20 chain input {{\n\
         \x20   type filter hook input priority -50; policy accept;\n\
         \x20   tcp dport {apiserver_port} iifname != {{ \"lo\", \"{BRIDGE}\" }} counter drop\n\
         \x20 }}\n\
         }}\n"
    );
    run_stdin("nft", &["-f", "-"], &script).context("installing the nft guard table")?;
    Ok(())
}

/// Creates the bridge with the node IP and brings it up.
pub fn create_bridge() -> Result<()> {
    run("ip", &["link", "add", BRIDGE, "type", "bridge"])?;
    run(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", BRIDGE],
    )?;
    run("ip", &["link", "set", BRIDGE, "up"])?;
    Ok(())
}

/// Interfaces enslaved to the bridge (the Pods' host-side veths).
pub fn bridge_ports() -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(format!("/sys/class/net/{BRIDGE}/brif")) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

/// The CNI network list: a bridge without a default route or masquerade (Pods reach
/// only their subnet and, through the node, Services), then portmap.
pub fn cni_conflist(ipam_dir: &str) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "tracehook-real-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "isDefaultGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": ipam_dir,
                    "ranges": [[{ "subnet": POD_CIDR, "gateway": NODE_IP.to_string() }]],
                    "routes": [{ "dst": SERVICE_CIDR }],
                },
            },
            { "type": "portmap", "capabilities": { "portMappings": true } },
        ],
    })
}

// ----- nftables -----

/// `family name` of every nft table.
pub fn nft_tables() -> Vec<String> {
    run("nft", &["list", "tables"])
        .map(|out| {
            out.lines()
                .filter_map(|l| l.trim().strip_prefix("table "))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether a table holds nothing but empty base chains (what iptables-nft leaves after
/// its last rule and user chain are gone).
fn nft_table_empty(family: &str, name: &str) -> bool {
    let Ok(out) = run("nft", &["-j", "list", "table", family, name]) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&out) else {
        return false;
    };
    let Some(items) = json.get("nftables").and_then(|v| v.as_array()) else {
        return false;
    };
    items.iter().all(|item| {
        if item.get("rule").is_some() || item.get("set").is_some() || item.get("map").is_some() {
            return false;
        }
        match item.get("chain") {
            Some(chain) => chain.get("hook").is_some(),
            None => true,
        }
    })
}

fn nft_delete_table(family_name: &str, errors: &mut Vec<String>) {
    let mut args = vec!["delete", "table"];
    args.extend(family_name.split_whitespace());
    if let Err(e) = run("nft", &args) {
        errors.push(format!("{e:#}"));
    }
}

/// The iptables-nft tables the node may create (the kubelet's canary chains, kube-proxy
/// and portmap in iptables mode).
const XTABLES: [&str; 5] = ["filter", "nat", "mangle", "raw", "security"];

/// Deletes the guard table and kube-proxy's tables, and the iptables-nft tables that
/// did not exist before the node started (`before`) and are empty now. Without a record
/// of `before`, iptables-nft tables are kept (they may be the host's).
pub fn delete_nft_tables(before: Option<&[String]>, errors: &mut Vec<String>) {
    let now = nft_tables();
    for t in &now {
        let mut parts = t.split_whitespace();
        let (Some(family), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let ours = (family == "inet" && name == GUARD_TABLE)
            || (matches!(family, "ip" | "ip6") && name == "kube-proxy");
        let created_xtable = matches!(family, "ip" | "ip6")
            && XTABLES.contains(&name)
            && before.is_some_and(|b| !b.contains(t))
            && nft_table_empty(family, name);
        if ours || created_xtable {
            nft_delete_table(t, errors);
        }
    }
}

/// The packets the guard dropped so far (both directions).
pub fn guard_drops() -> Result<u64> {
    let out = run("nft", &["-j", "list", "table", "inet", GUARD_TABLE])?;
    let json: serde_json::Value = serde_json::from_str(&out).context("nft -j output")?;
    let mut total = 0;
    for item in json
        .get("nftables")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        for expr in item
            .pointer("/rule/expr")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            if let Some(p) = expr.pointer("/counter/packets").and_then(|v| v.as_u64()) {
                total += p;
            }
        }
    }
    Ok(total)
}

// ----- iptables -----

/// `tool table chain` of every KUBE-* and CNI-* chain (tool `iptables` or `ip6tables`).
pub fn kube_chains() -> Vec<String> {
    let mut out = Vec::new();
    for tool in ["iptables", "ip6tables"] {
        let Ok(text) = run(&format!("{tool}-save"), &[]) else {
            continue;
        };
        let mut table = "";
        for line in text.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim();
            } else if let Some(rest) = line.strip_prefix(':') {
                let chain = rest.split_whitespace().next().unwrap_or_default();
                if chain.starts_with("KUBE-") || chain.starts_with("CNI-") {
                    out.push(format!("{tool} {table} {chain}"));
                }
            }
        }
    }
    out
}

/// Removes KUBE-* chains (and CNI-* chains not in `before`; all KUBE-* ones when there
/// is no record), with every rule that jumps to them, v4 and v6. kube-proxy's
/// `--cleanup` leaves the kubelet's KUBE-FIREWALL, KUBE-KUBELET-CANARY and
/// KUBE-IPTABLES-HINT.
pub fn remove_kube_chains(before: Option<&[String]>, errors: &mut Vec<String>) {
    for tool in ["iptables", "ip6tables"] {
        if !have(&format!("{tool}-save")) {
            continue;
        }
        let text = match run(&format!("{tool}-save"), &[]) {
            Ok(t) => t,
            Err(e) => {
                errors.push(format!("{e:#}"));
                continue;
            }
        };
        let mut script = String::new();
        for (table, body) in split_tables(&text) {
            let targets: Vec<&str> = body
                .iter()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|r| r.split_whitespace().next())
                .filter(|c| {
                    let recorded = before
                        .is_some_and(|b| b.iter().any(|x| *x == format!("{tool} {table} {c}")));
                    match before {
                        Some(_) => (c.starts_with("KUBE-") || c.starts_with("CNI-")) && !recorded,
                        None => c.starts_with("KUBE-"),
                    }
                })
                .collect();
            if targets.is_empty() {
                continue;
            }
            script.push_str(&format!("*{table}\n"));
            for rule in body.iter().filter_map(|l| l.strip_prefix("-A ")) {
                let words: Vec<&str> = rule.split_whitespace().collect();
                let chain = words.first().copied().unwrap_or_default();
                let jumps = words
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && targets.contains(&w[1]));
                if jumps && !targets.contains(&chain) {
                    script.push_str(&format!("-D {rule}\n"));
                }
            }
            for t in &targets {
                script.push_str(&format!("-F {t}\n"));
            }
            for t in &targets {
                script.push_str(&format!("-X {t}\n"));
            }
            script.push_str("COMMIT\n");
        }
        if !script.is_empty()
            && let Err(e) = run_stdin(&format!("{tool}-restore"), &["--noflush"], &script)
        {
            errors.push(format!("{e:#}"));
        }
    }
}

/// `iptables-save` output per table: (name, lines between `*name` and `COMMIT`).
fn split_tables(text: &str) -> Vec<(String, Vec<&str>)> {
    let mut out: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            out.push((t.trim().to_owned(), Vec::new()));
        } else if line.starts_with('#') || line == "COMMIT" {
            continue;
        } else if let Some((_, body)) = out.last_mut() {
            body.push(line);
        }
    }
    out
}
