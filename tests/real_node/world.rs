//! The shared real-node world and what the tests do in it: apply manifests, wait for
//! Pods, exec the span client in them, and read traces from Jaeger.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::support::{self, Env, INSTANCE, INSTANCE_NS};

/// The image of the span client (tests/node/spans, with busybox beside it).
pub const SPANS_REPO: &str = "tracehook.dev/test/spans";
/// The user the span client runs as (non-root, as Pod Security `restricted` wants).
const SPANS_UID: u32 = 65532;

static WORLD: OnceLock<Env> = OnceLock::new();

/// The real-node cluster with tracehook serving and `Jaeger obs/test` Running (its
/// Pod Ready on the real node).
pub fn world() -> &'static Env {
    WORLD.get_or_init(|| {
        let started = Instant::now();
        let env = support::setup(
            testcluster::shared_real_node(),
            "real-node",
            "tracehook-real-node",
        );
        wait_jaeger_ready(&env);
        eprintln!(
            "real-node world ready in {:.1}s (cluster, node, tracehook, Jaeger {INSTANCE_NS}/{INSTANCE} Ready)",
            started.elapsed().as_secs_f64()
        );
        env
    })
}

fn wait_jaeger_ready(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let phase = kubectl_in(
            env,
            &[
                "get",
                "jaeger",
                "-n",
                INSTANCE_NS,
                INSTANCE,
                "-o",
                "jsonpath={.status.phase}",
            ],
        );
        if phase.as_deref() == Some("Running") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Jaeger {INSTANCE_NS}/{INSTANCE} not Running (phase {phase:?}): {}\n{}",
            kubectl_in(env, &["describe", "pods", "-n", INSTANCE_NS]).unwrap_or_default(),
            env.webhook.log_tail()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    wait_ready_in(env, INSTANCE_NS, &jaeger_selector());
}

/// The backend's Pods.
pub fn jaeger_selector() -> String {
    format!("app.kubernetes.io/instance={INSTANCE},app.kubernetes.io/managed-by=tracehook")
}

/// Tests that need the backend and tracehook up hold this; a test that takes one of
/// them away (the backend's in-memory storage starts empty when it comes back) holds
/// [`exclusive`].
pub async fn backend_up() -> RwLockReadGuard<'static, ()> {
    SHARED.read().await
}

pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    SHARED.write().await
}

static SHARED: RwLock<()> = RwLock::const_new(());

/// `kubectl ARGS` against the world's cluster: stdout, or `None` when it failed.
fn kubectl_in(env: &Env, args: &[&str]) -> Option<String> {
    let out = env
        .cluster
        .kubectl(args)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl runs");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `kubectl ARGS`, which must succeed: its stdout.
pub fn kubectl(args: &[&str]) -> String {
    let out = world()
        .cluster
        .kubectl(args)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl runs");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `kubectl apply` of these objects (a List), which must succeed.
pub fn apply(objects: &[Value]) {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
    apply_text(&list.to_string());
}

/// `kubectl apply -f -` of a manifest file's text.
pub fn apply_text(manifest: &str) {
    let (ok, _, stderr) = support::kubectl_stdin(world().cluster, &["apply", "-f", "-"], manifest);
    assert!(ok, "kubectl apply: {stderr}");
}

/// A server-side dry-run create of `object`: what the API server would store, or
/// `None` when it refused.
pub fn dry_run_create(object: &Value) -> Option<Value> {
    let (ok, stdout, _) = support::kubectl_stdin(
        world().cluster,
        &["create", "--dry-run=server", "-o", "json", "-f", "-"],
        &object.to_string(),
    );
    ok.then(|| serde_json::from_str(&stdout).ok()).flatten()
}

/// A namespace labelled for injection, with more labels (Pod Security, say).
pub fn labelled_namespace(name: &str, labels: Value) {
    let mut all = json!({"tracehook.dev/injection": "enabled"});
    if let (Some(all), Value::Object(more)) = (all.as_object_mut(), labels) {
        all.extend(more);
    }
    apply(&[json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": all}
    })]);
    // The ServiceAccount admission plugin rejects Pods until `default` exists.
    wait_for(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || kubectl_in(world(), &["get", "serviceaccount", "default", "-n", name]).map(|_| ()),
    );
}

/// Waits until every Pod matching `selector` in `namespace` is Ready (at least one);
/// returns their names.
pub fn wait_ready(namespace: &str, selector: &str) -> Vec<String> {
    wait_ready_in(world(), namespace, selector)
}

fn wait_ready_in(env: &Env, namespace: &str, selector: &str) -> Vec<String> {
    // `kubectl wait` fails at once while no Pod matches yet.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let names = kubectl_in(
            env,
            &["get", "pods", "-n", namespace, "-l", selector, "-o", "name"],
        )
        .unwrap_or_default();
        if !names.trim().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no Pod {selector} in {namespace}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let waited = env
        .cluster
        .kubectl([
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            "pod",
            "-l",
            selector,
            "--timeout=150s",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("kubectl runs");
    assert!(
        waited.status.success(),
        "Pods {selector} in {namespace} not Ready: {}\n{}",
        String::from_utf8_lossy(&waited.stderr),
        kubectl_in(env, &["describe", "pods", "-n", namespace, "-l", selector]).unwrap_or_default()
    );
    kubectl_in(
        env,
        &[
            "get",
            "pods",
            "-n",
            namespace,
            "-l",
            selector,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ],
    )
    .unwrap_or_default()
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

/// Waits until `count` Pods matching `selector` are Ready, and returns them.
pub fn wait_ready_count(
    namespace: &str,
    selector: &str,
    count: usize,
    timeout: Duration,
) -> Vec<Value> {
    wait_for(
        timeout,
        &format!("{count} Pods {selector} Ready in {namespace}"),
        || {
            let pods = get_json(&["pods", "-n", namespace, "-l", selector]);
            let ready: Vec<Value> = pods["items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_ready(p))
                .collect();
            (ready.len() == count).then_some(ready)
        },
    )
}

/// The Pod's Ready condition is True.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

/// The Pod carries tracehook's marker.
pub fn is_injected(pod: &Value) -> bool {
    pod["metadata"]["annotations"]["tracehook.dev/status"].is_string()
}

/// A stored object, as JSON.
pub fn get_json(args: &[&str]) -> Value {
    let mut all = vec!["get"];
    all.extend_from_slice(args);
    all.extend(["-o", "json"]);
    serde_json::from_str(&kubectl(&all)).expect("kubectl get -o json")
}

/// `kubectl exec` of `command` in one container, which must succeed: its output.
pub fn exec(namespace: &str, pod: &str, container: &str, command: &[&str]) -> String {
    let mut args = vec!["exec", "-n", namespace, pod, "-c", container, "--"];
    args.extend_from_slice(command);
    let out = world()
        .cluster
        .kubectl(&args)
        .stdin(Stdio::null())
        .output()
        .expect("kubectl runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{command:?} in {namespace}/{pod}/{container}: {text}"
    );
    text
}

/// The span client's image, as imported into the node.
pub fn spans_image() -> String {
    let info = world().cluster.real_node().expect("a real node");
    info.image(SPANS_REPO)
        .unwrap_or_else(|| panic!("{SPANS_REPO} is not in the node build: {:?}", info.images))
        .to_owned()
}

/// A container running the span client (`spans idle` unless `args` say otherwise),
/// passing Pod Security `restricted` on its own.
pub fn spans_container(name: &str, args: &[&str], env: Value) -> Value {
    let args = if args.is_empty() { &["idle"][..] } else { args };
    json!({
        "name": name,
        "image": spans_image(),
        "imagePullPolicy": "Never",
        "command": ["spans"],
        "args": args,
        "env": env,
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": SPANS_UID,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    })
}

/// A Deployment of one replica with these containers; its Pods are labelled
/// `app=<name>` and carry `annotations`.
pub fn deployment(
    namespace: &str,
    name: &str,
    annotations: Value,
    containers: Vec<Value>,
) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": pod_spec(containers)
            }
        }
    })
}

/// A Pod spec pinned to the real node, quick to stop.
pub fn pod_spec(containers: Vec<Value>) -> Value {
    json!({
        "nodeSelector": {testcluster::REAL_NODE_LABEL: "true"},
        "terminationGracePeriodSeconds": 2,
        "containers": containers
    })
}

/// Waits until `check` yields a value; panics with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

// ----- Jaeger's query API -----

/// `GET path` on a Service's port through the API server's proxy (as `kubectl proxy`
/// users reach it): the body, or `None` when the request failed.
pub fn service_get(namespace: &str, service_port: &str, path: &str) -> Option<String> {
    let raw = format!("/api/v1/namespaces/{namespace}/services/{service_port}/proxy{path}");
    kubectl_in(world(), &["get", "--raw", &raw])
}

fn query(path: &str) -> Option<Value> {
    let body = service_get(INSTANCE_NS, &format!("{INSTANCE}-query:http-query"), path)?;
    serde_json::from_str(&body).ok()
}

/// The operations Jaeger knows for `service`.
pub fn operations(service: &str) -> Vec<String> {
    query(&format!("/api/services/{service}/operations"))
        .and_then(|v| {
            v["data"].as_array().map(|ops| {
                ops.iter()
                    .filter_map(|o| o.as_str().or_else(|| o["name"].as_str()))
                    .map(str::to_owned)
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Traces of `service` (with `operation` when given) from the last hour.
pub fn traces(service: &str, operation: Option<&str>) -> Vec<Trace> {
    let mut path = format!("/api/traces?service={service}&lookback=1h&limit=50");
    if let Some(op) = operation {
        path.push_str("&operation=");
        path.push_str(op);
    }
    query(&path)
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(Trace)
        .collect()
}

/// The trace holding span `operation` of `service`, once Jaeger has it.
pub fn wait_for_trace(service: &str, operation: &str) -> Trace {
    wait_for(
        Duration::from_secs(60),
        &format!(
            "span {operation} of {service} in Jaeger (services: {:?})",
            services()
        ),
        || {
            traces(service, Some(operation))
                .into_iter()
                .find(|t| t.span(operation).is_some())
        },
    )
}

pub fn services() -> Vec<String> {
    query("/api/services")
        .and_then(|v| v["data"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.as_str().map(str::to_owned))
        .collect()
}

/// One trace of Jaeger's query API (`/api/traces`).
#[derive(Debug)]
pub struct Trace(pub Value);

impl Trace {
    pub fn spans(&self) -> &[Value] {
        self.0["spans"].as_array().map_or(&[], Vec::as_slice)
    }

    pub fn span(&self, operation: &str) -> Option<&Value> {
        self.spans()
            .iter()
            .find(|s| s["operationName"] == operation)
    }

    /// The service and process tags of the process that recorded `span`.
    pub fn process(&self, span: &Value) -> (String, BTreeMap<String, String>) {
        let process = &self.0["processes"][span["processID"].as_str().unwrap_or_default()];
        let tags = process["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                let value = match &t["value"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                Some((t["key"].as_str()?.to_owned(), value))
            })
            .collect();
        (
            process["serviceName"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
            tags,
        )
    }

    /// The process tags of span `operation`'s process.
    pub fn tags_of(&self, operation: &str) -> BTreeMap<String, String> {
        let span = self
            .span(operation)
            .unwrap_or_else(|| panic!("no span {operation} in {self:?}"));
        self.process(span).1
    }
}

/// A Pod's uid and node, and its containers' restart counts (sidecars included).
pub struct PodFacts {
    pub uid: String,
    pub host_ip: String,
    pub restarts: BTreeMap<String, i64>,
    pub json: Value,
}

pub fn pod_facts(namespace: &str, pod: &str) -> PodFacts {
    let json = get_json(&["pod", "-n", namespace, pod]);
    let restarts = ["initContainerStatuses", "containerStatuses"]
        .iter()
        .flat_map(|k| json["status"][k].as_array().cloned().unwrap_or_default())
        .map(|s| {
            (
                s["name"].as_str().unwrap_or_default().to_owned(),
                s["restartCount"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    PodFacts {
        uid: json["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        host_ip: json["status"]["hostIP"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        restarts,
        json,
    }
}

/// A name no other run of this test binary used (span operations must be new).
pub fn unique(prefix: &str) -> String {
    support::fresh_name(&format!("{prefix}-{}", std::process::id()))
}
