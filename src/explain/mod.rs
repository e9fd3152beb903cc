//! `tracehook explain`: the decision as the webhook would make it now, for a live Pod or
//! for the Pods a workload creates, in words a person can act on: which key at which
//! level decided, the instance and why, the skip reason, what would be injected (and
//! what of the user's is left alone); for an injected Pod, what was injected and whether
//! its instance still exists; for a Pod without its sidecar, why and the fix.
//!
//! [`explain`] is pure (a [`Case`] in, an [`Explanation`] out); [`live`] gathers the
//! case from the cluster through the webhook's own caches.

pub mod live;

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use crate::cluster::registration::{self, Seen};
use crate::inject::decide::{self, Level, Origin};
use crate::inject::instance;
use crate::inject::marker::Status;
use crate::inject::{
    Decision, EnvFromKeys, Input, Instance, Instances, NamespaceMeta, Settings, Workload, keys,
};

/// Everything the explanation depends on.
#[derive(Clone, Debug)]
pub struct Case {
    /// What was asked about: `Pod web-1`, `Deployment web`.
    pub subject: String,
    /// A live Pod (else a workload's pod template, as the Pods it creates).
    pub live_pod: bool,
    /// The Pod, or the template as a Pod.
    pub pod: Value,
    pub namespace: NamespaceMeta,
    pub workload: Option<Workload>,
    pub instances: Arc<[Instance]>,
    pub env_from: EnvFromKeys,
    pub settings: Settings,
    /// Whether the registered webhook is called for the namespace.
    pub seen: Seen,
    /// The registration's name, for the fix.
    pub registration: String,
    /// What could not be read (the owner, a ConfigMap); the decision went ahead.
    pub warnings: Vec<String>,
}

/// The verdict, as a script reads it (the exit code) and as a person does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Explanation {
    pub verdict: Verdict,
    pub text: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Injected, or would be.
    Injected,
    NotRequested,
    /// Skipped, or never touched (the tracing backend's own Pods).
    Skipped,
    /// Asks for the sidecar and would get it now, but has none (or, for a workload,
    /// its Pods would not get it because the webhook is not called for them).
    Missing,
}

impl Verdict {
    /// `tracehook explain`'s exit code.
    pub fn code(self) -> u8 {
        match self {
            Verdict::Injected => 0,
            Verdict::NotRequested => 1,
            Verdict::Skipped => 2,
            Verdict::Missing => 3,
        }
    }
}

pub fn explain(case: &Case) -> Explanation {
    let ns = &case.namespace.name;
    let mut text = String::new();
    let annotations = case
        .pod
        .pointer("/metadata/annotations")
        .and_then(|a| serde_json::from_value(a.clone()).ok())
        .unwrap_or_default();
    if let Some(status) = Status::of(&annotations) {
        return injected(case, &status);
    }
    let metadata = case.pod.get("metadata");
    let origin = decide::origin(metadata, case.workload.as_ref(), &case.namespace);
    let decision = decide::decide(&Input {
        pod: &case.pod,
        namespace: &case.namespace,
        workload: case.workload.as_ref(),
        instances: Instances::Known(&case.instances),
        env_from: &case.env_from,
        settings: &case.settings,
    });
    let verdict = match &decision {
        Decision::NotRequested => Verdict::NotRequested,
        Decision::Ignored(_) | Decision::Skipped(_) => Verdict::Skipped,
        Decision::AlreadyInjected => Verdict::Injected,
        Decision::Injected(_) if case.live_pod || case.seen != Seen::Yes => Verdict::Missing,
        Decision::Injected(_) => Verdict::Injected,
    };
    let headline = match (verdict, case.live_pod) {
        (Verdict::Injected, _) => "its Pods would be INJECTED",
        (Verdict::NotRequested, _) => "NOT REQUESTED",
        (Verdict::Skipped, _) => "SKIPPED",
        (Verdict::Missing, true) => "MISSING its sidecar",
        (Verdict::Missing, false) => "its Pods would be MISSING the sidecar",
    };
    let _ = writeln!(
        text,
        "{} in namespace {ns}: {headline} (exit {})",
        case.subject,
        verdict.code()
    );
    line(
        &mut text,
        "request",
        &request(origin.as_ref(), case.workload.as_ref()),
    );
    match &decision {
        Decision::Ignored(reason) => line(
            &mut text,
            "reason",
            &format!("{}: tracehook never touches these Pods", reason.as_str()),
        ),
        Decision::Skipped(skip) => line(
            &mut text,
            "reason",
            &format!("{}: {}", skip.reason.as_str(), skip.message),
        ),
        Decision::Injected(injection) => {
            let target = origin
                .as_ref()
                .and_then(|o| decide::target(o).ok().flatten());
            let why = target
                .map(|t| instance::why(&t, ns, &injection.instance))
                .unwrap_or_default();
            line(
                &mut text,
                "instance",
                &format!("{} ({why})", injection.instance),
            );
            let mut patched = case.pod.clone();
            if json_patch::patch(&mut patched, &injection.patch).is_ok()
                && let Some(status) = patched
                    .pointer("/metadata/annotations")
                    .and_then(|a| serde_json::from_value(a.clone()).ok())
                    .and_then(|a| Status::of(&a))
            {
                what(&mut text, "would add", &status);
            }
            for warning in &injection.warnings {
                line(&mut text, "note", warning);
            }
            if verdict == Verdict::Missing {
                missing(&mut text, case);
            }
        }
        Decision::NotRequested | Decision::AlreadyInjected => {}
    }
    for warning in &case.warnings {
        line(&mut text, "note", warning);
    }
    Explanation { verdict, text }
}

/// A Pod that carries the marker.
fn injected(case: &Case, status: &Status) -> Explanation {
    let ns = &case.namespace.name;
    let instance = status.instance_in(ns);
    let exists = case
        .instances
        .iter()
        .any(|i| i.namespace == instance.namespace && i.name == instance.name);
    let mut text = format!("{} in namespace {ns}: INJECTED (exit 0)\n", case.subject);
    let state = if exists {
        "exists".to_owned()
    } else {
        format!(
            "no longer exists: the sidecar sends to {} Services that are gone; recreate the Pod once an instance is in reach",
            instance
        )
    };
    line(&mut text, "instance", &format!("{instance} ({state})"));
    what(&mut text, "added", status);
    if !status.version.is_empty() {
        line(&mut text, "by", &format!("tracehook {}", status.version));
    }
    Explanation {
        verdict: Verdict::Injected,
        text,
    }
}

/// The sidecar and the variables, per app container.
fn what(text: &mut String, label: &str, status: &Status) {
    let place = if status.native {
        "a native sidecar in initContainers"
    } else {
        "a sidecar in containers"
    };
    line(
        text,
        label,
        &format!(
            "container {} ({} flavor, {place})",
            status.containers.join(", "),
            status.flavor
        ),
    );
    for (container, vars) in &status.env {
        line(text, "", &format!("{container}: {}", vars.join(", ")));
    }
    for (container, vars) in &status.kept {
        line(
            text,
            "left alone",
            &format!("{container}: {} (set by the user)", vars.join(", ")),
        );
    }
}

/// Why a Pod that would be injected has no sidecar, and the fix.
fn missing(text: &mut String, case: &Case) {
    let ns = &case.namespace.name;
    if case.seen != Seen::Yes {
        line(
            text,
            "why",
            &registration::fix(case.seen, ns, &case.registration),
        );
        return;
    }
    line(
        text,
        "why",
        "it was created while tracehook was down or unreachable, before its namespace was labelled, or before its instance existed",
    );
    let controller = decide::controller_reference(case.pod.get("metadata"))
        .and_then(|o| o.get("kind")?.as_str());
    let fix = match controller {
        Some("ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            "delete it: its controller replaces it with an injected Pod (or run tracehook with --heal-missing=evict)"
        }
        _ => "recreate it (tracehook never evicts bare Pods or Jobs' Pods)",
    };
    line(text, "fix", fix);
}

/// The request by precedence, in words.
fn request(origin: Option<&Origin>, workload: Option<&Workload>) -> String {
    let Some(o) = origin else {
        return format!(
            "nothing asks: no {} or {} annotation on the Pod, its workload or the Namespace, and the Namespace is not labelled {}=enabled",
            keys::INJECT,
            keys::JAEGER_OPERATOR_INJECT,
            keys::INJECTION_LABEL
        );
    };
    let place = match (o.level, workload) {
        (Level::Workload, Some(w)) => format!("the owning workload {}/{}", w.kind, w.name),
        (level, _) => level.place().to_owned(),
    };
    format!("{}={:?} on {place} decides", o.key, o.value)
}

/// One `label: value` line, aligned.
fn line(text: &mut String, label: &str, value: &str) {
    let label = if label.is_empty() {
        String::new()
    } else {
        format!("{label}:")
    };
    let _ = writeln!(text, "  {label:<12}{value}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn case(pod: Value, labels: &[(&str, &str)]) -> Case {
        let mut namespace = NamespaceMeta::named("shop");
        for (k, v) in labels {
            namespace.labels.insert((*k).into(), (*v).into());
        }
        Case {
            subject: "Pod web-1".into(),
            live_pod: true,
            pod,
            namespace,
            workload: None,
            instances: vec![Instance {
                namespace: "obs".into(),
                name: "test".into(),
                ..Instance::default()
            }]
            .into(),
            env_from: EnvFromKeys::default(),
            settings: Settings::default(),
            seen: Seen::Yes,
            registration: "tracehook".into(),
            warnings: Vec::new(),
        }
    }

    fn pod(annotations: Value) -> Value {
        json!({
            "metadata": {"name": "web-1", "annotations": annotations,
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9c", "uid": "u", "controller": true}]},
            "spec": {"containers": [{"name": "web", "image": "nginx",
                "env": [{"name": "OTEL_EXPORTER_OTLP_ENDPOINT", "value": "http://gw:4317"}]}]}
        })
    }

    const LABELLED: &[(&str, &str)] = &[("tracehook.dev/injection", "enabled")];

    #[test]
    fn a_live_pod_that_would_be_injected_is_missing_with_the_fix() {
        let e = explain(&case(pod(json!({})), LABELLED));
        assert_eq!(e.verdict, Verdict::Missing);
        assert_eq!(e.verdict.code(), 3);
        let expected = [
            "Pod web-1 in namespace shop: MISSING its sidecar (exit 3)",
            "  request:    tracehook.dev/injection=\"enabled\" on the Namespace label decides",
            "  instance:   obs/test (the request is `true`: none in namespace shop, and obs/test is the only instance in the cluster)",
            "  would add:  container jaeger-agent (jaeger-agent flavor, a native sidecar in initContainers)",
        ];
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(e.text.lines().nth(i), Some(*want), "{}", e.text);
        }
        assert!(
            e.text
                .contains("  left alone: web: OTEL_EXPORTER_OTLP_ENDPOINT (set by the user)"),
            "{}",
            e.text
        );
        assert!(
            e.text
                .contains("  fix:        delete it: its controller replaces it"),
            "{}",
            e.text
        );
    }

    #[test]
    fn the_same_pod_in_a_namespace_the_webhook_does_not_see_gets_that_fix() {
        let mut c = case(pod(json!({"sidecar.jaegertracing.io/inject": "true"})), &[]);
        c.seen = Seen::NotSelected;
        let e = explain(&c);
        assert_eq!(e.verdict, Verdict::Missing);
        assert!(
            e.text
                .contains("sidecar.jaegertracing.io/inject=\"true\" on the Pod decides"),
            "{}",
            e.text
        );
        assert!(
            e.text
                .contains("fix: kubectl label namespace shop tracehook.dev/injection=enabled"),
            "{}",
            e.text
        );
    }

    #[test]
    fn a_workload_whose_pods_would_be_injected_exits_0_and_names_the_level() {
        let mut c = case(pod(json!({})), &[]);
        c.live_pod = false;
        c.subject = "Deployment web".into();
        c.workload = Some(Workload {
            kind: "Deployment".into(),
            name: "web".into(),
            annotations: [("tracehook.dev/inject".to_owned(), "obs/test".to_owned())].into(),
        });
        let e = explain(&c);
        assert_eq!(e.verdict, Verdict::Injected);
        assert!(
            e.text.starts_with(
                "Deployment web in namespace shop: its Pods would be INJECTED (exit 0)"
            ),
            "{}",
            e.text
        );
        assert!(
            e.text.contains(
                "tracehook.dev/inject=\"obs/test\" on the owning workload Deployment/web decides"
            ),
            "{}",
            e.text
        );
        assert!(
            e.text.contains("obs/test (the request names obs/test)"),
            "{}",
            e.text
        );
    }

    #[test]
    fn false_on_the_pod_is_not_requested_and_hostnetwork_is_skipped() {
        let e = explain(&case(
            pod(json!({"tracehook.dev/inject": "false"})),
            LABELLED,
        ));
        assert_eq!(e.verdict.code(), 1);
        assert!(
            e.text
                .contains("tracehook.dev/inject=\"false\" on the Pod decides"),
            "{}",
            e.text
        );
        let mut host = pod(json!({}));
        host["spec"]["hostNetwork"] = true.into();
        let e = explain(&case(host, LABELLED));
        assert_eq!(e.verdict.code(), 2);
        assert!(
            e.text
                .contains("  reason:     host_network: the Pod uses hostNetwork"),
            "{}",
            e.text
        );
        let e = explain(&case(pod(json!({})), &[]));
        assert_eq!(e.verdict.code(), 1);
        assert!(e.text.contains("nothing asks"), "{}", e.text);
    }

    #[test]
    fn an_injected_pod_says_what_it_got_and_whether_its_instance_still_exists() {
        let marker = json!({"instance": "obs/test", "flavor": "otel-collector", "containers": ["otc-container"],
            "native": true, "env": {"web": ["OTEL_SERVICE_NAME"]}, "version": "0.1.0"}).to_string();
        let c = case(pod(json!({"tracehook.dev/status": marker})), LABELLED);
        let e = explain(&c);
        assert_eq!(e.verdict.code(), 0);
        assert!(
            e.text.contains("  instance:   obs/test (exists)"),
            "{}",
            e.text
        );
        assert!(
            e.text
                .contains("container otc-container (otel-collector flavor"),
            "{}",
            e.text
        );
        assert!(
            e.text.contains("  by:         tracehook 0.1.0"),
            "{}",
            e.text
        );
        let mut gone = c;
        gone.instances = Vec::new().into();
        let e = explain(&gone);
        assert_eq!(e.verdict.code(), 0);
        assert!(e.text.contains("obs/test (no longer exists"), "{}", e.text);
    }
}
