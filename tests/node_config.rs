//! tests/node/check.sh starts the collector built for the real node with a copy of the
//! `otel-collector` sidecar's inline configuration (tests/node/otel-sidecar-config.json).
//! This keeps that copy equal to what the engine injects, so the check proves the
//! configuration Pods really get.

use serde_json::{Value, json};
use tracehook::inject::{
    self, Decision, EnvFromKeys, Flavor, Instance, Instances, NamespaceMeta, Settings,
};

#[test]
fn the_node_check_starts_the_collector_with_the_injected_configuration() {
    let pod = json!({
        "metadata": {"name": "web", "annotations": {"tracehook.dev/sidecar-flavor": "otel-collector"}},
        "spec": {"containers": [{"name": "web", "image": "nginx"}]}
    });
    let mut namespace = NamespaceMeta::named("demo");
    namespace
        .labels
        .insert("tracehook.dev/injection".into(), "enabled".into());
    let instances = [Instance {
        namespace: "obs".into(),
        name: "test".into(),
        ..Instance::default()
    }];
    let decision = inject::decide(&inject::Input {
        pod: &pod,
        namespace: &namespace,
        workload: None,
        instances: Instances::Known(&instances),
        env_from: &EnvFromKeys::default(),
        settings: &Settings::default(),
    });
    let Decision::Injected(injection) = decision else {
        panic!("injected: {decision:?}");
    };
    assert_eq!(injection.flavor, Flavor::OtelCollector);
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &injection.patch).expect("applies");
    let config = patched["spec"]["initContainers"][0]["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "OTEL_CONFIG"))
        .and_then(|e| e["value"].as_str())
        .expect("OTEL_CONFIG");
    let mut injected: Value = serde_json::from_str(config).expect("JSON");
    let copy = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/otel-sidecar-config.json"
    ))
    .expect("the copy");
    let mut copy: Value = serde_json::from_str(&copy).expect("JSON");
    // Only the collector it exports to differs (the check has none to reach).
    for c in [&mut injected, &mut copy] {
        c["exporters"]["otlp"]["endpoint"] = Value::Null;
    }
    assert_eq!(injected, copy, "update tests/node/otel-sidecar-config.json");
}
