//! The `Jaeger` CustomResourceDefinition: `manifests/crd.yaml` is exactly what
//! `tracehook crd` prints, and the definition has what `kubectl` users rely on.

use std::path::Path;
use std::process::Command;

use kube::CustomResourceExt as _;
use tracehook::crd::Jaeger;

const REGENERATE: &str = "regenerate it with `cargo run -- crd > manifests/crd.yaml`";

fn manifest() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests/crd.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

#[test]
fn manifest_is_what_tracehook_crd_prints() {
    let output = Command::new(env!("CARGO_BIN_EXE_tracehook"))
        .arg("crd")
        .output()
        .expect("tracehook crd runs");
    assert!(output.status.success(), "tracehook crd failed");
    let printed = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(
        printed == manifest(),
        "manifests/crd.yaml is stale: {REGENERATE}"
    );
    assert_eq!(printed, tracehook::crd::crd_yaml());
}

#[test]
fn has_the_status_subresource() {
    let crd = Jaeger::crd();
    let version = &crd.spec.versions[0];
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
}

#[test]
fn kubectl_get_shows_phase_strategy_injected_missing_and_age() {
    let crd = Jaeger::crd();
    let columns: Vec<(&str, &str)> = crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| (c.name.as_str(), c.json_path.as_str()))
        .collect();
    assert_eq!(
        columns,
        [
            ("Phase", ".status.phase"),
            ("Strategy", ".spec.strategy"),
            ("Injected", ".status.injectedPods"),
            ("Missing", ".status.missingPods"),
            ("Age", ".metadata.creationTimestamp")
        ]
    );
}

#[test]
fn short_name_is_jg() {
    let crd = Jaeger::crd();
    assert_eq!(crd.spec.names.short_names, Some(vec!["jg".to_owned()]));
    assert_eq!(crd.spec.group, "tracehook.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.versions[0].name, "v1alpha1");
}

#[test]
fn strategy_accepts_only_all_in_one() {
    let crd = serde_json::to_value(Jaeger::crd()).expect("CRD as JSON");
    let strategy = crd
        .pointer("/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/strategy/enum")
        .expect("strategy is an enum");
    assert_eq!(strategy, &serde_json::json!(["allInOne"]));
}
