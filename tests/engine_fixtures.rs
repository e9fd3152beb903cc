//! Fixture-driven specification of the injection engine: every `tests/data/*.json`
//! holds an AdmissionReview, what the webhook knows around it (namespace, owning
//! workload, instances), and the expected outcome. Each fixture goes through the same
//! path as a real request: `admission::AdmissionReview::parse`, `inject::decide`, the
//! response's base64 patch, applied with the json-patch crate.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use rstest::rstest;
use serde::Deserialize;
use serde_json::Value;
use std::sync::Arc;

use tracehook::admission::{self, AdmissionReview};
use tracehook::cluster::Snapshot;
use tracehook::inject::limits::{LimitRange, ResourcePolicy, ResourceQuota};
use tracehook::inject::{
    self, Decision, EnvFromKeys, Flavor, Instance, Instances, NamespaceMeta, Resources, Settings,
    SidecarSettings, Workload,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    /// The behaviour of DESIGN.md this fixture pins down.
    description: String,
    /// Defaults to the review's namespace with `tracehook.dev/injection=enabled`.
    namespace: Option<NamespaceFixture>,
    workload: Option<WorkloadFixture>,
    /// Defaults to one instance, `obs/test`.
    instances: Option<Vec<InstanceFixture>>,
    #[serde(default)]
    settings: SettingsFixture,
    #[serde(default)]
    config_maps: BTreeMap<String, Vec<String>>,
    review: Value,
    expect: Expect,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceFixture {
    name: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    /// LimitRange objects as the API server stores them (`metadata.name`, `spec`).
    #[serde(default)]
    limit_ranges: Vec<Value>,
    /// ResourceQuota objects (`metadata.name`, `spec`, `status`).
    #[serde(default)]
    resource_quotas: Vec<Value>,
}

fn policy(n: &NamespaceFixture) -> ResourcePolicy {
    let name = |o: &Value| {
        o.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    ResourcePolicy {
        limit_ranges: n
            .limit_ranges
            .iter()
            .map(|o| LimitRange::from_spec(&name(o), o.get("spec")))
            .collect(),
        quotas: n
            .resource_quotas
            .iter()
            .map(|o| ResourceQuota::from_parts(&name(o), o.get("spec"), o.get("status")))
            .collect(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkloadFixture {
    kind: String,
    name: String,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct InstanceFixture {
    namespace: String,
    name: String,
    flavor: Option<Flavor>,
    image: Option<String>,
    cpu_request: Option<String>,
    memory_limit: Option<String>,
    #[serde(default)]
    agent_options: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SettingsFixture {
    native_sidecars: Option<bool>,
    default_flavor: Option<Flavor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    /// injected | skipped | not_requested | already_injected | ignored
    decision: String,
    /// The skip reason's label, for `skipped` and `ignored`.
    reason: Option<String>,
    /// Each must be a substring of some warning; no warnings at all when absent and
    /// `noWarnings` is true.
    #[serde(default)]
    warnings: Vec<String>,
    #[serde(default)]
    no_warnings: bool,
    /// `initContainers` or `containers`: where the sidecar must be.
    sidecar_in: Option<String>,
    /// A subset of the injected sidecar container (a value of `null`: must be absent).
    sidecar: Option<Value>,
    /// A subset of the `otel-collector` sidecar's inline configuration (`OTEL_CONFIG`,
    /// read as YAML).
    sidecar_config: Option<Value>,
    /// Arguments the sidecar must have, exactly as listed (in order).
    sidecar_args: Option<Vec<String>>,
    /// Container name → variable → expected value (`null`: must be absent). A
    /// variable from a fieldRef is written as `fieldRef:<path>`.
    #[serde(default)]
    env: BTreeMap<String, BTreeMap<String, Option<String>>>,
    /// Subsets of the resulting Pod's labels and annotations (a value of `null`:
    /// must be absent).
    #[serde(default)]
    labels: BTreeMap<String, Option<String>>,
    #[serde(default)]
    annotations: BTreeMap<String, Option<String>>,
    /// A subset of the parsed `tracehook.dev/status` marker.
    status: Option<Value>,
    /// Instance `ns/name` the Pod was injected for.
    instance: Option<String>,
    /// A subset of the whole patched Pod (a value of `null`: must be absent), for what
    /// the other fields cannot say: order of containers, fields left untouched.
    result: Option<Value>,
}

fn load(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn settings(f: &SettingsFixture) -> Settings {
    let mut s = Settings::default();
    if let Some(n) = f.native_sidecars {
        s.native_sidecars = n;
    }
    if let Some(flavor) = f.default_flavor {
        s.default_flavor = flavor;
    }
    s
}

fn instances(f: &Option<Vec<InstanceFixture>>) -> Vec<Instance> {
    let Some(list) = f else {
        return vec![Instance {
            namespace: "obs".into(),
            name: "test".into(),
            sidecar: SidecarSettings::default(),
        }];
    };
    list.iter()
        .map(|i| Instance {
            namespace: i.namespace.clone(),
            name: i.name.clone(),
            sidecar: SidecarSettings {
                flavor: i.flavor,
                image: i.image.clone(),
                resources: Resources {
                    cpu_request: i.cpu_request.clone(),
                    memory_limit: i.memory_limit.clone(),
                    ..Resources::default()
                },
                agent_options: i.agent_options.clone(),
            },
        })
        .collect()
}

/// Every key of `expected` is in `actual` with a matching value, or absent when
/// expected as `null`; arrays match element by element and must have the same length.
fn is_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e.iter().all(|(k, v)| match a.get(k) {
            Some(av) => is_subset(v, av),
            None => v.is_null(),
        }),
        (Value::Array(e), Value::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(ev, av)| is_subset(ev, av))
        }
        _ => expected == actual,
    }
}

fn env_value(entry: &Value) -> Option<String> {
    if let Some(v) = entry.get("value").and_then(Value::as_str) {
        return Some(v.to_owned());
    }
    entry
        .pointer("/valueFrom/fieldRef/fieldPath")
        .and_then(Value::as_str)
        .map(|p| format!("fieldRef:{p}"))
}

fn fixtures() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data"))
            .expect("tests/data exists")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
    paths.sort();
    paths
}

#[test]
fn there_are_enough_fixtures() {
    assert!(fixtures().len() >= 40, "only {} fixtures", fixtures().len());
}

#[rstest]
fn fixture(#[files("tests/data/*.json")] path: PathBuf) {
    let f = load(&path);
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let ctx = format!("{name} ({})", f.description);
    let body = serde_json::to_vec(&f.review).expect("review serializes");
    let request = AdmissionReview::parse(&body).unwrap_or_else(|e| panic!("{ctx}: {e}"));
    let (ns_name, _) = request.subject().unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
    let namespace = match &f.namespace {
        Some(n) => NamespaceMeta {
            name: n.name.clone().unwrap_or_else(|| ns_name.to_owned()),
            labels: n.labels.clone(),
            annotations: n.annotations.clone(),
            policy: policy(n),
        },
        None => {
            let mut n = NamespaceMeta::named(ns_name);
            n.labels
                .insert("tracehook.dev/injection".into(), "enabled".into());
            n
        }
    };
    let workload = f.workload.as_ref().map(|w| Workload {
        kind: w.kind.clone(),
        name: w.name.clone(),
        annotations: w.annotations.clone(),
    });
    let all: Arc<[Instance]> = instances(&f.instances).into();
    let env_from = EnvFromKeys {
        config_maps: f.config_maps.clone(),
    };
    let settings = settings(&f.settings);
    // The webhook's own step, with what its caches would know.
    let snapshot = Snapshot {
        namespace: namespace.clone(),
        workload: workload.clone(),
        instances: all.clone(),
        env_from: env_from.clone(),
        warnings: Vec::new(),
    };
    let reviewed = admission::review(&request, &snapshot, &settings);
    // The request holds only the fields of the Pod the engine reads
    // (admission::pod_fields); the whole Pod must decide the same.
    let whole_pod = &f.review["request"]["object"];
    let whole = inject::decide(&inject::Input {
        pod: whole_pod,
        namespace: &namespace,
        workload: workload.as_ref(),
        instances: Instances::Known(&all),
        env_from: &env_from,
        settings: &settings,
    });
    let response = reviewed.response;
    let decision = reviewed
        .decision
        .unwrap_or_else(|| panic!("{ctx}: a Pod creation is decided"));
    assert_eq!(
        decision, whole,
        "{ctx}: the Pod as the request reads it and the whole Pod decide alike"
    );
    assert_eq!(reviewed.outcome, decision.outcome(), "{ctx}: metric label");
    assert_eq!(response.uid, request.uid, "{ctx}: uid echoed");
    assert!(response.allowed, "{ctx}: always allowed");
    if matches!(decision, Decision::Skipped(_)) {
        assert!(
            reviewed.event.is_some() || request.is_dry_run(),
            "{ctx}: a skip is told in an Event"
        );
    }

    let e = &f.expect;
    assert_eq!(
        decision.outcome(),
        e.decision,
        "{ctx}: decision was {decision:?}"
    );
    match (&decision, &e.reason) {
        (Decision::Skipped(skip), Some(reason)) => {
            assert_eq!(skip.reason.as_str(), reason, "{ctx}")
        }
        (Decision::Ignored(r), Some(reason)) => assert_eq!(r.as_str(), reason, "{ctx}"),
        (_, None) => {}
        (d, Some(reason)) => panic!("{ctx}: expected reason {reason}, got {d:?}"),
    }
    for w in &e.warnings {
        assert!(
            response.warnings.iter().any(|got| got.contains(w.as_str())),
            "{ctx}: no warning contains {w:?}: {:?}",
            response.warnings
        );
    }
    if e.no_warnings {
        assert!(
            response.warnings.is_empty(),
            "{ctx}: {:?}",
            response.warnings
        );
    }
    if matches!(decision, Decision::Skipped(_)) {
        assert!(!response.warnings.is_empty(), "{ctx}: a skip always warns");
    }

    let Decision::Injected(injection) = &decision else {
        assert!(response.patch.is_none(), "{ctx}: no patch unless injected");
        return;
    };
    if let Some(instance) = &e.instance {
        assert_eq!(&injection.instance.to_string(), instance, "{ctx}");
    }
    assert_eq!(response.patch_type, Some("JSONPatch"));
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response.patch.as_deref().unwrap_or_default())
        .expect("patch is base64");
    let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("patch is a JSON Patch");
    // Applied as the API server applies it: to the whole Pod it holds.
    let mut result = whole_pod.clone();
    json_patch::patch(&mut result, &patch)
        .unwrap_or_else(|err| panic!("{ctx}: patch applies: {err}"));
    serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(result.clone())
        .unwrap_or_else(|err| panic!("{ctx}: result is a Pod: {err}"));

    let sidecar_name = injection.flavor.container_name();
    let find = |list: &str| {
        result
            .pointer(&format!("/spec/{list}"))
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c["name"] == sidecar_name))
            .cloned()
    };
    let (in_list, sidecar) = match (find("initContainers"), find("containers")) {
        (Some(s), None) => ("initContainers", s),
        (None, Some(s)) => ("containers", s),
        other => panic!("{ctx}: exactly one sidecar expected, got {other:?}"),
    };
    if let Some(expected) = &e.sidecar_in {
        assert_eq!(in_list, expected, "{ctx}");
    }
    if let Some(expected) = &e.sidecar {
        assert!(is_subset(expected, &sidecar), "{ctx}: sidecar {sidecar:#}");
    }
    if let Some(expected) = &e.sidecar_config {
        let config = sidecar["env"]
            .as_array()
            .and_then(|env| env.iter().find(|v| v["name"] == "OTEL_CONFIG"))
            .and_then(|v| v["value"].as_str())
            .unwrap_or_else(|| panic!("{ctx}: the sidecar has no OTEL_CONFIG"));
        let config: Value = serde_saphyr::from_str(config)
            .unwrap_or_else(|err| panic!("{ctx}: OTEL_CONFIG is YAML: {err}"));
        assert!(is_subset(expected, &config), "{ctx}: config {config:#}");
    }
    if let Some(args) = &e.sidecar_args {
        assert_eq!(&sidecar["args"], &serde_json::json!(args), "{ctx}");
    }
    for (container, vars) in &e.env {
        let c = result["spec"]["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == container.as_str()))
            .unwrap_or_else(|| panic!("{ctx}: no container {container}"));
        let env = c["env"].as_array().cloned().unwrap_or_default();
        for (var, want) in vars {
            let matching: Vec<_> = env.iter().filter(|e| e["name"] == var.as_str()).collect();
            assert!(matching.len() <= 1, "{ctx}: {container} has {var} twice");
            let got = matching.first().and_then(|e| env_value(e));
            assert_eq!(&got, want, "{ctx}: {container} {var}");
        }
    }
    for (key, want) in &e.labels {
        let got = result["metadata"]["labels"][key]
            .as_str()
            .map(str::to_owned);
        assert_eq!(&got, want, "{ctx}: label {key}");
    }
    for (key, want) in &e.annotations {
        let got = result["metadata"]["annotations"][key]
            .as_str()
            .map(str::to_owned);
        assert_eq!(&got, want, "{ctx}: annotation {key}");
    }
    if let Some(expected) = &e.result {
        assert!(is_subset(expected, &result), "{ctx}: result {result:#}");
    }
    let status: Value = serde_json::from_str(
        result["metadata"]["annotations"]["tracehook.dev/status"]
            .as_str()
            .expect("status marker"),
    )
    .expect("status marker is JSON");
    if let Some(expected) = &e.status {
        assert!(is_subset(expected, &status), "{ctx}: status {status:#}");
    }

    // Injection is idempotent: the patched Pod gets nothing more.
    let again = inject::decide(&inject::Input {
        pod: &result,
        namespace: &namespace,
        workload: workload.as_ref(),
        instances: Instances::Known(&all),
        env_from: &env_from,
        settings: &settings,
    });
    assert_eq!(again, Decision::AlreadyInjected, "{ctx}: second injection");
}
