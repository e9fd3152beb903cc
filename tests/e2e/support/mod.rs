//! The shared environment of the end-to-end tests: the cluster, the `Jaeger` CRD and
//! instance `obs/test`, one `tracehook serve` process and its registration.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::{Mutex, OnceLock};

use std::time::{Duration, Instant};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch,
    PatchParams, PostParams,
};
use kube::{Client, CustomResourceExt as _};
use serde_json::{Value, json};
use testcluster::Cluster;
use tracehook::crd::Jaeger;

pub const INSTANCE_NS: &str = "obs";
pub const INSTANCE: &str = "test";

/// Where a `tracehook serve` process gets its serving certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Certificates {
    /// Files written by `tracehook certs` (`Webhook::ca_pem` holds the CA).
    Files,
    /// Self-signed mode: a CA and pair kept in a Secret (`ca_pem` is empty).
    Secret,
}

/// A `tracehook serve` process.
pub struct Webhook {
    child: Mutex<Option<Child>>,
    pub port: u16,
    pub probe_port: u16,
    pub ca_pem: String,
    /// Every start and [`Webhook::restart`] appends to it.
    pub log: PathBuf,
    /// `serve`'s arguments (addresses, certificates, the first start's `extra`).
    args: Vec<std::ffi::OsString>,
}

impl Webhook {
    /// Starts `tracehook serve` against the cluster with a certificate from
    /// `tracehook certs`, and waits for `/readyz`.
    pub fn start(cluster: &Cluster, name: &str) -> Webhook {
        Webhook::start_with(cluster, name, Certificates::Files, &[])
    }

    /// Starts `tracehook serve` with `extra` arguments and the given certificate mode,
    /// and waits for `/readyz`.
    pub fn start_with(
        cluster: &Cluster,
        name: &str,
        mode: Certificates,
        extra: &[&str],
    ) -> Webhook {
        let dir = cluster.dir().join(format!("tracehook-{name}"));
        let certs = dir.join("certs");
        let port = free_port();
        let probe_port = free_port();
        let log = dir.join("serve.log");
        let mut args: Vec<std::ffi::OsString> = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}").into(),
            "--probe-listen".into(),
            format!("127.0.0.1:{probe_port}").into(),
        ];
        args.extend(extra.iter().map(Into::into));
        if mode == Certificates::Files {
            let status = Command::new(env!("CARGO_BIN_EXE_tracehook"))
                .args(["certs", "--out"])
                .arg(&certs)
                .status()
                .expect("tracehook certs runs");
            assert!(status.success(), "tracehook certs failed");
            args.extend([
                "--tls-cert-file".into(),
                certs.join("tls.crt").into(),
                "--tls-key-file".into(),
                certs.join("tls.key").into(),
            ]);
        }
        let ca_pem = std::fs::read_to_string(certs.join("ca.crt")).unwrap_or_default();
        let webhook = Webhook {
            child: Mutex::new(None),
            port,
            probe_port,
            ca_pem,
            log,
            args,
        };
        webhook.spawn(cluster, &[]);
        webhook
    }

    /// Starts `serve` with its arguments and `extra`, and waits for `/readyz`.
    fn spawn(&self, cluster: &Cluster, extra: &[&str]) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracehook"));
        cmd.arg("serve")
            .args(&self.args)
            .args(extra)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("RUST_LOG", "info,tracehook=debug");
        let child = cluster
            .spawn_attached(cmd, &self.log)
            .expect("tracehook serve starts");
        *self.child.lock().expect("lock") = Some(child);
        self.wait_ready(Duration::from_secs(60));
    }

    /// Stops the process as the kubelet does (SIGTERM, SIGKILL after 30 s) and waits.
    #[allow(
        dead_code,
        reason = "used by tests/real_node (tracehook stopped and started)"
    )]
    pub fn stop(&self) {
        let Some(mut child) = self.child.lock().expect("lock").take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops the process and starts it again on the same addresses, with the same
    /// certificate and arguments, and `extra` (e.g. `--heal-missing=evict`).
    #[allow(
        dead_code,
        reason = "used by tests/real_node (tracehook stopped and started)"
    )]
    pub fn restart(&self, cluster: &Cluster, extra: &[&str]) {
        self.stop();
        self.spawn(cluster, extra);
    }

    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((200, _)) = http_get(self.probe_port, "/readyz") {
                return;
            }
            if let Some(child) = self.child.lock().expect("lock").as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("tracehook serve exited ({status}): {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "tracehook serve not ready after {timeout:?}: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().expect("lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }

    /// The value of one sample of `/metrics`, e.g.
    /// `tracehook_admission_requests_total{outcome="already_injected",reason=""}`.
    pub fn metric(&self, sample: &str) -> f64 {
        let (_, body) = http_get(self.probe_port, "/metrics").expect("metrics reachable");
        body.lines()
            .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Env {
    pub cluster: &'static Cluster,
    pub webhook: Webhook,
}

static ENV: OnceLock<Env> = OnceLock::new();

/// The shared environment, set up on first use.
pub fn env() -> &'static Env {
    // Not named `tracehook`: the install tests dry-run the real `tracehook` configuration.
    ENV.get_or_init(|| setup(testcluster::shared(), "shared", "tracehook-e2e"))
}

/// On `cluster`: the CRD, the instance `obs/test`, a `tracehook serve` process (webhook
/// and reconciler) named `name`, registered as the MutatingWebhookConfiguration
/// `registration` with `failurePolicy: Ignore`.
pub fn setup(cluster: &'static Cluster, name: &str, registration: &str) -> Env {
    block_on_thread(prepare_cluster(cluster));
    // The registration it reads to tell which namespaces it sees (missed injections).
    let webhook = Webhook::start_with(
        cluster,
        name,
        Certificates::Files,
        &["--webhook-configuration", registration],
    );
    let config = webhook_configuration(registration, &webhook, "Ignore", None);
    block_on_thread(async {
        let client = cluster.client().await.expect("client");
        apply(&client, &config).await;
    });
    Env { cluster, webhook }
}

/// Runs `future` to completion on a thread and runtime of its own (the set-up is async;
/// the tests each have their own runtime, which must not be blocked on).
pub fn block_on_thread<T: Send>(future: impl Future<Output = T> + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Runtime::new()
                .expect("runtime")
                .block_on(future)
        })
        .join()
        .expect("set-up thread")
    })
}

/// Installs the CRD and the instance `obs/test`.
async fn prepare_cluster(cluster: &Cluster) {
    let client = cluster.client().await.expect("client");
    install_jaeger_crd(&client).await;
    cluster
        .create_namespace(INSTANCE_NS)
        .await
        .expect("instance namespace");
    // tracehook's own namespace, where the shared process keeps its Lease.
    cluster
        .create_namespace("tracehook")
        .await
        .expect("tracehook's namespace");
    create_instance(&client, INSTANCE_NS, INSTANCE).await;
}

/// Applies the `Jaeger` CRD and waits until it is established.
pub async fn install_jaeger_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "jaegers.tracehook.dev",
        &PatchParams::apply("tracehook-e2e").force(),
        &Patch::Apply(Jaeger::crd()),
    )
    .await
    .expect("CRD applied");
    wait_until(
        Duration::from_secs(30),
        "the CRD is established",
        || async {
            crds.get("jaegers.tracehook.dev")
                .await
                .is_ok_and(|crd| established(&crd))
        },
    )
    .await;
}

/// Creates the instance `Jaeger namespace/name` with an empty spec.
pub async fn create_instance(client: &Client, namespace: &str, name: &str) {
    let instance: Jaeger = serde_json::from_value(json!({
        "apiVersion": "tracehook.dev/v1alpha1",
        "kind": "Jaeger",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {}
    }))
    .expect("instance");
    Api::<Jaeger>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &instance)
        .await
        .unwrap_or_else(|e| panic!("creating Jaeger {namespace}/{name}: {e}"));
}

/// The MutatingWebhookConfiguration of DESIGN.md, pointing at `webhook` by URL (how
/// an out-of-cluster webhook is reached without kube-proxy). `only_namespace` narrows
/// it to one namespace for tests that need a webhook of their own.
pub fn webhook_configuration(
    name: &str,
    webhook: &Webhook,
    failure_policy: &str,
    only_namespace: Option<&str>,
) -> MutatingWebhookConfiguration {
    serde_json::from_value(webhook_configuration_json(
        name,
        &webhook.url(),
        &webhook.ca_pem,
        failure_policy,
        only_namespace,
    ))
    .expect("a valid MutatingWebhookConfiguration")
}

/// A registration for one namespace with no caBundle and failurePolicy Fail: only
/// tracehook's patch of the CA makes it usable, and any failed call fails a Pod
/// creation, so nothing hides a TLS error.
pub fn registration_without_ca_bundle(
    name: &str,
    port: u16,
    namespace: &str,
    reinvocation_policy: &str,
) -> MutatingWebhookConfiguration {
    let url = format!("https://127.0.0.1:{port}/mutate");
    let mut config = webhook_configuration_json(name, &url, "", "Fail", None);
    let webhook = &mut config["webhooks"][0];
    if let Some(client_config) = webhook["clientConfig"].as_object_mut() {
        client_config.remove("caBundle");
    }
    webhook["reinvocationPolicy"] = reinvocation_policy.into();
    webhook["namespaceSelector"] =
        json!({"matchLabels": {"kubernetes.io/metadata.name": namespace}});
    serde_json::from_value(config).expect("registration")
}

/// Creates a namespaced object; the object as stored.
pub async fn create_in<K>(client: &Client, namespace: &str, object: &K) -> K
where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), object)
        .await
        .unwrap_or_else(|e| panic!("creating {} {:?}: {e}", K::kind(&()), object.meta().name))
}

pub async fn apply<K>(client: &Client, object: &K)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
    K::Scope: ApiScope,
{
    let name = object.meta().name.clone().expect("named");
    let api = K::Scope::api::<K>(client, object.meta().namespace.as_deref());
    api.patch(
        &name,
        &PatchParams::apply("tracehook-e2e").force(),
        &Patch::Apply(object),
    )
    .await
    .unwrap_or_else(|e| panic!("applying {name}: {e}"));
}

pub trait ApiScope {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = Self>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug;
}

impl ApiScope for k8s_openapi::ClusterResourceScope {
    fn api<K>(client: &Client, _: Option<&str>) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = Self>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::all(client.clone())
    }
}

impl ApiScope for k8s_openapi::NamespaceResourceScope {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: kube::Resource<DynamicType = (), Scope = Self>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        Api::namespaced(client.clone(), namespace.expect("namespaced object"))
    }
}

/// A test's own namespace, with labels and annotations.
pub async fn namespace(client: &Client, name: &str, labels: Value, annotations: Value) {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations}
    }))
    .expect("namespace");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
    // The ServiceAccount admission plugin rejects Pods until `default` exists.
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(client.clone(), name);
    wait_until(
        Duration::from_secs(30),
        "the default ServiceAccount",
        || async { sas.get_opt("default").await.ok().flatten().is_some() },
    )
    .await;
}

/// An admin client of the shared cluster.
pub async fn client() -> Client {
    env().cluster.client().await.expect("client")
}

pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("valid object")
}

/// The start of most tests of the shared webhook: the lock that keeps `obs/test` the
/// only instance, an admin client, and the test's own labelled namespace `ns`.
pub async fn sole_instance_in_labelled_namespace(
    ns: &str,
) -> (RwLockReadGuard<'static, ()>, Client) {
    let instances = sole_instance().await;
    let client = client().await;
    labelled_namespace(&client, ns).await;
    (instances, client)
}

/// A namespace whose label sends Pods to the webhook but whose own annotation says
/// `false`: only a more specific level (the Pod, its owning workload) can say yes.
pub async fn labelled_namespace_saying_no(client: &Client, name: &str) {
    namespace(
        client,
        name,
        json!({"tracehook.dev/injection": "enabled"}),
        json!({"tracehook.dev/inject": "false"}),
    )
    .await;
}

/// A labelled namespace (`tracehook.dev/injection=enabled`).
pub async fn labelled_namespace(client: &Client, name: &str) {
    namespace(
        client,
        name,
        json!({"tracehook.dev/injection": "enabled"}),
        json!({}),
    )
    .await;
}

pub fn pod(name: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name}, "annotations": annotations},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    }))
    .expect("pod")
}

pub async fn create_pod(client: &Client, namespace: &str, pod: &Pod) -> Pod {
    Api::<Pod>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), pod)
        .await
        .unwrap_or_else(|e| panic!("creating a Pod in {namespace}: {e}"))
}

/// The injected sidecar of a stored Pod, wherever it is.
pub fn sidecar<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    let spec = pod.spec.as_ref()?;
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .find(|c| c.name == name)
}

pub fn count_sidecars(pod: &Pod, name: &str) -> usize {
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    spec.init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .filter(|c| c.name == name)
        .count()
}

pub fn env_of(pod: &Pod, container: &str, var: &str) -> Option<String> {
    pod.spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?
        .env
        .iter()
        .flatten()
        .find(|e| e.name == var)
        .map(|e| e.value.clone().unwrap_or_else(|| "<valueFrom>".into()))
}

pub fn is_injected(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("tracehook.dev/status"))
}

pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(timeout, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// Creates Pods made by `pod` (given a fresh name) in `ns` until one comes back
/// injected: the API server may take a moment to see a new webhook configuration.
pub async fn wait_until_injecting(client: &Client, ns: &str, pod: impl Fn(&str) -> Pod) {
    wait_until(
        Duration::from_secs(20),
        "the test webhook to inject",
        || {
            let client = client.clone();
            let p = pod(&fresh_name("warm"));
            async move { is_injected(&create_pod(&client, ns, &p).await) }
        },
    )
    .await;
}

/// Polls `check` until it yields a value, and returns that value.
pub async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The Pods of a namespace whose labels match `selector`, once there are `count`.
pub async fn wait_for_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
    count: usize,
) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let params = kube::api::ListParams::default().labels(selector);
    poll(
        Duration::from_secs(60),
        &format!("{count} Pods {selector} in {namespace}"),
        || {
            let api = api.clone();
            let params = params.clone();
            async move {
                let items = api.list(&params).await.ok()?.items;
                (items.len() >= count).then_some(items)
            }
        },
    )
    .await
}

/// A name no earlier call gave (for retried creations).
pub fn fresh_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}

pub async fn delete_webhook_configuration(client: &Client, name: &str) {
    let _ = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await;
}

/// `kubectl` with a manifest on standard input; returns (success, stdout, stderr).
pub fn kubectl_stdin(cluster: &Cluster, args: &[&str], input: &str) -> (bool, String, String) {
    run_stdin(&mut cluster.kubectl(args), input)
}

/// Runs `command` with `input` on its standard input; returns (success, stdout, stderr).
pub fn run_stdin(command: &mut Command, input: &str) -> (bool, String, String) {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{command:?} runs: {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write the input");
    let out = child.wait_with_output().expect("the command finishes");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A free loopback port, never one handed out before in this process: processes
/// started at the same moment must not be given the same one.
fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Tests that rely on `obs/test` being the only `Jaeger` (an injection request of
/// `true` resolves to the only instance) hold this; tests that create more instances
/// hold [`more_instances`], which waits for them and keeps them out meanwhile.
pub async fn sole_instance() -> RwLockReadGuard<'static, ()> {
    INSTANCES.read().await
}

pub async fn more_instances() -> MoreInstances {
    MoreInstances(Some(INSTANCES.write().await))
}

// A tokio lock: each test has its own runtime, and the guard lives across awaits.
static INSTANCES: RwLock<()> = RwLock::const_new(());

pub struct MoreInstances(Option<RwLockWriteGuard<'static, ()>>);

impl Drop for MoreInstances {
    fn drop(&mut self) {
        // The test's instances are deleted by now; give tracehook's watch a moment to
        // see the deletions before `true` is relied on again.
        std::thread::sleep(Duration::from_secs(1));
        self.0.take();
    }
}

pub mod labeller;

// The helpers tests/common holds for every test binary, under the names the e2e and
// real-node tests use.
#[allow(dead_code)]
#[path = "../../common/client.rs"]
mod client;
#[path = "../../common/crd.rs"]
mod crd;
#[path = "../../common/http.rs"]
mod http;
#[path = "../../common/registration.rs"]
mod registration;
#[allow(unused_imports)]
pub use client::body_bytes;
use crd::established;
pub use http::http_get;
use registration::webhook_configuration_json;

pub fn rollout_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout"),
        "rollouts",
    )
}

/// Argo Rollouts' CRD, schemaless (the controller is not needed: the ReplicaSets a
/// Rollout would create are created here, owned by it as Argo does).
pub async fn install_rollout_crd(client: &Client) {
    let crd: CustomResourceDefinition = serde_json::from_value(json!({
        "metadata": {"name": "rollouts.argoproj.io"},
        "spec": {
            "group": "argoproj.io",
            "names": {"kind": "Rollout", "plural": "rollouts", "singular": "rollout", "shortNames": ["ro"]},
            "scope": "Namespaced",
            "versions": [{"name": "v1alpha1", "served": true, "storage": true,
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}]
        }
    }))
    .expect("CRD");
    apply(client, &crd).await;
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &rollout_resource());
    wait_until(Duration::from_secs(30), "the Rollout CRD served", || {
        let api = api.clone();
        async move { api.list(&ListParams::default()).await.is_ok() }
    })
    .await;
}
