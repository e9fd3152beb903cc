//! Workloads that ask for injection in namespaces the webhook never sees: with the
//! default `labeled-namespaces` registration, the API server sends only the Pods of
//! namespaces labelled `tracehook.dev/injection=enabled`, so a Deployment annotated
//! the Jaeger operator's way in any other namespace would be ignored in silence. The
//! leader tells its owner once, on the workload, with the one-line fix.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;

use super::caches::UnseenRequest;
use super::{Caches, events::EventSink};
use crate::inject::keys;

/// How often the cached workloads are looked through.
const EVERY: Duration = Duration::from_secs(10);

/// Reports every unseen request once per workload (per leadership), until cancelled.
pub async fn report(caches: Arc<Caches>, events: EventSink, own_namespace: String) {
    let mut told = Told::default();
    loop {
        if caches.is_synced() {
            for request in told.new_ones(caches.unseen_requests(&own_namespace)) {
                tracing::warn!(namespace = %request.namespace, kind = %request.kind, name = %request.name, "injection requested in a namespace the webhook does not see");
                events.on_workload(reference(&request), "InjectionNotEnabled", &note(&request));
            }
        }
        tokio::time::sleep(EVERY).await;
    }
}

/// The workloads already told, so that each hears it once.
#[derive(Default)]
struct Told(HashSet<(String, String, String)>);

impl Told {
    fn new_ones(&mut self, requests: Vec<UnseenRequest>) -> Vec<UnseenRequest> {
        requests
            .into_iter()
            .filter(|r| {
                self.0
                    .insert((r.namespace.clone(), r.kind.clone(), r.name.clone()))
            })
            .collect()
    }
}

fn reference(request: &UnseenRequest) -> ObjectReference {
    ObjectReference {
        api_version: Some(request.api_version.to_owned()),
        kind: Some(request.kind.clone()),
        namespace: Some(request.namespace.clone()),
        name: Some(request.name.clone()),
        uid: request.uid.clone(),
        ..ObjectReference::default()
    }
}

/// The sentence a person reads in `kubectl describe`.
pub fn note(request: &UnseenRequest) -> String {
    format!(
        "{}={} asks for a tracing sidecar, but namespace {} is not labelled {}=enabled, so its Pods never reach tracehook; fix: kubectl label namespace {} {}=enabled (or install tracehook with webhook.injectionScope=all-namespaces)",
        request.key,
        request.value,
        request.namespace,
        keys::INJECTION_LABEL,
        request.namespace,
        keys::INJECTION_LABEL
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(name: &str) -> UnseenRequest {
        UnseenRequest {
            namespace: "shop".into(),
            api_version: "apps/v1",
            kind: "Deployment".into(),
            name: name.into(),
            uid: None,
            key: keys::JAEGER_OPERATOR_INJECT,
            value: "true".into(),
        }
    }

    #[test]
    fn each_workload_is_told_once() {
        let mut told = Told::default();
        assert_eq!(told.new_ones(vec![request("a"), request("b")]).len(), 2);
        assert_eq!(told.new_ones(vec![request("a"), request("b")]), vec![]);
        assert_eq!(
            told.new_ones(vec![request("a"), request("c")]),
            vec![request("c")]
        );
    }

    #[test]
    fn the_note_gives_the_one_line_fix() {
        let note = note(&request("a"));
        assert!(
            note.contains("sidecar.jaegertracing.io/inject=true"),
            "{note}"
        );
        assert!(
            note.contains("kubectl label namespace shop tracehook.dev/injection=enabled"),
            "{note}"
        );
    }
}
