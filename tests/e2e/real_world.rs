//! Shapes of real manifests that broke before: LimitRanges and ResourceQuotas that
//! refused the sidecar (and with it the Pod), Argo Rollouts whose annotation was
//! ignored, and partial injections nobody saw. What is checked is what the API server
//! stores and which Events a person can read.

use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{LimitRange, Pod, ResourceQuota};
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use serde_json::{Value, json};

use crate::support::*;

/// A Deployment shaped like bookinfo's services: one container with requests and a
/// memory limit, no cpu limit.
fn bookinfo_like(name: &str, replicas: i32) -> Deployment {
    from_json(json!({
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name, "version": "v1"}},
                "spec": {"containers": [{
                    "name": name,
                    "image": "docker.io/istio/examples-bookinfo-details-v1:1.20.2",
                    "ports": [{"containerPort": 9080}],
                    "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}}
                }]}
            }
        }
    }))
}

async fn create_deployment(client: &Client, ns: &str, deployment: &Deployment) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), deployment)
        .await
        .expect("deployment");
}

async fn limit_range(client: &Client, ns: &str, name: &str, limits: Value) {
    let range: LimitRange =
        from_json(json!({"metadata": {"name": name}, "spec": {"limits": limits}}));
    create_in(client, ns, &range).await;
}

/// Dry-run creates until the webhook's cache shows `expect_injected` (a watch event
/// takes a moment to arrive; a dry run stores nothing).
async fn until_the_webhook_sees_it(client: &Client, ns: &str, pod: &Pod, expect_injected: bool) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    wait_until(
        Duration::from_secs(20),
        "the webhook's cache of the namespace",
        || {
            let pods = pods.clone();
            let dry = dry.clone();
            async move {
                pods.create(&dry, pod)
                    .await
                    .is_ok_and(|p| is_injected(&p) == expect_injected)
            }
        },
    )
    .await;
}

async fn skip_events(client: &Client, ns: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let reason = reason.to_owned();
    poll(
        Duration::from_secs(20),
        &format!("an {reason} Event in {ns}"),
        || {
            let events = events.clone();
            let reason = reason.clone();
            async move {
                let found: Vec<Event> = events
                    .list(&ListParams::default())
                    .await
                    .ok()?
                    .items
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some(reason.as_str()))
                    .collect();
                (!found.is_empty()).then_some(found)
            }
        },
    )
    .await
}

fn sidecar_resources(pod: &Pod) -> Value {
    let sidecar = sidecar(pod, "jaeger-agent").expect("the sidecar");
    serde_json::to_value(&sidecar.resources).expect("json")
}

#[tokio::test]
async fn a_limit_range_max_below_the_default_limit_no_longer_blocks_pods() {
    let ns = "e2e-limit-max";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    limit_range(
        &client,
        ns,
        "cpu-max",
        json!([{"type": "Container", "max": {"cpu": "150m"}}]),
    )
    .await;
    until_the_webhook_sees_it(&client, ns, &pod("probe", json!({})), true).await;

    create_deployment(&client, ns, &bookinfo_like("details", 2)).await;
    // Before the fix: 0 of 2 Pods, the ReplicaSet retrying "maximum cpu usage per
    // Container is 150m, but limit is 200m".
    let pods = wait_for_pods(&client, ns, "app=details", 2).await;
    for p in &pods {
        assert!(is_injected(p), "{:?} injected", p.metadata.name);
        let r = sidecar_resources(p);
        assert_eq!(r["limits"]["cpu"], "150m", "{r}");
        assert_eq!(r["requests"]["cpu"], "25m", "{r}");
    }
}

#[tokio::test]
async fn a_max_limit_request_ratio_is_met_by_raising_the_request() {
    let ns = "e2e-limit-ratio";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    limit_range(
        &client,
        ns,
        "ratio",
        // 200m over the default 25m is 8: a ratio of 4 raises the request to 50m.
        json!([{"type": "Container", "maxLimitRequestRatio": {"cpu": "4", "memory": "2"}}]),
    )
    .await;
    // The ratio needs a request and a limit on every container, the app's too.
    let probe: Pod = from_json(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "app", "image": "registry.example/app:1",
            "resources": {"requests": {"cpu": "25m", "memory": "64Mi"},
                          "limits": {"cpu": "100m", "memory": "128Mi"}}}]}
    }));
    until_the_webhook_sees_it(&client, ns, &probe, true).await;
    let mut ratings = bookinfo_like("ratings", 1);
    if let Some(c) = ratings
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .and_then(|s| s.containers.first_mut())
    {
        c.resources = probe
            .spec
            .as_ref()
            .and_then(|s| s.containers[0].resources.clone());
    }
    create_deployment(&client, ns, &ratings).await;
    let pods = wait_for_pods(&client, ns, "app=ratings", 1).await;
    let r = sidecar_resources(&pods[0]);
    assert_eq!(r["requests"]["cpu"], "50m", "{r}");
    assert_eq!(r["limits"]["cpu"], "200m", "{r}");
    assert_eq!(r["requests"]["memory"], "64Mi", "{r}");
    assert_eq!(r["limits"]["memory"], "128Mi", "{r}");
}

#[tokio::test]
async fn a_sidecar_limit_the_user_chose_above_the_max_is_skipped_with_an_event() {
    let ns = "e2e-limit-user";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    limit_range(
        &client,
        ns,
        "cpu-max",
        json!([{"type": "Container", "max": {"cpu": "150m"}}]),
    )
    .await;
    let asking = pod("web", json!({"tracehook.dev/sidecar-cpu-limit": "300m"}));
    until_the_webhook_sees_it(&client, ns, &asking, false).await;
    let stored = create_pod(&client, ns, &asking).await;
    assert!(!is_injected(&stored), "admitted without the sidecar");
    let events = skip_events(&client, ns, "InjectionSkipped").await;
    let note = events[0].note.clone().unwrap_or_default();
    assert!(note.contains("LimitRange cpu-max"), "{note}");
    assert!(note.contains("150m"), "{note}");
}

#[tokio::test]
async fn a_resource_quota_without_room_for_the_sidecar_skips_naming_it() {
    let ns = "e2e-quota";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    let quota: ResourceQuota = from_json(json!({
        "metadata": {"name": "compute"},
        "spec": {"hard": {"requests.cpu": "100m"}}
    }));
    create_in(&client, ns, &quota).await;
    let app: Deployment = from_json(json!({
        "metadata": {"name": "api"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "api"}},
            "template": {
                "metadata": {"labels": {"app": "api"}},
                "spec": {"containers": [{"name": "api", "image": "registry.example/api:1",
                    "resources": {"requests": {"cpu": "95m"}}}]}
            }
        }
    }));
    let probe: Pod = from_json(json!({
        "metadata": {"name": "probe"},
        "spec": {"containers": [{"name": "api", "image": "registry.example/api:1",
            "resources": {"requests": {"cpu": "95m"}}}]}
    }));
    until_the_webhook_sees_it(&client, ns, &probe, false).await;
    create_deployment(&client, ns, &app).await;
    // 95m fits the quota, 95m + the sidecar's 25m would not: the Pod is created.
    let pods = wait_for_pods(&client, ns, "app=api", 1).await;
    assert!(!is_injected(&pods[0]), "admitted without the sidecar");
    let events = skip_events(&client, ns, "InjectionSkipped").await;
    let event = &events[0];
    let note = event.note.clone().unwrap_or_default();
    assert!(note.contains("ResourceQuota compute"), "{note}");
    // The Pod has no name at admission (generateName): the Event is on the
    // Deployment a user wrote, not on the ReplicaSet.
    let regarding = event.regarding.as_ref().expect("regarding");
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Deployment"), Some("api")),
        "{event:?}"
    );
}

#[tokio::test]
async fn a_partial_injection_is_an_event_on_the_workload() {
    let ns = "e2e-partial";
    let (_instances, client) = sole_instance_in_labelled_namespace(ns).await;
    // A Secret in envFrom may define the SDK's variables: they are withheld, and a
    // person must be able to see that, not only the ReplicaSet controller.
    let app: Deployment = from_json(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{"name": "shop", "image": "registry.example/shop:1",
                    "envFrom": [{"secretRef": {"name": "shop-env"}}]}]}
            }
        }
    }));
    create_deployment(&client, ns, &app).await;
    let pods = wait_for_pods(&client, ns, "app=shop", 3).await;
    assert!(pods.iter().all(is_injected), "the sidecar is there");
    let events = skip_events(&client, ns, "InjectionPartial").await;
    let on_deployment: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Deployment")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("shop")
        })
        .collect();
    assert_eq!(
        on_deployment.len(),
        1,
        "one Event for three Pods: {events:?}"
    );
    let note = on_deployment[0].note.clone().unwrap_or_default();
    assert!(note.contains("Secret shop-env"), "{note}");
}

/// A Rollout with `annotations`, and the ReplicaSet Argo would make for it.
async fn rollout(client: &Client, ns: &str, name: &str, annotations: Value) {
    let template = json!({
        "metadata": {"labels": {"app": name, "rollouts-pod-template-hash": "6b8f9c"}},
        "spec": {"containers": [{"name": name, "image": "argoproj/rollouts-demo:blue"}]}
    });
    let object: DynamicObject = from_json(json!({
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": name, "namespace": ns, "annotations": annotations},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": template,
            "strategy": {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}}
        }
    }));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &rollout_resource());
    let created = api
        .create(&PostParams::default(), &object)
        .await
        .expect("Rollout");
    let uid = created.metadata.uid.expect("uid");
    let rs: ReplicaSet = from_json(json!({
        "metadata": {
            "name": format!("{name}-6b8f9c"),
            "labels": {"app": name, "rollouts-pod-template-hash": "6b8f9c"},
            "ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
                "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}}, "template": template}
    }));
    create_in(client, ns, &rs).await;
}

#[tokio::test]
async fn argo_rollout_annotations_are_honoured() {
    let _instances = sole_instance().await;
    let client = client().await;
    install_rollout_crd(&client).await;
    let ns = "e2e-rollouts";
    labelled_namespace(&client, ns).await;
    // Before the fix, "false" on the Rollout was ignored and its Pods injected.
    rollout(
        &client,
        ns,
        "canary-off",
        json!({"sidecar.jaegertracing.io/inject": "false"}),
    )
    .await;
    rollout(&client, ns, "canary-on", json!({})).await;
    let off = wait_for_pods(&client, ns, "app=canary-off", 1).await;
    assert!(!is_injected(&off[0]), "the Rollout's false is honoured");
    let on = wait_for_pods(&client, ns, "app=canary-on", 1).await;
    assert!(is_injected(&on[0]), "the namespace label injects");
    let attributes = env_of(&on[0], "canary-on", "OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    assert!(
        attributes.contains("k8s.rollout.name=canary-on"),
        "the workload is the Rollout: {attributes}"
    );
}

#[tokio::test]
async fn a_workload_annotated_in_a_namespace_that_is_not_labelled_is_reported() {
    let client = client().await;
    let ns = "e2e-unseen";
    // No label: with the default registration the API server never calls the webhook
    // for these Pods, so the Jaeger operator's annotation would do nothing in silence.
    namespace(&client, ns, json!({}), json!({})).await;
    let mut deployment = bookinfo_like("reviews", 1);
    deployment.metadata.annotations = Some(
        [(
            "sidecar.jaegertracing.io/inject".to_owned(),
            "true".to_owned(),
        )]
        .into(),
    );
    create_deployment(&client, ns, &deployment).await;
    let events = skip_events(&client, ns, "InjectionNotEnabled").await;
    let event = &events[0];
    let regarding = event.regarding.as_ref().expect("regarding");
    assert_eq!(
        (regarding.kind.as_deref(), regarding.name.as_deref()),
        (Some("Deployment"), Some("reviews"))
    );
    let note = event.note.clone().unwrap_or_default();
    assert!(
        note.contains(&format!(
            "kubectl label namespace {ns} tracehook.dev/injection=enabled"
        )),
        "the one-line fix: {note}"
    );
    let pods = wait_for_pods(&client, ns, "app=reviews", 1).await;
    assert!(!is_injected(&pods[0]), "the Pod never reached the webhook");
}
