//! What the real node says one container uses: its process's memory from `/proc`, and
//! its cgroup's memory charge and CPU time (cgroup v1, as this node runs; v2 keeps one
//! hierarchy with other file names).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};

/// One reading of a container.
#[derive(Clone, Debug)]
pub struct Usage {
    /// The host PID of the container's first process.
    pub pid: u32,
    /// The process: resident now, of which anonymous (its heap: a binary's pages are
    /// file-backed and shared), and at its peak (VmRSS, RssAnon, VmHWM), in bytes.
    pub rss: u64,
    pub anon: u64,
    pub hwm: u64,
    /// The container's memory cgroup: its charge now and at its peak (what the limit is
    /// held against), in bytes.
    pub cgroup_now: u64,
    pub cgroup_peak: u64,
    /// The container's CPU time (cpuacct.usage).
    pub cpu: Duration,
    pub at: Instant,
}

impl Usage {
    /// Reads the container whose status says `containerd://ID` (a Pod's
    /// `containerStatuses[].containerID`).
    pub fn of_container(container_id: &str) -> Result<Self> {
        Self::of_pid(task_pid(container_id)?)
    }

    pub fn of_pid(pid: u32) -> Result<Self> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("/proc/{pid}/status"))?;
        let kib = |key: &str| -> Result<u64> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map(|v| v * 1024)
                .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
        };
        Ok(Self {
            pid,
            rss: kib("VmRSS:")?,
            anon: kib("RssAnon:")?,
            hwm: kib("VmHWM:")?,
            cgroup_now: cgroup_value(pid, "memory", "memory.usage_in_bytes")?,
            cgroup_peak: cgroup_value(pid, "memory", "memory.max_usage_in_bytes")?,
            cpu: Duration::from_nanos(cgroup_value(pid, "cpuacct", "cpuacct.usage")?),
            at: Instant::now(),
        })
    }

    /// Millicores used between `earlier` and this reading (of the same process).
    pub fn millicores_since(&self, earlier: &Usage) -> Option<f64> {
        (earlier.pid == self.pid).then(|| {
            let used = self.cpu.saturating_sub(earlier.cpu).as_secs_f64();
            used / (self.at - earlier.at).as_secs_f64() * 1000.0
        })
    }
}

/// The host PID of a container, from containerd's task list; `container_id` may carry
/// the `containerd://` prefix of a Pod's status.
pub fn task_pid(container_id: &str) -> Result<u32> {
    let id = container_id
        .strip_prefix("containerd://")
        .unwrap_or(container_id);
    let tasks = super::ctr(&["tasks", "ls"])?;
    tasks
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((words.next()?, words.next()?.parse::<u32>().ok()?))
        })
        .find(|(task, _)| *task == id)
        .map(|(_, pid)| pid)
        .ok_or_else(|| anyhow!("no task {id} in:\n{tasks}"))
}

/// A number from the file `file` of `pid`'s cgroup for `controller`.
fn cgroup_value(pid: u32, controller: &str, file: &str) -> Result<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .with_context(|| format!("/proc/{pid}/cgroup"))?;
    let (mount, path) = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            controllers
                .split(',')
                .any(|c| c == controller)
                .then(|| (controllers.to_owned(), path.to_owned()))
        })
        .ok_or_else(|| anyhow!("no {controller} cgroup in:\n{cgroups}"))?;
    let file = format!("/sys/fs/cgroup/{mount}{path}/{file}");
    let text = std::fs::read_to_string(&file).with_context(|| file.clone())?;
    text.trim()
        .parse()
        .with_context(|| format!("{file}: {text}"))
}
