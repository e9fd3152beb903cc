//! tracehook installed in the cluster the way users install it, on a real node (issue
//! 11): its own image (tests/node/tracehook-image.sh, from the binary these tests were
//! built with) imported into the node's containerd under the chart's default name, then
//! `helm install` with default values and, separately, `kubectl apply -k manifests/`.
//! The API server reaches the replicas through the Service, they reach it through the
//! `kubernetes` Service, and nothing runs on the host but the cluster itself. Each path
//! ends with the README's uninstall steps, run as written.
//!
//! Needs root; fails, never skips, when the node cannot start.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::Value;
use testcluster::Cluster;

mod load;
mod operations;
// sysbench's percentiles (median is not used here).
#[allow(dead_code)]
#[path = "../../sysbench/src/stats.rs"]
mod stats;

/// The chart's default image (`image.repository`, `appVersion`) and the manifests'.
const IMAGE: &str = "tracehook/tracehook:0.1.0";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// One install at a time: both paths use the namespace and the names `tracehook`.
static INSTALL: Mutex<()> = Mutex::new(());

/// The real-node cluster with tracehook's image imported, the backend instance
/// `obs/test` (which the in-cluster reconciler provisions once it runs), a labelled
/// namespace `shop`, and for the load (load.rs) `load` (labelled, naming `obs/test`)
/// and `load-plain`.
fn cluster() -> &'static Cluster {
    static READY: OnceLock<()> = OnceLock::new();
    let cluster = testcluster::shared_real_node();
    READY.get_or_init(|| {
        let dir = cluster.dir().join("tracehook-image");
        std::fs::create_dir_all(&dir).expect("image dir");
        let tar = dir.join("tracehook.tar");
        // The binary these tests were built with, unless BENCHMARKS.md's run names
        // a release build.
        let binary = std::env::var_os("TRACEHOOK_IMAGE_BINARY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tracehook")));
        eprintln!("tracehook's image from {}", binary.display());
        ok(Command::new("bash")
            .arg(root().join("tests/node/tracehook-image.sh"))
            .arg(&binary)
            .arg(&tar)
            .arg(IMAGE));
        testcluster::import_image(&tar).expect("image imported into the node's containerd");
        apply(
            cluster,
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: obs\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    \
             tracehook.dev/injection: enabled\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata:\n  name: load\n  labels:\n    \
             tracehook.dev/injection: enabled\n  annotations:\n    \
             tracehook.dev/inject: obs/test\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata:\n  name: load-plain\n",
        );
    });
    cluster
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed:\n{}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn kubectl(cluster: &Cluster, args: &[&str]) -> String {
    ok(&mut cluster.kubectl(args))
}

fn apply(cluster: &Cluster, yaml: &str) {
    let (path, _guard) = temp_file(yaml);
    kubectl(cluster, &["apply", "-f", &path.display().to_string()]);
}

fn temp_file(content: &str) -> (PathBuf, TempFile) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!(
        "tracehook-in-cluster-{}-{n}.yaml",
        std::process::id()
    ));
    std::fs::write(&path, content).expect("temp file");
    (path.clone(), TempFile(path))
}

struct TempFile(PathBuf);
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn json(cluster: &Cluster, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(cluster, &all)).expect("kubectl JSON")
}

/// Whether `args` (a `kubectl get`) finds anything.
fn exists(cluster: &Cluster, args: &[&str]) -> bool {
    let mut all = vec!["get"];
    all.extend(args);
    all.extend(["--ignore-not-found", "-o", "name"]);
    !kubectl(cluster, &all).trim().is_empty()
}

fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// helm, built from its Go module by tests/cluster/build-helm.sh (cached).
fn helm(cluster: &Cluster) -> Command {
    static HELM: OnceLock<PathBuf> = OnceLock::new();
    let path = HELM.get_or_init(|| {
        let out = ok(Command::new("bash").arg(root().join("tests/cluster/build-helm.sh")));
        PathBuf::from(out.lines().last().expect("a path").trim())
    });
    let mut cmd = Command::new(path);
    cmd.arg("--kubeconfig").arg(cluster.kubeconfig_path());
    cmd
}

/// What both install paths must show once `tracehook` is rolled out in `tracehook`.
fn check_installed(cluster: &Cluster, app: &str) {
    // Two replicas, Ready.
    wait_until(
        Duration::from_secs(180),
        "2 tracehook replicas Ready",
        || {
            let d = json(
                cluster,
                &["-n", "tracehook", "get", "deployment", "tracehook"],
            );
            d.pointer("/status/readyReplicas").and_then(Value::as_u64) == Some(2)
        },
    );
    let pods: Vec<(String, String)> = replica_pods(cluster)
        .iter()
        .map(|p| {
            (
                p.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .expect("name")
                    .to_owned(),
                p.pointer("/status/podIP")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(pods.len(), 2, "two replicas: {pods:?}");

    // The Secret, created once by the replicas, and its CA in the caBundle; the
    // API server reaches the webhook through the Service.
    let secret = json(
        cluster,
        &["-n", "tracehook", "get", "secret", "tracehook-tls"],
    );
    let ca = secret
        .pointer("/data/ca.crt")
        .and_then(Value::as_str)
        .expect("ca.crt")
        .to_owned();
    let mwc = json(
        cluster,
        &["get", "mutatingwebhookconfiguration", "tracehook"],
    );
    let client_config = &mwc["webhooks"][0]["clientConfig"];
    wait_until(Duration::from_secs(60), "the caBundle patched", || {
        let mwc = json(
            cluster,
            &["get", "mutatingwebhookconfiguration", "tracehook"],
        );
        mwc["webhooks"][0]["clientConfig"]["caBundle"].as_str() == Some(ca.as_str())
    });
    assert_eq!(
        client_config["service"]["name"], "tracehook",
        "{client_config}"
    );
    assert_eq!(client_config["service"]["namespace"], "tracehook");
    assert!(
        client_config.get("url").is_none(),
        "no URL: {client_config}"
    );

    // The reconciler's Lease, held by one of the replicas.
    wait_until(
        Duration::from_secs(60),
        "the reconciler's Lease held by a replica",
        || {
            let lease = json(
                cluster,
                &["-n", "tracehook", "get", "lease", "tracehook-reconciler"],
            );
            let holder = lease
                .pointer("/spec/holderIdentity")
                .and_then(Value::as_str)
                .unwrap_or("");
            pods.iter().any(|(name, _)| name == holder)
        },
    );

    // A Pod in a labelled namespace is injected (through the Service) and runs.
    let name = app;
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  \
         nodeSelector: {{{label}: \"true\"}}\n  containers:\n    - name: app\n      image: busybox:1.35\n      \
         command: [sleep, \"3600\"]\n",
        label = testcluster::REAL_NODE_LABEL
    );
    // The caches may still be syncing the instance: retry a few times.
    let mut injected = false;
    for attempt in 0..20 {
        let (path, _guard) = temp_file(&manifest);
        let out = cluster
            .kubectl(["create", "-o", "json", "-f", &path.display().to_string()])
            .output()
            .expect("kubectl runs");
        assert!(out.status.success(), "creating {name}: {}", text(&out));
        let pod: Value = serde_json::from_slice(&out.stdout).expect("Pod JSON");
        injected = pod
            .pointer("/metadata/annotations/tracehook.dev~1status")
            .is_some();
        if injected {
            break;
        }
        kubectl(
            cluster,
            &["-n", "shop", "delete", "pod", name, "--wait=true"],
        );
        eprintln!("attempt {attempt}: {name} not injected yet");
        std::thread::sleep(Duration::from_secs(2));
    }
    assert!(injected, "{name} was injected by the in-cluster webhook");
    wait_until(Duration::from_secs(120), "the injected Pod Ready", || {
        let pod = json(cluster, &["-n", "shop", "get", "pod", name]);
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });

    // /metrics of each replica, through its Pod IP, counts the admissions.
    let mut injected_total = 0.0;
    for (pod, ip) in &pods {
        let body = http_get(ip, 8080, "/metrics").unwrap_or_else(|e| panic!("{pod} /metrics: {e}"));
        injected_total += body
            .lines()
            .filter(|l| l.starts_with("tracehook_admission_requests_total{outcome=\"injected\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>();
    }
    assert!(
        injected_total >= 1.0,
        "the replicas counted {injected_total} injections"
    );
}

/// tracehook's replicas in `tracehook`, but those being deleted.
fn replica_pods(cluster: &Cluster) -> Vec<Value> {
    let pods = json(
        cluster,
        &[
            "-n",
            "tracehook",
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/name=tracehook",
        ],
    );
    pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
        .cloned()
        .collect()
}

fn http_get(ip: &str, port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse().expect("address"),
        Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body)
}

/// The README's uninstall block (### Uninstall), run line by line with this cluster's
/// kubeconfig; `alternative` picks the text after `# or:` on the helm line.
fn readme_uninstall(cluster: &Cluster, alternative: bool) {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README");
    let section = readme
        .split("### Uninstall")
        .nth(1)
        .expect("an Uninstall section");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("a sh block");
    let lines: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(
        lines[0].starts_with("kubectl delete mutatingwebhookconfiguration"),
        "webhook first: {lines:?}"
    );
    for line in lines {
        let line = match line.split_once("# or:") {
            Some((_, other)) if alternative => other.trim(),
            Some((first, _)) => first.trim(),
            None => line.trim(),
        };
        let words: Vec<&str> = line.split_whitespace().collect();
        let mut cmd = match words[0] {
            "kubectl" => cluster.kubectl(&words[1..]),
            "helm" => {
                let mut c = helm(cluster);
                c.args(&words[1..]);
                c
            }
            other => panic!("the uninstall block runs {other}"),
        };
        cmd.current_dir(root());
        eprintln!("uninstall: {line}");
        ok(&mut cmd);
    }
}

fn check_uninstalled(cluster: &Cluster, app_pods_before: usize) {
    // The webhook configuration went first, so creations never waited on it.
    wait_until(
        Duration::from_secs(120),
        "the namespace tracehook gone",
        || !exists(cluster, &["namespace", "tracehook"]),
    );
    assert!(!exists(
        cluster,
        &["mutatingwebhookconfiguration", "tracehook"]
    ));
    let leftovers = kubectl(
        cluster,
        &["get", "clusterroles,clusterrolebindings", "-o", "name"],
    );
    assert!(
        !leftovers.lines().any(|l| l.contains("tracehook")),
        "cluster-wide objects left: {leftovers}"
    );
    assert_eq!(
        running_app_pods(cluster),
        app_pods_before,
        "injected Pods keep running"
    );
}

fn running_app_pods(cluster: &Cluster) -> usize {
    let pods = json(cluster, &["-n", "shop", "get", "pods"]);
    pods["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|p| p.pointer("/status/phase").and_then(Value::as_str) == Some("Running"))
        .count()
}

/// On a failed test, removes what either install path left, so that the other path
/// starts from a clean cluster (best effort: errors are ignored).
struct CleanUpOnPanic(&'static Cluster);

impl Drop for CleanUpOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let cluster = self.0;
        let _ = cluster
            .kubectl([
                "delete",
                "mutatingwebhookconfiguration",
                "tracehook",
                "--ignore-not-found",
            ])
            .output();
        let _ = helm(cluster)
            .args(["uninstall", "tracehook", "-n", "tracehook"])
            .output();
        let manifests = root().join("manifests").display().to_string();
        let _ = cluster
            .kubectl(["delete", "-k", &manifests, "--ignore-not-found"])
            .output();
        let _ = cluster
            .kubectl(["delete", "namespace", "tracehook", "--ignore-not-found"])
            .output();
    }
}

fn instance(cluster: &Cluster) {
    kubectl(
        cluster,
        &[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/jaegers.tracehook.dev",
        ],
    );
    apply(
        cluster,
        "apiVersion: tracehook.dev/v1alpha1\nkind: Jaeger\nmetadata:\n  name: test\n  namespace: obs\nspec: {}\n",
    );
}

#[test]
fn helm_install_with_default_values_injects_through_the_service_and_uninstalls_cleanly() {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster();
    let _clean = CleanUpOnPanic(cluster);
    let chart = root().join("charts/tracehook");
    ok(helm(cluster)
        .args(["install", "tracehook"])
        .arg(&chart)
        .args([
            "-n",
            "tracehook",
            "--create-namespace",
            "--wait",
            "--timeout",
            "300s",
        ]));
    instance(cluster);
    check_installed(cluster, "app-helm");
    let secret_uid = |c: &Cluster| {
        json(c, &["-n", "tracehook", "get", "secret", "tracehook-tls"])["metadata"]["uid"].clone()
    };
    let uid = secret_uid(cluster);
    // helm test: a dry-run Pod in a labelled namespace comes back injected. (No
    // --logs: the hook's delete policy removes the Pod once it has succeeded.)
    let out = helm(cluster)
        .args(["test", "tracehook", "-n", "tracehook", "--timeout", "180s"])
        .output()
        .expect("helm test runs");
    assert!(out.status.success(), "helm test failed:\n{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Succeeded"),
        "{}",
        text(&out)
    );
    assert_eq!(secret_uid(cluster), uid, "the Secret was created once");
    let app_pods = running_app_pods(cluster);
    readme_uninstall(cluster, false);
    check_uninstalled(cluster, app_pods);
}

#[test]
fn kustomize_install_injects_through_the_service_and_uninstalls_cleanly() {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster();
    kubectl(
        cluster,
        &[
            "apply",
            "-k",
            &root().join("manifests").display().to_string(),
        ],
    );
    instance(cluster);
    check_installed(cluster, "app-kustomize");
    let app_pods = running_app_pods(cluster);
    // The uninstall under load, with failurePolicy Fail: the webhook configuration
    // goes first, so no creation waits for replicas that are gone.
    kubectl(
        cluster,
        &[
            "patch",
            "mutatingwebhookconfiguration",
            "tracehook",
            "--type=json",
            "-p",
            r#"[{"op":"replace","path":"/webhooks/0/failurePolicy","value":"Fail"}]"#,
        ],
    );
    let load = load::Load::start(cluster, "load", "load-plain", 10);
    std::thread::sleep(Duration::from_secs(5));
    let from = load.now();
    readme_uninstall(cluster, true);
    check_uninstalled(cluster, app_pods);
    std::thread::sleep(Duration::from_secs(5));
    let step = load::Step {
        name: "kubectl delete -k (README)".into(),
        from,
        to: load.now(),
    };
    let records = load.stop();
    eprintln!("{}", load::table(std::slice::from_ref(&step), &records));
    for hooked in [true, false] {
        let f = load::figures(records.iter().filter(|r| r.hooked == hooked));
        assert!(f.sent > 0, "no creations sent");
        assert!(f.refused.is_empty(), "refused: {:?}", f.refused);
        assert_eq!(f.unreachable, 0, "unreachable creations");
    }
}
