//! Kubernetes Events for Pods that asked for injection and were skipped, published off
//! the admission path so that a slow API server never delays an answer.

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::Value;

use crate::inject::Skip;

#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
}

impl EventSink {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "tracehook".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
        }
    }

    /// Publishes, in the background, why `pod` was not injected. A Pod being created
    /// often has no name yet (generateName), so the Event then goes to its owner.
    pub fn skipped(&self, namespace: &str, pod: &Value, skip: &Skip) {
        let Some(reference) = reference(namespace, pod) else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "InjectionSkipped".into(),
            note: Some(truncate(&skip.message, 1024)),
            action: "Inject".into(),
            secondary: None,
        };
        let recorder = self.recorder.clone();
        tokio::spawn(async move {
            if let Err(e) = recorder.publish(&event, &reference).await {
                tracing::warn!(error = %e, "could not publish an Event");
            }
        });
    }
}

fn reference(namespace: &str, pod: &Value) -> Option<ObjectReference> {
    let metadata = pod.get("metadata");
    let text = |v: Option<&Value>, key: &str| {
        v.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    if let Some(name) = text(metadata, "name") {
        return Some(ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.to_owned()),
            name: Some(name),
            uid: text(metadata, "uid"),
            ..ObjectReference::default()
        });
    }
    let owner = metadata?
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))?;
    Some(ObjectReference {
        api_version: text(Some(owner), "apiVersion"),
        kind: text(Some(owner), "kind"),
        namespace: Some(namespace.to_owned()),
        name: text(Some(owner), "name"),
        uid: text(Some(owner), "uid"),
        ..ObjectReference::default()
    })
}

fn truncate(message: &str, max: usize) -> String {
    if message.len() <= max {
        return message.to_owned();
    }
    let mut end = max;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end].to_owned()
}
