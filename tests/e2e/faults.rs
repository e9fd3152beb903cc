//! Faults on the real control plane: the API server and etcd restarted under a running
//! tracehook (on clusters of their own, so the shared one never goes down under the
//! other tests), the webhook killed during a burst of Pod creations, and a webhook
//! that is down or hung behind `failurePolicy: Fail`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use testcluster::{Cluster, Options};

use crate::support::*;

/// The webhook registrations' `timeoutSeconds`.
const TIMEOUT_SECONDS: u64 = 5;

/// One private cluster at a time: each is five processes on two cores.
static OWN_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A Pod the scheduler leaves alone (a scheduling gate), so that hundreds of them do
/// not fill the shared kwok node.
fn gated_pod(name: &str, role: &str, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"app": name, "e2e.tracehook.dev/role": role}, "annotations": annotations},
        "spec": {
            "schedulingGates": [{"name": "e2e.tracehook.dev/hold"}],
            "containers": [{"name": "app", "image": "registry.example/app:1"}]
        }
    }))
    .expect("pod")
}

/// `{label: "true"}`.
fn only_label(label: &str) -> Value {
    Value::Object([(label.to_owned(), json!("true"))].into_iter().collect())
}

/// A registration of `webhook` for `namespace` only, selected by a label of its own
/// rather than `tracehook.dev/injection` (which the shared webhook answers).
fn scoped_registration(
    name: &str,
    webhook: &Webhook,
    failure_policy: &str,
    namespace: &str,
    label: &str,
) -> k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration {
    let mut config = webhook_configuration(name, webhook, failure_policy, Some(namespace));
    if let Some(selector) = config
        .webhooks
        .as_mut()
        .and_then(|w| w[0].namespace_selector.as_mut())
    {
        selector.match_labels = Some([(label.to_owned(), "true".to_owned())].into());
    }
    config
}

/// A webhook process that neither runs the reconciler (the shared cluster has one)
/// nor competes for its Lease.
fn webhook_only(cluster: &Cluster, name: &str) -> Webhook {
    Webhook::start_with(cluster, name, Certificates::Files, &["--no-reconciler"])
}

// ------------------------------------------------------------------ API server, etcd

#[derive(Clone, Copy, Debug)]
enum Fault {
    ApiServerRestart,
    EtcdRestart,
}

/// The CRD, and the instance `obs/test` (what the shared environment has).
async fn prepare(cluster: &Cluster, client: &Client) {
    install_jaeger_crd(client).await;
    cluster
        .create_namespace(INSTANCE_NS)
        .await
        .expect("instance namespace");
    create_instance(client, INSTANCE_NS, INSTANCE).await;
}

/// Creates Pods in `namespace` until one is injected; returns how many it took and
/// that Pod. Creations that fail (the API server is still coming back) are retried.
async fn until_injected(
    client: &Client,
    namespace: &str,
    annotations: Value,
    what: &str,
) -> (usize, Pod) {
    let attempts = AtomicUsize::new(0);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = poll(Duration::from_secs(90), what, || {
        attempts.fetch_add(1, Ordering::Relaxed);
        let pods = pods.clone();
        let annotations = annotations.clone();
        async move {
            let p = pods
                .create(
                    &PostParams::default(),
                    &gated_pod(&fresh_name("fault"), "probe", annotations),
                )
                .await
                .ok()?;
            is_injected(&p).then_some(p)
        }
    })
    .await;
    (attempts.into_inner(), pod)
}

/// A private cluster with tracehook registered; `fault` happens while it runs; then
/// tracehook must still be up, inject again, and its caches must follow changes made
/// after the fault (a namespace annotation removed, a new Jaeger instance), which
/// only working watches can deliver.
async fn tracehook_survives(fault: Fault) {
    let _one_at_a_time = OWN_CLUSTER.lock().await;
    let cluster = Cluster::start(Options::default()).expect("a private cluster");
    let client = cluster.client().await.expect("client");
    prepare(&cluster, &client).await;
    let webhook = webhook_only(&cluster, "fault");
    apply(
        &client,
        &webhook_configuration("tracehook-e2e", &webhook, "Ignore", None),
    )
    .await;
    labelled_namespace(&client, "plain").await;
    // Labelled, but the annotation says no: removed after the fault.
    namespace(
        &client,
        "flip",
        json!({"tracehook.dev/injection": "enabled"}),
        json!({"tracehook.dev/inject": "false"}),
    )
    .await;
    until_injected(&client, "plain", json!({}), "injection before the fault").await;
    let before = create_pod(&client, "flip", &gated_pod("before", "probe", json!({}))).await;
    assert!(!is_injected(&before), "the namespace annotation says false");

    let t = Instant::now();
    match fault {
        Fault::ApiServerRestart => cluster.restart_apiserver().await,
        Fault::EtcdRestart => cluster.restart_etcd().await,
    }
    .unwrap_or_else(|e| panic!("{fault:?}: {e:#}"));
    let outage = t.elapsed();

    let t = Instant::now();
    let client = cluster.client().await.expect("client");
    assert_eq!(
        http_get(webhook.probe_port, "/healthz").map(|(s, _)| s),
        Some(200),
        "tracehook is still up after {fault:?}: {}",
        webhook.log_tail()
    );
    let (attempts, _) = until_injected(
        &client,
        "plain",
        json!({}),
        "injection to continue after the fault",
    )
    .await;
    let injecting_again = t.elapsed();

    Api::<Namespace>::all(client.clone())
        .patch(
            "flip",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"tracehook.dev/inject": null}}})),
        )
        .await
        .expect("annotation removed");
    until_injected(
        &client,
        "flip",
        json!({}),
        "the namespace change made after the fault to reach tracehook's cache",
    )
    .await;

    cluster
        .create_namespace("obs2")
        .await
        .expect("second instance namespace");
    create_instance(&client, "obs2", "second").await;
    let (_, pod) = until_injected(
        &client,
        "plain",
        json!({"tracehook.dev/inject": "obs2/second"}),
        "the instance created after the fault to reach tracehook's cache",
    )
    .await;
    assert_eq!(
        pod.metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tracehook.dev/injected"))
            .map(String::as_str),
        Some("obs2.second")
    );
    let caches_followed = t.elapsed();
    eprintln!(
        "figure: {fault:?} took {outage:.1?}; tracehook stayed up, injected again {injecting_again:.1?} \
         later ({attempts} creation attempts), and its caches followed later changes within {caches_followed:.1?}"
    );
    drop(webhook);
}

#[tokio::test]
async fn api_server_restart_caches_recover_and_injection_continues() {
    tracehook_survives(Fault::ApiServerRestart).await;
}

#[tokio::test]
async fn etcd_restart_caches_recover_and_injection_continues() {
    tracehook_survives(Fault::EtcdRestart).await;
}

// ------------------------------------------------------------------ the webhook itself

/// failurePolicy Ignore: tracehook SIGKILLed in the middle of 500 concurrent Pod
/// creations. Every Pod is created; those admitted while it was down lack the sidecar.
#[tokio::test]
async fn webhook_killed_during_a_burst_of_500_pod_creates_loses_no_pod() {
    // `true` names the only instance, obs/test.
    let _instances = sole_instance().await;
    const PODS: usize = 500;
    const KILL_AFTER: usize = 150;
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let ns = "e2e-fault-burst";
    let label = "e2e.tracehook.dev/burst";
    namespace(&client, ns, only_label(label), json!({})).await;
    let webhook = webhook_only(env.cluster, "burst");
    apply(
        &client,
        &scoped_registration("e2e-fault-burst", &webhook, "Ignore", ns, label),
    )
    .await;
    until_injected(
        &client,
        ns,
        json!({"tracehook.dev/inject": "true"}),
        "the burst webhook to inject",
    )
    .await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let done = AtomicUsize::new(0);
    let start = Instant::now();
    let mut killed_at = None;
    let results: Vec<Result<bool, String>> = futures::stream::iter(0..PODS)
        .map(|i| {
            let pods = pods.clone();
            async move {
                let p = gated_pod(
                    &format!("burst-{i}"),
                    "burst",
                    json!({"tracehook.dev/inject": "true"}),
                );
                pods.create(&PostParams::default(), &p)
                    .await
                    .map(|p| is_injected(&p))
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(16)
        .inspect(|_| {
            if done.fetch_add(1, Ordering::Relaxed) + 1 == KILL_AFTER {
                webhook.kill();
                killed_at = Some(start.elapsed());
            }
        })
        .collect()
        .await;
    let elapsed = start.elapsed();
    delete_webhook_configuration(&client, "e2e-fault-burst").await;

    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    let injected = results.iter().filter(|r| r.as_ref() == Ok(&true)).count();
    let stored = pods
        .list(&ListParams::default().labels("e2e.tracehook.dev/role=burst"))
        .await
        .expect("list")
        .items;
    let stored_injected = stored.iter().filter(|p| is_injected(p)).count();
    eprintln!(
        "figure: {PODS} Pod creations in {elapsed:.1?}, tracehook SIGKILLed at {killed_at:?} after \
         {KILL_AFTER} answers: {} stored (0 lost), {stored_injected} with the sidecar, {} without \
         (failurePolicy Ignore), {} creation errors",
        stored.len(),
        stored.len() - stored_injected,
        errors.len()
    );
    assert!(errors.is_empty(), "creations failed: {errors:?}");
    assert_eq!(stored.len(), PODS, "every Pod was stored");
    assert_eq!(stored_injected, injected, "stored as answered");
    assert!(
        injected >= KILL_AFTER - 16,
        "Pods before the kill were injected ({injected})"
    );
    assert!(
        injected < PODS,
        "Pods after the kill were admitted without it"
    );
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// What a Pod creation with tracehook unreachable looks like: how long, and the error.
async fn failing_create(client: &Client, ns: &str, what: &str) -> (Duration, String) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let t = Instant::now();
    let created = tokio::time::timeout(
        Duration::from_secs(TIMEOUT_SECONDS + 30),
        pods.create(
            &PostParams::default(),
            &gated_pod(
                &fresh_name("fail"),
                "fail",
                json!({"tracehook.dev/inject": "true"}),
            ),
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: the creation hung"));
    let elapsed = t.elapsed();
    let error = match created {
        Ok(_) => panic!("{what}: a Pod was created although the webhook is unreachable"),
        Err(kube::Error::Api(status)) => status.message,
        Err(e) => panic!("{what}: not an answer of the API server: {e}"),
    };
    assert!(
        error.contains("failed calling webhook \"inject.tracehook.dev\""),
        "{what}: the error names the webhook: {error}"
    );
    assert!(
        elapsed < Duration::from_secs(TIMEOUT_SECONDS + 3),
        "{what}: took {elapsed:?}, past timeoutSeconds {TIMEOUT_SECONDS}: {error}"
    );
    (elapsed, error)
}

/// failurePolicy Fail: with tracehook down (connection refused) or hung (the port
/// accepts, nothing answers, as while it restarts), creations fail with an error
/// naming the webhook and within timeoutSeconds; once it is back, Pods are injected.
#[tokio::test]
async fn failure_policy_fail_with_the_webhook_down_or_hung_fails_fast_and_clearly() {
    // `true` names the only instance, obs/test.
    let _instances = sole_instance().await;
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let ns = "e2e-fault-fail";
    let label = "e2e.tracehook.dev/fail";
    namespace(&client, ns, only_label(label), json!({})).await;
    let webhook = webhook_only(env.cluster, "fail");
    apply(
        &client,
        &scoped_registration("e2e-fault-fail", &webhook, "Fail", ns, label),
    )
    .await;
    until_injected(
        &client,
        ns,
        json!({"tracehook.dev/inject": "true"}),
        "the Fail webhook to inject",
    )
    .await;

    webhook.kill();
    let mut down = Vec::new();
    for _ in 0..5 {
        down.push(failing_create(&client, ns, "webhook down").await);
    }

    // The port accepts connections but nothing answers: a process starting up or hung.
    let hung = tokio::net::TcpListener::bind(("127.0.0.1", webhook.port))
        .await
        .expect("the killed webhook's port");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            open.push(stream);
        }
    });
    let mut stalled = Vec::new();
    for _ in 0..3 {
        stalled.push(failing_create(&client, ns, "webhook hung").await);
    }
    held.abort();

    let restarted = webhook_only(env.cluster, "fail-restarted");
    apply(
        &client,
        &scoped_registration("e2e-fault-fail", &restarted, "Fail", ns, label),
    )
    .await;
    let (attempts, _) = until_injected(
        &client,
        ns,
        json!({"tracehook.dev/inject": "true"}),
        "injection once tracehook is back",
    )
    .await;
    delete_webhook_configuration(&client, "e2e-fault-fail").await;

    let worst = |v: &[(Duration, String)]| v.iter().map(|(d, _)| *d).max().unwrap_or_default();
    eprintln!(
        "figure: failurePolicy Fail, timeoutSeconds {TIMEOUT_SECONDS}: webhook down → {} creations \
         failed in at most {:.1?} ({}); hung → {} failed in at most {:.1?} ({}); restarted → \
         injecting again after {attempts} attempts",
        down.len(),
        worst(&down),
        down[0].1,
        stalled.len(),
        worst(&stalled),
        stalled[0].1
    );
}
