//! The webhook's decode + inject path on arbitrary bytes: parse the AdmissionReview,
//! decide, answer; the whole Pod must decide as the fields the request reads of it do;
//! and whenever a patch comes out, it must apply to the whole Pod, and the patched Pod
//! must be recognised as already injected (the API server reinvokes the webhook with
//! it).

#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use std::sync::Arc;

use tracehook::admission::{self, AdmissionReview};
use tracehook::cluster::Snapshot;
use tracehook::inject::limits::{LimitRange, ResourcePolicy, ResourceQuota};
use tracehook::inject::{
    self, Decision, EnvFromKeys, Flavor, Instance, Instances, NamespaceMeta, Settings,
};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = AdmissionReview::parse(data) else {
        return;
    };
    // The world varies with the input's length, so a crash reproduces from the file.
    let settings = Settings {
        native_sidecars: data.len().is_multiple_of(2),
        default_flavor: if data.len() % 4 < 2 {
            Flavor::JaegerAgent
        } else {
            Flavor::OtelCollector
        },
        ..Settings::default()
    };
    // The namespace by the webhook's own rule (only used when it is a Pod creation).
    let namespace_name = request
        .subject()
        .map(|(namespace, _)| namespace.to_owned())
        .unwrap_or_default();
    let namespace = NamespaceMeta {
        name: namespace_name,
        labels: BTreeMap::from([("tracehook.dev/injection".to_owned(), "enabled".to_owned())]),
        annotations: BTreeMap::new(),
        // Bounds of every shape, so that fitting the sidecar is fuzzed with the rest.
        policy: ResourcePolicy {
            limit_ranges: vec![LimitRange::from_spec(
                "limits",
                Some(&serde_json::json!({"limits": [
                    {"type": "Container", "max": {"cpu": "150m"}, "min": {"memory": "16Mi"},
                     "maxLimitRequestRatio": {"cpu": "10"}},
                    {"type": "Pod", "max": {"memory": "1Gi"}}
                ]})),
            )],
            quotas: vec![ResourceQuota::from_parts(
                "compute",
                Some(&serde_json::json!({"hard": {"requests.cpu": "2", "limits.memory": "4Gi"}})),
                Some(&serde_json::json!({"used": {"requests.cpu": "1900m"}})),
            )],
        },
    };
    let instances = [
        Instance {
            namespace: "obs".into(),
            name: "test".into(),
            ..Instance::default()
        },
        Instance {
            namespace: "demo".into(),
            name: "test".into(),
            ..Instance::default()
        },
    ];
    let env_from = EnvFromKeys {
        config_maps: BTreeMap::from([(
            "settings".to_owned(),
            vec!["OTEL_SERVICE_NAME".to_owned()],
        )]),
    };
    let snapshot = Snapshot {
        namespace: namespace.clone(),
        workload: None,
        instances: Arc::from(instances.to_vec()),
        env_from: env_from.clone(),
        warnings: Vec::new(),
    };
    // The webhook's own review step.
    let reviewed = admission::review(&request, &snapshot, &settings);
    check_review(&reviewed.response.into_review_json());
    // The request read only the fields of the Pod the engine looks at; the whole Pod
    // (as the API server holds it) must decide the same, and take the patch. (A body
    // nested too deep for a whole `Value`, in a field the request skips, is not
    // compared.)
    let Ok((_, _)) = request.subject() else {
        return;
    };
    let Ok(mut body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let pod = body["request"]["object"].take();
    let input = |pod| inject::Input {
        pod,
        namespace: &namespace,
        workload: None,
        instances: Instances::Known(&instances),
        env_from: &env_from,
        settings: &settings,
    };
    let whole = inject::decide(&input(&pod));
    assert_eq!(
        Some(&whole),
        reviewed.decision.as_ref(),
        "the whole Pod and the fields read decide alike"
    );
    if let Decision::Injected(injection) = &whole {
        let mut patched = pod.clone();
        if let Err(e) = json_patch::patch(&mut patched, &injection.patch) {
            panic!("the patch does not apply to its own Pod: {e}");
        }
        assert_eq!(
            inject::decide(&input(&patched)),
            Decision::AlreadyInjected,
            "reinvocation must add nothing"
        );
    }
});

fn check_review(body: &[u8]) {
    let review: Value = serde_json::from_slice(body).expect("the answer is JSON");
    assert_eq!(
        review["response"]["allowed"],
        Value::Bool(true),
        "never denies"
    );
}
