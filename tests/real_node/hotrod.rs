//! HotROD, the Jaeger project's example application, as users apply it from
//! manifests/examples: a request is traced end to end into the reconciler's Jaeger.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::world::*;

const EXAMPLE: &str = include_str!("../../manifests/examples/hotrod.yaml");
const OPERATOR_STYLE: &str =
    include_str!("../../manifests/examples/hotrod-jaeger-operator-style.yaml");

/// `GET /dispatch?customer=123` through HotROD's Service, which must answer.
fn dispatch(namespace: &str) -> String {
    wait_for(Duration::from_secs(30), "HotROD's /dispatch", || {
        service_get(
            namespace,
            "example-hotrod:frontend",
            "/dispatch?customer=123",
        )
    })
}

/// The trace of a `/dispatch` request whose frontend process is `pod` (HotROD reports
/// its host name, which is the Pod's name).
fn dispatch_trace(pod: &str) -> Trace {
    wait_for(
        Duration::from_secs(60),
        &format!(
            "HotROD's /dispatch trace from {pod} (services: {:?})",
            services()
        ),
        || {
            traces("frontend", None).into_iter().find(|t| {
                t.spans().iter().any(|s| {
                    s["operationName"]
                        .as_str()
                        .is_some_and(|o| o.contains("/dispatch"))
                        && t.process(s).1.get("host.name").map(String::as_str) == Some(pod)
                })
            })
        },
    )
}

/// manifests/examples/hotrod.yaml with `Jaeger obs/test`: one request is one trace
/// across HotROD's services, sent where `OTEL_EXPORTER_OTLP_ENDPOINT` points (the
/// instance's collector), and its frontend process carries tracehook's Kubernetes
/// attributes from `OTEL_RESOURCE_ATTRIBUTES` (the Go SDK's `WithResource` merges the
/// environment's resource under HotROD's own), `$(POD_NAME)` expanded by the kubelet.
#[tokio::test(flavor = "multi_thread")]
async fn hotrod_request_is_one_trace_with_kubernetes_attributes() {
    let _backend = backend_up().await;
    apply_text(EXAMPLE);
    let pod = wait_ready("hotrod", "app=example-hotrod").remove(0);
    let answer = dispatch("hotrod");
    assert!(answer.contains("Driver"), "HotROD answered: {answer}");

    let trace = dispatch_trace(&pod);
    let services: BTreeSet<String> = trace.spans().iter().map(|s| trace.process(s).0).collect();
    for service in ["frontend", "customer", "driver", "route"] {
        assert!(services.contains(service), "{service} not in {services:?}");
    }
    let root = trace
        .spans()
        .iter()
        .find(|s| trace.process(s).0 == "frontend")
        .expect("a frontend span");
    let tags = trace.process(root).1;
    assert_eq!(tags.get("k8s.pod.name"), Some(&pod), "{tags:?}");
    assert_eq!(
        tags.get("k8s.namespace.name").map(String::as_str),
        Some("hotrod")
    );
    assert_eq!(
        tags.get("k8s.deployment.name").map(String::as_str),
        Some("example-hotrod")
    );
    let facts = pod_facts("hotrod", &pod);
    assert_eq!(tags.get("k8s.pod.uid"), Some(&facts.uid));
    assert_eq!(
        facts.restarts.values().sum::<i64>(),
        0,
        "{:?}",
        facts.restarts
    );
}

/// manifests/examples/hotrod-jaeger-operator-style.yaml (the annotation on the
/// Deployment, as Jaeger-operator users have it): the Pod runs with the sidecar, the
/// Deployment was never rewritten (generation 1, one ReplicaSet, no Pod replaced or
/// restarted), and HotROD's spans reach the collector `OTEL_EXPORTER_OTLP_ENDPOINT`
/// names.
#[tokio::test(flavor = "multi_thread")]
async fn jaeger_operator_style_deployment_runs_injected_without_a_rollout() {
    let _backend = backend_up().await;
    let ns = "hotrod-legacy";
    apply_text(OPERATOR_STYLE);
    let pod = wait_ready(ns, "app=example-hotrod").remove(0);
    let facts = pod_facts(ns, &pod);
    let init: Vec<&str> = facts.json["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(init, ["jaeger-agent"]);

    dispatch(ns);
    dispatch_trace(&pod);
    // A while of running: nothing restarts, nothing rolls.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(2));
        let facts = pod_facts(ns, &pod);
        assert_eq!(
            facts.restarts.values().sum::<i64>(),
            0,
            "{:?}",
            facts.restarts
        );
    }
    let deployment = get_json(&["deployment", "-n", ns, "example-hotrod"]);
    assert_eq!(deployment["metadata"]["generation"], 1);
    assert!(
        deployment["spec"]["template"]["spec"]["initContainers"].is_null(),
        "the template was rewritten: {:#}",
        deployment["spec"]["template"]
    );
    let replica_sets = get_json(&["replicasets", "-n", ns]);
    assert_eq!(replica_sets["items"].as_array().map(Vec::len), Some(1));
    let pods = get_json(&["pods", "-n", ns]);
    let names: Vec<&str> = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p: &Value| p["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, [pod.as_str()], "only the first Pod ever ran");
}
