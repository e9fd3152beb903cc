//! Whether the API server calls tracehook for a namespace: the registered
//! MutatingWebhookConfiguration's `namespaceSelector`, evaluated against the
//! namespace's labels as the API server does. A Pod that would be injected but whose
//! namespace the webhook does not see is missing its sidecar for a reason a person can
//! fix (label the namespace), and healing it would only recreate it without one.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{Api, Client};

use crate::inject::keys;

/// The webhook's name inside the configuration (DESIGN.md).
pub const WEBHOOK_NAME: &str = "inject.tracehook.dev";

/// Whether Pods of a namespace reach the webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    Yes,
    /// No configuration of that name, or none with the webhook `inject.tracehook.dev`.
    NotRegistered,
    /// The `namespaceSelector` leaves the namespace out.
    NotSelected,
}

/// The configuration `name`, or `None` when it does not exist.
pub async fn read(
    client: &Client,
    name: &str,
) -> kube::Result<Option<MutatingWebhookConfiguration>> {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get_opt(name)
        .await
}

/// Whether `registration` sends Pods of a namespace labelled `labels` to tracehook.
pub fn sees(
    registration: Option<&MutatingWebhookConfiguration>,
    labels: &BTreeMap<String, String>,
) -> Seen {
    let webhook = registration
        .and_then(|c| c.webhooks.as_ref())
        .and_then(|w| w.iter().find(|w| w.name == WEBHOOK_NAME));
    let Some(webhook) = webhook else {
        return Seen::NotRegistered;
    };
    // An absent selector selects every namespace.
    match &webhook.namespace_selector {
        Some(selector) if !matches(selector, labels) => Seen::NotSelected,
        _ => Seen::Yes,
    }
}

/// A label selector against a set of labels, as Kubernetes evaluates it. An operator it
/// does not know matches nothing (the API server refuses such selectors anyway).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let exact = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    exact
        && selector.match_expressions.iter().flatten().all(|e| {
            let value = labels.get(&e.key);
            let listed = |v: &String| e.values.iter().flatten().any(|x| x == v);
            match e.operator.as_str() {
                "In" => value.is_some_and(listed),
                "NotIn" => !value.is_some_and(listed),
                "Exists" => value.is_some(),
                "DoesNotExist" => value.is_none(),
                _ => false,
            }
        })
}

/// The fix, in one sentence, for a namespace the webhook does not see.
pub fn fix(seen: Seen, namespace: &str, registration: &str) -> String {
    match seen {
        Seen::Yes => String::new(),
        Seen::NotRegistered => format!(
            "tracehook's webhook is not registered (no MutatingWebhookConfiguration {registration} with the webhook {WEBHOOK_NAME}), so the API server sends it no Pod: install or repair tracehook"
        ),
        Seen::NotSelected => format!(
            "the API server does not send Pods of namespace {namespace} to tracehook (the webhook's namespaceSelector leaves it out); fix: kubectl label namespace {namespace} {}=enabled",
            keys::INJECTION_LABEL
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registration(selector: serde_json::Value) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "metadata": {"name": "tracehook"},
            "webhooks": [{
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "clientConfig": {"url": "https://127.0.0.1:8443/mutate"},
                "namespaceSelector": selector
            }]
        }))
        .expect("a registration")
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// The default install's selector: labelled namespaces, never the system ones.
    fn default_install() -> MutatingWebhookConfiguration {
        registration(json!({
            "matchLabels": {"tracehook.dev/injection": "enabled"},
            "matchExpressions": [{
                "key": "kubernetes.io/metadata.name", "operator": "NotIn",
                "values": ["kube-system", "kube-public", "kube-node-lease", "tracehook"]
            }]
        }))
    }

    #[test]
    fn the_default_install_sees_labelled_namespaces_only() {
        let config = default_install();
        let shop = labels(&[
            ("kubernetes.io/metadata.name", "shop"),
            ("tracehook.dev/injection", "enabled"),
        ]);
        assert_eq!(sees(Some(&config), &shop), Seen::Yes);
        let unlabelled = labels(&[("kubernetes.io/metadata.name", "shop")]);
        assert_eq!(sees(Some(&config), &unlabelled), Seen::NotSelected);
        let system = labels(&[
            ("kubernetes.io/metadata.name", "kube-system"),
            ("tracehook.dev/injection", "enabled"),
        ]);
        assert_eq!(sees(Some(&config), &system), Seen::NotSelected);
    }

    #[test]
    fn all_namespaces_mode_and_a_missing_registration() {
        let all = registration(json!({"matchExpressions": [
            {"key": "tracehook.dev/injection", "operator": "NotIn", "values": ["disabled"]}
        ]}));
        assert_eq!(sees(Some(&all), &labels(&[])), Seen::Yes);
        let disabled = labels(&[("tracehook.dev/injection", "disabled")]);
        assert_eq!(sees(Some(&all), &disabled), Seen::NotSelected);
        assert_eq!(sees(None, &labels(&[])), Seen::NotRegistered);
        let mut other = default_install();
        other.webhooks.as_mut().expect("webhooks")[0].name = "other.example.com".into();
        assert_eq!(sees(Some(&other), &labels(&[])), Seen::NotRegistered);
    }

    #[test]
    fn exists_and_does_not_exist() {
        let selector: LabelSelector = serde_json::from_value(json!({"matchExpressions": [
            {"key": "a", "operator": "Exists"}, {"key": "b", "operator": "DoesNotExist"}
        ]}))
        .expect("selector");
        assert!(matches(&selector, &labels(&[("a", "1")])));
        assert!(!matches(&selector, &labels(&[("a", "1"), ("b", "2")])));
        assert!(!matches(&selector, &labels(&[])));
    }
}
