//! The real node's shell entry points.
//!
//! ```text
//! testcluster-real-node cleanup [--force]  remove what a real node left on this host (a
//!                                          killed test, say); refuses while a node runs
//!                                          unless --force
//! testcluster-real-node check              list what a real node left; exit 1 if any
//! testcluster-real-node up DIR             start a detached cluster with a real node in DIR
//!                                          (what `cargo xtask cluster up --real-node` does)
//! testcluster-real-node down DIR           stop it (`testcluster::stop_detached`)
//! testcluster-real-node hold               (for testcluster's tests) start a cluster with a
//!                                          real node and a running busybox Pod, print
//!                                          "READY <cluster dir>", then wait to be killed
//! ```
//!
//! `cargo run -p testcluster --bin testcluster-real-node -- cleanup`

use std::io::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use testcluster::{Cluster, Options, REAL_NODE_NAME};

const USAGE: &str =
    "usage: testcluster-real-node <cleanup [--force] | check | up DIR | down DIR | hold>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["cleanup"] => cleanup(false),
        ["cleanup", "--force"] => cleanup(true),
        ["check"] => check(),
        ["up", dir] => up(dir),
        ["down", dir] => down(dir),
        ["hold"] => hold(),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn cleanup(force: bool) -> Result<ExitCode> {
    let found = testcluster::cleanup_real_node(force)?;
    if found.is_empty() {
        println!("nothing of a real node was left");
    } else {
        println!("removed:\n  {}", found.join("\n  "));
    }
    Ok(ExitCode::SUCCESS)
}

fn check() -> Result<ExitCode> {
    let left = testcluster::real_node_leftovers();
    if left.is_empty() {
        println!("clean");
        Ok(ExitCode::SUCCESS)
    } else {
        println!("{}", left.join("\n"));
        Ok(ExitCode::FAILURE)
    }
}

fn up(dir: &str) -> Result<ExitCode> {
    let up = Cluster::start_detached(
        std::path::Path::new(dir),
        Options {
            real_node: true,
            ..Options::default()
        },
    )?;
    println!(
        "cluster with real node {REAL_NODE_NAME} up in {:.1}s at {}",
        up.startup.as_secs_f64(),
        up.api_url
    );
    println!("  control plane: {:?}", up.pids);
    println!("  node: {:?}", up.node_pids);
    println!("  export KUBECONFIG={}", up.kubeconfig.display());
    Ok(ExitCode::SUCCESS)
}

fn down(dir: &str) -> Result<ExitCode> {
    let n = testcluster::stop_detached(std::path::Path::new(dir))?;
    println!("stopped {n} processes");
    Ok(ExitCode::SUCCESS)
}

fn hold() -> Result<ExitCode> {
    let cluster = Cluster::start(Options {
        real_node: true,
        ..Options::default()
    })?;
    let info = cluster.real_node().context("no real node")?;
    let busybox = info.image("busybox").context("no busybox image")?;
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "held", "namespace": "default" },
        "spec": {
            "nodeName": REAL_NODE_NAME,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "sleep",
                "image": busybox,
                "command": ["sleep", "3600"],
            }],
        },
    });
    let mut apply = cluster
        .kubectl(["apply", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    apply
        .stdin
        .take()
        .context("kubectl stdin")?
        .write_all(pod.to_string().as_bytes())?;
    if !apply.wait()?.success() {
        bail!("kubectl apply failed");
    }
    let wait = cluster
        .kubectl([
            "wait",
            "--for=condition=Ready",
            "pod/held",
            "-n",
            "default",
            "--timeout=120s",
        ])
        .status()?;
    if !wait.success() {
        bail!("the held Pod did not become Ready");
    }
    println!("READY {}", cluster.dir().display());
    std::io::stdout().flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
