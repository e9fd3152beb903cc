//! What the operating system says: a process's memory, the machine, the other load.

use std::net::TcpListener;
use std::process::Command;

/// `VmRSS` and `VmHWM` of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
}

impl Memory {
    pub fn of(pid: u32) -> Option<Memory> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        };
        Some(Memory {
            rss_kib: field("VmRSS:")?,
            hwm_kib: field("VmHWM:")?,
        })
    }
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB, VmHWM {:.1} MiB",
            self.rss_kib as f64 / 1024.0,
            self.hwm_kib as f64 / 1024.0
        )
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Date, machine and the other busy processes, for the head of a report.
pub fn describe_machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(str::to_owned))
        .unwrap_or_default();
    format!(
        "date: {}\nmachine: {} cores, {}, {}\nload: {}\nother busy processes: {}",
        output("date", &[]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu,
        mem.split_whitespace().collect::<Vec<_>>().join(" "),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .trim(),
        busy_processes(),
    )
}

/// Processes that used at least 5% of a core over the last second (compilers of
/// other people sharing the machine, say), busiest first.
pub fn busy_processes() -> String {
    let before = cpu_ticks();
    std::thread::sleep(std::time::Duration::from_secs(1));
    let after = cpu_ticks();
    // USER_HZ is 100 on Linux: ticks over one second are percent of a core.
    let mut busy: Vec<(u64, String)> = after
        .into_iter()
        .filter_map(|(pid, (comm, t))| {
            let used = t.saturating_sub(before.get(&pid).map_or(t, |(_, t0)| *t0));
            (used >= 5).then_some((used, comm))
        })
        .collect();
    busy.sort_by_key(|b| std::cmp::Reverse(b.0));
    if busy.is_empty() {
        return "none".to_owned();
    }
    busy.iter()
        .take(8)
        .map(|(pct, comm)| format!("{comm} {pct}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// pid → (command, utime + stime in ticks).
fn cpu_ticks() -> std::collections::HashMap<u32, (String, u64)> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command is in parentheses and may contain spaces.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // After the command: state is field 0, utime 11, stime 12.
        out.insert(pid, (comm, ticks(11) + ticks(12)));
    }
    out
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
