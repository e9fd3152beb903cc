//! The backend goes away and comes back: injected Pods do not notice.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use crate::support::INSTANCE_NS;
use crate::world::*;

/// Apps of both flavors send a span every second, over OTLP and Jaeger thrift, while
/// the Jaeger Pod is killed and replaced: the apps and their sidecars keep running
/// (Ready, no restart), and spans sent after the backend is back arrive. The
/// agent reaches the collector by a gRPC `dns:///` target, which finds the new Pod
/// IP only when it resolves the headless Service again; how long that took is printed.
#[tokio::test(flavor = "multi_thread")]
async fn backend_away_and_back_nothing_restarts_and_spans_arrive_again() {
    let _away = exclusive().await;
    let ns = "rn-away";
    labelled_namespace(ns, json!({}));
    let streams = |name: &str| {
        vec![
            spans_container(
                "otlp",
                &["loop", "otlp", &format!("{name}-otlp")],
                json!([]),
            ),
            spans_container(
                "thrift",
                &["loop", "jaeger", &format!("{name}-thrift")],
                json!([]),
            ),
        ]
    };
    apply(&[
        deployment(ns, "away-agent", json!({}), streams("away-agent")),
        deployment(
            ns,
            "away-otel",
            json!({"tracehook.dev/sidecar-flavor": "otel-collector"}),
            streams("away-otel"),
        ),
    ]);
    let pods: Vec<String> = ["away-agent", "away-otel"]
        .iter()
        .map(|app| wait_ready(ns, &format!("app={app}")).remove(0))
        .collect();
    // (service in Jaeger, prefix of its span names)
    let expected = [
        ("away-agent", "away-agent-otlp-"),
        ("away-agent.rn-away", "away-agent-thrift-"),
        ("away-otel", "away-otel-otlp-"),
        ("away-otel.rn-away", "away-otel-thrift-"),
    ];
    for (service, prefix) in expected {
        wait_for(
            Duration::from_secs(60),
            &format!("{prefix}* before"),
            || {
                operations(service)
                    .iter()
                    .any(|o| o.starts_with(prefix))
                    .then_some(())
            },
        );
    }

    let selector = jaeger_selector();
    let old = wait_ready(INSTANCE_NS, &selector);
    kubectl(&[
        "delete",
        "pod",
        "-n",
        INSTANCE_NS,
        "-l",
        &selector,
        "--grace-period=0",
        "--force",
        "--wait=false",
    ]);
    let killed = Instant::now();
    let new = wait_for(Duration::from_secs(120), "a new Jaeger Pod Ready", || {
        let names = wait_ready(INSTANCE_NS, &selector);
        names.iter().all(|n| !old.contains(n)).then_some(names)
    });
    let back = Instant::now();
    let back_micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_micros();
    eprintln!(
        "Jaeger {:?} replaced by {new:?}, Ready {:.1}s after the kill",
        old,
        back.duration_since(killed).as_secs_f64()
    );

    // Jaeger's memory starts empty; a span started after `back` was sent after it.
    // All streams are watched together, so each time is that stream's own.
    let mut waiting: Vec<(&str, &str)> = expected.to_vec();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !waiting.is_empty() {
        waiting.retain(|(service, prefix)| {
            let fresh = traces(service, None).iter().any(|t| {
                t.spans().iter().any(|s| {
                    s["operationName"]
                        .as_str()
                        .is_some_and(|o| o.starts_with(prefix))
                        && s["startTime"]
                            .as_u64()
                            .is_some_and(|t| u128::from(t) > back_micros)
                })
            });
            if fresh {
                eprintln!(
                    "{prefix}*: arriving again {:.1}s after the backend was Ready",
                    back.elapsed().as_secs_f64()
                );
            }
            !fresh
        });
        assert!(
            Instant::now() < deadline,
            "no span sent after the backend came back arrived from {waiting:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    for pod in &pods {
        let facts = pod_facts(ns, pod);
        assert_eq!(
            facts.restarts.values().sum::<i64>(),
            0,
            "{pod} restarted: {:?}",
            facts.restarts
        );
        let ready = facts.json["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
            .map(|c| c["status"].clone());
        assert_eq!(ready, Some(json!("True")), "{pod}");
    }
}
