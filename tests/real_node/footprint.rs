//! What the sidecar itself costs (issue 15.3), on the real node: each flavor's sidecar
//! CPU and memory idle and under a steady span load sent by the app container of the
//! same Pod (`spans rate`, through the SDKs as an application sends), and a burst of
//! spans while the backend is unreachable, which the sidecar must survive: not
//! OOM-killed, not restarted (its `GOMEMLIMIT` and, for the collector, its
//! `memory_limiter` slow the burst down instead).
//!
//! The figures are printed (BENCHMARKS.md quotes a run); what is asserted is that the
//! spans were sent and that no sidecar was restarted or killed. With
//! `TRACEHOOK_FOOTPRINT_UNPROTECTED=1` the burst also hits a collector without those
//! two settings (tracehook's sidecar from a dry run, with them removed, created as a
//! hand-written sidecar), to show what they prevent; that part is only printed.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testcluster::node::Usage;

use crate::support::{INSTANCE, INSTANCE_NS};
use crate::world::*;

/// Spans a second and seconds of the steady load and of the burst.
const STEADY: (u32, u32) = (1_000, 30);
const BURST: (u32, u32) = (5_000, 30);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    JaegerAgent,
    OtelCollector,
}

impl Flavor {
    const ALL: [Flavor; 2] = [Flavor::JaegerAgent, Flavor::OtelCollector];

    fn name(self) -> &'static str {
        match self {
            Flavor::JaegerAgent => "jaeger-agent",
            Flavor::OtelCollector => "otel-collector",
        }
    }

    fn container(self) -> &'static str {
        match self {
            Flavor::JaegerAgent => "jaeger-agent",
            Flavor::OtelCollector => "otc-container",
        }
    }

    /// How the app sends: Jaeger thrift over UDP to the agent, OTLP to the collector.
    fn protocol(self) -> &'static str {
        match self {
            Flavor::JaegerAgent => "jaeger",
            Flavor::OtelCollector => "otlp",
        }
    }
}

fn pod(namespace: &str, name: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app": name},
                     "annotations": annotations},
        "spec": pod_spec(vec![spans_container("app", &[], json!([]))]),
    })
}

fn annotations(flavor: Flavor, instance: Option<&str>) -> Value {
    let mut a = json!({"tracehook.dev/sidecar-flavor": flavor.name()});
    if let Some(instance) = instance {
        a["tracehook.dev/inject"] = instance.into();
    }
    a
}

/// The container `name` of a Pod (app or sidecar, native or not).
fn container_status(pod: &Value, name: &str) -> Value {
    ["initContainerStatuses", "containerStatuses"]
        .iter()
        .filter_map(|list| pod["status"][list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no status of {name}: {pod}"))
}

fn sidecar_usage(namespace: &str, pod: &str, container: &str) -> Usage {
    let status = container_status(&get_json(&["pod", "-n", namespace, pod]), container);
    let id = status["containerID"].as_str().expect("a container ID");
    Usage::of_container(id).expect("the sidecar's usage")
}

/// Asserts the sidecar was never restarted nor killed for memory.
fn assert_unharmed(namespace: &str, pod: &str, container: &str) {
    let status = container_status(&get_json(&["pod", "-n", namespace, pod]), container);
    assert_eq!(status["restartCount"], 0, "{pod}/{container}: {status:#}");
    assert!(
        status["lastState"]["terminated"].is_null(),
        "{pod}/{container} was terminated: {status:#}"
    );
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// `spans rate` in each Pod's app container at once; the output of each. Meanwhile
/// the sidecars are read every second: the largest cgroup charge of each.
fn send_and_watch(
    namespace: &str,
    pods: &[(&str, Flavor)],
    (per_second, seconds): (u32, u32),
) -> Vec<(String, u64)> {
    let senders: Vec<_> = pods
        .iter()
        .map(|(pod, flavor)| {
            let (namespace, pod, flavor) = (namespace.to_owned(), pod.to_string(), *flavor);
            std::thread::spawn(move || {
                exec(
                    &namespace,
                    &pod,
                    "app",
                    &[
                        "spans",
                        "rate",
                        flavor.protocol(),
                        &per_second.to_string(),
                        &seconds.to_string(),
                    ],
                )
            })
        })
        .collect();
    let mut peaks = vec![0u64; pods.len()];
    while senders.iter().any(|s| !s.is_finished()) {
        for (peak, (pod, flavor)) in peaks.iter_mut().zip(pods) {
            let status = container_status(
                &get_json(&["pod", "-n", namespace, pod]),
                flavor.container(),
            );
            // A sidecar killed and not yet back has no process to read.
            if let Some(u) = status["containerID"]
                .as_str()
                .and_then(|id| Usage::of_container(id).ok())
            {
                *peak = (*peak).max(u.cgroup_now);
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    senders
        .into_iter()
        .zip(peaks)
        .map(|(s, peak)| (s.join().expect("the sender").trim().to_owned(), peak))
        .collect()
}

/// `rate …: N spans in …`: N.
fn spans_made(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| {
            l.strip_prefix("rate ")?
                .split(": ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no count in {output:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_footprint_idle_under_load_and_in_a_burst() {
    // Exclusive: the burst's second `Jaeger` would take the Pods of tests that ask
    // for `true` (the only instance) while it exists.
    let _alone = exclusive().await;
    let namespace = unique("footprint");
    labelled_namespace(&namespace, json!({}));
    let steady: Vec<(String, Flavor)> = Flavor::ALL
        .iter()
        .map(|f| (format!("steady-{}", f.name()), *f))
        .collect();
    apply(
        &steady
            .iter()
            .map(|(name, f)| pod(&namespace, name, annotations(*f, None)))
            .collect::<Vec<_>>(),
    );
    for (name, _) in &steady {
        wait_ready(&namespace, &format!("app={name}"));
    }
    let mut report = vec![
        "| flavor | idle CPU | idle RSS MiB | load CPU | load RSS MiB | cgroup peak MiB | spans sent |".to_owned(),
        "|---|---|---|---|---|---|---|".to_owned(),
    ];

    // The kubelet gave each sidecar its Go runtime's settings: 80% of the 128Mi limit,
    // and the 200m CPU limit rounded up to one core.
    for (pod, flavor) in &steady {
        let pid = sidecar_usage(&namespace, pod, flavor.container()).pid;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        let vars: Vec<String> = environ
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        for want in ["GOMEMLIMIT=107374182", "GOMAXPROCS=1"] {
            assert!(
                vars.iter().any(|v| v == want),
                "{pod}: {want} in {:?}",
                vars.iter()
                    .filter(|v| v.starts_with("GO"))
                    .collect::<Vec<_>>()
            );
        }
    }

    // Idle: settled for 10 s, then 20 s between two readings.
    std::thread::sleep(Duration::from_secs(10));
    let read =
        |(pod, flavor): &(String, Flavor)| sidecar_usage(&namespace, pod, flavor.container());
    let idle_from: Vec<Usage> = steady.iter().map(read).collect();
    std::thread::sleep(Duration::from_secs(20));
    let idle_to: Vec<Usage> = steady.iter().map(read).collect();

    // Steady load: CPU between readings 5 s after the start and 5 s before the end.
    let pods: Vec<(&str, Flavor)> = steady.iter().map(|(p, f)| (p.as_str(), *f)).collect();
    let sampler = {
        let (namespace, steady) = (namespace.clone(), steady.clone());
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(5));
            let read = |(pod, flavor): &(String, Flavor)| {
                sidecar_usage(&namespace, pod, flavor.container())
            };
            let from: Vec<Usage> = steady.iter().map(read).collect();
            std::thread::sleep(Duration::from_secs(u64::from(STEADY.1) - 10));
            let to: Vec<Usage> = steady.iter().map(read).collect();
            (from, to)
        })
    };
    let sent = send_and_watch(&namespace, &pods, STEADY);
    let (load_from, load_to) = sampler.join().expect("the sampler");
    for (i, (pod, flavor)) in steady.iter().enumerate() {
        let (output, peak) = &sent[i];
        eprintln!("{pod}: {output}");
        let made = spans_made(output);
        assert!(
            made >= u64::from(STEADY.0 * STEADY.1) * 9 / 10,
            "{pod} sent {made} spans: {output}"
        );
        assert_unharmed(&namespace, pod, flavor.container());
        if *flavor == Flavor::JaegerAgent {
            // UDP cannot say what arrived: the agent's own counters can.
            let metrics = kubectl(&[
                "get",
                "--raw",
                &format!("/api/v1/namespaces/{namespace}/pods/{pod}:14271/proxy/metrics"),
            ]);
            let total = |name: &str| -> f64 {
                metrics
                    .lines()
                    .filter(|l| l.starts_with(name))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum()
            };
            let (forwarded, dropped) = (
                total("jaeger_agent_reporter_spans_submitted_total"),
                total("jaeger_agent_thrift_udp_server_packets_dropped_total"),
            );
            eprintln!("{pod}: the agent forwarded {forwarded} spans, dropped {dropped} packets");
            assert!(
                forwarded >= made as f64 * 0.9,
                "{pod}: the agent forwarded {forwarded} of {made} spans"
            );
        }
        let cpu = |from: &Usage, to: &Usage| {
            to.millicores_since(from)
                .map_or("n/a".to_owned(), |m| format!("{m:.0}m"))
        };
        report.push(format!(
            "| {} | {} | {:.1} | {} | {:.1} | {:.1} | {made} at {}/s |",
            flavor.name(),
            cpu(&idle_from[i], &idle_to[i]),
            mib(idle_to[i].rss),
            cpu(&load_from[i], &load_to[i]),
            mib(load_to[i].rss),
            mib((*peak).max(load_to[i].cgroup_peak)),
            STEADY.0
        ));
    }

    // The burst, with the backend unreachable: an instance whose Pods a quota keeps out,
    // so its Services have no endpoints and every export fails and is retried.
    let gone_ns = format!("{namespace}-gone");
    apply(&[
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": gone_ns}}),
        json!({"apiVersion": "v1", "kind": "ResourceQuota",
               "metadata": {"name": "no-pods", "namespace": gone_ns},
               "spec": {"hard": {"pods": "0"}}}),
        json!({"apiVersion": "tracehook.dev/v1alpha1", "kind": "Jaeger",
               "metadata": {"name": "gone", "namespace": gone_ns}, "spec": {}}),
    ]);
    let instance = format!("{gone_ns}/gone");
    let injected_label = format!("{gone_ns}.gone");
    let burst: Vec<(String, Flavor)> = Flavor::ALL
        .iter()
        .map(|f| (format!("burst-{}", f.name()), *f))
        .collect();
    for (name, flavor) in &burst {
        // The webhook learns of the new instance from its watch: until then the Pod
        // would be injected for no instance (skipped); create again until it is.
        wait_for(
            Duration::from_secs(30),
            "a Pod injected for the gone instance",
            || {
                apply(&[pod(&namespace, name, annotations(*flavor, Some(&instance)))]);
                let stored = get_json(&["pod", "-n", &namespace, name]);
                if stored["metadata"]["labels"]["tracehook.dev/injected"] == injected_label.as_str()
                {
                    Some(())
                } else {
                    kubectl(&["delete", "pod", "-n", &namespace, name, "--wait=true"]);
                    std::thread::sleep(Duration::from_secs(1));
                    None
                }
            },
        );
    }
    let unprotected = std::env::var_os("TRACEHOOK_FOOTPRINT_UNPROTECTED").is_some();
    if unprotected {
        let mut p = get_json(&["pod", "-n", &namespace, "burst-otel-collector"]);
        p = unprotected_copy(p, &namespace, "burst-unprotected");
        apply(&[p]);
    }
    for (name, _) in &burst {
        wait_ready(&namespace, &format!("app={name}"));
    }
    if unprotected {
        wait_ready(&namespace, "app=burst-unprotected");
    }
    let mut pods: Vec<(&str, Flavor)> = burst.iter().map(|(p, f)| (p.as_str(), *f)).collect();
    if unprotected {
        pods.push(("burst-unprotected", Flavor::OtelCollector));
    }
    let started = Instant::now();
    let sent = send_and_watch(&namespace, &pods, BURST);
    report.push(String::new());
    report.push(format!(
        "Burst of {}/s for {} s with the backend unreachable ({:.0} s):",
        BURST.0,
        BURST.1,
        started.elapsed().as_secs_f64()
    ));
    for ((pod, flavor), (output, peak)) in pods.iter().zip(&sent) {
        let status = container_status(
            &get_json(&["pod", "-n", &namespace, pod]),
            flavor.container(),
        );
        report.push(format!(
            "- {pod}: largest cgroup charge {:.1} MiB of a 128 MiB limit; restarts {}, last termination {}; {output}",
            mib(*peak),
            status["restartCount"],
            status["lastState"]["terminated"]["reason"]
        ));
    }
    eprintln!(
        "\nsidecar footprint ({namespace}):\n{}\n",
        report.join("\n")
    );
    for (pod, flavor) in burst.iter() {
        assert_unharmed(&namespace, pod, flavor.container());
    }
    // The second instance goes, and tracehook's watch must have seen it go, before the
    // other tests run: a Pod asking for `true` resolves to the only instance, and they
    // rely on that being obs/test (when they ran meanwhile, their Pods went to `gone`).
    kubectl(&[
        "delete",
        "jaeger",
        "gone",
        "-n",
        &gone_ns,
        "--wait=true",
        "--timeout=60s",
    ]);
    let only = format!("{INSTANCE_NS}.{INSTANCE}");
    wait_for(
        Duration::from_secs(30),
        "a Pod asking for `true` injected for obs/test again",
        || {
            let probe = pod(
                &namespace,
                "after-gone",
                json!({"tracehook.dev/inject": "true"}),
            );
            let stored = dry_run_create(&probe)?;
            (stored["metadata"]["labels"]["tracehook.dev/injected"] == only.as_str()).then_some(())
        },
    );
    kubectl(&["delete", "namespace", &namespace, &gone_ns, "--wait=false"]);
}

/// The stored injected Pod `pod` as a new Pod `name` whose collector has neither
/// `GOMEMLIMIT` nor a `memory_limiter` (tracehook's marker kept: it adds nothing more).
fn unprotected_copy(mut pod: Value, namespace: &str, name: &str) -> Value {
    let sidecar = pod["spec"]["initContainers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == "otc-container"))
        .expect("the collector");
    let env = sidecar["env"].as_array_mut().expect("env");
    env.retain(|e| e["name"] != "GOMEMLIMIT");
    let config = env
        .iter_mut()
        .find(|e| e["name"] == "OTEL_CONFIG")
        .expect("OTEL_CONFIG");
    let mut parsed: Value =
        serde_json::from_str(config["value"].as_str().expect("text")).expect("JSON");
    parsed["processors"]
        .as_object_mut()
        .expect("processors")
        .remove("memory_limiter");
    parsed["service"]["pipelines"]["traces"]["processors"] = json!(["resource", "batch"]);
    config["value"] = parsed.to_string().into();
    let metadata = pod["metadata"].take();
    let mut labels = metadata["labels"].clone();
    labels["app"] = name.into();
    pod["metadata"] = json!({
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": metadata["annotations"],
    });
    let spec = pod["spec"].as_object_mut().expect("spec");
    spec.remove("nodeName");
    pod.as_object_mut().expect("an object").remove("status");
    pod
}
