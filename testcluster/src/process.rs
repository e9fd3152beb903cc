//! Child processes: the spawner thread, log files, termination, pid files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// One control-plane process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Etcd,
    ApiServer,
    ControllerManager,
    Scheduler,
    Kwok,
}

impl Component {
    /// All components in start order.
    pub const ALL: [Component; 5] = [
        Component::Etcd,
        Component::ApiServer,
        Component::ControllerManager,
        Component::Scheduler,
        Component::Kwok,
    ];

    /// The binary's name (also the log file's stem and the pid file's key).
    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::ApiServer => "kube-apiserver",
            Component::ControllerManager => "kube-controller-manager",
            Component::Scheduler => "kube-scheduler",
            Component::Kwok => "kwok",
        }
    }

    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How children are tied to us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `PR_SET_PDEATHSIG(SIGKILL)`: a child dies when the thread that spawned it (the
    /// cluster's spawner thread) exits, including when the whole process dies.
    Attached,
    /// `setsid()`, no death signal: the children outlive us (`cargo xtask cluster up`).
    Detached,
}

type Job = (Command, mpsc::Sender<io::Result<Child>>);

/// A thread that does nothing but `fork`/`exec` the cluster's children.
///
/// Linux delivers `PR_SET_PDEATHSIG` when the *thread* that forked the child exits, not
/// when the process does. Spawning from whichever thread happens to call
/// `Cluster::start` or `restart_apiserver` (a test's thread, a tokio worker) would kill
/// the children as soon as that thread ends. This thread lives exactly as long as the
/// `Cluster` (it is joined after the children are reaped in `Drop`), and for
/// `testcluster::shared()` until the process exits.
pub struct Spawner {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Spawner {
    pub fn new() -> Result<Spawner> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("testcluster-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .context("starting the spawner thread")?;
        Ok(Spawner {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    pub fn spawn(&self, cmd: Command) -> io::Result<Child> {
        let (reply_tx, reply_rx) = mpsc::channel();
        let gone = || io::Error::other("testcluster spawner thread is gone");
        self.tx
            .as_ref()
            .ok_or_else(gone)?
            .send((cmd, reply_tx))
            .map_err(|_| gone())?;
        reply_rx.recv().map_err(|_| gone())?
    }
}

impl Drop for Spawner {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Prepares `cmd` for `mode`: stdin null, stdout+stderr appended to `log`, and the
/// death signal or new session.
pub fn configure(cmd: &mut Command, mode: Mode, log: &Path) -> Result<()> {
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    match mode {
        Mode::Attached => {
            let parent = std::process::id() as libc::pid_t;
            // SAFETY: only async-signal-safe calls (prctl, getppid, raise) between fork
            // and exec.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    // The parent died between fork and prctl: nobody will signal us.
                    if libc::getppid() != parent {
                        libc::raise(libc::SIGKILL);
                    }
                    Ok(())
                });
            }
        }
        Mode::Detached => {
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    Ok(())
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn sigterm(pid: u32) {
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGTERM);
    }
}

/// SIGTERM every child, give them `grace` to exit, SIGKILL the rest, reap all.
pub fn terminate_all<K>(children: Vec<(K, Child)>, grace: Duration) {
    let mut left = children;
    for (_, c) in &left {
        sigterm(c.id());
    }
    let deadline = Instant::now() + grace;
    while !left.is_empty() && Instant::now() < deadline {
        left.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    for (_, c) in &mut left {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// `component pid` lines.
pub fn write_pids(path: &Path, children: &BTreeMap<Component, Child>) -> Result<()> {
    let text: String = children
        .iter()
        .map(|(c, child)| format!("{} {}\n", c.name(), child.id()))
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub fn read_pids(path: &Path) -> Result<Vec<(Component, u32)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (name, pid) = line
            .split_once(' ')
            .with_context(|| format!("bad line {line:?} in {}", path.display()))?;
        let c = Component::from_name(name)
            .with_context(|| format!("unknown component {name:?} in {}", path.display()))?;
        out.push((c, pid.trim().parse().context("bad pid")?));
    }
    Ok(out)
}

/// Whether `pid` is a live (not zombie) process whose command line mentions `marker`
/// (the cluster's state directory), so a recycled pid is never taken for ours.
pub fn is_ours(pid: u32, marker: &str) -> bool {
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => String::from_utf8_lossy(&cmdline).contains(marker),
        Err(_) => false,
    }
}
