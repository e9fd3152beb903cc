//! Spans sent from injected Pods arrive in Jaeger, carrying what tracehook adds, for
//! both sidecar flavors; injected Pods run under Pod Security `restricted`; Jobs with
//! the native sidecar complete.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support;
use crate::world::*;

const RESTRICTED: &str = "pod-security.kubernetes.io/enforce";

fn otel_flavor() -> Value {
    json!({"tracehook.dev/sidecar-flavor": "otel-collector"})
}

/// The `jaeger-agent` flavor: a Jaeger-thrift span sent over UDP to the agent on
/// localhost:6831 arrives with the agent's tags (`host.ip` filled from the downward
/// API), and an OTLP span sent where `OTEL_EXPORTER_OTLP_ENDPOINT` points (the
/// instance's collector) arrives with the resource attributes, `$(POD_NAME)`,
/// `$(POD_UID)` and `$(NODE_NAME)` expanded by the kubelet.
#[tokio::test(flavor = "multi_thread")]
async fn agent_flavor_thrift_and_otlp_spans_arrive_with_tracehooks_tags() {
    let _backend = backend_up().await;
    let ns = "rn-agent";
    labelled_namespace(ns, json!({}));
    apply(&[deployment(
        ns,
        "agent-client",
        json!({}),
        vec![spans_container("app", &[], json!([]))],
    )]);
    let pod = wait_ready(ns, "app=agent-client").remove(0);
    let facts = pod_facts(ns, &pod);

    let thrift = unique("agent-thrift");
    exec(ns, &pod, "app", &["spans", "jaeger", &thrift]);
    let trace = wait_for_trace("agent-client.rn-agent", &thrift);
    let tags = trace.tags_of(&thrift);
    assert_eq!(tags.get("pod.name"), Some(&pod), "{tags:?}");
    assert_eq!(tags.get("pod.namespace").map(String::as_str), Some(ns));
    assert_eq!(
        tags.get("deployment.name").map(String::as_str),
        Some("agent-client")
    );
    assert_eq!(tags.get("container.name").map(String::as_str), Some("app"));
    assert!(!facts.host_ip.is_empty(), "the Pod has a host IP");
    assert_eq!(tags.get("host.ip"), Some(&facts.host_ip), "{tags:?}");

    let otlp = unique("agent-otlp");
    exec(ns, &pod, "app", &["spans", "otlp", &otlp]);
    let trace = wait_for_trace("agent-client", &otlp);
    let tags = trace.tags_of(&otlp);
    assert_eq!(tags.get("k8s.pod.name"), Some(&pod), "{tags:?}");
    assert_eq!(tags.get("k8s.pod.uid"), Some(&facts.uid));
    assert_eq!(tags.get("k8s.namespace.name").map(String::as_str), Some(ns));
    assert_eq!(
        tags.get("k8s.node.name").map(String::as_str),
        Some(testcluster::REAL_NODE_NAME)
    );
    assert_eq!(
        tags.get("k8s.deployment.name").map(String::as_str),
        Some("agent-client")
    );
    assert_eq!(
        facts.restarts.values().sum::<i64>(),
        0,
        "{:?}",
        facts.restarts
    );
}

/// The `otel-collector` flavor receives OTLP over gRPC (the app's default, pointed at
/// localhost:4317), OTLP over HTTP (an app that chose `http/protobuf`, pointed at
/// localhost:4318) and Jaeger thrift (UDP 6831) from inside the Pod, and every span
/// reaches Jaeger with tracehook's resource attributes, also the thrift one, whose
/// client knows nothing of them (the sidecar's `resource` processor adds them).
#[tokio::test(flavor = "multi_thread")]
async fn otel_flavor_receives_otlp_grpc_otlp_http_and_thrift() {
    let _backend = backend_up().await;
    let ns = "rn-otel";
    labelled_namespace(ns, json!({}));
    apply(&[deployment(
        ns,
        "otel-client",
        otel_flavor(),
        vec![
            spans_container("grpc", &[], json!([])),
            spans_container(
                "http",
                &[],
                json!([{"name": "OTEL_EXPORTER_OTLP_PROTOCOL", "value": "http/protobuf"}]),
            ),
        ],
    )]);
    let pod = wait_ready(ns, "app=otel-client").remove(0);
    let facts = pod_facts(ns, &pod);
    let endpoint = |container: &str| {
        exec(
            ns,
            &pod,
            container,
            &["sh", "-c", "echo $OTEL_EXPORTER_OTLP_ENDPOINT"],
        )
        .trim()
        .to_owned()
    };
    assert_eq!(endpoint("grpc"), "http://localhost:4317");
    assert_eq!(endpoint("http"), "http://localhost:4318");

    let grpc = unique("otel-grpc");
    let http = unique("otel-http");
    let thrift = unique("otel-thrift");
    exec(ns, &pod, "grpc", &["spans", "otlp", &grpc]);
    exec(ns, &pod, "http", &["spans", "otlp", &http]);
    exec(ns, &pod, "grpc", &["spans", "jaeger", &thrift]);
    for (service, operation) in [
        ("otel-client", &grpc),
        ("otel-client", &http),
        ("otel-client.rn-otel", &thrift),
    ] {
        let tags = wait_for_trace(service, operation).tags_of(operation);
        assert_eq!(
            tags.get("k8s.pod.name"),
            Some(&pod),
            "{operation}: {tags:?}"
        );
        assert_eq!(tags.get("k8s.pod.uid"), Some(&facts.uid), "{operation}");
        assert_eq!(tags.get("k8s.namespace.name").map(String::as_str), Some(ns));
        assert_eq!(
            tags.get("k8s.deployment.name").map(String::as_str),
            Some("otel-client"),
            "{operation}"
        );
    }
    let facts = pod_facts(ns, &pod);
    assert_eq!(
        facts.restarts.values().sum::<i64>(),
        0,
        "{:?}",
        facts.restarts
    );
}

/// Both flavors' Pods are admitted and run (Ready, no restart) in a namespace that
/// enforces Pod Security `restricted`: the API server would refuse the Pod, and the
/// kubelet would refuse to start a sidecar that needs root or a writable root.
#[tokio::test(flavor = "multi_thread")]
async fn both_flavors_run_under_pod_security_restricted() {
    let _backend = backend_up().await;
    let ns = "rn-restricted";
    labelled_namespace(
        ns,
        json!({RESTRICTED: "restricted", "pod-security.kubernetes.io/enforce-version": "latest"}),
    );
    apply(&[
        deployment(
            ns,
            "agent",
            json!({}),
            vec![spans_container("app", &[], json!([]))],
        ),
        deployment(
            ns,
            "otel",
            otel_flavor(),
            vec![spans_container("app", &[], json!([]))],
        ),
    ]);
    for (name, sidecar) in [("agent", "jaeger-agent"), ("otel", "otc-container")] {
        let pod = wait_ready(ns, &format!("app={name}")).remove(0);
        let facts = pod_facts(ns, &pod);
        let status = facts.json["status"]["initContainerStatuses"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == sidecar))
            .unwrap_or_else(|| panic!("{pod}: no {sidecar} status: {:#}", facts.json["status"]));
        assert_eq!(status["started"], true, "{pod}: {status:#}");
        assert_eq!(status["ready"], true, "{pod}: {status:#}");
        assert!(status["state"]["running"].is_object(), "{pod}: {status:#}");
        assert_eq!(
            facts.restarts.values().sum::<i64>(),
            0,
            "{pod}: {:?}",
            facts.restarts
        );
        // And it works: a span through it.
        let op = unique(&format!("restricted-{name}"));
        let via = if name == "agent" { "jaeger" } else { "otlp" };
        exec(ns, &pod, "app", &["spans", via, &op]);
        let service = if name == "agent" {
            "agent.rn-restricted"
        } else {
            "otel"
        };
        wait_for_trace(service, &op);
    }
}

/// A Job's Pod with the native sidecar completes (the sidecar does not keep it
/// running), and the sidecar started before the app: the app's spans, sent at once to
/// the sidecar on localhost, arrive.
#[tokio::test(flavor = "multi_thread")]
async fn jobs_with_the_native_sidecar_complete_after_it_started() {
    let _backend = backend_up().await;
    let ns = "rn-job";
    labelled_namespace(ns, json!({}));
    // (Job, sidecar, how the app sends, annotations, span name)
    let cases = [
        (
            "job-agent",
            "jaeger-agent",
            "jaeger",
            json!({}),
            unique("job-agent"),
        ),
        (
            "job-otel",
            "otc-container",
            "otlp",
            otel_flavor(),
            unique("job-otel"),
        ),
    ];
    let jobs: Vec<Value> = cases
        .iter()
        .map(|(name, _, via, annotations, op)| {
            let mut spec = pod_spec(vec![spans_container("app", &[via, op], json!([]))]);
            spec["restartPolicy"] = "Never".into();
            json!({
                "apiVersion": "batch/v1", "kind": "Job",
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "backoffLimit": 0,
                    "template": {
                        "metadata": {"labels": {"app": name}, "annotations": annotations},
                        "spec": spec
                    }
                }
            })
        })
        .collect();
    apply(&jobs);
    for (name, sidecar, via, _, op) in &cases {
        wait_for(
            Duration::from_secs(120),
            &format!("Job {name} Complete"),
            || {
                let job = get_json(&["job", "-n", ns, name]);
                assert_ne!(
                    job["status"]["failed"].as_i64(),
                    Some(1),
                    "Job {name} failed: {job:#}"
                );
                (job["status"]["succeeded"].as_i64() == Some(1)).then_some(())
            },
        );
        let pods = get_json(&["pods", "-n", ns, "-l", &format!("app={name}")]);
        let pod = &pods["items"][0];
        assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#}");
        let started = |list: &str, container: &str| -> String {
            let s = pod["status"][list]
                .as_array()
                .and_then(|l| l.iter().find(|c| c["name"] == container))
                .unwrap_or_else(|| panic!("{name}: no status of {container}"));
            let state = &s["state"];
            state["terminated"]["startedAt"]
                .as_str()
                .or_else(|| state["running"]["startedAt"].as_str())
                .unwrap_or_else(|| panic!("{name}: {container} never started: {s:#}"))
                .to_owned()
        };
        let sidecar_at = started("initContainerStatuses", sidecar);
        let app_at = started("containerStatuses", "app");
        // RFC 3339 in UTC to the second: they compare as strings.
        assert!(
            sidecar_at <= app_at,
            "{name}: sidecar {sidecar_at}, app {app_at}"
        );
        let service = if *via == "jaeger" {
            format!("{name}.{ns}")
        } else {
            (*name).to_owned()
        };
        wait_for_trace(&service, op);
    }
}

/// `tracehook inject` without `-n`, applied into a namespace the manifest never named
/// (and not labelled, so the webhook plays no part): the kubelet expands
/// `$(POD_NAMESPACE)` in the app's variables and the agent `${POD_NAMESPACE:}` in its
/// tags, so the spans name the namespace the Pod runs in.
#[tokio::test(flavor = "multi_thread")]
async fn offline_injection_names_the_namespace_it_is_applied_in() {
    let _backend = backend_up().await;
    let ns = "rn-offline";
    apply(&[json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})]);
    let mut manifest = deployment(
        ns,
        "offline",
        json!({}),
        vec![spans_container("app", &[], json!([]))],
    );
    manifest["metadata"]
        .as_object_mut()
        .expect("metadata")
        .remove("namespace");
    let (ok, injected, stderr) = support::run_stdin(
        std::process::Command::new(env!("CARGO_BIN_EXE_tracehook")).args([
            "inject",
            "-f",
            "-",
            "--instance",
            "obs/test",
        ]),
        &manifest.to_string(),
    );
    assert!(ok, "tracehook inject: {stderr}");
    assert!(!injected.contains("namespace: rn-offline"), "{injected}");
    let (ok, _, stderr) =
        support::kubectl_stdin(world().cluster, &["apply", "-n", ns, "-f", "-"], &injected);
    assert!(ok, "kubectl apply: {stderr}");
    let pod = wait_ready(ns, "app=offline").remove(0);

    let thrift = unique("offline-thrift");
    exec(ns, &pod, "app", &["spans", "jaeger", &thrift]);
    let tags = wait_for_trace("offline.rn-offline", &thrift).tags_of(&thrift);
    assert_eq!(
        tags.get("pod.namespace").map(String::as_str),
        Some(ns),
        "{tags:?}"
    );
    let otlp = unique("offline-otlp");
    exec(ns, &pod, "app", &["spans", "otlp", &otlp]);
    let tags = wait_for_trace("offline", &otlp).tags_of(&otlp);
    assert_eq!(
        tags.get("k8s.namespace.name").map(String::as_str),
        Some(ns),
        "{tags:?}"
    );
    assert_eq!(tags.get("k8s.pod.name"), Some(&pod));
}
