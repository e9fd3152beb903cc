//! The webhook's registration: DESIGN.md's MutatingWebhookConfiguration, pointing at
//! a webhook by URL (how an out-of-cluster webhook is reached without kube-proxy).
//! Only `serde_json` and `base64`: `sysbench` includes this file too.

use base64::Engine as _;
use serde_json::{Value, json};

/// `only_namespace` narrows it to one namespace, for tests that need a webhook of
/// their own.
pub fn webhook_configuration_json(
    name: &str,
    url: &str,
    ca_pem: &str,
    failure_policy: &str,
    only_namespace: Option<&str>,
) -> Value {
    let mut expressions = vec![json!({
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["kube-system", "kube-public", "kube-node-lease", "tracehook"]
    })];
    if let Some(ns) = only_namespace {
        expressions.push(json!({
            "key": "kubernetes.io/metadata.name", "operator": "In", "values": [ns]
        }));
    }
    json!({
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [{
            "name": "inject.tracehook.dev",
            "admissionReviewVersions": ["v1"],
            "clientConfig": {
                "url": url,
                "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem),
            },
            "rules": [{
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced"
            }],
            "sideEffects": "NoneOnDryRun",
            "reinvocationPolicy": "IfNeeded",
            "failurePolicy": failure_policy,
            "timeoutSeconds": 5,
            "matchPolicy": "Equivalent",
            "namespaceSelector": {
                "matchLabels": {"tracehook.dev/injection": "enabled"},
                "matchExpressions": expressions
            }
        }]
    })
}
