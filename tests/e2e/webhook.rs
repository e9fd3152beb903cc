//! The webhook through the real API server: what is stored is what users get.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn labelled_namespace_pod_gets_the_native_sidecar() {
    let _instances = sole_instance().await;
    let client = client().await;
    labelled_namespace(&client, "e2e-labelled").await;
    let stored = create_pod(&client, "e2e-labelled", &pod("web", json!({}))).await;

    let spec = stored.spec.as_ref().expect("spec");
    let init = spec.init_containers.as_ref().expect("init containers");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].name, "jaeger-agent");
    // The API server kept the native-sidecar field that a typed round trip could drop.
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    assert!(init[0].startup_probe.is_some());
    assert!(
        init[0]
            .args
            .iter()
            .flatten()
            .any(|a| a == "--reporter.grpc.host-port=dns:///test-collector-headless.obs.svc:14250")
    );
    assert_eq!(
        env_of(&stored, "app", "JAEGER_SERVICE_NAME").as_deref(),
        Some("web.e2e-labelled")
    );
    assert_eq!(
        env_of(&stored, "app", "OTEL_SERVICE_NAME").as_deref(),
        Some("web")
    );
    assert_eq!(
        stored
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("tracehook.dev/injected"))
            .map(String::as_str),
        Some("obs.test")
    );
    assert!(is_injected(&stored));
}

#[tokio::test]
async fn unlabelled_namespace_pod_is_untouched() {
    let _instances = sole_instance().await;
    let client = client().await;
    namespace(&client, "e2e-unlabelled", json!({}), json!({})).await;
    let stored = create_pod(
        &client,
        "e2e-unlabelled",
        &pod("web", json!({"tracehook.dev/inject": "true"})),
    )
    .await;
    // The namespaceSelector does not send it: even the annotation cannot reach tracehook.
    assert!(!is_injected(&stored));
    assert_eq!(count_sidecars(&stored, "jaeger-agent"), 0);
    assert!(env_of(&stored, "app", "OTEL_SERVICE_NAME").is_none());
}

#[tokio::test]
async fn pod_annotation_false_is_untouched() {
    let _instances = sole_instance().await;
    let client = client().await;
    labelled_namespace(&client, "e2e-optout").await;
    let stored = create_pod(
        &client,
        "e2e-optout",
        &pod("web", json!({"tracehook.dev/inject": "false"})),
    )
    .await;
    assert!(!is_injected(&stored));
    assert_eq!(count_sidecars(&stored, "jaeger-agent"), 0);
}

#[tokio::test]
async fn namespace_annotation_false_beats_the_label() {
    let _instances = sole_instance().await;
    let client = client().await;
    namespace(
        &client,
        "e2e-ns-false",
        json!({"tracehook.dev/injection": "enabled"}),
        json!({"tracehook.dev/inject": "false"}),
    )
    .await;
    let stored = create_pod(&client, "e2e-ns-false", &pod("web", json!({}))).await;
    assert!(!is_injected(&stored));
}

/// The reason tracehook exists: the Jaeger operator's annotation on a Deployment's own
/// metadata injects the Pods, and the Deployment is never rewritten, so nothing rolls.
#[tokio::test]
async fn deployment_annotated_the_jaeger_operator_way_injects_pods_without_a_rollout() {
    let _instances = sole_instance().await;
    let client = client().await;
    let ns = "e2e-deployment";
    // The label sends Pods to the webhook; the namespace itself says no, so only the
    // Deployment's annotation, found through Pod → ReplicaSet → Deployment, can say yes.
    labelled_namespace_saying_no(&client, ns).await;
    let template = json!({
        "metadata": {"labels": {"app": "hotrod"}},
        "spec": {"containers": [{"name": "hotrod", "image": "jaegertracing/example-hotrod:1.62.0"}]}
    });
    let deployment: Deployment = from_json(json!({
        "metadata": {"name": "hotrod", "annotations": {"sidecar.jaegertracing.io/inject": "true"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "hotrod"}},
            "template": template
        }
    }));
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("deployment");

    let pods = wait_for_pods(&client, ns, "app=hotrod", 2).await;
    for p in &pods {
        assert!(is_injected(p), "pod {:?} not injected", p.metadata.name);
        assert_eq!(count_sidecars(p, "jaeger-agent"), 1);
        assert_eq!(
            env_of(p, "hotrod", "JAEGER_SERVICE_NAME").as_deref(),
            Some(format!("hotrod.{ns}").as_str())
        );
        assert!(
            env_of(p, "hotrod", "OTEL_RESOURCE_ATTRIBUTES")
                .is_some_and(|v| v.contains("k8s.deployment.name=hotrod")),
            "the workload is the Deployment"
        );
    }
    // Give the deployment controller time to react, if it were going to.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = deployments.get("hotrod").await.expect("deployment");
    assert_eq!(
        stored.metadata.generation,
        Some(1),
        "the Deployment was never rewritten"
    );
    let stored_template =
        serde_json::to_value(&stored.spec.as_ref().expect("spec").template).expect("json");
    assert!(
        stored_template.pointer("/spec/initContainers").is_none(),
        "the template has no sidecar: {stored_template}"
    );
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("replica sets");
    assert_eq!(
        replica_sets.items.len(),
        1,
        "a single ReplicaSet: no rollout"
    );
}

#[tokio::test]
async fn stateful_set_pods_are_injected() {
    let ns = "e2e-statefulset";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let sts: StatefulSet = from_json(json!({
        "metadata": {"name": "db"},
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": {"matchLabels": {"app": "db"}},
            "template": {
                "metadata": {"labels": {"app": "db"}},
                "spec": {"containers": [{"name": "db", "image": "registry.example/db:1"}]}
            }
        }
    }));
    create_in(&client, ns, &sts).await;
    assert_one_injected_pod_of_workload(&client, ns, "app=db", "db", "k8s.statefulset.name=db")
        .await;
}

#[tokio::test]
async fn daemon_set_pods_are_injected() {
    let ns = "e2e-daemonset";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let ds: DaemonSet = from_json(json!({
        "metadata": {"name": "collector"},
        "spec": {
            "selector": {"matchLabels": {"app": "node-thing"}},
            "template": {
                "metadata": {"labels": {"app": "node-thing"}},
                "spec": {"containers": [{"name": "thing", "image": "registry.example/thing:1"}]}
            }
        }
    }));
    create_in(&client, ns, &ds).await;
    assert_one_injected_pod_of_workload(
        &client,
        ns,
        "app=node-thing",
        "thing",
        "k8s.daemonset.name=collector",
    )
    .await;
}

/// The one Pod of `selector` is injected, and its app container's resource attributes
/// name the workload (`attribute`).
async fn assert_one_injected_pod_of_workload(
    client: &Client,
    ns: &str,
    selector: &str,
    container: &str,
    attribute: &str,
) {
    let pods = wait_for_pods(client, ns, selector, 1).await;
    assert!(is_injected(&pods[0]));
    assert!(
        env_of(&pods[0], container, "OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|v| v.contains(attribute))
    );
}

fn job_spec(label: &str) -> Value {
    json!({
        "template": {
            "metadata": {"labels": {"app": label}},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "task", "image": "registry.example/task:1"}]
            }
        }
    })
}

#[tokio::test]
async fn job_pods_are_injected() {
    let ns = "e2e-job";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let job: Job = from_json(json!({"metadata": {"name": "batch"}, "spec": job_spec("batch")}));
    create_in(&client, ns, &job).await;
    let pods = wait_for_pods(&client, ns, "app=batch", 1).await;
    assert!(is_injected(&pods[0]));
    let init = pods[0]
        .spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .expect("init");
    // A native sidecar does not keep the Job from completing.
    assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
}

/// Pod → Job → CronJob: the CronJob's annotation decides, as a Deployment's does.
#[tokio::test]
async fn cron_job_pods_are_injected_through_the_owner_chain() {
    let _instances = sole_instance().await;
    let client = client().await;
    let ns = "e2e-cronjob";
    labelled_namespace_saying_no(&client, ns).await;
    let cron: CronJob = from_json(json!({
        "metadata": {"name": "nightly", "annotations": {"sidecar.jaegertracing.io/inject": "test"}},
        "spec": {"schedule": "0 3 * * *", "suspend": true, "jobTemplate": {"spec": job_spec("nightly")}}
    }));
    let cron = create_in(&client, ns, &cron).await;
    // What `kubectl create job --from=cronjob/nightly` does: a Job owned by the CronJob.
    let job: Job = from_json(json!({
        "metadata": {
            "name": "nightly-manual",
            "ownerReferences": [{
                "apiVersion": "batch/v1", "kind": "CronJob", "name": "nightly",
                "uid": cron.metadata.uid, "controller": true
            }]
        },
        "spec": job_spec("nightly")
    }));
    create_in(&client, ns, &job).await;
    let pods = wait_for_pods(&client, ns, "app=nightly", 1).await;
    assert!(
        is_injected(&pods[0]),
        "the CronJob's annotation was followed"
    );
    assert!(
        env_of(&pods[0], "task", "OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|v| v.contains("k8s.cronjob.name=nightly"))
    );
}

#[tokio::test]
async fn dry_run_create_gets_the_patch() {
    let ns = "e2e-dryrun";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let returned = pods
        .create(
            &PostParams {
                dry_run: true,
                ..PostParams::default()
            },
            &pod("web", json!({})),
        )
        .await
        .expect("dry-run create");
    assert!(is_injected(&returned), "dry-run shows what would be stored");
    assert!(
        pods.get_opt("web").await.expect("get").is_none(),
        "nothing stored"
    );
}

#[tokio::test]
async fn a_skip_leaves_an_event_but_a_dry_run_skip_does_not() {
    let ns = "e2e-events";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let asking = |name: &str| -> Pod {
        from_json(json!({
            "metadata": {"name": name, "annotations": {"tracehook.dev/inject": "obs/missing"}},
            "spec": {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
        }))
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &asking("dry"),
    )
    .await
    .expect("dry-run create");
    let stored = pods
        .create(&PostParams::default(), &asking("real"))
        .await
        .expect("create");
    assert!(!is_injected(&stored), "an unknown instance is a skip");

    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let found = poll(
        Duration::from_secs(20),
        "the InjectionSkipped Event",
        || {
            let events = events.clone();
            async move {
                let items = events.list(&ListParams::default()).await.ok()?.items;
                items
                    .iter()
                    .any(|e| e.reason.as_deref() == Some("InjectionSkipped"))
                    .then_some(items)
            }
        },
    )
    .await;
    let about = |name: &str| {
        found
            .iter()
            .filter(|e| e.reason.as_deref() == Some("InjectionSkipped"))
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
            .count()
    };
    assert_eq!(about("real"), 1, "one Event for the real Pod: {found:?}");
    assert_eq!(about("dry"), 0, "no Event for the dry run: {found:?}");
    let note = found
        .iter()
        .filter(|e| e.reason.as_deref() == Some("InjectionSkipped"))
        .find_map(|e| e.note.clone())
        .unwrap_or_default();
    assert!(note.contains("obs/missing"), "{note}");
}

#[tokio::test]
async fn a_skipped_pod_is_told_why_in_a_warning() {
    let _instances = sole_instance().await;
    let env = env();
    let client = client().await;
    let ns = "e2e-warning";
    labelled_namespace(&client, ns).await;
    let manifest = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "hostnet", "namespace": ns, "annotations": {"tracehook.dev/inject": "true"}},
        "spec": {"hostNetwork": true, "containers": [{"name": "app", "image": "registry.example/app:1"}]}
    });
    let (ok, _, stderr) = kubectl_stdin(env.cluster, &["create", "-f", "-"], &manifest.to_string());
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("Warning: tracehook: the Pod uses hostNetwork"),
        "kubectl shows the warning: {stderr}"
    );
}

#[tokio::test]
async fn named_instance_from_another_namespace() {
    let ns = "e2e-named";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let stored = create_pod(
        &client,
        ns,
        &pod("web", json!({"tracehook.dev/inject": "obs/test"})),
    )
    .await;
    assert_eq!(
        env_of(&stored, "app", "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://test-collector.obs.svc:4317")
    );
}

#[tokio::test]
async fn otel_collector_flavor() {
    let ns = "e2e-otel";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let stored = create_pod(
        &client,
        ns,
        &pod(
            "web",
            json!({"tracehook.dev/sidecar-flavor": "otel-collector"}),
        ),
    )
    .await;
    let otc = sidecar(&stored, "otc-container").expect("otc-container");
    assert!(otc.env.iter().flatten().any(|e| e.name == "OTEL_CONFIG"));
    assert_eq!(
        env_of(&stored, "app", "OTEL_EXPORTER_OTLP_ENDPOINT").as_deref(),
        Some("http://localhost:4317")
    );
}

#[tokio::test]
async fn env_from_config_map_keys_are_respected() {
    let ns = "e2e-envfrom";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let cm: ConfigMap = from_json(json!({
        "metadata": {"name": "settings"},
        "data": {"OTEL_SERVICE_NAME": "from-configmap"}
    }));
    create_in(&client, ns, &cm).await;
    let p: Pod = from_json(json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{
            "name": "app", "image": "registry.example/app:1",
            "envFrom": [{"configMapRef": {"name": "settings"}}]
        }]}
    }));
    let stored = create_pod(&client, ns, &p).await;
    assert!(is_injected(&stored));
    assert_eq!(
        env_of(&stored, "app", "OTEL_SERVICE_NAME"),
        None,
        "the ConfigMap's value stays in force"
    );
    assert_eq!(
        env_of(&stored, "app", "JAEGER_SERVICE_NAME").as_deref(),
        Some("web.e2e-envfrom")
    );
}

#[tokio::test]
async fn injected_pod_reaches_running_on_the_kwok_node() {
    let ns = "e2e-running";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    create_pod(&client, ns, &pod("web", json!({}))).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let p = poll(Duration::from_secs(60), "the Pod to be Running", || {
        let pods = pods.clone();
        async move {
            let p = pods.get("web").await.ok()?;
            let phase = p.status.as_ref()?.phase.as_deref()?;
            (phase == "Running").then_some(p)
        }
    })
    .await;
    assert!(is_injected(&p));
    assert!(
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some(),
        "scheduled"
    );
}

/// Pod Security "restricted" is enforced by the real API server: the sidecar must
/// pass it on its own.
#[tokio::test]
async fn injected_pods_pass_the_restricted_pod_security_profile() {
    let _instances = sole_instance().await;
    let client = client().await;
    let ns = "e2e-restricted";
    namespace(
        &client,
        ns,
        json!({"tracehook.dev/injection": "enabled", "pod-security.kubernetes.io/enforce": "restricted"}),
        json!({}),
    )
    .await;
    for flavor in ["jaeger-agent", "otel-collector"] {
        let p: Pod = from_json(json!({
            "metadata": {"name": format!("web-{flavor}"), "annotations": {"tracehook.dev/sidecar-flavor": flavor}},
            "spec": {
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "app", "image": "registry.example/app:1",
                    "securityContext": {
                        "runAsUser": 1000,
                        "allowPrivilegeEscalation": false,
                        "capabilities": {"drop": ["ALL"]}
                    }
                }]
            }
        }));
        let stored = create_pod(&client, ns, &p).await;
        assert!(is_injected(&stored), "{flavor} was injected and admitted");
    }
}

/// A second webhook that changes the Pod after tracehook makes the API server call
/// tracehook again (reinvocationPolicy IfNeeded): the marker keeps it from adding a
/// second sidecar.
#[tokio::test]
async fn reinvocation_adds_no_second_sidecar() {
    let _instances = sole_instance().await;
    let env = env();
    let client = client().await;
    let ns = "e2e-reinvoke";
    labelled_namespace(&client, ns).await;
    let labeller = crate::support::labeller::Labeller::start().await;
    // Named after "tracehook", so it runs after it and its change triggers reinvocation.
    let config = labeller.configuration("zz-e2e-labeller", ns);
    apply(&client, &config).await;
    let before = env
        .webhook
        .metric("tracehook_admission_requests_total{outcome=\"already_injected\",reason=\"\"}");
    // The API server may take a moment to see a new configuration.
    let stored = poll(
        Duration::from_secs(20),
        "the labelling webhook to be called",
        || {
            let client = client.clone();
            async move {
                let p = create_pod(&client, ns, &pod(&fresh_name("web"), json!({}))).await;
                let labelled = p
                    .metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key(crate::support::labeller::LABEL));
                labelled.then_some(p)
            }
        },
    )
    .await;
    delete_webhook_configuration(&client, "zz-e2e-labeller").await;
    assert_eq!(
        count_sidecars(&stored, "jaeger-agent"),
        1,
        "exactly one sidecar"
    );
    let env_count = stored.spec.as_ref().expect("spec").containers[0]
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "JAEGER_SERVICE_NAME")
        .count();
    assert_eq!(env_count, 1, "no variable added twice");
    let after = env
        .webhook
        .metric("tracehook_admission_requests_total{outcome=\"already_injected\",reason=\"\"}");
    assert!(
        after > before,
        "tracehook was reinvoked ({before} → {after})"
    );
}

/// failurePolicy Ignore: with tracehook down, Pods are created (without a sidecar)
/// rather than blocked.
#[tokio::test]
async fn webhook_down_with_failure_policy_ignore_still_creates_pods() {
    let _instances = sole_instance().await;
    let env = env();
    let client = client().await;
    let ns = "e2e-down";
    // Not labelled: only this test's own webhook configuration selects it.
    namespace(
        &client,
        ns,
        json!({"e2e.tracehook.dev/down": "true"}),
        json!({}),
    )
    .await;
    let down = Webhook::start(env.cluster, "down");
    let mut config = webhook_configuration("e2e-down", &down, "Ignore", Some(ns));
    if let Some(selector) = config
        .webhooks
        .as_mut()
        .and_then(|w| w[0].namespace_selector.as_mut())
    {
        selector.match_labels =
            Some([("e2e.tracehook.dev/down".to_owned(), "true".to_owned())].into());
    }
    apply(&client, &config).await;
    // It works while up…
    wait_until_injecting(&client, ns, |name| {
        pod(name, json!({"tracehook.dev/inject": "true"}))
    })
    .await;
    // …and once it is killed, Pods are still created, without a sidecar.
    down.kill();
    let mut created = 0;
    for i in 0..5 {
        let p = create_pod(
            &client,
            ns,
            &pod(
                &format!("down-{i}"),
                json!({"tracehook.dev/inject": "true"}),
            ),
        )
        .await;
        assert!(!is_injected(&p));
        created += 1;
    }
    delete_webhook_configuration(&client, "e2e-down").await;
    assert_eq!(created, 5);
    let listed = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("list");
    let down_pods: Vec<_> = listed
        .items
        .iter()
        .filter(|p| {
            p.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("down-"))
        })
        .collect();
    assert_eq!(down_pods.len(), 5, "every Pod was stored");
    assert!(down_pods.iter().all(|p| !is_injected(p)));
}
