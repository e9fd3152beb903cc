//! AdmissionReview v1 in, AdmissionReview v1 out, with no HTTP in sight: [`review`]
//! is the one step from a request and what the caches know to the answer, the labels
//! of its metric and the Event to publish. The server, the fixtures, the fuzzer and the
//! benchmarks all call it.
//!
//! The request keeps the Pod as JSON, of which it reads only what the engine looks at
//! ([`pod_fields`]): the patch is built by JSON Pointer against what is there, and the
//! API server applies it to the whole Pod, fields the Rust types do not know included.
//! The response is our own type: kube-core 5's
//! `AdmissionResponse` serializes the patch as an array of numbers (kube-rs #1781),
//! while the AdmissionReview API documents a base64 string.

use base64::Engine as _;
use kube::core::admission::Operation;
use kube::core::{GroupVersionKind, GroupVersionResource};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod pod_fields;

use crate::cluster::Snapshot;
use crate::inject::{self, Decision, Settings, Skip, SkipReason, Workload};

pub const API_VERSION: &str = "admission.k8s.io/v1";
pub const KIND: &str = "AdmissionReview";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    pub api_version: String,
    pub kind: String,
    pub request: Option<AdmissionRequest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    pub uid: String,
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    #[serde(default)]
    pub sub_resource: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    pub operation: Operation,
    /// The Pod, with only the fields the engine reads ([`pod_fields::POD`]).
    #[serde(default, deserialize_with = "pod_fields::deserialize")]
    pub object: Option<Value>,
    #[serde(default)]
    pub dry_run: Option<bool>,
}

/// Why a body is not an AdmissionReview this webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("the body is not valid JSON for an AdmissionReview: {0}")]
    Json(#[from] serde_json::Error),
    #[error("expected apiVersion {API_VERSION} and kind {KIND}, got {api_version} {kind}")]
    WrongType { api_version: String, kind: String },
    #[error("the AdmissionReview has no request")]
    NoRequest,
    #[error("the AdmissionReview request has an empty uid")]
    NoUid,
}

impl AdmissionReview {
    /// Parses and checks a body: a wrong type or a missing request or uid cannot be
    /// answered (the API server matches responses by uid).
    pub fn parse(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
        let review: AdmissionReview = serde_json::from_slice(body)?;
        if review.api_version != API_VERSION || review.kind != KIND {
            return Err(ReviewError::WrongType {
                api_version: review.api_version,
                kind: review.kind,
            });
        }
        let request = review.request.ok_or(ReviewError::NoRequest)?;
        if request.uid.is_empty() {
            return Err(ReviewError::NoUid);
        }
        Ok(request)
    }
}

impl AdmissionRequest {
    /// Is this a Pod creation (the only thing the webhook is registered for)?
    pub fn is_pod_create(&self) -> Result<&Value, Skip> {
        let is_pod = self.resource.group.is_empty()
            && self.resource.resource == "pods"
            && self.sub_resource.as_deref().unwrap_or("").is_empty();
        if !is_pod || self.operation != Operation::Create {
            return Err(Skip::new(
                SkipReason::InvalidPod,
                format!(
                    "tracehook only mutates Pod creations; got {:?} on {}{}",
                    self.operation,
                    self.resource.resource,
                    self.sub_resource
                        .as_deref()
                        .map(|s| format!("/{s}"))
                        .unwrap_or_default()
                ),
            ));
        }
        self.object
            .as_ref()
            .ok_or_else(|| Skip::new(SkipReason::InvalidPod, "the request carries no object"))
    }

    pub fn is_dry_run(&self) -> bool {
        self.dry_run.unwrap_or(false)
    }

    /// The Pod and the namespace it is created in: the request's namespace, else the
    /// Pod's own, else `default` (where the API server puts a Pod that names none).
    /// `Err` for a request that is not a Pod creation.
    pub fn subject(&self) -> Result<(&str, &Value), Skip> {
        let pod = self.is_pod_create()?;
        let namespace = self
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .or_else(|| pod.pointer("/metadata/namespace").and_then(Value::as_str))
            .unwrap_or("default");
        Ok((namespace, pod))
    }
}

/// What a person should hear of, as an Event: an admission warning reaches whoever
/// created the Pod, which is usually a controller.
#[derive(Clone, Debug, PartialEq)]
pub enum Notice {
    Skipped(Skip),
    /// Injected, but these warnings apply.
    Partial(Vec<String>),
}

/// An Event to publish about a Pod being created.
#[derive(Clone, Debug, PartialEq)]
pub struct EventRequest {
    pub namespace: String,
    pub pod: Value,
    pub workload: Option<Workload>,
    pub notice: Notice,
}

/// Everything answering one request decided.
#[derive(Debug)]
pub struct Reviewed {
    pub response: AdmissionResponse,
    /// `None` for a request that is not a Pod creation.
    pub namespace: Option<String>,
    pub decision: Option<Decision>,
    /// The labels of `tracehook_admission_requests_total`.
    pub outcome: &'static str,
    pub reason: &'static str,
    /// Not for dry runs.
    pub event: Option<EventRequest>,
}

/// The review step, pure: the request, what the caches know of the Pod's surroundings
/// (`snapshot`, gathered for [`AdmissionRequest::subject`]; unused for other requests)
/// and the settings in; the answer out.
pub fn review(request: &AdmissionRequest, snapshot: &Snapshot, settings: &Settings) -> Reviewed {
    let (namespace, pod) = match request.subject() {
        Ok(subject) => subject,
        Err(skip) => {
            let mut response = AdmissionResponse::allow(&request.uid);
            response.warn(&skip.message);
            return Reviewed {
                response,
                namespace: None,
                decision: None,
                outcome: "error",
                reason: "not_a_pod_create",
                event: None,
            };
        }
    };
    let decision = inject::decide(&inject::Input {
        pod,
        namespace: &snapshot.namespace,
        workload: snapshot.workload.as_ref(),
        instances: inject::Instances::Known(&snapshot.instances),
        env_from: &snapshot.env_from,
        settings,
    });
    let reason = match &decision {
        Decision::Skipped(skip) => skip.reason.as_str(),
        Decision::Ignored(reason) => reason.as_str(),
        _ => "",
    };
    let mut response = AdmissionResponse::for_decision(&request.uid, &decision);
    let notice = match &decision {
        Decision::Injected(injection) => {
            for w in &snapshot.warnings {
                response.warn(w);
            }
            let warnings: Vec<String> = injection
                .warnings
                .iter()
                .chain(&snapshot.warnings)
                .cloned()
                .collect();
            (!warnings.is_empty()).then_some(Notice::Partial(warnings))
        }
        Decision::Skipped(skip) => {
            for w in &snapshot.warnings {
                response.warn(w);
            }
            Some(Notice::Skipped(skip.clone()))
        }
        _ => None,
    };
    let event = notice
        .filter(|_| !request.is_dry_run())
        .map(|notice| EventRequest {
            namespace: namespace.to_owned(),
            pod: pod.clone(),
            workload: snapshot.workload.clone(),
            notice,
        });
    Reviewed {
        response,
        namespace: Some(namespace.to_owned()),
        outcome: decision.outcome(),
        reason,
        decision: Some(decision),
        event,
    }
}

/// The answer: always allowed. A warning goes with every skip of a Pod that asked for
/// injection, and with every error.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    /// The JSON Patch, base64-encoded as the API documents.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// What the JSON Patch of a Pod with a few containers takes (the sidecar alone is
/// about 2 KiB).
const PATCH_CAPACITY: usize = 8 * 1024;

/// Prefix of every warning, so users can tell who said it.
pub const WARNING_PREFIX: &str = "tracehook: ";

impl AdmissionResponse {
    pub fn allow(uid: impl Into<String>) -> Self {
        Self {
            uid: uid.into(),
            allowed: true,
            patch_type: None,
            patch: None,
            warnings: Vec::new(),
        }
    }

    /// The response for an engine decision.
    pub fn for_decision(uid: impl Into<String>, decision: &Decision) -> Self {
        let mut response = Self::allow(uid);
        match decision {
            Decision::Injected(injection) => {
                // Sized for a typical patch up front: growing from serde_json's
                // default 128 bytes took several reallocations and copies.
                let mut patch = Vec::with_capacity(PATCH_CAPACITY);
                serde_json::to_writer(&mut patch, &injection.patch)
                    .expect("a JSON Patch of serde_json values always serializes");
                response.patch_type = Some("JSONPatch");
                response.patch = Some(base64::engine::general_purpose::STANDARD.encode(patch));
                response.warnings = injection
                    .warnings
                    .iter()
                    .map(|w| format!("{WARNING_PREFIX}{w}"))
                    .collect();
            }
            Decision::Skipped(skip) => response.warn(&skip.message),
            Decision::NotRequested | Decision::AlreadyInjected | Decision::Ignored(_) => {}
        }
        response
    }

    pub fn warn(&mut self, message: &str) {
        self.warnings.push(format!("{WARNING_PREFIX}{message}"));
    }

    /// The AdmissionReview v1 body, the same JSON as serde would write. Written by
    /// hand so that the base64 patch, most of the body, is copied as it is: serde_json
    /// would run its escaping over every byte of a string that never needs it.
    pub fn into_review_json(&self) -> Vec<u8> {
        const JSON: &str = "an AdmissionReview of strings always serializes";
        let size = 256
            + self.patch.as_ref().map_or(0, String::len)
            + self.warnings.iter().map(|w| w.len() + 8).sum::<usize>();
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(br#"{"apiVersion":""#);
        out.extend_from_slice(API_VERSION.as_bytes());
        out.extend_from_slice(br#"","kind":""#);
        out.extend_from_slice(KIND.as_bytes());
        out.extend_from_slice(br#"","response":{"uid":"#);
        serde_json::to_writer(&mut out, &self.uid).expect(JSON);
        out.extend_from_slice(br#","allowed":"#);
        out.extend_from_slice(if self.allowed { b"true" } else { b"false" });
        if let Some(patch_type) = self.patch_type {
            out.extend_from_slice(br#","patchType":"#);
            serde_json::to_writer(&mut out, patch_type).expect(JSON);
        }
        if let Some(patch) = &self.patch {
            out.extend_from_slice(br#","patch":"#);
            if patch.bytes().all(is_base64) {
                out.push(b'"');
                out.extend_from_slice(patch.as_bytes());
                out.push(b'"');
            } else {
                serde_json::to_writer(&mut out, patch).expect(JSON);
            }
        }
        if !self.warnings.is_empty() {
            out.extend_from_slice(br#","warnings":"#);
            serde_json::to_writer(&mut out, &self.warnings).expect(JSON);
        }
        out.extend_from_slice(b"}}");
        out
    }
}

/// A byte of the standard base64 alphabet, which JSON strings take unescaped.
fn is_base64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn as_serde_writes_it(response: &AdmissionResponse) -> String {
        json!({"apiVersion": API_VERSION, "kind": KIND, "response": response}).to_string()
    }

    fn written(response: &AdmissionResponse) -> String {
        String::from_utf8(response.into_review_json()).expect("UTF-8")
    }

    #[test]
    fn review_json_is_what_serde_writes() {
        let mut response = AdmissionResponse::allow("uid \"quoted\" \u{e9}");
        assert_eq!(written(&response), as_serde_writes_it(&response));
        response.patch_type = Some("JSONPatch");
        response.patch = Some("W3sib3AiOiJhZGQifV0=".to_owned());
        response.warn("a \"warning\"\nover two lines");
        response.warn("another");
        assert_eq!(written(&response), as_serde_writes_it(&response));
    }

    #[test]
    fn a_patch_that_is_not_base64_is_still_escaped() {
        let mut response = AdmissionResponse::allow("uid");
        response.patch = Some("not \"base64\"".to_owned());
        assert_eq!(written(&response), as_serde_writes_it(&response));
    }
}
