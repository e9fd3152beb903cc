//! Missed injections on the real node: Pods created while tracehook was down are
//! reported when it comes back, and, with `--heal-missing=evict`, replaced by injected
//! Pods through the Eviction API without ever breaking their PodDisruptionBudget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{INSTANCE, INSTANCE_NS};
use crate::world::*;

const NS: &str = "rn-missed";
/// 50 Pods, as the issue asks: a Deployment behind a PodDisruptionBudget, a StatefulSet
/// and a bare Pod.
const DEPLOYMENT_REPLICAS: usize = 30;
const STATEFULSET_REPLICAS: usize = 19;

fn missing_metric() -> f64 {
    world().webhook.metric(&format!(
        "tracehook_pods_missing_sidecar{{namespace=\"{NS}\"}}"
    ))
}

fn objects() -> Vec<Value> {
    let mut web = deployment(
        NS,
        "web",
        json!({}),
        vec![spans_container("app", &[], json!([]))],
    );
    web["spec"]["replicas"] = DEPLOYMENT_REPLICAS.into();
    let db = json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {
            "replicas": STATEFULSET_REPLICAS,
            "serviceName": "db",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": pod_spec(vec![spans_container("app", &[], json!([]))])
            }
        }
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": NS},
        "spec": {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"port": 80}]}
    });
    let pdb = json!({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": {"name": "web", "namespace": NS},
        "spec": {"minAvailable": "80%", "selector": {"matchLabels": {"app": "web"}}}
    });
    let solo = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "solo", "namespace": NS, "labels": {"app": "solo"}},
        "spec": pod_spec(vec![spans_container("app", &[], json!([]))])
    });
    vec![web, db, service, pdb, solo]
}

/// Samples the PodDisruptionBudget until stopped: (samples, the least
/// `currentHealthy - desiredHealthy` seen).
fn sample_budget(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(usize, i64)> {
    std::thread::spawn(move || {
        let (mut samples, mut least) = (0, i64::MAX);
        while !stop.load(Ordering::Relaxed) {
            let pdb = get_json(&["pdb", "-n", NS, "web"]);
            let status = &pdb["status"];
            if let (Some(current), Some(desired)) = (
                status["currentHealthy"].as_i64(),
                status["desiredHealthy"].as_i64(),
            ) {
                samples += 1;
                least = least.min(current - desired);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        (samples, least)
    })
}

/// tracehook stopped; 50 Pods created (a Deployment with a PDB `minAvailable: 80%`, a
/// StatefulSet, a bare Pod); tracehook started: all 50 reported missing (metric,
/// Events, the instance's MISSING count, `explain` exit 3). Then with healing on:
/// every controller-owned Pod replaced by an injected one, the PDB never below its
/// minimum, the Deployment's generation unchanged, the bare Pod reported and left alone.
#[tokio::test(flavor = "multi_thread")]
async fn pods_created_while_tracehook_was_down_are_reported_then_healed_within_their_budget() {
    let _alone = exclusive().await;
    let env = world();
    labelled_namespace(NS, json!({}));
    // Stopped as a scale-down or a rollout stops it: the leader releases its Lease.
    env.webhook.stop();
    apply(&objects());
    let created = Instant::now();
    let timeout = Duration::from_secs(300);
    let mut before = wait_ready_count(NS, "app=web", DEPLOYMENT_REPLICAS, timeout);
    before.extend(wait_ready_count(
        NS,
        "app=db",
        STATEFULSET_REPLICAS,
        timeout,
    ));
    before.extend(wait_ready_count(NS, "app=solo", 1, timeout));
    eprintln!(
        "figure: 50 Pods Ready without tracehook in {:.1}s",
        created.elapsed().as_secs_f64()
    );
    assert!(before.iter().all(|p| !is_injected(p)), "tracehook was down");

    env.webhook.restart(env.cluster, &[]);
    let ready = Instant::now();
    wait_for(Duration::from_secs(60), "50 Pods reported missing", || {
        (missing_metric() == 50.0).then_some(())
    });
    eprintln!(
        "figure: 50 Pods reported missing {:.1}s after tracehook was ready",
        ready.elapsed().as_secs_f64()
    );
    let told = wait_for(Duration::from_secs(30), "50 InjectionMissed Events", || {
        let events = get_json(&[
            "events",
            "-n",
            NS,
            "--field-selector",
            "reason=InjectionMissed",
        ]);
        let n = events["items"].as_array().map_or(0, Vec::len);
        (n == 50).then_some(n)
    });
    assert_eq!(told, 50);
    wait_for(
        Duration::from_secs(30),
        "MISSING 50 on Jaeger obs/test",
        || {
            let jaeger = get_json(&["jaeger", "-n", INSTANCE_NS, INSTANCE]);
            (jaeger["status"]["missingPods"] == 50).then_some(())
        },
    );
    let columns = kubectl(&["get", "jg", "-n", INSTANCE_NS, INSTANCE, "--no-headers"]);
    assert!(
        columns.split_whitespace().any(|c| c == "50"),
        "kubectl get jg: {columns}"
    );
    let some_pod = before[0]["metadata"]["name"]
        .as_str()
        .expect("a name")
        .to_owned();
    for pod in [some_pod.as_str(), "solo"] {
        let explained = std::process::Command::new(env!("CARGO_BIN_EXE_tracehook"))
            .args(["explain", &format!("pod/{pod}"), "-n", NS])
            .args(["--webhook-configuration", "tracehook-real-node"])
            .env("KUBECONFIG", world().cluster.kubeconfig_path())
            .output()
            .expect("tracehook explain runs");
        assert_eq!(
            explained.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&explained.stdout)
        );
    }
    let generation = get_json(&["deployment", "-n", NS, "web"])["metadata"]["generation"].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample_budget(stop.clone());
    let healing = Instant::now();
    env.webhook.restart(
        env.cluster,
        &[
            "--heal-missing=evict",
            "--heal-interval=1s",
            "--missing-scan-interval=1s",
        ],
    );
    let healed = wait_for(
        Duration::from_secs(600),
        "every controller-owned Pod injected",
        || {
            let pods = get_json(&["pods", "-n", NS]);
            let items = pods["items"].as_array().cloned().unwrap_or_default();
            let injected_ready = items
                .iter()
                .filter(|p| {
                    p["metadata"]["deletionTimestamp"].is_null() && is_ready(p) && is_injected(p)
                })
                .count();
            (injected_ready == DEPLOYMENT_REPLICAS + STATEFULSET_REPLICAS).then_some(items)
        },
    );
    let heal_time = healing.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (samples, least) = sampler.join().expect("sampler");
    eprintln!(
        "figure: {} Pods healed in {:.1}s; PDB sampled {samples} times, least currentHealthy - desiredHealthy = {least}",
        DEPLOYMENT_REPLICAS + STATEFULSET_REPLICAS,
        heal_time.as_secs_f64()
    );
    assert!(samples > 0, "the PDB was sampled");
    assert!(
        least >= 0,
        "the PDB was broken: currentHealthy fell {} below desiredHealthy",
        -least
    );
    let solo = healed
        .iter()
        .find(|p| p["metadata"]["name"] == "solo")
        .expect("the bare Pod is left alone");
    assert!(!is_injected(solo));
    wait_for(
        Duration::from_secs(30),
        "the bare Pod still reported",
        || (missing_metric() == 1.0).then_some(()),
    );
    assert_eq!(
        get_json(&["deployment", "-n", NS, "web"])["metadata"]["generation"],
        generation,
        "the Deployment was never rewritten"
    );
    let healed_events = get_json(&[
        "events",
        "-n",
        NS,
        "--field-selector",
        "reason=InjectionHealed",
    ]);
    let on_pods = healed_events["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["involvedObject"]["kind"] == "Pod")
        .count();
    assert_eq!(
        on_pods,
        DEPLOYMENT_REPLICAS + STATEFULSET_REPLICAS,
        "an Event per eviction"
    );

    env.webhook.restart(env.cluster, &[]);
    kubectl(&["delete", "namespace", NS, "--wait=false"]);
}
