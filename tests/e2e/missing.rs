//! Missed injections on the control plane (kwok is enough for counts): Pods that would
//! be injected now but have none are reported by the leader (metric, one Event each,
//! the instance's status and `kubectl get jg` columns), and `tracehook explain` says
//! what the webhook would decide, with exit codes a script can use.

use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tracehook::crd::Jaeger;

use crate::support::*;

/// `tracehook explain SUBJECT -n NAMESPACE`: (exit code, stdout).
fn explain(subject: &str, namespace: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tracehook"))
        .args(["explain", subject, "-n", namespace])
        .args(["--webhook-configuration", "tracehook-e2e"])
        .env("KUBECONFIG", env().cluster.kubeconfig_path())
        .output()
        .expect("tracehook explain runs");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn deployment(name: &str, replicas: i32, annotations: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}, "annotations": annotations},
                "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
            }
        }
    }))
    .expect("a Deployment")
}

fn missing_metric(namespace: &str) -> f64 {
    env().webhook.metric(&format!(
        "tracehook_pods_missing_sidecar{{namespace=\"{namespace}\"}}"
    ))
}

/// The Pods with an `InjectionMissed` Event, with how many each has.
async fn missed_events(client: &Client, namespace: &str) -> Vec<(String, usize)> {
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for e in events
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("InjectionMissed"))
    {
        let name = e.regarding.and_then(|r| r.name).unwrap_or_default();
        *counts.entry(name).or_default() += e.deprecated_count.map_or(1, |c| c as usize);
    }
    counts.into_iter().collect()
}

async fn jaeger_counts(client: &Client, namespace: &str, name: &str) -> (Option<i64>, Option<i64>) {
    let jaeger = Api::<Jaeger>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("the instance");
    let status = jaeger.status.unwrap_or_default();
    (status.injected_pods, status.missing_pods)
}

/// Pods created while nothing asked for injection, then their namespace labelled: each
/// is reported missing (metric, one Event, the instance's count) and `explain` says
/// why (exit 3) and how to fix it, while the Deployment's next Pods would be injected.
#[tokio::test]
async fn pods_of_a_namespace_labelled_after_they_exist_are_reported_missing() {
    let _instances = sole_instance().await;
    let client = client().await;
    let ns = "e2e-late-label";
    namespace(&client, ns, json!({}), json!({})).await;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &deployment("shop", 3, json!({})))
        .await
        .expect("Deployment");
    create_pod(&client, ns, &pod("solo", json!({}))).await;
    let pods = wait_for_pods(&client, ns, "app=shop", 3).await;
    assert!(pods.iter().all(|p| !is_injected(p)));
    assert_eq!(
        explain("pod/solo", ns).0,
        1,
        "{}",
        explain("pod/solo", ns).1
    );
    assert_eq!(explain("deployment/shop", ns).0, 1);

    Api::<Namespace>::all(client.clone())
        .patch(
            ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"tracehook.dev/injection": "enabled"}}})),
        )
        .await
        .expect("labelled");
    let labelled = std::time::Instant::now();
    wait_until(
        Duration::from_secs(30),
        "4 Pods reported missing",
        || async { missing_metric(ns) == 4.0 },
    )
    .await;
    eprintln!(
        "figure: 4 Pods reported missing {:.1}s after their namespace was labelled",
        labelled.elapsed().as_secs_f64()
    );
    let names: Vec<String> = pods
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .chain(["solo".to_owned()])
        .collect();
    let events = poll(
        Duration::from_secs(20),
        "an InjectionMissed Event per Pod",
        || {
            let client = client.clone();
            async move {
                let events = missed_events(&client, ns).await;
                (events.len() == 4).then_some(events)
            }
        },
    )
    .await;
    for (pod, count) in &events {
        assert!(names.contains(pod), "{pod} not among {names:?}");
        assert_eq!(*count, 1, "{pod}: told {count} times");
    }
    let (_, missing) = jaeger_counts(&client, INSTANCE_NS, INSTANCE).await;
    assert!(
        missing.is_some_and(|m| m >= 4),
        "obs/test missingPods {missing:?}"
    );

    let (code, text) = explain(&format!("pod/{}", names[0]), ns);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("MISSING its sidecar"), "{text}");
    assert!(
        text.contains("tracehook.dev/injection=\"enabled\" on the Namespace label decides"),
        "{text}"
    );
    assert!(
        text.contains("fix:        delete it: its controller replaces it"),
        "{text}"
    );
    let (code, text) = explain("pod/solo", ns);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("recreate it (tracehook never evicts bare Pods"),
        "{text}"
    );
    let (code, text) = explain("deployment/shop", ns);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("its Pods would be INJECTED"), "{text}");

    // Still missing a few passes later, and still told once.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(missing_metric(ns), 4.0);
    assert!(
        missed_events(&client, ns)
            .await
            .iter()
            .all(|(_, c)| *c == 1)
    );
    let _ = Api::<Namespace>::all(client.clone())
        .delete(ns, &DeleteParams::default())
        .await;
}

/// Pods that named an instance before it existed (skipped at admission as
/// `unknown_instance`) are reported missing toward it once it exists, and its status
/// and `kubectl get jg` columns count them, beside a Pod injected since.
#[tokio::test]
async fn pods_created_before_their_instance_are_counted_missing_toward_it() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-late-instance";
    labelled_namespace(&client, ns).await;
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(
            &PostParams::default(),
            &deployment("early", 2, json!({"tracehook.dev/inject": "late"})),
        )
        .await
        .expect("Deployment");
    let pods = wait_for_pods(&client, ns, "app=early", 2).await;
    assert!(
        pods.iter().all(|p| !is_injected(p)),
        "no instance `late` yet"
    );

    let jaegers: Api<Jaeger> = Api::namespaced(client.clone(), ns);
    let instance: Jaeger = serde_json::from_value(json!({
        "apiVersion": "tracehook.dev/v1alpha1", "kind": "Jaeger",
        "metadata": {"name": "late", "namespace": ns}, "spec": {}
    }))
    .expect("instance");
    jaegers
        .create(&PostParams::default(), &instance)
        .await
        .expect("instance created");
    // The webhook's cache sees the instance before a new Pod is created.
    wait_until(Duration::from_secs(30), "late counted missing 2", || {
        let client = client.clone();
        async move { jaeger_counts(&client, ns, "late").await.1 == Some(2) }
    })
    .await;
    let injected = create_pod(
        &client,
        ns,
        &pod("now", json!({"tracehook.dev/inject": "late"})),
    )
    .await;
    assert!(is_injected(&injected));
    wait_until(Duration::from_secs(30), "late counted injected 1", || {
        let client = client.clone();
        async move { jaeger_counts(&client, ns, "late").await == (Some(1), Some(2)) }
    })
    .await;
    let table = kubectl_stdin(env().cluster, &["get", "jg", "-n", ns], "").1;
    let row: Vec<&str> = table
        .lines()
        .find(|l| l.starts_with("late "))
        .unwrap_or_else(|| panic!("no row for late: {table}"))
        .split_whitespace()
        .collect();
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let column = |name: &str| row[header.iter().position(|h| *h == name).expect(name)];
    assert_eq!(
        (column("INJECTED"), column("MISSING")),
        ("1", "2"),
        "{table}"
    );

    let (code, text) = explain("pod/now", ns);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("INJECTED") && text.contains(&format!("{ns}/late (exists)")),
        "{text}"
    );
    jaegers
        .delete("late", &DeleteParams::default())
        .await
        .expect("instance deleted");
    let _ = Api::<Namespace>::all(client)
        .delete(ns, &DeleteParams::default())
        .await;
}
