//! Healing missed injections (`--heal-missing=evict`, opt-in): a Pod missing its
//! sidecar whose controller will recreate it (a ReplicaSet, StatefulSet or
//! DaemonSet; never a bare Pod, never a Job's) is evicted through the Eviction API, so
//! PodDisruptionBudgets are honoured (a refusal is retried on a later pass, never
//! forced), and its replacement is injected at admission. The owner's template is
//! never touched.
//!
//! At most one Pod per controller at a time, and the next only once the previous
//! replacement is Ready; one eviction per `interval` in all. Before each eviction the
//! registered webhook itself is asked, exactly as the API server will ask it for the
//! replacement (a dry-run AdmissionReview of the live Pod to the registration's URL or
//! Service, trusting its caBundle): without a patch in the answer nothing is evicted,
//! so a webhook that is down, not ready or unreachable never costs a Pod.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, EvictParams};
use kube::runtime::events::EventType;
use kube::{Client, ResourceExt as _};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};

use super::events::{EventSink, api_version_of};
use super::missing::{Missing, pod_reference};
use super::registration::{Seen, WEBHOOK_NAME};
use crate::metrics::{EvictionLabels, PodMetrics};

/// `--heal-missing`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Heal {
    /// Detect and report only.
    #[default]
    Off,
    /// Also say, in the Pod's Event, that it would be evicted.
    Report,
    /// Evict missing Pods that a controller will replace.
    Evict,
}

/// The kinds of controller that replace an evicted Pod.
const REPLACING: [&str; 3] = ["ReplicaSet", "StatefulSet", "DaemonSet"];

/// Whether evicting `m` gets it replaced by an injected Pod: its controller recreates
/// it and the webhook sees its namespace.
pub fn replaceable(m: &Missing) -> bool {
    m.seen == Seen::Yes
        && m.controller
            .as_ref()
            .is_some_and(|(kind, _, _)| REPLACING.contains(&kind.as_str()))
}

pub struct Healer {
    client: Client,
    mode: Heal,
    interval: Duration,
    metrics: PodMetrics,
    last: Option<Instant>,
    /// Controller uid → when its Pod was evicted (waiting for the replacement).
    pending: HashMap<String, Timestamp>,
}

impl Healer {
    pub fn new(client: Client, mode: Heal, interval: Duration, metrics: PodMetrics) -> Self {
        Self {
            client,
            mode,
            interval,
            metrics,
            last: None,
            pending: HashMap::new(),
        }
    }

    /// Evicts at most one Pod, if the rules allow it now.
    pub async fn pass(
        &mut self,
        missing: &[Missing],
        pods: &[Arc<Pod>],
        registration: Option<&MutatingWebhookConfiguration>,
        events: &EventSink,
    ) {
        if self.mode != Heal::Evict {
            return;
        }
        self.pending
            .retain(|controller, since| !replacement_ready(pods, controller, *since));
        if self.last.is_some_and(|at| at.elapsed() < self.interval) {
            return;
        }
        let Some(candidate) = missing.iter().find(|m| {
            replaceable(m)
                && m.controller
                    .as_ref()
                    .is_some_and(|(_, _, uid)| !self.pending.contains_key(uid))
        }) else {
            return;
        };
        let pods_api: Api<Pod> = Api::namespaced(self.client.clone(), &candidate.namespace);
        let live = match pods_api.get_opt(&candidate.name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, pod = %candidate.name, "could not read a Pod to heal");
                return;
            }
        };
        if let Err(why) = webhook_would_inject(registration, &live).await {
            tracing::warn!(namespace = %candidate.namespace, pod = %candidate.name, reason = %why, "not evicting: the webhook would not inject the replacement now");
            return;
        }
        self.last = Some(Instant::now());
        match pods_api
            .evict(&candidate.name, &EvictParams::default())
            .await
        {
            Ok(_) => {
                self.count("evicted");
                if let Some((_, _, uid)) = &candidate.controller {
                    self.pending.insert(uid.clone(), Timestamp::now());
                }
                tracing::info!(namespace = %candidate.namespace, pod = %candidate.name, "evicted a Pod missing its sidecar; its replacement is injected");
                tell(events, candidate);
            }
            Err(kube::Error::Api(e)) if e.code == 429 => {
                self.count("refused");
                tracing::info!(namespace = %candidate.namespace, pod = %candidate.name, reason = %e.message, "eviction refused (PodDisruptionBudget); retrying later");
            }
            Err(e) => {
                self.count("failed");
                tracing::warn!(namespace = %candidate.namespace, pod = %candidate.name, error = %e, "eviction failed");
            }
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .evictions
            .get_or_create(&EvictionLabels { result })
            .inc();
    }
}

/// A Pod of `controller` created after `since` (the eviction), Ready.
fn replacement_ready(pods: &[Arc<Pod>], controller: &str, since: Timestamp) -> bool {
    pods.iter().any(|p| {
        let owned = p
            .owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && o.uid == controller);
        // Creation times have whole seconds: one in the eviction's second counts.
        let created = p
            .metadata
            .creation_timestamp
            .as_ref()
            .is_some_and(|t| t.0.as_second() >= since.as_second());
        let ready = p
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        owned && created && ready && p.metadata.deletion_timestamp.is_none()
    })
}

/// An Event on the evicted Pod and on the workload a user wrote.
fn tell(events: &EventSink, m: &Missing) {
    let pod = pod_reference(m);
    let note = format!(
        "evicted by tracehook (--heal-missing=evict): it had no tracing sidecar of {}; its controller replaces it and the replacement is injected",
        m.instance
    );
    events.publish_event(pod, EventType::Normal, "InjectionHealed", &note);
    if let Some(w) = &m.workload
        && let Some(api_version) = api_version_of(&w.kind)
    {
        let workload = ObjectReference {
            api_version: Some(api_version.into()),
            kind: Some(w.kind.clone()),
            namespace: Some(m.namespace.clone()),
            name: Some(w.name.clone()),
            ..ObjectReference::default()
        };
        let note = format!(
            "tracehook evicted Pod {} (no tracing sidecar of {}) so that it is replaced by an injected one; the template is unchanged",
            m.name, m.instance
        );
        events.publish_event(workload, EventType::Normal, "InjectionHealed", &note);
    }
}

/// Asks the registered webhook about `pod` as the API server would, with `dryRun`:
/// `Ok` when its answer carries a patch.
async fn webhook_would_inject(
    registration: Option<&MutatingWebhookConfiguration>,
    pod: &Pod,
) -> Result<(), String> {
    let webhook = registration
        .and_then(|c| c.webhooks.as_ref())
        .and_then(|w| w.iter().find(|w| w.name == WEBHOOK_NAME))
        .ok_or("the webhook is not registered")?;
    let client_config = &webhook.client_config;
    let (base, path) = match (&client_config.url, &client_config.service) {
        (Some(url), _) => split_url(url)?,
        (None, Some(service)) => (
            format!(
                "https://{}.{}.svc:{}",
                service.name,
                service.namespace,
                service.port.unwrap_or(443)
            ),
            service.path.clone().unwrap_or_else(|| "/".into()),
        ),
        (None, None) => return Err("the registration names no URL and no Service".into()),
    };
    let mut config = kube::Config::new(base.parse().map_err(|e| format!("{base}: {e}"))?);
    if let Some(bundle) = &client_config.ca_bundle {
        let roots: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(&bundle.0)
            .filter_map(Result::ok)
            .map(|c| c.to_vec())
            .collect();
        config.root_cert = Some(roots);
    }
    let timeout = Duration::from_secs(webhook.timeout_seconds.unwrap_or(10).clamp(1, 30) as u64);
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let client = Client::try_from(config).map_err(|e| e.to_string())?;
    let mut object = serde_json::to_value(pod).map_err(|e| e.to_string())?;
    if let Some(o) = object.as_object_mut() {
        o.remove("status");
    }
    let review = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("tracehook-heal-{}", pod.uid().unwrap_or_default()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod.namespace(),
            "operation": "CREATE",
            "userInfo": {"username": "tracehook-heal"},
            "object": object,
            "dryRun": true
        }
    });
    let request = http::Request::post(path)
        .header("content-type", "application/json")
        .body(review.to_string().into_bytes())
        .map_err(|e| e.to_string())?;
    let answer = client
        .request_text(request)
        .await
        .map_err(|e| format!("asking the webhook: {e}"))?;
    let answer: Value = serde_json::from_str(&answer).map_err(|e| e.to_string())?;
    match answer["response"]["patch"].as_str() {
        Some(patch) if !patch.is_empty() => Ok(()),
        _ => Err(format!(
            "the webhook answered without a patch ({})",
            answer["response"]["warnings"]
        )),
    }
}

/// `https://host:port/path` → (`https://host:port`, `/path`).
fn split_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("{url} is not an https URL"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    Ok((format!("https://{host}"), format!("/{path}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::InstanceRef;

    fn missing(kind: &str, seen: Seen) -> Missing {
        Missing {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: "p".into(),
            instance: InstanceRef::new("obs", "test"),
            seen,
            workload: None,
            controller: (!kind.is_empty()).then(|| (kind.to_owned(), "web".into(), "c".into())),
        }
    }

    #[test]
    fn only_pods_a_controller_replaces_in_a_namespace_the_webhook_sees() {
        assert!(replaceable(&missing("ReplicaSet", Seen::Yes)));
        assert!(replaceable(&missing("StatefulSet", Seen::Yes)));
        assert!(replaceable(&missing("DaemonSet", Seen::Yes)));
        assert!(
            !replaceable(&missing("Job", Seen::Yes)),
            "never a Job's Pod"
        );
        assert!(!replaceable(&missing("", Seen::Yes)), "never a bare Pod");
        assert!(!replaceable(&missing("ReplicaSet", Seen::NotSelected)));
        assert!(!replaceable(&missing("ReplicaSet", Seen::NotRegistered)));
    }

    #[test]
    fn a_url_is_split_into_base_and_path() {
        assert_eq!(
            split_url("https://127.0.0.1:8443/mutate"),
            Ok(("https://127.0.0.1:8443".into(), "/mutate".into()))
        );
        assert_eq!(
            split_url("https://example.com"),
            Ok(("https://example.com".into(), "/".into()))
        );
        assert!(split_url("http://example.com/").is_err());
    }

    #[test]
    fn a_replacement_counts_once_ready_and_created_after_the_eviction() {
        let pod = |created: &str, ready: &str| -> Arc<Pod> {
            Arc::new(
                serde_json::from_value(json!({
                    "metadata": {"name": "web-2", "creationTimestamp": created,
                        "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "c", "controller": true}]},
                    "status": {"conditions": [{"type": "Ready", "status": ready}]}
                }))
                .expect("a Pod"),
            )
        };
        let since: Timestamp = "2026-12-03T10:00:00Z".parse().expect("time");
        assert!(replacement_ready(
            &[pod("2026-12-03T10:00:05Z", "True")],
            "c",
            since
        ));
        assert!(!replacement_ready(
            &[pod("2026-12-03T10:00:05Z", "False")],
            "c",
            since
        ));
        assert!(!replacement_ready(
            &[pod("2026-12-03T09:59:00Z", "True")],
            "c",
            since
        ));
        assert!(!replacement_ready(
            &[pod("2026-12-03T10:00:05Z", "True")],
            "other",
            since
        ));
    }
}
