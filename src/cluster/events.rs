//! Kubernetes Events for Pods that asked for injection and were skipped or injected
//! only in part, published off the admission path so that a slow API server never
//! delays an answer. An admission warning reaches whoever created the Pod, which for
//! most Pods is a controller; the Event is what a person sees (`kubectl describe`,
//! `kubectl events`), on the Pod when it has a name, else on the workload a user wrote.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use kube::Client;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::Value;

use crate::admission::{EventRequest, Notice};
use crate::inject::Workload;

/// One Event per object and reason in this window: a ReplicaSet of 100 Pods that all
/// miss the same thing says so once.
const EVENT_INTERVAL: Duration = Duration::from_secs(60);
/// Bounds the memory of the rate limiter.
const MAX_REMEMBERED: usize = 10_000;

/// Events written at once. Each is a request to the API server, and kube's client opens
/// a connection per concurrent request: the detector telling 5,000 missed Pods at once
/// held 5,000 TLS connections (150 MiB; BENCHMARKS.md, `detector`).
const MAX_IN_FLIGHT: usize = 4;
/// Events waiting for their turn; beyond it (the API server down for long, say) a new
/// Event is dropped with a log line rather than held in memory.
const MAX_WAITING: usize = 10_000;

/// (namespace, kind, name, reason) → when its last Event was published.
type Recent = Arc<Mutex<HashMap<(String, String, String, String), Instant>>>;

#[derive(Clone)]
pub struct EventSink {
    recorder: Recorder,
    recent: Recent,
    in_flight: Arc<tokio::sync::Semaphore>,
    waiting: Arc<std::sync::atomic::AtomicUsize>,
}

impl EventSink {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: "tracehook".into(),
            instance,
        };
        Self {
            recorder: Recorder::new(client, reporter),
            recent: Arc::default(),
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
            waiting: Arc::default(),
        }
    }

    /// Publishes, in the background, what the review step asked to be told.
    pub fn publish(&self, event: &EventRequest) {
        let (reason, key, note) = match &event.notice {
            Notice::Skipped(skip) => (
                "InjectionSkipped",
                skip.reason.as_str(),
                skip.message.clone(),
            ),
            Notice::Partial(warnings) => (
                "InjectionPartial",
                "partial",
                format!(
                    "the tracing sidecar was injected, but: {}",
                    warnings.join("; ")
                ),
            ),
        };
        let Some(reference) = reference(&event.namespace, &event.pod, event.workload.as_ref())
        else {
            return;
        };
        if self.first_in_a_while(&reference, key) {
            self.on_workload(reference, reason, &note);
        }
    }

    /// A Warning Event on `reference`, in the background (not rate-limited: callers
    /// that may repeat themselves check [`EventSink::first_in_a_while`]).
    pub fn on_workload(&self, reference: ObjectReference, reason: &str, note: &str) {
        self.publish_event(reference, EventType::Warning, reason, note);
    }

    /// An Event of `type_` on `reference`, in the background, at most
    /// [`MAX_IN_FLIGHT`] at a time.
    pub fn publish_event(
        &self,
        reference: ObjectReference,
        type_: EventType,
        reason: &str,
        note: &str,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::inject::text::truncate(note, 1024).to_owned()),
            action: "Inject".into(),
            secondary: None,
        };
        use std::sync::atomic::Ordering;
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(reason, object = ?reference.name, "Event dropped: {MAX_WAITING} are waiting for the API server");
            return;
        }
        let recorder = self.recorder.clone();
        let (in_flight, waiting) = (self.in_flight.clone(), self.waiting.clone());
        tokio::spawn(async move {
            let permit = in_flight.acquire_owned().await;
            waiting.fetch_sub(1, Ordering::Relaxed);
            if permit.is_ok()
                && let Err(e) = recorder.publish(&event, &reference).await
            {
                tracing::warn!(error = %e, "could not publish an Event");
            }
        });
    }
}

impl EventSink {
    fn first_in_a_while(&self, reference: &ObjectReference, key: &str) -> bool {
        let id = (
            reference.namespace.clone().unwrap_or_default(),
            reference.kind.clone().unwrap_or_default(),
            reference.name.clone().unwrap_or_default(),
            key.to_owned(),
        );
        let now = Instant::now();
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        if recent.len() >= MAX_REMEMBERED {
            recent.retain(|_, at| now.duration_since(*at) < EVENT_INTERVAL);
        }
        match recent.get(&id) {
            Some(at) if now.duration_since(*at) < EVENT_INTERVAL => false,
            _ => {
                recent.insert(id, now);
                true
            }
        }
    }
}

/// The API group/version of the workload kinds tracehook follows owners to.
pub(crate) fn api_version_of(kind: &str) -> Option<&'static str> {
    Some(match kind {
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => "apps/v1",
        "Job" | "CronJob" => "batch/v1",
        "ReplicationController" => "v1",
        "Rollout" => "argoproj.io/v1alpha1",
        _ => return None,
    })
}

/// The Pod when it has a name; else the workload a user wrote (a Deployment rather
/// than its ReplicaSet); else the Pod's controller.
fn reference(namespace: &str, pod: &Value, workload: Option<&Workload>) -> Option<ObjectReference> {
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
    if let Some(w) = workload.filter(|w| !w.name.is_empty())
        && let Some(api_version) = api_version_of(&w.kind)
    {
        return Some(ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(w.kind.clone()),
            namespace: Some(namespace.to_owned()),
            name: Some(w.name.clone()),
            ..ObjectReference::default()
        });
    }
    let owner = crate::inject::decide::controller_reference(metadata)?;
    Some(ObjectReference {
        api_version: text(Some(owner), "apiVersion"),
        kind: text(Some(owner), "kind"),
        namespace: Some(namespace.to_owned()),
        name: text(Some(owner), "name"),
        uid: text(Some(owner), "uid"),
        ..ObjectReference::default()
    })
}
