//! How often the API server calls tracehook for one Pod (issue 15). Once: the first
//! patch gives the sidecar the API-token mount the ServiceAccount plugin would add, so
//! when the in-tree plugins run again after the webhooks they change nothing and
//! `reinvocationPolicy: IfNeeded` has nothing to send back. IfNeeded is kept because the
//! second call does useful work when a later webhook is the one that asks for tracing.
//!
//! Each test runs its own `tracehook serve`, registered for its own namespaces, so that
//! the admission counters it reads count its Pods only.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use crate::support::labeller::Labeller;
use crate::support::*;

/// The label the tests' own webhook configurations select namespaces by.
const SELECTED: &str = "e2e.tracehook.dev/calls";

/// tracehook's configuration for `webhook`, for the namespace `ns` (which carries
/// [`SELECTED`], not tracehook's injection label), with `reinvocation`.
fn configuration(
    name: &str,
    webhook: &Webhook,
    ns: &str,
    reinvocation: &str,
) -> MutatingWebhookConfiguration {
    let mut config = webhook_configuration(name, webhook, "Fail", Some(ns));
    let hook = &mut config.webhooks.as_mut().expect("webhooks")[0];
    hook.reinvocation_policy = Some(reinvocation.to_owned());
    hook.namespace_selector
        .as_mut()
        .expect("selector")
        .match_labels = Some([(SELECTED.to_owned(), "true".to_owned())].into());
    config
}

/// `tracehook_admission_requests_total` of `webhook` by outcome, all reasons summed.
fn admissions(webhook: &Webhook) -> BTreeMap<String, f64> {
    let (_, body) = http_get(webhook.probe_port, "/metrics").expect("metrics reachable");
    let mut by_outcome = BTreeMap::new();
    for line in body.lines() {
        let Some(rest) = line.strip_prefix("tracehook_admission_requests_total{outcome=\"") else {
            continue;
        };
        let (outcome, rest) = rest.split_once('"').expect("outcome label");
        let value: f64 = rest
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("sample value");
        *by_outcome.entry(outcome.to_owned()).or_insert(0.0) += value;
    }
    by_outcome
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v != 0.0)
        .collect()
}

fn requested(name: &str, automount: bool) -> Pod {
    let mut p = pod(name, json!({"tracehook.dev/inject": "true"}));
    p.spec
        .as_mut()
        .expect("spec")
        .automount_service_account_token = Some(automount);
    p
}

/// Pods with and without the API token (the ServiceAccount plugin mounts it into every
/// container, the sidecar included, unless automount is off): each costs one call.
#[tokio::test]
async fn each_pod_costs_one_webhook_call() {
    let _instances = sole_instance().await;
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let ns = "e2e-one-call";
    namespace(&client, ns, json!({SELECTED: "true"}), json!({})).await;
    let webhook = Webhook::start(env.cluster, "one-call");
    apply(
        &client,
        &configuration("e2e-one-call", &webhook, ns, "IfNeeded"),
    )
    .await;
    wait_until_injecting(&client, ns, |name| requested(name, true)).await;
    let before = admissions(&webhook);
    let mut created = 0;
    for automount in [true, false] {
        for i in 0..4 {
            let p = create_pod(
                &client,
                ns,
                &requested(&format!("pod-{automount}-{i}"), automount),
            )
            .await;
            assert!(is_injected(&p), "pod-{automount}-{i} injected");
            let mounts_token = |c: &k8s_openapi::api::core::v1::Container| {
                c.volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.mount_path == "/var/run/secrets/kubernetes.io/serviceaccount")
            };
            let spec = p.spec.as_ref().expect("spec");
            let app = spec
                .containers
                .iter()
                .find(|c| c.name == "app")
                .expect("app");
            let agent = sidecar(&p, "jaeger-agent").expect("sidecar");
            assert_eq!(mounts_token(app), automount, "the plugin mounted the token");
            assert_eq!(mounts_token(agent), automount, "the sidecar has it too");
            created += 1;
        }
    }
    let calls = delta(&before, &admissions(&webhook));
    delete_webhook_configuration(&client, "e2e-one-call").await;
    assert_eq!(
        calls,
        BTreeMap::from([("injected".to_owned(), f64::from(created))]),
        "{created} Pods, one call each, all injecting (no already_injected reinvocation)"
    );
}

/// A later webhook adds `tracehook.dev/inject: "true"` after tracehook was called
/// (a namespace outside the injection label, as with `injectionScope: all-namespaces`).
/// With IfNeeded the API server calls tracehook again and the Pod is injected; with
/// Never it is created without the sidecar: the case the second call exists for.
#[tokio::test]
async fn reinvocation_injects_when_a_later_webhook_asks_for_tracing() {
    let _instances = sole_instance().await;
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let webhook = Webhook::start(env.cluster, "reinvoke");
    let labeller = Labeller::start().await;
    let mut results = BTreeMap::new();
    for policy in ["IfNeeded", "Never"] {
        let ns = format!("e2e-later-asks-{}", policy.to_lowercase());
        namespace(&client, &ns, json!({SELECTED: "true"}), json!({})).await;
        let ours = format!("e2e-later-asks-{}", policy.to_lowercase());
        // Named after tracehook's, so the API server calls it second.
        let theirs = format!("zz-e2e-later-asks-{}", policy.to_lowercase());
        apply(&client, &configuration(&ours, &webhook, &ns, policy)).await;
        apply(&client, &labeller.requesting_injection(&theirs, &ns)).await;
        let stored = poll(
            Duration::from_secs(20),
            "the later webhook to be called",
            || {
                let client = client.clone();
                let ns = ns.clone();
                async move {
                    let p = create_pod(&client, &ns, &pod(&fresh_name("web"), json!({}))).await;
                    let asked = p.metadata.annotations.as_ref().is_some_and(|a| {
                        a.get("tracehook.dev/inject").map(String::as_str) == Some("true")
                    });
                    asked.then_some(p)
                }
            },
        )
        .await;
        delete_webhook_configuration(&client, &theirs).await;
        delete_webhook_configuration(&client, &ours).await;
        results.insert(
            policy,
            (
                is_injected(&stored),
                count_sidecars(&stored, "jaeger-agent"),
            ),
        );
    }
    assert_eq!(
        results["IfNeeded"],
        (true, 1),
        "reinvoked and injected once"
    );
    assert_eq!(
        results["Never"],
        (false, 0),
        "without reinvocation the request comes too late"
    );
}
