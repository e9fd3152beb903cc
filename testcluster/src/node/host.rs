//! Host-level helpers for the real node: commands, sysctls, `/proc` scans, mounts,
//! cgroups, careful directory removal, and the machine-wide lock.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where every real node keeps its state (one node per machine, so a fixed place: a
/// sweep after a killed run finds it without knowing that run's temporary directory).
pub const STATE_ROOT: &str = "/var/lib/tracehook-real-node";

/// The machine-wide lock (flock) that allows one real node at a time.
pub const LOCK_PATH: &str = "/run/tracehook-real-node.lock";

/// How long a start waits for another real node (a test in another process) to go.
pub const LOCK_WAIT: Duration = Duration::from_secs(600);

pub fn root() -> &'static Path {
    Path::new(STATE_ROOT)
}

/// Runs `program args`, returning stdout; an error carries stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `program args` with `input` on stdin.
pub fn run_stdin(program: &str, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}\ninput:\n{input}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether an executable named `name` is on the standard sbin/bin paths.
pub fn have(name: &str) -> bool {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(name).is_file())
}

// ----- sysctls -----

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key)
}

/// A sysctl by its `/proc/sys` path (`net/ipv4/ip_forward`); `None` if it doesn't exist.
pub fn read_sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|v| v.trim().to_owned())
}

pub fn write_sysctl(key: &str, value: &str) -> Result<()> {
    std::fs::write(sysctl_path(key), value).with_context(|| format!("setting {key} to {value}"))
}

// ----- processes -----

/// One entry of `/proc`.
#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub comm: String,
    /// NUL-separated arguments joined with spaces (empty for zombies and kernel threads).
    pub cmdline: String,
}

fn read_proc(pid: u32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; comm may contain spaces and parentheses, so split at
    // the last ')'.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_owned();
    let mut rest = stat.get(close + 1..)?.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(Proc {
        pid,
        ppid,
        state,
        comm,
        cmdline,
    })
}

pub fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(read_proc)
        .collect()
}

/// Whether `pid` still runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    read_proc(pid).is_some_and(|p| p.state != 'Z' && p.state != 'X')
}

pub fn kill(pid: u32, sig: libc::c_int) {
    // Never signal "every process" or our own process group by accident.
    if pid <= 1 || pid == std::process::id() {
        return;
    }
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Waits until none of `pids` is alive; returns those still alive after `timeout`.
pub fn wait_gone(pids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ----- mounts -----

/// Undoes the octal escapes of `/proc/self/mountinfo` (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && let Some(oct) = s.get(i + 1..i + 4)
            && oct.bytes().all(|c| (b'0'..=b'7').contains(&c))
            && let Ok(v) = u8::from_str_radix(oct, 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Every mount point of our mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape(m)))
        .collect()
}

/// Mount points at or under `prefix`.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    mount_points()
        .into_iter()
        .filter(|m| m.starts_with(prefix))
        .collect()
}

/// Unmounts everything at or under `prefix`, deepest (and most recent) first, lazily if
/// a mount is busy. Errors if something is still mounted afterwards.
pub fn unmount_under(prefix: &Path) -> Result<()> {
    for _ in 0..10 {
        let mut mounts: Vec<(usize, PathBuf)> =
            mounts_under(prefix).into_iter().enumerate().collect();
        if mounts.is_empty() {
            return Ok(());
        }
        // Deepest first; among equal depths the later (stacked on top) first.
        mounts.sort_by_key(|(i, m)| std::cmp::Reverse((m.components().count(), *i)));
        for (_, m) in mounts {
            let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2 with a valid NUL-terminated path.
            unsafe {
                if libc::umount2(c.as_ptr(), 0) != 0 {
                    libc::umount2(c.as_ptr(), libc::MNT_DETACH);
                }
            }
        }
    }
    let left = mounts_under(prefix);
    if !left.is_empty() {
        bail!("still mounted under {}: {left:?}", prefix.display());
    }
    Ok(())
}

/// Removes `path` recursively without ever crossing into another filesystem or
/// following a symlink; refuses while anything is mounted under it (deleting through a
/// bind mount would delete the mounted files).
pub fn remove_tree(path: &Path) -> Result<()> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    let mounted = mounts_under(path);
    if !mounted.is_empty() {
        bail!(
            "not removing {}: still mounted under it: {mounted:?}",
            path.display()
        );
    }
    if !meta.is_dir() {
        return std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()));
    }
    remove_dir_same_dev(path, meta.dev())
}

fn remove_dir_same_dev(dir: &Path, dev: u64) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let p = entry.path();
        let meta = std::fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            if meta.dev() != dev {
                bail!("{} is on another filesystem; not removing it", p.display());
            }
            remove_dir_same_dev(&p, dev)?;
        } else {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

// ----- cgroups -----

/// Every `kubepods` cgroup directory (all controllers, cgroup v1 and the v2 `unified`
/// hierarchy), deepest first.
pub fn kubepods_cgroups() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(ctrls) = std::fs::read_dir("/sys/fs/cgroup") else {
        return out;
    };
    for c in ctrls.flatten() {
        let top = c.path().join("kubepods");
        if top.is_dir() {
            collect_dirs(&top, &mut out);
        }
    }
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out
}

fn collect_dirs(dir: &Path, out: &mut Vec<PathBuf>) {
    out.push(dir.to_owned());
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                collect_dirs(&e.path(), out);
            }
        }
    }
}

/// The processes in any `kubepods` cgroup.
pub fn kubepods_pids() -> Vec<u32> {
    let mut pids: Vec<u32> = kubepods_cgroups()
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

// ----- the lock -----

/// The machine-wide real-node lock: an exclusive `flock` on [`LOCK_PATH`].
///
/// Held by the process that started the node; for a detached node by the node's own
/// processes (they inherit the descriptor), so it is free exactly when nothing of a
/// node runs. The holder unlinks the file when done; acquiring checks that the locked
/// file is still the one at the path.
#[derive(Debug)]
pub struct NodeLock {
    file: File,
}

impl NodeLock {
    /// One attempt; `None` if somebody else holds it.
    pub fn try_acquire() -> Result<Option<NodeLock>> {
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .open(LOCK_PATH)
                .with_context(|| format!("opening {LOCK_PATH}"))?;
            // SAFETY: flock on a descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let err = std::io::Error::last_os_error();
                if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                    return Ok(None);
                }
                return Err(err).context(format!("locking {LOCK_PATH}"));
            }
            // The previous holder may have unlinked the file between our open and flock.
            let ours = file.metadata()?;
            match std::fs::metadata(LOCK_PATH) {
                Ok(m) if m.ino() == ours.ino() && m.dev() == ours.dev() => {
                    return Ok(Some(NodeLock { file }));
                }
                _ => continue,
            }
        }
    }

    /// Waits up to `wait` for the lock, saying on stderr who holds it. Fails at once if
    /// a detached node (`cargo xtask cluster up --real-node`) holds it, as that one only
    /// goes when stopped.
    pub fn acquire(wait: Duration) -> Result<NodeLock> {
        let started = Instant::now();
        let mut next_note = started;
        loop {
            if let Some(lock) = NodeLock::try_acquire()? {
                return Ok(lock);
            }
            let owner = lock_owner();
            if owner.starts_with("detached") {
                bail!(
                    "a detached real node is running ({owner}; processes {}): only one real \
                     node per machine; stop it first (`cargo xtask cluster down`)",
                    describe_holders()
                );
            }
            if started.elapsed() >= wait {
                bail!(
                    "another real node still runs after waiting {wait:?} for {LOCK_PATH} \
                     ({owner}; held by {}): only one real node per machine",
                    describe_holders()
                );
            }
            if Instant::now() >= next_note {
                eprintln!(
                    "[testcluster] waiting for {LOCK_PATH} (another real node runs: {owner}; \
                     held by {})",
                    describe_holders()
                );
                next_note = Instant::now() + Duration::from_secs(30);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Records who holds the lock (shown to whoever waits for it).
    pub fn set_owner(&self, text: &str) -> Result<()> {
        let mut f = &self.file;
        self.file.set_len(0)?;
        f.write_all(format!("{text}\n").as_bytes())?;
        Ok(())
    }

    pub fn fd(&self) -> i32 {
        self.file.as_raw_fd()
    }

    /// Unlinks the lock file while still holding it, then releases it.
    pub fn release(self) {
        let _ = std::fs::remove_file(LOCK_PATH);
        drop(self.file);
    }
}

/// The owner note written by the lock's holder (empty if none).
pub fn lock_owner() -> String {
    std::fs::read_to_string(LOCK_PATH)
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// The processes with the lock file open (`pid (comm)`), for messages.
pub fn describe_holders() -> String {
    let target = Path::new(LOCK_PATH);
    let mut holders = Vec::new();
    for p in processes() {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{}/fd", p.pid)) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l == target))
        {
            holders.push(format!("{} ({})", p.pid, p.comm));
        }
    }
    if holders.is_empty() {
        "no process found".into()
    } else {
        holders.join(", ")
    }
}
