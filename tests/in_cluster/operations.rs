//! Operating tracehook under load (issue 11.3–11.5): installed by Helm with
//! `failurePolicy: Fail` and serving certificates of two minutes (renewed every 30–50 s),
//! while Pods are created at a steady rate into a labelled namespace and, at the same
//! rate, into an unlabelled one (the same load without the webhook). Step by step: a
//! quiet stretch, `helm upgrade` to a second tag of the image, one replica's Pod
//! deleted, one replica's container killed, a certificate renewal, the API server
//! restarted, 1,000 labelled namespaces and 100 Jaeger instances, and the README's
//! uninstall. No creation may fail, and every creation before the uninstall must be
//! injected. The replicas' memory and CPU are read from the node (their processes and
//! cgroups). The table of each step and the resources are printed (BENCHMARKS.md
//! quotes a run); nothing here asserts a time.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use kube::Api;
use kube::api::PostParams;
use serde_json::Value;
use testcluster::Cluster;
use testcluster::node::Usage;

use crate::load::{self, Load, Step};
use crate::{
    CleanUpOnPanic, INSTALL, check_installed, check_uninstalled, cluster, helm, instance, json,
    kubectl, ok, readme_uninstall, replica_pods, root, running_app_pods, wait_until,
};

/// Creations per second into each namespace.
const RATE: u32 = 10;
const SECOND_TAG: &str = "0.1.0-second";
const SCALE_NAMESPACES: usize = 1_000;
const SCALE_INSTANCES: usize = 100;

#[test]
fn operations_under_load_fail_no_pod_creation_and_uninstall_leaves_injected_pods_running() {
    let _one = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = cluster();
    let _clean = CleanUpOnPanic(cluster);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    // The same image under a second tag, for the upgrade.
    testcluster::node::ctr(&[
        "images",
        "tag",
        "--force",
        &format!("docker.io/{}", crate::IMAGE),
        &format!("docker.io/tracehook/tracehook:{SECOND_TAG}"),
    ])
    .expect("a second tag of tracehook's image");

    ok(helm(cluster)
        .args(["install", "tracehook"])
        .arg(root().join("charts/tracehook"))
        .args([
            "-n",
            "tracehook",
            "--create-namespace",
            "--set",
            "webhook.failurePolicy=Fail",
            "--set",
            "certificates.validity=2m",
            "--set",
            "certificates.renewBefore=90s",
            "--wait",
            "--timeout",
            "300s",
        ]));
    instance(cluster);
    check_installed(cluster, "app-load");
    let app_pods = running_app_pods(cluster);
    let app_restarts = restarts(cluster, "shop", "app-load");

    let load = Load::start(cluster, "load", "load-plain", RATE);
    let mut steps = Vec::new();
    let mut resources = Vec::new();

    // A quiet stretch: the steady state, the replicas' resources under the load, and
    // what the webhook's calls cost.
    let from = load.now();
    let (before, logged_before, webhook_before) = (
        usage(cluster),
        logged_bytes(cluster),
        webhook_calls(cluster),
    );
    std::thread::sleep(Duration::from_secs(30));
    let after = usage(cluster);
    let (logged, webhook) = (
        logged_bytes(cluster) - logged_before,
        webhook_calls(cluster) - webhook_before,
    );
    resources.push(("steady load".to_owned(), cpu_and_memory(&before, &after)));
    let steady = step("steady", from, &load);
    steps.push(steady.clone());
    let steady_cpu = cpu_seconds(&before, &after);

    // helm upgrade to a second tag: a rolling update, one surge Pod at a time.
    let from = load.now();
    ok(helm(cluster)
        .args(["upgrade", "tracehook"])
        .arg(root().join("charts/tracehook"))
        .args([
            "-n",
            "tracehook",
            "--reuse-values",
            "--set",
            &format!("image.tag={SECOND_TAG}"),
            "--wait",
            "--timeout",
            "300s",
        ]));
    wait_until(
        Duration::from_secs(120),
        "only the second tag running",
        || {
            let pods = replica_pods(cluster);
            pods.len() == 2
                && pods.iter().all(|p| {
                    p["spec"]["containers"][0]["image"]
                        .as_str()
                        .is_some_and(|i| i.ends_with(SECOND_TAG))
                })
        },
    );
    settle(5);
    steps.push(step("helm upgrade to a second tag", from, &load));

    // One replica's Pod deleted.
    let from = load.now();
    let victim = name(&replica_pods(cluster)[0]);
    kubectl(cluster, &["-n", "tracehook", "delete", "pod", &victim]);
    wait_for_two_ready(cluster);
    settle(5);
    steps.push(step("a replica's Pod deleted", from, &load));

    // One replica's container killed (SIGKILL to its process, from the node).
    let from = load.now();
    let pods = replica_pods(cluster);
    let (victim, pid) = (name(&pods[0]), container_pid(&pods[0]));
    let restarts_before = restarts(cluster, "tracehook", &victim);
    let killed_at = load.now();
    ok(Command::new("kill").args(["-KILL", &pid.to_string()]));
    wait_until(
        Duration::from_secs(120),
        "the killed container restarted",
        || restarts(cluster, "tracehook", &victim) > restarts_before,
    );
    wait_for_two_ready(cluster);
    settle(5);
    let killed = step("a replica's container killed", from, &load);
    steps.push(killed.clone());

    // A certificate renewal with nothing else going on.
    let from = load.now();
    let serving = || {
        json(
            cluster,
            &["-n", "tracehook", "get", "secret", "tracehook-tls"],
        )["data"]["tls.crt"]
            .clone()
    };
    let first = serving();
    wait_until(
        Duration::from_secs(150),
        "the serving certificate renewed",
        || serving() != first,
    );
    // Both replicas read the Secret at least every 22 s (renewBefore / 4).
    settle(25);
    steps.push(step("serving certificate renewed", from, &load));

    // The API server restarted while tracehook runs in the cluster.
    let from = load.now();
    rt.block_on(cluster.restart_apiserver())
        .expect("the API server restarts");
    wait_for_two_ready(cluster);
    settle(10);
    let restart = step("API server restarted", from, &load);
    steps.push(restart.clone());

    // 1,000 labelled namespaces and 100 Jaeger instances (Pods kept out by a quota).
    let from = load.now();
    rt.block_on(scale(cluster));
    wait_until(
        Duration::from_secs(300),
        "the 100 instances provisioned",
        || scale_deployments(cluster) >= SCALE_INSTANCES,
    );
    steps.push(step(
        &format!("creating {SCALE_NAMESPACES} namespaces + {SCALE_INSTANCES} instances"),
        from,
        &load,
    ));
    let from = load.now();
    let before = usage(cluster);
    std::thread::sleep(Duration::from_secs(30));
    resources.push((
        format!("{SCALE_NAMESPACES} namespaces, {SCALE_INSTANCES} instances, steady load"),
        cpu_and_memory(&before, &usage(cluster)),
    ));
    steps.push(step(
        &format!("steady with {SCALE_NAMESPACES} namespaces + {SCALE_INSTANCES} instances"),
        from,
        &load,
    ));
    // The other tests' labelled namespaces name no instance: leave one in the cluster.
    kubectl(
        cluster,
        &[
            "delete",
            "jaegers",
            "-A",
            "-l",
            "tracehook.test/scale=true",
            "--wait=true",
        ],
    );

    // The README's uninstall, under the load.
    let from = load.now();
    readme_uninstall(cluster, false);
    check_uninstalled(cluster, app_pods);
    settle(5);
    let uninstall = step("uninstall (README)", from, &load);
    steps.push(uninstall.clone());
    let records = load.stop();
    let _ = cluster
        .kubectl([
            "delete",
            "namespaces",
            "-l",
            "tracehook.test/scale=true",
            "--wait=false",
        ])
        .output();

    eprintln!(
        "\nPod creations at {RATE}/s into each namespace (failurePolicy Fail):\n{}",
        load::table(&steps, &records)
    );
    for r in &records {
        if let load::Outcome::Refused(why) | load::Outcome::Unreachable(why) = &r.outcome {
            eprintln!(
                "at {:.1} s, {}: {why}",
                r.at.as_secs_f64(),
                if r.hooked { "with webhook" } else { "without" }
            );
        }
    }
    for (what, replicas) in &resources {
        eprintln!("resources, {what}:");
        for line in replicas {
            eprintln!("  {line}");
        }
    }
    // Cost per 1,000 Pods, from the steady stretch.
    let created = steady.figures(&records, true).injected as f64;
    let per_thousand = 1000.0 / created;
    // One call per Pod (tests/e2e/calls.rs): the API server's time per 1,000 Pods is
    // a thousand of its mean call.
    let mean_call = webhook.seconds / webhook.calls.max(1.0);
    eprintln!(
        "cost per 1,000 Pods (steady stretch, {created} injected creations): the API \
         server's webhook calls {:.2} s ({} calls, mean {:.2} ms), tracehook {:.2} CPU-seconds \
         (both replicas, whole processes), {:.0} KiB logged ({:.0} bytes per admission)",
        mean_call * 1000.0,
        webhook.calls,
        mean_call * 1e3,
        steady_cpu * per_thousand,
        logged as f64 * per_thousand / 1024.0,
        logged as f64 / created,
    );
    // The chart's defaults, beside what was measured.
    let values =
        std::fs::read_to_string(root().join("charts/tracehook/values.yaml")).expect("values.yaml");
    eprintln!(
        "chart resources: {}",
        values
            .split("\nresources:")
            .nth(1)
            .and_then(|r| r.split("\n\n").next())
            .unwrap_or("")
            .replace('\n', " ")
    );

    assert_eq!(
        restarts(cluster, "shop", "app-load"),
        app_restarts,
        "the injected Pod kept running through the uninstall"
    );
    for s in &steps {
        for hooked in [true, false] {
            let f = s.figures(&records, hooked);
            assert!(f.sent > 0, "{}: no creations sent", s.name);
            // Only the API server's own restart may leave a creation unanswered or
            // refused by the API server itself (never for want of the webhook).
            if s.name == restart.name {
                let webhook: Vec<&String> = f
                    .refused
                    .iter()
                    .filter(|r| r.contains("webhook") || r.contains("tracehook"))
                    .collect();
                assert!(
                    webhook.is_empty(),
                    "{}: refused for the webhook: {webhook:?}",
                    s.name
                );
            } else if s.name == killed.name {
                // SIGKILL loses the admissions in flight on that process and the
                // connections made to it before the kubelet sees it dead: the API server
                // does not retry a webhook POST on a broken connection, so with
                // failurePolicy Fail those creations fail (why Ignore is the default).
                // Nothing else may fail, nor anything later than 5 s after the kill.
                let late: Vec<&load::Record> = records
                    .iter()
                    .filter(|r| r.hooked == hooked && r.at >= s.from && r.at < s.to)
                    .filter(|r| {
                        matches!(&r.outcome, load::Outcome::Refused(why)
                        if !(why.contains("inject.tracehook.dev") && transport_error(why))
                            || r.at > killed_at + Duration::from_secs(5))
                    })
                    .collect();
                assert!(
                    late.is_empty(),
                    "{}: refused beyond the kill: {late:?}",
                    s.name
                );
                assert_eq!(f.unreachable, 0, "{}: unreachable creations", s.name);
            } else {
                assert!(f.refused.is_empty(), "{}: refused: {:?}", s.name, f.refused);
                assert_eq!(f.unreachable, 0, "{}: unreachable creations", s.name);
            }
            if hooked && s.name != uninstall.name && s.name != restart.name {
                assert_eq!(
                    f.not_injected, 0,
                    "{}: created without the sidecar while tracehook was installed",
                    s.name
                );
            }
        }
    }
}

/// What the replicas have logged so far (`kubectl logs`, both replicas).
fn logged_bytes(cluster: &Cluster) -> usize {
    replica_pods(cluster)
        .iter()
        .map(|p| kubectl(cluster, &["-n", "tracehook", "logs", &name(p)]).len())
        .sum()
}

/// The API server's own account of its calls to tracehook's webhook.
#[derive(Clone, Copy, Debug, Default)]
struct WebhookCalls {
    calls: f64,
    seconds: f64,
}

impl std::ops::Sub for WebhookCalls {
    type Output = WebhookCalls;
    fn sub(self, other: WebhookCalls) -> WebhookCalls {
        WebhookCalls {
            calls: self.calls - other.calls,
            seconds: self.seconds - other.seconds,
        }
    }
}

fn webhook_calls(cluster: &Cluster) -> WebhookCalls {
    let metrics = kubectl(cluster, &["get", "--raw", "/metrics"]);
    let sum = |metric: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(metric) && l.contains("name=\"inject.tracehook.dev\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    WebhookCalls {
        calls: sum("apiserver_admission_webhook_admission_duration_seconds_count{"),
        seconds: sum("apiserver_admission_webhook_admission_duration_seconds_sum{"),
    }
}

/// CPU time the replicas used between two readings (the same processes in both).
fn cpu_seconds(before: &[(String, Usage)], after: &[(String, Usage)]) -> f64 {
    after
        .iter()
        .filter_map(|(pod, a)| {
            let (_, b) = before.iter().find(|(p, b)| p == pod && b.pid == a.pid)?;
            Some(a.cpu.saturating_sub(b.cpu).as_secs_f64())
        })
        .sum()
}

/// A webhook call that broke at the connection (the process gone), not one answered.
fn transport_error(why: &str) -> bool {
    [
        "EOF",
        "connection reset",
        "connection refused",
        "broken pipe",
    ]
    .iter()
    .any(|e| why.contains(e))
}

fn step(name: &str, from: Duration, load: &Load) -> Step {
    let step = Step {
        name: name.to_owned(),
        from,
        to: load.now(),
    };
    eprintln!(
        "step done: {} ({:.0} s)",
        step.name,
        (step.to - step.from).as_secs_f64()
    );
    step
}

fn settle(seconds: u64) {
    std::thread::sleep(Duration::from_secs(seconds));
}

fn name(pod: &Value) -> String {
    pod["metadata"]["name"].as_str().expect("a name").to_owned()
}

fn wait_for_two_ready(cluster: &Cluster) {
    wait_until(
        Duration::from_secs(180),
        "2 tracehook replicas Ready",
        || {
            let pods = replica_pods(cluster);
            pods.len() == 2
                && pods
                    .iter()
                    .all(|p| p["status"]["containerStatuses"][0]["ready"].as_bool() == Some(true))
        },
    );
}

fn restarts(cluster: &Cluster, namespace: &str, pod: &str) -> u64 {
    json(cluster, &["-n", namespace, "get", "pod", pod])["status"]["containerStatuses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["restartCount"].as_u64())
        .sum()
}

/// The host PID of a replica's container, from containerd.
fn container_pid(pod: &Value) -> u32 {
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .expect("a container ID");
    testcluster::node::task_pid(id).expect("the replica's task")
}

/// What the node says each replica uses right now, by Pod name.
fn usage(cluster: &Cluster) -> Vec<(String, Usage)> {
    replica_pods(cluster)
        .iter()
        .map(|pod| {
            let usage = Usage::of_pid(container_pid(pod)).expect("the replica's usage");
            (name(pod), usage)
        })
        .collect()
}

/// One line per replica: CPU between the two readings, memory at the second.
fn cpu_and_memory(before: &[(String, Usage)], after: &[(String, Usage)]) -> Vec<String> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    after
        .iter()
        .map(|(pod, a)| {
            let cpu = before
                .iter()
                .find(|(p, _)| p == pod)
                .and_then(|(_, b)| a.millicores_since(b))
                .map(|m| format!("{m:.0}m CPU"))
                .unwrap_or_else(|| "CPU n/a (restarted)".to_owned());
            format!(
                "{pod}: {cpu}, RSS {:.1} MiB (anonymous {:.1} MiB, peak {:.1} MiB), cgroup peak {:.1} MiB",
                mib(a.rss),
                mib(a.anon),
                mib(a.hwm),
                mib(a.cgroup_peak)
            )
        })
        .collect()
}

/// 1,000 labelled namespaces; in the first 100 a quota of no Pods and a Jaeger
/// instance (its Deployment is provisioned, its Pods refused: this one node cannot run
/// 100 backends, and tracehook holds the objects, not the Pods).
async fn scale(cluster: &Cluster) {
    let client = cluster.client().await.expect("a client");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..SCALE_NAMESPACES {
        let (namespaces, client) = (namespaces.clone(), client.clone());
        tasks.spawn(async move {
            let name = format!("scale-{i:04}");
            let ns: Namespace = serde_json::from_value(serde_json::json!({
                "metadata": {"name": name, "labels": {
                    "tracehook.dev/injection": "enabled",
                    "tracehook.test/scale": "true",
                }},
            }))
            .expect("a Namespace");
            create_or_exists(namespaces.create(&PostParams::default(), &ns).await);
            if i < SCALE_INSTANCES {
                let quota: ResourceQuota = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": "no-pods"},
                    "spec": {"hard": {"pods": "0"}},
                }))
                .expect("a ResourceQuota");
                create_or_exists(
                    Api::<ResourceQuota>::namespaced(client.clone(), &name)
                        .create(&PostParams::default(), &quota)
                        .await,
                );
                let jaegers: Api<tracehook::crd::Jaeger> = Api::namespaced(client, &name);
                let jaeger: tracehook::crd::Jaeger = serde_json::from_value(serde_json::json!({
                    "apiVersion": "tracehook.dev/v1alpha1",
                    "kind": "Jaeger",
                    "metadata": {"name": "jaeger", "labels": {"tracehook.test/scale": "true"}},
                    "spec": {},
                }))
                .expect("a Jaeger");
                create_or_exists(jaegers.create(&PostParams::default(), &jaeger).await);
            }
        });
        // At most 16 requests in flight.
        while tasks.len() >= 16 {
            tasks.join_next().await.expect("a task").expect("created");
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("created");
    }
}

fn create_or_exists<T>(result: kube::Result<T>) {
    match result {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating a scale object: {e}"),
    }
}

/// Deployments the reconciler provisioned in the scale namespaces.
fn scale_deployments(cluster: &Cluster) -> usize {
    let all = json(cluster, &["get", "deployments", "-A"]);
    let by_namespace: BTreeMap<&str, usize> = all["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .filter(|ns| ns.starts_with("scale-"))
        .fold(BTreeMap::new(), |mut m, ns| {
            *m.entry(ns).or_default() += 1;
            m
        });
    by_namespace.len()
}
