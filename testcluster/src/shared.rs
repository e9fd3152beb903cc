//! The shared per-process clusters ([`shared`], [`shared_real_node`]) and the `atexit`
//! hook that stops them.

use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::{Cluster, Options};

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

pub(crate) fn start_shared(
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
