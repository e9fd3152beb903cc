//! The `Jaeger` reconciler on the real control plane. The shared `tracehook serve`
//! process reconciles (it holds the Lease `tracehook/tracehook-reconciler`); the
//! failover test starts two more replicas campaigning for a Lease of their own.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tracehook::crd::{Jaeger, Phase};

use crate::support::*;

const DEFAULT_IMAGE: &str = "jaegertracing/jaeger:2.12.0";

/// A `Jaeger` created by a test, deleted again when the test ends (passed or not), so
/// that `true` in other tests' namespaces keeps naming the shared instance.
struct Instance {
    jaeger: Jaeger,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let namespace = self.jaeger.namespace().unwrap_or_default();
        let name = self.jaeger.name_any();
        // Drop cannot await, and the test's runtime may be going away: a thread with a
        // runtime of its own does the deletion.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("runtime");
            runtime.block_on(async {
                let client = env().cluster.client().await.expect("client");
                let _ = Api::<Jaeger>::namespaced(client, &namespace)
                    .delete(&name, &DeleteParams::default())
                    .await;
            });
        })
        .join();
    }
}

async fn instance(client: &Client, namespace: &str, name: &str, spec: Value) -> Instance {
    let jaeger: Jaeger = serde_json::from_value(json!({
        "apiVersion": "tracehook.dev/v1alpha1",
        "kind": "Jaeger",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
    .expect("a valid Jaeger");
    let jaeger = Api::<Jaeger>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &jaeger)
        .await
        .unwrap_or_else(|e| panic!("creating Jaeger {namespace}/{name}: {e}"));
    Instance { jaeger }
}

async fn patch_spec(client: &Client, namespace: &str, name: &str, spec: Value) {
    Api::<Jaeger>::namespaced(client.clone(), namespace)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .unwrap_or_else(|e| panic!("patching Jaeger {namespace}/{name}: {e}"));
}

async fn meta<K>(client: &Client, namespace: &str, name: &str) -> Option<ObjectMeta>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_metadata_opt(name)
        .await
        .unwrap_or_else(|e| panic!("reading {} {name}: {e}", K::kind(&())))
        .map(|m| m.metadata)
}

/// Every child an instance always has, as `(kind, name, metadata)`.
async fn children(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<(&'static str, String, Option<ObjectMeta>)> {
    let sampling = format!("{name}-sampling-configuration");
    let mut found = vec![
        (
            "ServiceAccount",
            name.to_owned(),
            meta::<ServiceAccount>(client, namespace, name).await,
        ),
        (
            "ConfigMap",
            sampling.clone(),
            meta::<ConfigMap>(client, namespace, &sampling).await,
        ),
        (
            "Deployment",
            name.to_owned(),
            meta::<Deployment>(client, namespace, name).await,
        ),
    ];
    for suffix in ["collector", "collector-headless", "query", "agent"] {
        let service = format!("{name}-{suffix}");
        let m = meta::<Service>(client, namespace, &service).await;
        found.push(("Service", service, m));
    }
    found
}

async fn wait_for_children(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<(&'static str, String, ObjectMeta)> {
    poll(
        Duration::from_secs(30),
        &format!("the children of {namespace}/{name}"),
        || async {
            children(client, namespace, name)
                .await
                .into_iter()
                .map(|(kind, name, meta)| meta.map(|m| (kind, name, m)))
                .collect()
        },
    )
    .await
}

async fn jaeger(client: &Client, namespace: &str, name: &str) -> Jaeger {
    Api::<Jaeger>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("reading Jaeger {namespace}/{name}: {e}"))
}

async fn wait_for_phase(
    client: &Client,
    namespace: &str,
    name: &str,
    phase: Phase,
    timeout: Duration,
) -> Jaeger {
    let deadline = Instant::now() + timeout;
    loop {
        let j = jaeger(client, namespace, name).await;
        if j.status.as_ref().and_then(|s| s.phase) == Some(phase) {
            return j;
        }
        if Instant::now() > deadline {
            let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await
                .ok()
                .flatten()
                .and_then(|d| d.status);
            let pods: Vec<String> =
                Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), namespace)
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .map(|p| format!("{} {:?}", p.name_any(), p.status))
                            .collect()
                    })
                    .unwrap_or_default();
            let events: Vec<String> =
                Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), namespace)
                    .list(&ListParams::default())
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .map(|e| {
                                format!(
                                    "{:?} {:?} {:?}",
                                    e.involved_object.name, e.reason, e.message
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
            panic!(
                "{namespace}/{name} not {phase:?} after {timeout:?}\nstatus: {:?}\nDeployment status: {deployment:?}\nPods: {pods:#?}\nEvents: {events:#?}",
                j.status,
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn ports(service: &Service) -> Vec<(String, i32, String)> {
    service
        .spec
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .map(|p| {
            (
                p.name.clone().unwrap_or_default(),
                p.port,
                p.protocol.clone().unwrap_or_default(),
            )
        })
        .collect()
}

fn tcp(name: &str, port: i32) -> (String, i32, String) {
    (name.to_owned(), port, "TCP".to_owned())
}

fn udp(name: &str, port: i32) -> (String, i32, String) {
    (name.to_owned(), port, "UDP".to_owned())
}

fn image(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .containers
        .first()?
        .image
        .clone()
}

#[tokio::test]
async fn creates_every_child_with_names_ports_labels_and_owner() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-create";
    // The backend Pod must pass Pod Security "restricted", enforced here.
    namespace(
        &client,
        ns,
        json!({"pod-security.kubernetes.io/enforce": "restricted"}),
        json!({}),
    )
    .await;
    let created = instance(
        &client,
        ns,
        "test",
        json!({"labels": {"team": "obs"}, "annotations": {"example.com/owner": "team-obs"}}),
    )
    .await;

    let found = wait_for_children(&client, ns, "test").await;
    let names: Vec<String> = found
        .iter()
        .map(|(kind, name, _)| format!("{kind} {name}"))
        .collect();
    assert_eq!(
        names,
        [
            "ServiceAccount test",
            "ConfigMap test-sampling-configuration",
            "Deployment test",
            "Service test-collector",
            "Service test-collector-headless",
            "Service test-query",
            "Service test-agent",
        ]
    );
    for (kind, name, meta) in &found {
        let labels = meta.labels.clone().unwrap_or_default();
        for (key, value) in [
            ("app.kubernetes.io/name", "jaeger"),
            ("app.kubernetes.io/instance", "test"),
            ("app.kubernetes.io/part-of", "jaeger"),
            ("app.kubernetes.io/managed-by", "tracehook"),
            ("team", "obs"),
        ] {
            assert_eq!(
                labels.get(key).map(String::as_str),
                Some(value),
                "{kind} {name}: label {key}"
            );
        }
        assert!(
            labels.contains_key("app.kubernetes.io/component"),
            "{kind} {name}: component"
        );
        assert_eq!(
            meta.annotations
                .as_ref()
                .and_then(|a| a.get("example.com/owner"))
                .map(String::as_str),
            Some("team-obs"),
            "{kind} {name}: annotation"
        );
        let owners = meta.owner_references.clone().unwrap_or_default();
        assert_eq!(owners.len(), 1, "{kind} {name}: one owner");
        assert_eq!(owners[0].kind, "Jaeger");
        assert_eq!(owners[0].name, "test");
        assert_eq!(
            Some(&owners[0].uid),
            created.jaeger.metadata.uid.as_ref(),
            "{kind} {name}: owner uid"
        );
        assert_eq!(
            owners[0].controller,
            Some(true),
            "{kind} {name}: controller"
        );
    }

    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let collector = [
        tcp("grpc-jaeger", 14250),
        tcp("http-c-binary-trft", 14268),
        tcp("http-zipkin", 9411),
        tcp("grpc-otlp", 4317),
        tcp("http-otlp", 4318),
    ];
    let service = services.get("test-collector").await.expect("collector");
    assert_eq!(ports(&service), collector);
    assert_ne!(
        service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    let headless = services
        .get("test-collector-headless")
        .await
        .expect("headless collector");
    assert_eq!(ports(&headless), collector);
    assert_eq!(
        headless.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );
    let query = services.get("test-query").await.expect("query");
    assert_eq!(
        ports(&query),
        [tcp("http-query", 16686), tcp("grpc-query", 16685)]
    );
    let agent = services.get("test-agent").await.expect("agent");
    assert_eq!(
        ports(&agent),
        [
            udp("zk-compact-trft", 5775),
            tcp("config-rest", 5778),
            udp("jg-compact-trft", 6831),
            udp("jg-binary-trft", 6832),
            tcp("admin-http", 14271),
        ]
    );
    assert_eq!(
        agent.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()),
        Some("None")
    );

    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("test")
        .await
        .expect("deployment");
    assert_eq!(image(&deployment).as_deref(), Some(DEFAULT_IMAGE));
    let template_labels = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    assert_eq!(
        template_labels
            .get("app.kubernetes.io/managed-by")
            .map(String::as_str),
        Some("tracehook")
    );
    // The ReplicaSet could create the Pod: it passed "restricted" admission.
    let pods = wait_for_pods(&client, ns, "app.kubernetes.io/instance=test", 1).await;
    assert!(!is_injected(&pods[0]), "the backend is never injected");
    assert!(
        Api::<Ingress>::namespaced(client.clone(), ns)
            .get_opt("test-query")
            .await
            .expect("ingress")
            .is_none(),
        "no Ingress unless enabled"
    );
}

#[tokio::test]
async fn reaches_running_once_the_deployment_is_available() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-running";
    namespace(&client, ns, json!({}), json!({})).await;
    let started = Instant::now();
    let _instance = instance(&client, ns, "test", json!({})).await;
    let running =
        wait_for_phase(&client, ns, "test", Phase::Running, Duration::from_secs(60)).await;
    eprintln!(
        "figure: {ns}/test was Running {:?} after its creation",
        started.elapsed()
    );

    let status = running.status.expect("status");
    assert_eq!(status.observed_generation, running.metadata.generation);
    assert_eq!(
        status.collector_endpoint.as_deref(),
        Some("test-collector.e2e-rc-running.svc:4317")
    );
    assert_eq!(
        status.query_endpoint.as_deref(),
        Some("http://test-query.e2e-rc-running.svc:16686")
    );
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready condition");
    assert_eq!(ready.status, "True");
    assert_eq!(ready.reason, "DeploymentAvailable");
    let deployment = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("test")
        .await
        .expect("deployment");
    assert!(
        deployment
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Available" && c.status == "True"),
        "Running only once the Deployment is available"
    );

    // The leader's Pod watch writes the counts (none here) within a scan.
    let stdout = poll(
        Duration::from_secs(30),
        "kubectl get jg with counts",
        || async {
            let (ok, stdout, stderr) = kubectl_stdin(env().cluster, &["get", "jg", "-n", ns], "");
            assert!(ok, "kubectl get jg: {stderr}");
            let counted = stdout
                .lines()
                .nth(1)
                .is_some_and(|row| row.split_whitespace().nth(3) == Some("0"));
            counted.then_some(stdout)
        },
    )
    .await;
    let header: Vec<&str> = stdout
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "PHASE", "STRATEGY", "INJECTED", "MISSING", "AGE"]
    );
    let row: Vec<&str> = stdout
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(&row[3..5], ["0", "0"], "{stdout}");
    assert_eq!(&row[..3], ["test", "Running", "allInOne"]);

    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events");
    let reasons: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Jaeger"))
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(
        reasons.iter().any(|r| r == "Applied"),
        "an Applied Event on the Jaeger: {reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r == "Available"),
        "an Available Event on the Jaeger: {reasons:?}"
    );
}

#[tokio::test]
async fn children_follow_image_label_and_ingress_changes() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-changes";
    namespace(&client, ns, json!({}), json!({})).await;
    let _instance = instance(&client, ns, "test", json!({"labels": {"team": "obs"}})).await;
    wait_for_children(&client, ns, "test").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);

    patch_spec(
        &client,
        ns,
        "test",
        json!({"image": "registry.example/jaeger:9.9.9"}),
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "the Deployment to take the new image",
        || async {
            image(&deployments.get("test").await.expect("deployment")).as_deref()
                == Some("registry.example/jaeger:9.9.9")
        },
    )
    .await;

    // A label the spec no longer names disappears from the children.
    patch_spec(&client, ns, "test", json!({"labels": null})).await;
    wait_until(
        Duration::from_secs(30),
        "the label to leave every child",
        || async {
            children(&client, ns, "test").await.iter().all(|(_, _, m)| {
                m.as_ref()
                    .is_some_and(|m| !m.labels.clone().unwrap_or_default().contains_key("team"))
            })
        },
    )
    .await;

    patch_spec(
        &client,
        ns,
        "test",
        json!({"ingress": {
            "enabled": true,
            "host": "jaeger.example.com",
            "ingressClassName": "nginx",
            "annotations": {"nginx.ingress.kubernetes.io/ssl-redirect": "true"},
            "tls": [{"hosts": ["jaeger.example.com"], "secretName": "jaeger-tls"}]
        }}),
    )
    .await;
    let ingress = poll(Duration::from_secs(30), "the Ingress", || async {
        ingresses.get_opt("test-query").await.expect("ingress")
    })
    .await;
    let spec = ingress.spec.as_ref().expect("ingress spec");
    assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
    let rule = &spec.rules.as_ref().expect("rules")[0];
    assert_eq!(rule.host.as_deref(), Some("jaeger.example.com"));
    let backend = rule.http.as_ref().expect("http").paths[0]
        .backend
        .service
        .as_ref()
        .expect("service backend");
    assert_eq!(backend.name, "test-query");
    assert_eq!(
        backend.port.as_ref().and_then(|p| p.name.as_deref()),
        Some("http-query")
    );
    assert_eq!(
        spec.tls.as_ref().expect("tls")[0].secret_name.as_deref(),
        Some("jaeger-tls")
    );
    assert_eq!(
        ingress
            .annotations()
            .get("nginx.ingress.kubernetes.io/ssl-redirect")
            .map(String::as_str),
        Some("true")
    );

    patch_spec(&client, ns, "test", json!({"ingress": {"enabled": false}})).await;
    wait_until(
        Duration::from_secs(30),
        "the Ingress to be deleted",
        || async {
            ingresses
                .get_opt("test-query")
                .await
                .expect("ingress")
                .is_none()
        },
    )
    .await;
}

#[tokio::test]
async fn a_deleted_child_is_restored() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-restore";
    namespace(&client, ns, json!({}), json!({})).await;
    let _instance = instance(&client, ns, "test", json!({})).await;
    wait_for_children(&client, ns, "test").await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    let before = services
        .get("test-collector")
        .await
        .expect("collector")
        .uid();

    let deleted = Instant::now();
    services
        .delete("test-collector", &DeleteParams::default())
        .await
        .expect("deleted");
    let restored = poll(
        Duration::from_secs(15),
        "the Service to be restored",
        || async {
            services
                .get_opt("test-collector")
                .await
                .expect("service")
                .filter(|s| s.uid() != before)
        },
    )
    .await;
    eprintln!(
        "figure: a deleted Service was restored after {:?}",
        deleted.elapsed()
    );
    assert_eq!(ports(&restored).len(), 5);
}

#[tokio::test]
async fn a_hand_edited_child_is_reverted() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-drift";
    namespace(&client, ns, json!({}), json!({})).await;
    let _instance = instance(&client, ns, "test", json!({})).await;
    wait_for_children(&client, ns, "test").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let by_hand = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    let sampling = config_maps
        .get("test-sampling-configuration")
        .await
        .expect("sampling")
        .data;

    deployments
        .patch(
            "test",
            &by_hand,
            &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "jaeger", "image": "evil.example/jaeger:1"}]}}}})),
        )
        .await
        .expect("image edited");
    config_maps
        .patch(
            "test-sampling-configuration",
            &by_hand,
            &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/part-of": "other"}}, "data": {"sampling.json": "{}"}})),
        )
        .await
        .expect("ConfigMap edited");

    wait_until(
        Duration::from_secs(15),
        "the image to be reverted",
        || async {
            image(&deployments.get("test").await.expect("deployment")).as_deref()
                == Some(DEFAULT_IMAGE)
        },
    )
    .await;
    wait_until(
        Duration::from_secs(15),
        "the ConfigMap to be reverted",
        || async {
            let cm = config_maps
                .get("test-sampling-configuration")
                .await
                .expect("sampling");
            cm.labels()
                .get("app.kubernetes.io/part-of")
                .map(String::as_str)
                == Some("jaeger")
                && cm.data == sampling
        },
    )
    .await;
}

#[tokio::test]
async fn deleting_the_instance_lets_the_garbage_collector_remove_the_children() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-gc";
    namespace(&client, ns, json!({}), json!({})).await;
    let _instance = instance(&client, ns, "test", json!({"ingress": {"enabled": true}})).await;
    wait_for_children(&client, ns, "test").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    wait_until(Duration::from_secs(30), "the Ingress", || async {
        ingresses
            .get_opt("test-query")
            .await
            .expect("ingress")
            .is_some()
    })
    .await;

    let deleted = Instant::now();
    Api::<Jaeger>::namespaced(client.clone(), ns)
        .delete("test", &DeleteParams::default())
        .await
        .expect("Jaeger deleted");
    wait_until(
        Duration::from_secs(60),
        "the garbage collector to remove every child",
        || async {
            children(&client, ns, "test")
                .await
                .iter()
                .all(|(_, _, m)| m.is_none())
                && ingresses
                    .get_opt("test-query")
                    .await
                    .expect("ingress")
                    .is_none()
        },
    )
    .await;
    eprintln!(
        "figure: the children were gone {:?} after the Jaeger was deleted",
        deleted.elapsed()
    );
}

#[tokio::test]
async fn same_name_in_two_namespaces_gets_two_sets_of_children() {
    let _instances = more_instances().await;
    let client = client().await;
    let (a, b) = ("e2e-rc-twin-a", "e2e-rc-twin-b");
    namespace(&client, a, json!({}), json!({})).await;
    namespace(&client, b, json!({}), json!({})).await;
    let in_a = instance(&client, a, "twin", json!({})).await;
    let in_b = instance(&client, b, "twin", json!({})).await;

    for (ns, owner) in [(a, &in_a), (b, &in_b)] {
        for (kind, name, meta) in wait_for_children(&client, ns, "twin").await {
            let owners = meta.owner_references.unwrap_or_default();
            assert_eq!(
                owners.first().map(|o| &o.uid),
                owner.jaeger.metadata.uid.as_ref(),
                "{ns}: {kind} {name} belongs to the instance of its own namespace"
            );
        }
    }
    let endpoints = |j: &Jaeger| j.status.as_ref().and_then(|s| s.collector_endpoint.clone());
    let with_status = |ns: &'static str| {
        let client = client.clone();
        async move {
            poll(
                Duration::from_secs(30),
                &format!("{ns}/twin to have a status"),
                || async {
                    let j = jaeger(&client, ns, "twin").await;
                    endpoints(&j).is_some().then_some(j)
                },
            )
            .await
        }
    };
    let (ja, jb) = (with_status(a).await, with_status(b).await);
    assert_eq!(
        endpoints(&ja).as_deref(),
        Some("twin-collector.e2e-rc-twin-a.svc:4317")
    );
    assert_eq!(
        endpoints(&jb).as_deref(),
        Some("twin-collector.e2e-rc-twin-b.svc:4317")
    );
}

/// Uses the shared instance `obs/test`, so that no instance of its own lingers.
#[tokio::test]
async fn nothing_to_change_means_no_writes() {
    let client = client().await;
    wait_for_phase(
        &client,
        INSTANCE_NS,
        INSTANCE,
        Phase::Running,
        Duration::from_secs(60),
    )
    .await;
    // Let the last status write and Events of the start settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let versions = || async {
        let mut v: BTreeMap<String, String> = children(&client, INSTANCE_NS, INSTANCE)
            .await
            .into_iter()
            .map(|(kind, name, m)| {
                (
                    format!("{kind} {name}"),
                    m.and_then(|m| m.resource_version).unwrap_or_default(),
                )
            })
            .collect();
        // Not the instance's resourceVersion: the Pod counts in its status are written
        // by another field manager whenever a Pod of a concurrent test is injected.
        // The reconciler's own writes show as its managedFields entries' times.
        let instance = jaeger(&client, INSTANCE_NS, INSTANCE).await;
        for entry in instance.managed_fields() {
            if entry.manager.as_deref() == Some(tracehook::reconciler::MANAGER) {
                v.insert(
                    format!(
                        "Jaeger test, {} of {}",
                        entry.operation.as_deref().unwrap_or_default(),
                        entry.subresource.as_deref().unwrap_or("the object")
                    ),
                    entry
                        .time
                        .as_ref()
                        .map(|t| t.0.to_string())
                        .unwrap_or_default(),
                );
            }
        }
        v
    };
    // A change the reconciler does not manage still makes it reconcile.
    let services: Api<Service> = Api::namespaced(client.clone(), INSTANCE_NS);
    let log_before = std::fs::read_to_string(&env().webhook.log)
        .unwrap_or_default()
        .len();
    services
        .patch(
            "test-agent",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"e2e.tracehook.dev/touched": "yes"}}})),
        )
        .await
        .expect("labelled");
    let before = versions().await;
    assert!(
        before.contains_key("Jaeger test, Apply of status"),
        "the reconciler's status entry is in the instance's managedFields: {before:?}"
    );

    tokio::time::sleep(Duration::from_secs(20)).await;
    let after = versions().await;
    assert_eq!(before, after, "no write in 20 s");
    let log = std::fs::read_to_string(&env().webhook.log).unwrap_or_default();
    assert!(
        plain(&log[log_before..])
            .lines()
            .any(|l| l.contains("in sync")
                && l.contains(r#"namespace="obs""#)
                && l.contains(r#"name="test""#)),
        "a reconcile ran after the touch and found nothing to write"
    );
}

#[tokio::test]
async fn injected_pods_point_at_the_local_instance_and_use_its_sidecar_settings() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-inject";
    labelled_namespace(&client, ns).await;
    let _instance = instance(
        &client,
        ns,
        "local",
        json!({"sidecar": {
            "image": "registry.example/jaeger-agent:7.7.7",
            "agentOptions": {"log-level": "debug"},
            "resources": {"limits": {"memory": "96Mi"}}
        }}),
    )
    .await;
    // The webhook learns about the instance from its watch: retry until it has.
    let stored = poll(
        Duration::from_secs(30),
        "a Pod injected for the local instance",
        || async {
            let pod = create_pod(
                &client,
                ns,
                &pod(&fresh_name("web"), json!({"tracehook.dev/inject": "true"})),
            )
            .await;
            let agent = sidecar(&pod, "jaeger-agent")?;
            (agent.image.as_deref() == Some("registry.example/jaeger-agent:7.7.7")).then_some(pod)
        },
    )
    .await;
    let agent = sidecar(&stored, "jaeger-agent").expect("jaeger-agent");
    let args = agent.args.clone().unwrap_or_default();
    assert!(
        args.contains(
            &"--reporter.grpc.host-port=dns:///local-collector-headless.e2e-rc-inject.svc:14250"
                .to_owned()
        ),
        "{args:?}"
    );
    assert!(args.contains(&"--log-level=debug".to_owned()), "{args:?}");
    let limits = agent
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .unwrap_or_default();
    assert_eq!(limits.get("memory").map(|q| q.0.as_str()), Some("96Mi"));
    assert_eq!(
        stored
            .labels()
            .get("tracehook.dev/injected")
            .map(String::as_str),
        Some("e2e-rc-inject.local")
    );
    // The Service the agent reports to is there.
    wait_for_children(&client, ns, "local").await;
}

#[tokio::test]
async fn an_invalid_ingress_host_becomes_a_failed_condition_and_an_event() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-failed";
    namespace(&client, ns, json!({}), json!({})).await;
    let _instance = instance(
        &client,
        ns,
        "test",
        json!({"ingress": {"enabled": true, "host": "Not_A_Host"}}),
    )
    .await;
    let failed = wait_for_phase(&client, ns, "test", Phase::Failed, Duration::from_secs(30)).await;
    let ready = failed
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    assert_eq!(ready.status, "False");
    assert_eq!(ready.reason, "ReconcileFailed");
    assert!(ready.message.contains("Not_A_Host"), "{}", ready.message);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    wait_until(
        Duration::from_secs(15),
        "a ReconcileFailed Event on the Jaeger",
        || async {
            events
                .list(&ListParams::default())
                .await
                .expect("events")
                .items
                .iter()
                .any(|e| {
                    e.reason.as_deref() == Some("ReconcileFailed")
                        && e.type_.as_deref() == Some("Warning")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("test")
                })
        },
    )
    .await;

    patch_spec(
        &client,
        ns,
        "test",
        json!({"ingress": {"host": "jaeger.example.com"}}),
    )
    .await;
    // The retry comes after a backoff of a few seconds.
    let running =
        wait_for_phase(&client, ns, "test", Phase::Running, Duration::from_secs(60)).await;
    let ready = running
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
        .expect("Ready");
    assert_eq!(ready.status, "True");
}

#[tokio::test]
async fn a_strategy_other_than_all_in_one_is_rejected() {
    let _instances = more_instances().await;
    let client = client().await;
    let ns = "e2e-rc-strategy";
    namespace(&client, ns, json!({}), json!({})).await;
    let jaeger: Jaeger = serde_json::from_value(json!({
        "apiVersion": "tracehook.dev/v1alpha1",
        "kind": "Jaeger",
        "metadata": {"name": "prod", "namespace": ns},
        "spec": {},
    }))
    .expect("a Jaeger");
    let mut value = serde_json::to_value(&jaeger).expect("json");
    value["spec"]["strategy"] = json!("production");
    let api: Api<kube::api::DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &kube::api::ApiResource::erase::<Jaeger>(&()),
    );
    let object: kube::api::DynamicObject = serde_json::from_value(value).expect("dynamic object");
    match api.create(&PostParams::default(), &object).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422);
            assert!(
                s.message.contains(r#"supported values: "allInOne""#),
                "{}",
                s.message
            );
        }
        other => panic!("a production Jaeger was not rejected: {other:?}"),
    }
}

/// A `tracehook serve` replica campaigning for the Lease in `lease_namespace`.
struct Replica {
    child: Option<Child>,
    probe_port: u16,
    log: PathBuf,
}

impl Replica {
    fn start(identity: &str, lease_namespace: &str) -> Replica {
        let cluster = env().cluster;
        let dir = cluster.dir().join(format!("tracehook-{identity}"));
        let certs = dir.join("certs");
        let status = Command::new(env!("CARGO_BIN_EXE_tracehook"))
            .args(["certs", "--out"])
            .arg(&certs)
            .status()
            .expect("tracehook certs runs");
        assert!(status.success(), "tracehook certs failed");
        let probe_port = free_port();
        let log = dir.join("serve.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracehook"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", free_port()))
            .arg("--probe-listen")
            .arg(format!("127.0.0.1:{probe_port}"))
            .arg("--tls-cert-file")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(certs.join("tls.key"))
            .arg("--namespace")
            .arg(lease_namespace)
            // These replicas lead a Lease of their own: only the shared process reports
            // workloads in namespaces that are not labelled (real_world.rs counts them).
            .arg("--injection-scope=all-namespaces")
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("POD_NAME", identity)
            .env("RUST_LOG", "info,tracehook=debug");
        let child = cluster
            .spawn_attached(cmd, &log)
            .expect("tracehook serve starts");
        Replica {
            child: Some(child),
            probe_port,
            log,
        }
    }

    fn log(&self) -> String {
        plain(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// Serving the webhook: `/readyz` answers 200.
    fn ready(&self) -> bool {
        matches!(http_get(self.probe_port, "/readyz"), Some((200, _)))
    }

    fn reconciles(&self) -> bool {
        let log = self.log();
        log.contains("leading: reconciling") && log.contains("reconcile{")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A log without its terminal colours (`\x1b[…m`).
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            chars.by_ref().find(|c| *c == 'm');
        } else {
            out.push(c);
        }
    }
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt(tracehook::reconciler::LEASE_NAME)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
}

#[tokio::test]
async fn only_the_lease_holder_reconciles_and_a_follower_takes_over() {
    let client = client().await;
    let ns = "e2e-rc-failover";
    namespace(&client, ns, json!({}), json!({})).await;
    let mut replicas = [
        Replica::start("failover-a", ns),
        Replica::start("failover-b", ns),
    ];
    let names = ["failover-a", "failover-b"];
    wait_until(
        Duration::from_secs(60),
        "both replicas to serve the webhook",
        || async { replicas.iter().all(Replica::ready) },
    )
    .await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), ns);
    let first = poll(Duration::from_secs(30), "a lease holder", || async {
        holder(&leases).await
    })
    .await;
    let leader = names
        .iter()
        .position(|n| *n == first)
        .expect("the holder is one of the replicas");
    let follower = 1 - leader;
    // The shared instance `obs/test` always exists, so the leader has something to do.
    wait_until(
        Duration::from_secs(30),
        "the leader to reconcile",
        || async { replicas[leader].reconciles() },
    )
    .await;

    // Over more than one renewal, the lease stays put and the follower stays idle.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(holder(&leases).await.as_deref(), Some(first.as_str()));
    assert!(
        !replicas[follower].log().contains("reconcile{"),
        "the follower reconciled"
    );
    assert!(
        replicas[follower].ready(),
        "the follower serves the webhook"
    );

    let killed = Instant::now();
    replicas[leader].kill();
    let next = poll(
        Duration::from_secs(40),
        "the follower to take the lease",
        || async { holder(&leases).await.filter(|h| h != &first) },
    )
    .await;
    let took_over = killed.elapsed();
    eprintln!("figure: the follower held the lease {took_over:?} after the leader was killed");
    assert_eq!(next, names[follower]);
    assert!(
        took_over < Duration::from_secs(30),
        "takeover took {took_over:?}"
    );
    wait_until(
        Duration::from_secs(15),
        "the new leader to reconcile",
        || async { replicas[follower].reconciles() },
    )
    .await;
    let lease = leases
        .get(tracehook::reconciler::LEASE_NAME)
        .await
        .expect("lease");
    assert!(lease.spec.and_then(|s| s.lease_transitions).unwrap_or(0) >= 1);

    // Losing the lease stops reconciling: another holder takes it over.
    let mut lease = leases
        .get(tracehook::reconciler::LEASE_NAME)
        .await
        .expect("lease");
    let spec = lease.spec.as_mut().expect("lease spec");
    spec.holder_identity = Some("intruder".into());
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let taken = Instant::now();
    leases
        .replace(
            tracehook::reconciler::LEASE_NAME,
            &PostParams::default(),
            &lease,
        )
        .await
        .expect("lease taken over");
    wait_until(
        Duration::from_secs(15),
        "the replica to stop reconciling",
        || async {
            replicas[follower]
                .log()
                .contains("no longer leading: stopped reconciling")
        },
    )
    .await;
    eprintln!(
        "figure: the replica stopped reconciling {:?} after losing the lease",
        taken.elapsed()
    );
    // The intruder never renews: the replica takes the lease back once it expires.
    let back = poll(
        Duration::from_secs(40),
        "the replica to take the lease back",
        || async { holder(&leases).await.filter(|h| h == names[follower]) },
    )
    .await;
    assert_eq!(back, names[follower]);
    assert!(replicas[follower].ready());
}

#[tokio::test]
async fn the_leader_serves_reconciler_metrics() {
    let env = env();
    let webhook = &env.webhook;
    // The shared process leads (nothing else campaigns for its Lease) and has
    // reconciled obs/test at least once.
    wait_until(
        Duration::from_secs(30),
        "the reconciler's metrics",
        || async {
            webhook.metric("tracehook_reconciler_leader") == 1.0
                && webhook.metric("tracehook_reconciles_total") >= 1.0
                && webhook.metric("tracehook_reconcile_duration_seconds_count") >= 1.0
        },
    )
    .await;
}
