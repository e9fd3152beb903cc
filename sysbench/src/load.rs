//! Item 2: HTTPS load. The release `tracehook serve --no-cluster` and the no-op server
//! (same TLS/HTTP stack, no admission work) side by side in one run, under `oha`,
//! posting real AdmissionReviews over HTTP/1.1 keep-alive and HTTP/2.
//!
//! Two phases, each alternating the servers round by round so that other load on the
//! machine falls on both: the highest throughput at a fixed concurrency, then a fixed
//! rate (2,000 requests/s by default) for the latency percentiles. Memory is sampled
//! from /proc throughout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::stats::median;
use crate::sys::{self, Memory};

#[derive(Clone, Debug)]
pub struct Options {
    /// Seconds per oha run.
    pub duration: u64,
    /// Throughput rounds per server, body and protocol.
    pub rounds: usize,
    /// Requests per second of the latency phase.
    pub rate: u32,
    /// HTTP/1.1 connections (HTTP/2: `connections / 8` connections × 8 streams).
    pub connections: usize,
    /// Servers on CPU 1, oha on CPU 0.
    pub pin: bool,
    /// A malloc to try as well: a third server, tracehook with this library in
    /// `LD_PRELOAD` (e.g. Debian's libmimalloc.so.2).
    pub preload: Option<PathBuf>,
    /// tracehook against a real control plane (live caches, the reconciler and the Pod
    /// watch running, as installed) instead of `--no-cluster`.
    pub cluster: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            duration: 10,
            rounds: 3,
            rate: 2000,
            connections: 16,
            pin: true,
            preload: None,
            cluster: false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Http1,
    Http2,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
        }
    }
}

/// One oha run, as its JSON summary tells it.
#[derive(Clone, Debug, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non_200: u64,
    errors: u64,
    /// oha's error messages with their counts.
    error_kinds: String,
}

struct Server {
    name: String,
    child: Child,
    port: u16,
    peak_rss_kib: Arc<AtomicU64>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a load run measures against: the servers, the bodies they are sent and where
/// the run's files go.
struct Setup {
    dir: PathBuf,
    oha: PathBuf,
    /// (label, AdmissionReview file)
    bodies: [(&'static str, PathBuf); 3],
    /// tracehook's probe port (its `/metrics`).
    probe_port: u16,
    /// tracehook, the no-op baseline, and tracehook with `--preload` if asked.
    ours: Server,
    baseline: Server,
    preloaded: Option<Server>,
    /// Dropped last, after the servers that use it.
    _cluster: Option<testcluster::Cluster>,
}

impl Setup {
    /// Baseline second: the "% of no-op" column divides by the server at index 1.
    fn servers(&self) -> Vec<&Server> {
        [
            Some(&self.ours),
            Some(&self.baseline),
            self.preloaded.as_ref(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

pub fn run(opts: &Options) -> Result<()> {
    let setup = set_up(opts)?;
    let servers = setup.servers();
    let idle: Vec<Memory> = servers
        .iter()
        .map(|s| Memory::of(s.child.id()).unwrap_or_default())
        .collect();
    for (server, memory) in servers.iter().zip(&idle) {
        println!("idle: {} {memory}", server.name);
    }

    let sampling = Arc::new(AtomicBool::new(true));
    let samplers: Vec<_> = servers
        .iter()
        .map(|s| sample_rss(s.child.id(), s.peak_rss_kib.clone(), sampling.clone()))
        .collect();

    let mut report = String::new();
    throughput(&setup, &servers, opts, &mut report)?;
    fixed_rate(&setup, &servers, opts, &mut report)?;

    sampling.store(false, Ordering::Release);
    for s in samplers {
        let _ = s.join();
    }
    memory_report(&servers, &idle, &mut report)?;
    counts_report(setup.probe_port, &mut report)?;
    println!("{report}");
    std::fs::write(setup.dir.join("report.md"), &report)?;
    println!("(also in {})", setup.dir.join("report.md").display());
    Ok(())
}

/// Certificates, the two bodies, and the servers started and checked.
fn set_up(opts: &Options) -> Result<Setup> {
    let dir = crate::run_dir("load")?;
    let tracehook = crate::release_binary("tracehook")?;
    let noop = crate::release_binary("noop-server")?;
    let oha = find_oha()?;
    println!("{}", sys::describe_machine());
    println!(
        "oha: {}",
        String::from_utf8_lossy(&Command::new(&oha).arg("--version").output()?.stdout).trim()
    );

    let certs = crate::certificates(&dir)?;
    let bodies = bodies(&dir)?;
    let cluster = if opts.cluster {
        let pods = bodies
            .iter()
            .map(|(_, path)| -> Result<Value> {
                let review: Value = serde_json::from_slice(&std::fs::read(path)?)?;
                Ok(review["request"]["object"].clone())
            })
            .collect::<Result<Vec<_>>>()?;
        Some(live_cluster(&pods)?)
    } else {
        None
    };
    println!(
        "tracehook: {}",
        match &cluster {
            Some(_) => "against a control plane (live caches, reconciler, Pod watch)",
            None => "--no-cluster --instance obs/test",
        }
    );

    let cert = certs.join("tls.crt");
    let key = certs.join("tls.key");
    let probe_port = sys::free_port();
    let tracehook_server = |name: &str, probe_port: u16, preload: Option<&Path>| {
        let port = sys::free_port();
        let mut cmd = pinned(opts.pin, "1", &tracehook);
        match &cluster {
            Some(cluster) => {
                crate::serve_with_cluster(&mut cmd, &cluster.kubeconfig_path(), port, probe_port)
            }
            None => crate::serve_without_cluster(&mut cmd, port, probe_port),
        }
        cmd.arg("--tls-cert-file")
            .arg(&cert)
            .arg("--tls-key-file")
            .arg(&key);
        if let Some(lib) = preload {
            cmd.env("LD_PRELOAD", lib);
        }
        start(name, cmd, port, &dir.join(format!("{port}.log")))
    };
    let ours = tracehook_server("tracehook", probe_port, None)?;
    let port = sys::free_port();
    let mut cmd = pinned(opts.pin, "1", &noop);
    cmd.arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key);
    let baseline = start("no-op", cmd, port, &dir.join("noop.log"))?;
    let preloaded = match &opts.preload {
        Some(lib) => {
            let name = format!(
                "tracehook, LD_PRELOAD={}",
                lib.file_name().unwrap_or_default().to_string_lossy()
            );
            Some(tracehook_server(&name, sys::free_port(), Some(lib))?)
        }
        None => None,
    };
    // With a cluster, ready means the caches are synced.
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_status(probe_port, "/readyz") != Some(200) {
        if Instant::now() > deadline {
            bail!("tracehook is not ready after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for (_, body) in &bodies {
        check_patched(&ours, body, &certs.join("ca.crt"))?;
    }
    Ok(Setup {
        dir,
        oha,
        bodies,
        probe_port,
        ours,
        baseline,
        preloaded,
        _cluster: cluster,
    })
}

/// For `--cluster`: a control plane with the namespaces of the bodies labelled for
/// injection, the instance they get, `obs/test`, and the objects their Pods refer to.
fn live_cluster(pods: &[Value]) -> Result<testcluster::Cluster> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let (cluster, client) = crate::cluster::start().await?;
        let enabled = serde_json::json!({"tracehook.dev/injection": "enabled"});
        for namespace in ["demo", "shop"] {
            crate::cluster::create_namespace(&client, namespace, enabled.clone()).await?;
        }
        crate::cluster::create_namespace(&client, "obs", serde_json::json!({})).await?;
        crate::cluster::create_instance(&client, "obs", "test").await?;
        owners_of(&client, pods).await?;
        Ok(cluster)
    })
}

/// The objects the bodies' Pods refer to, as they exist when a real ReplicaSet creates
/// its Pods (tracehook reads each from its caches; a missing one costs a GET per
/// admission): for every Pod owned by a ReplicaSet, that ReplicaSet, owned by one
/// Deployment `shop-frontend` of its namespace, and every ConfigMap its containers
/// import with `envFrom`. The Deployment is paused with no replicas, so that the
/// controller creates no ReplicaSet of its own and no Pod.
async fn owners_of(client: &kube::Client, pods: &[Value]) -> Result<()> {
    use crate::cluster::create_namespaced;
    use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
    use k8s_openapi::api::core::v1::ConfigMap;
    use std::collections::BTreeSet;
    let labels = serde_json::json!({"app.kubernetes.io/name": "frontend"});
    let template = serde_json::json!({
        "metadata": {"labels": labels},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    });
    let mut created = BTreeSet::new();
    for pod in pods {
        let Some(namespace) = pod.pointer("/metadata/namespace").and_then(Value::as_str) else {
            continue;
        };
        let owners = pod
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array);
        for owner in owners.into_iter().flatten() {
            let name = owner["name"].as_str().unwrap_or_default();
            if owner["kind"] != "ReplicaSet" || !created.insert(("rs", namespace, name)) {
                continue;
            }
            let deployment = if created.insert(("deploy", namespace, "shop-frontend")) {
                create_namespaced::<Deployment>(
                    client,
                    serde_json::json!({
                        "metadata": {"name": "shop-frontend", "namespace": namespace},
                        "spec": {"replicas": 0, "paused": true, "selector": {"matchLabels": labels}, "template": template}
                    }),
                )
                .await?
            } else {
                kube::Api::<Deployment>::namespaced(client.clone(), namespace)
                    .get("shop-frontend")
                    .await?
            };
            create_namespaced::<ReplicaSet>(
                client,
                serde_json::json!({
                    "metadata": {
                        "name": name,
                        "namespace": namespace,
                        "ownerReferences": [{
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": "shop-frontend",
                            "uid": deployment.metadata.uid,
                            "controller": true,
                            "blockOwnerDeletion": true
                        }]
                    },
                    "spec": {"replicas": 0, "selector": {"matchLabels": labels}, "template": template}
                }),
            )
            .await?;
        }
        let containers = pod.pointer("/spec/containers").and_then(Value::as_array);
        for container in containers.into_iter().flatten() {
            let imports = container["envFrom"].as_array();
            for name in imports
                .into_iter()
                .flatten()
                .filter_map(|from| from.pointer("/configMapRef/name").and_then(Value::as_str))
            {
                if created.insert(("cm", namespace, name)) {
                    create_namespaced::<ConfigMap>(
                        client,
                        serde_json::json!({
                            "metadata": {"name": name, "namespace": namespace},
                            "data": {"REGION": "eu-1", "LOG_LEVEL": "info"}
                        }),
                    )
                    .await?;
                }
            }
        }
    }
    Ok(())
}

/// The bodies every server is sent: the fixture, a typical Pod's review, and the review
/// of a Deployment's Pod as the API server sent it (`tracehook-sysbench capture`).
fn bodies(dir: &Path) -> Result<[(&'static str, PathBuf); 3]> {
    let root = crate::workspace_root();
    let fixture = root.join("tests/data/reviews/pod-asking-for-injection.json");
    let typical = dir.join("typical-review.json");
    let review = crate::pods::review(&crate::pods::pod(crate::pods::TYPICAL), "bench-typical");
    std::fs::write(&typical, serde_json::to_vec(&review)?)?;
    let bodies = [
        ("fixture (1 container)", fixture),
        ("typical (3 containers, 40 env)", typical),
        (
            "captured (typical, from the API server)",
            root.join(crate::cli::CAPTURED_REVIEW),
        ),
    ];
    Ok(bodies)
}

/// Throughput: every server, body and protocol for `opts.rounds` rounds, medians in
/// the report.
fn throughput(
    setup: &Setup,
    servers: &[&Server],
    opts: &Options,
    report: &mut String,
) -> Result<()> {
    writeln!(
        report,
        "\n### Throughput, {} connections (HTTP/2: {} connections × 8 streams), {} s per run, median of {} rounds\n",
        opts.connections,
        (opts.connections / 8).max(1),
        opts.duration,
        opts.rounds
    )?;
    writeln!(
        report,
        "| body | protocol | server | req/s | % of no-op | p50 ms | p99 ms | errors |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    for (label, body) in &setup.bodies {
        for protocol in [Protocol::Http1, Protocol::Http2] {
            let runs = throughput_rounds(setup, servers, opts, label, body, protocol)?;
            throughput_rows(servers, &runs, label, protocol, report)?;
        }
    }
    Ok(())
}

/// One body and protocol: `opts.rounds` runs of each server (a list per server).
fn throughput_rounds(
    setup: &Setup,
    servers: &[&Server],
    opts: &Options,
    label: &str,
    body: &Path,
    protocol: Protocol,
) -> Result<Vec<Vec<Run>>> {
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); servers.len()];
    for round in 0..opts.rounds {
        // Rotate who goes first, so a drift in background load is shared.
        for k in 0..servers.len() {
            let i = (k + round) % servers.len();
            let run = oha_run(&setup.oha, opts, servers[i].port, body, protocol, None)?;
            println!(
                "  {label} {} {} round {round}: {:.0} req/s, p99 {:.3} ms, errors {}",
                protocol.name(),
                servers[i].name,
                run.rps,
                run.p99_ms,
                run.errors + run.non_200
            );
            if run.errors > 0 {
                println!("    errors: {}", run.error_kinds);
            }
            runs[i].push(run);
        }
    }
    Ok(runs)
}

fn throughput_rows(
    servers: &[&Server],
    runs: &[Vec<Run>],
    label: &str,
    protocol: Protocol,
    report: &mut String,
) -> Result<()> {
    let med = |i: usize, f: fn(&Run) -> f64| median(&runs[i].iter().map(f).collect::<Vec<_>>());
    let baseline_rps = med(1, |r| r.rps);
    for (i, server) in servers.iter().enumerate() {
        let errors: u64 = runs[i].iter().map(|r| r.errors + r.non_200).sum();
        writeln!(
            report,
            "| {label} | {} | {} | {:.0} | {:.0}% | {:.3} | {:.3} | {errors} |",
            protocol.name(),
            server.name,
            med(i, |r| r.rps),
            100.0 * med(i, |r| r.rps) / baseline_rps,
            med(i, |r| r.p50_ms),
            med(i, |r| r.p99_ms),
        )?;
    }
    Ok(())
}

/// Latency at a fixed rate: one run per server, body and protocol.
fn fixed_rate(
    setup: &Setup,
    servers: &[&Server],
    opts: &Options,
    report: &mut String,
) -> Result<()> {
    writeln!(
        report,
        "\n### Fixed rate {} req/s, {} connections, {} s per run, latency corrected for coordinated omission\n",
        opts.rate, opts.connections, opts.duration
    )?;
    writeln!(
        report,
        "| body | protocol | server | achieved req/s | p50 ms | p99 ms | requests | errors |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    for (label, body) in &setup.bodies {
        for protocol in [Protocol::Http1, Protocol::Http2] {
            for server in servers {
                let run = oha_run(
                    &setup.oha,
                    opts,
                    server.port,
                    body,
                    protocol,
                    Some(opts.rate),
                )?;
                if run.errors > 0 {
                    println!(
                        "  {label} {} {} at {} req/s errors: {}",
                        protocol.name(),
                        server.name,
                        opts.rate,
                        run.error_kinds
                    );
                }
                writeln!(
                    report,
                    "| {label} | {} | {} | {:.0} | {:.3} | {:.3} | {} | {} |",
                    protocol.name(),
                    server.name,
                    run.rps,
                    run.p50_ms,
                    run.p99_ms,
                    run.requests,
                    run.errors + run.non_200
                )?;
            }
        }
    }
    Ok(())
}

fn memory_report(servers: &[&Server], idle: &[Memory], report: &mut String) -> Result<()> {
    writeln!(report, "\n### Memory\n")?;
    writeln!(
        report,
        "| server | VmRSS idle MiB | VmRSS peak under load (50 ms samples) MiB | VmHWM at the end MiB |"
    )?;
    writeln!(report, "|---|---|---|---|")?;
    for (i, server) in servers.iter().enumerate() {
        let end = Memory::of(server.child.id()).unwrap_or_default();
        writeln!(
            report,
            "| {} | {:.1} | {:.1} | {:.1} |",
            server.name,
            idle[i].rss_kib as f64 / 1024.0,
            server.peak_rss_kib.load(Ordering::Acquire) as f64 / 1024.0,
            end.hwm_kib as f64 / 1024.0
        )?;
    }
    Ok(())
}

/// tracehook's own admission counters, and what else was busy.
fn counts_report(probe_port: u16, report: &mut String) -> Result<()> {
    let metrics = http_get(probe_port, "/metrics").unwrap_or_default();
    writeln!(report, "\ntracehook's own count of what it answered:\n")?;
    writeln!(report, "```")?;
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("tracehook_admission_requests_total"))
    {
        writeln!(report, "{line}")?;
    }
    writeln!(report, "```")?;
    crate::end_report(report)?;
    Ok(())
}

fn find_oha() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin")));
    for dir in candidates {
        let path = dir.join("oha");
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("oha is not installed: `cargo install oha --locked`")
}

fn pinned(pin: bool, cpu: &str, program: &Path) -> Command {
    if pin {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", cpu]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn start(name: &str, mut cmd: Command, port: u16, log: &Path) -> Result<Server> {
    let log = std::fs::File::create(log)?;
    cmd.stdout(log.try_clone()?)
        .stderr(log)
        .stdin(Stdio::null());
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let server = Server {
        name: name.to_owned(),
        child,
        port,
        peak_rss_kib: Arc::new(AtomicU64::new(0)),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("{name} does not listen on {port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

/// One request by curl, to be sure tracehook answers the body with a patch.
fn check_patched(server: &Server, body: &Path, ca: &Path) -> Result<()> {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args(["-H", "content-type: application/json", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("https://localhost:{}/mutate", server.port))
        .output()
        .context("curl")?;
    let answer: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tracehook's answer: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    if answer.pointer("/response/patch").is_none() {
        bail!("tracehook did not patch {}: {answer}", body.display());
    }
    Ok(())
}

fn sample_rss(
    pid: u32,
    peak: Arc<AtomicU64>,
    running: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while running.load(Ordering::Acquire) {
            if let Some(m) = Memory::of(pid) {
                peak.fetch_max(m.rss_kib, Ordering::AcqRel);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

fn oha_run(
    oha: &Path,
    opts: &Options,
    port: u16,
    body: &Path,
    protocol: Protocol,
    rate: Option<u32>,
) -> Result<Run> {
    let mut cmd = pinned(opts.pin, "0", oha);
    cmd.args(["--no-tui", "--output-format", "json", "--insecure", "-w"])
        .args(["-z", &format!("{}s", opts.duration)])
        .args(["-m", "POST", "-H", "content-type: application/json", "-D"])
        .arg(body);
    match protocol {
        Protocol::Http1 => {
            cmd.args(["-c", &opts.connections.to_string()]);
        }
        Protocol::Http2 => {
            cmd.args(["--http2", "-p", "8"])
                .args(["-c", &(opts.connections / 8).max(1).to_string()]);
        }
    }
    if let Some(rate) = rate {
        cmd.args(["-q", &rate.to_string(), "--latency-correction"]);
    }
    cmd.arg(format!("https://127.0.0.1:{port}/mutate"));
    let out = cmd.output().context("running oha")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let json: Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("oha's JSON: {}", String::from_utf8_lossy(&out.stdout)))?;
    let f = |p: &str| json.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let count = |p: &str| {
        json.pointer(p)
            .and_then(Value::as_object)
            .map(|m| m.values().filter_map(Value::as_u64).sum::<u64>())
            .unwrap_or(0)
    };
    let ok = json
        .pointer("/statusCodeDistribution/200")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let all = count("/statusCodeDistribution");
    Ok(Run {
        rps: f("/summary/requestsPerSec"),
        p50_ms: f("/latencyPercentiles/p50") * 1e3,
        p99_ms: f("/latencyPercentiles/p99") * 1e3,
        requests: all,
        non_200: all - ok,
        errors: count("/errorDistribution"),
        error_kinds: json
            .get("errorDistribution")
            .map(Value::to_string)
            .unwrap_or_default(),
    })
}

/// A plain-HTTP GET on loopback; the body.
pub fn http_get(port: u16, path: &str) -> Option<String> {
    crate::raw_http::http_get(port, path).map(|(_, body)| body)
}

/// The HTTP status of a plain-HTTP GET on loopback.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    crate::raw_http::http_get(port, path).map(|(status, _)| status)
}
