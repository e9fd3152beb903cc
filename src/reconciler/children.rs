//! What a `Jaeger` instance should own, as a pure function of the resource: no I/O, so
//! names, ports, labels and the Pod Security settings are checked by unit tests.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource as _, ResourceExt as _};
use serde_json::Value;

use crate::crd::{Jaeger, StorageType};
use crate::inject::keys;

/// The Jaeger v2 all-in-one image (collector, query and UI in one process).
pub const DEFAULT_IMAGE: &str = "jaegertracing/jaeger:2.12.0";

/// The user the Jaeger image runs as (its Dockerfile's `USER`).
const JAEGER_UID: i64 = 10001;

/// Where the sampling ConfigMap is mounted in the backend container.
const SAMPLING_DIR: &str = "/etc/jaeger/sampling";
const SAMPLING_FILE: &str = "sampling.json";

/// The Jaeger v2 health check extension (its all-in-one configuration's port).
const HEALTH_PORT: u16 = 13133;

/// Annotation on the Pod template with a hash of the sampling configuration, so that
/// a change rolls the backend and it reads the new file.
pub const SAMPLING_HASH_ANNOTATION: &str = "tracehook.dev/sampling-hash";

/// What Jaeger serves when `spec.sampling` is not set: sample everything.
const DEFAULT_SAMPLING: &str = r#"{"default_strategy":{"param":1,"type":"probabilistic"}}"#;

/// One port of a Service (and of the backend container): the sidecar's port type, so
/// that the agent's ports are one table.
pub use crate::inject::sidecar::{Port, tcp, udp};

/// The collector's ports, on `<name>-collector` and `<name>-collector-headless`.
pub const COLLECTOR_PORTS: [Port; 5] = [
    tcp("grpc-jaeger", 14250),
    tcp("http-c-binary-trft", 14268),
    tcp("http-zipkin", 9411),
    tcp("grpc-otlp", 4317),
    tcp("http-otlp", 4318),
];

/// The query service's ports, on `<name>-query`.
pub const QUERY_PORTS: [Port; 2] = [tcp("http-query", 16686), tcp("grpc-query", 16685)];

/// The agent ports, on the headless `<name>-agent`: the Jaeger agent sidecar's.
pub fn agent_ports() -> &'static [Port] {
    crate::inject::sidecar::ports(crate::inject::Flavor::JaegerAgent)
}

/// The backend container's ports. Container port names are limited to 15 characters,
/// so some differ from the Service port names; Services target ports by number.
const CONTAINER_PORTS: [Port; 11] = [
    tcp("grpc-jaeger", 14250),
    tcp("c-binary-trft", 14268),
    tcp("zipkin", 9411),
    tcp("grpc-otlp", 4317),
    tcp("http-otlp", 4318),
    tcp("http-query", 16686),
    tcp("grpc-query", 16685),
    tcp("config-rest", 5778),
    udp("jg-compact-trft", 6831),
    udp("jg-binary-trft", 6832),
    tcp("health", HEALTH_PORT),
];

/// Every object an instance owns (the Ingress only when enabled).
#[derive(Clone, Debug)]
pub struct Children {
    pub service_account: ServiceAccount,
    pub sampling: ConfigMap,
    pub deployment: Deployment,
    pub services: Vec<Service>,
    pub ingress: Option<Ingress>,
}

/// The names of an instance's children.
pub fn sampling_name(instance: &str) -> String {
    format!("{instance}-sampling-configuration")
}

pub fn query_name(instance: &str) -> String {
    format!("{instance}-query")
}

/// `<name>-collector.<ns>.svc:4317`, where OTLP goes.
pub fn collector_endpoint(namespace: &str, instance: &str) -> String {
    format!("{instance}-collector.{namespace}.svc:4317")
}

/// `http://<name>-query.<ns>.svc:16686`, the UI.
pub fn query_endpoint(namespace: &str, instance: &str) -> String {
    format!("http://{instance}-query.{namespace}.svc:16686")
}

/// The labels of every child: the user's, then the standard ones (which win).
pub fn labels(jaeger: &Jaeger, component: &str) -> BTreeMap<String, String> {
    let mut labels = jaeger.spec.labels.clone();
    labels.extend(selector(jaeger, component));
    labels.insert("app.kubernetes.io/part-of".into(), "jaeger".into());
    labels.insert(keys::MANAGED_BY.into(), keys::MANAGED_BY_VALUE.into());
    labels
}

/// The labels that pick the backend Pods (immutable in a Deployment's selector, so
/// nothing the user can change goes in).
fn selector(jaeger: &Jaeger, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "jaeger".to_owned()),
        ("app.kubernetes.io/instance".to_owned(), jaeger.name_any()),
        (
            "app.kubernetes.io/component".to_owned(),
            component.to_owned(),
        ),
    ])
}

/// The desired children of `jaeger`. `None` when the resource lacks what every child
/// needs (a namespace and a uid: it was never stored).
pub fn desired(jaeger: &Jaeger) -> Option<Children> {
    let owner = jaeger.controller_owner_ref(&())?;
    let namespace = jaeger.namespace()?;
    let name = jaeger.name_any();
    let meta = |name: String, component: &str| ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.clone()),
        labels: Some(labels(jaeger, component)),
        annotations: (!jaeger.spec.annotations.is_empty()).then(|| jaeger.spec.annotations.clone()),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let sampling = sampling_json(jaeger.spec.sampling.as_ref());

    let service_account = ServiceAccount {
        metadata: meta(name.clone(), "service-account"),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    };
    let config_map = ConfigMap {
        metadata: meta(sampling_name(&name), "sampling-configuration"),
        data: Some(BTreeMap::from([(
            SAMPLING_FILE.to_owned(),
            sampling.clone(),
        )])),
        ..ConfigMap::default()
    };
    let deployment = deployment(jaeger, meta(name.clone(), "all-in-one"), &sampling);
    let service = |suffix: &str, component: &str, headless: bool, ports: &[Port]| Service {
        metadata: meta(format!("{name}-{suffix}"), component),
        spec: Some(ServiceSpec {
            cluster_ip: headless.then(|| "None".to_owned()),
            selector: Some(selector(jaeger, "all-in-one")),
            ports: Some(ports.iter().map(service_port).collect()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    };
    let services = vec![
        service("collector", "service-collector", false, &COLLECTOR_PORTS),
        service(
            "collector-headless",
            "service-collector",
            true,
            &COLLECTOR_PORTS,
        ),
        service("query", "service-query", false, &QUERY_PORTS),
        service("agent", "service-agent", true, agent_ports()),
    ];
    let ingress = jaeger
        .spec
        .ingress
        .as_ref()
        .filter(|i| i.enabled)
        .map(|spec| {
            let mut metadata = meta(query_name(&name), "query-ingress");
            if !spec.annotations.is_empty() {
                metadata
                    .annotations
                    .get_or_insert_with(BTreeMap::new)
                    .extend(spec.annotations.clone());
            }
            Ingress {
                metadata,
                spec: Some(IngressSpec {
                    ingress_class_name: spec.ingress_class_name.clone(),
                    rules: Some(vec![IngressRule {
                        host: spec.host.clone(),
                        http: Some(HTTPIngressRuleValue {
                            paths: vec![HTTPIngressPath {
                                path: Some("/".into()),
                                path_type: "Prefix".into(),
                                backend: IngressBackend {
                                    service: Some(IngressServiceBackend {
                                        name: query_name(&name),
                                        port: Some(ServiceBackendPort {
                                            name: Some("http-query".into()),
                                            ..ServiceBackendPort::default()
                                        }),
                                    }),
                                    ..IngressBackend::default()
                                },
                            }],
                        }),
                    }]),
                    tls: (!spec.tls.is_empty()).then(|| {
                        spec.tls
                            .iter()
                            .map(|t| IngressTLS {
                                hosts: (!t.hosts.is_empty()).then(|| t.hosts.clone()),
                                secret_name: t.secret_name.clone(),
                            })
                            .collect()
                    }),
                    ..IngressSpec::default()
                }),
                ..Ingress::default()
            }
        });
    Some(Children {
        service_account,
        sampling: config_map,
        deployment,
        services,
        ingress,
    })
}

fn service_port(p: &Port) -> ServicePort {
    ServicePort {
        name: Some(p.name.to_owned()),
        port: i32::from(p.port),
        target_port: Some(IntOrString::Int(i32::from(p.port))),
        protocol: Some(p.protocol().to_owned()),
        ..ServicePort::default()
    }
}

fn deployment(jaeger: &Jaeger, metadata: ObjectMeta, sampling: &str) -> Deployment {
    let name = jaeger.name_any();
    let mut template_annotations = jaeger.spec.annotations.clone();
    template_annotations.insert(
        SAMPLING_HASH_ANNOTATION.into(),
        format!("{:016x}", super::apply::fnv1a(sampling.as_bytes())),
    );
    // The backend sends no spans through an agent of its own.
    template_annotations.insert(keys::INJECT.into(), "false".into());
    let container = Container {
        name: "jaeger".into(),
        image: Some(
            jaeger
                .spec
                .image
                .clone()
                .unwrap_or_else(|| DEFAULT_IMAGE.to_owned()),
        ),
        args: Some(args(jaeger)),
        env: Some(vec![EnvVar {
            // Jaeger ≥ 2.10 listens on localhost unless told otherwise.
            name: "JAEGER_LISTEN_HOST".into(),
            value: Some("0.0.0.0".into()),
            ..EnvVar::default()
        }]),
        ports: Some(
            CONTAINER_PORTS
                .iter()
                .map(|p| ContainerPort {
                    name: Some(p.name.to_owned()),
                    container_port: i32::from(p.port),
                    protocol: Some(p.protocol().to_owned()),
                    ..ContainerPort::default()
                })
                .collect(),
        ),
        readiness_probe: Some(health_probe(1)),
        liveness_probe: Some(Probe {
            initial_delay_seconds: Some(5),
            failure_threshold: Some(5),
            ..health_probe(15)
        }),
        resources: jaeger.spec.resources.clone(),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "sampling".into(),
                mount_path: SAMPLING_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".into(),
                mount_path: "/tmp".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector(jaeger, "all-in-one")),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(jaeger, "all-in-one")),
                    annotations: Some(template_annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(name.clone()),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(JAEGER_UID),
                        run_as_group: Some(JAEGER_UID),
                        fs_group: Some(JAEGER_UID),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".into(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "sampling".into(),
                            config_map: Some(ConfigMapVolumeSource {
                                name: sampling_name(&name),
                                ..ConfigMapVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "tmp".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn health_probe(period: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some("/status".into()),
            port: IntOrString::Int(i32::from(HEALTH_PORT)),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        ..Probe::default()
    }
}

/// The backend's command line: the embedded all-in-one configuration, overridden with
/// `--set` (Jaeger v2 is an OpenTelemetry Collector; nested keys use `::`).
fn args(jaeger: &Jaeger) -> Vec<String> {
    let mut args = vec![
        format!("--set=extensions::remote_sampling::file::path={SAMPLING_DIR}/{SAMPLING_FILE}"),
        "--set=extensions::jaeger_query::http::endpoint=0.0.0.0:16686".to_owned(),
        "--set=extensions::jaeger_query::grpc::endpoint=0.0.0.0:16685".to_owned(),
    ];
    if let Some(storage) = &jaeger.spec.storage {
        let backend = match storage.r#type {
            StorageType::Memory => "extensions::jaeger_storage::backends::some_storage::memory",
        };
        args.extend(
            storage
                .options
                .iter()
                .map(|(k, v)| format!("--set={backend}::{k}={v}")),
        );
    }
    args
}

/// The sampling file: `spec.sampling` with its keys sorted (so the text, and the hash
/// that rolls the Deployment, only change when the content does), or the default.
fn sampling_json(sampling: Option<&Value>) -> String {
    match sampling {
        Some(value) if !value.is_null() => sorted(value).to_string(),
        _ => DEFAULT_SAMPLING.to_owned(),
    }
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let ordered: BTreeMap<&String, Value> =
                map.iter().map(|(k, v)| (k, sorted(v))).collect();
            Value::Object(ordered.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jaeger(spec: Value) -> Jaeger {
        serde_json::from_value(json!({
            "apiVersion": "tracehook.dev/v1alpha1",
            "kind": "Jaeger",
            "metadata": {"name": "test", "namespace": "obs", "uid": "1234"},
            "spec": spec,
        }))
        .expect("a valid Jaeger")
    }

    #[test]
    fn names_follow_the_instance() {
        let c = desired(&jaeger(json!({"ingress": {"enabled": true}}))).expect("children");
        assert_eq!(c.service_account.metadata.name.as_deref(), Some("test"));
        assert_eq!(
            c.sampling.metadata.name.as_deref(),
            Some("test-sampling-configuration")
        );
        assert_eq!(c.deployment.metadata.name.as_deref(), Some("test"));
        let services: Vec<_> = c
            .services
            .iter()
            .filter_map(|s| s.metadata.name.as_deref())
            .collect();
        assert_eq!(
            services,
            [
                "test-collector",
                "test-collector-headless",
                "test-query",
                "test-agent"
            ]
        );
        assert_eq!(
            c.ingress.and_then(|i| i.metadata.name).as_deref(),
            Some("test-query")
        );
    }

    #[test]
    fn no_ingress_unless_enabled() {
        assert!(
            desired(&jaeger(json!({})))
                .expect("children")
                .ingress
                .is_none()
        );
        assert!(
            desired(&jaeger(json!({"ingress": {"enabled": false, "host": "x"}})))
                .expect("children")
                .ingress
                .is_none()
        );
    }

    #[test]
    fn standard_labels_win_over_user_labels() {
        let j = jaeger(json!({"labels": {"team": "a", "app.kubernetes.io/managed-by": "me"}}));
        let l = labels(&j, "all-in-one");
        assert_eq!(l["team"], "a");
        assert_eq!(l["app.kubernetes.io/managed-by"], "tracehook");
        assert_eq!(l["app.kubernetes.io/instance"], "test");
    }

    #[test]
    fn headless_services_have_no_cluster_ip() {
        let c = desired(&jaeger(json!({}))).expect("children");
        let ip = |i: usize| {
            c.services[i]
                .spec
                .as_ref()
                .and_then(|s| s.cluster_ip.clone())
        };
        assert_eq!(ip(0), None);
        assert_eq!(ip(1).as_deref(), Some("None"));
        assert_eq!(ip(3).as_deref(), Some("None"));
    }

    #[test]
    fn backend_pod_passes_the_restricted_profile() {
        let c = desired(&jaeger(json!({}))).expect("children");
        let pod = c
            .deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod spec");
        let psc = pod.security_context.expect("pod security context");
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(
            psc.seccomp_profile.map(|p| p.type_).as_deref(),
            Some("RuntimeDefault")
        );
        for c in &pod.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()])
            );
        }
        for v in pod.volumes.iter().flatten() {
            assert!(
                v.config_map.is_some() || v.empty_dir.is_some(),
                "restricted allows no {v:?}"
            );
        }
    }

    #[test]
    fn container_port_names_fit_the_limit() {
        assert!(CONTAINER_PORTS.iter().all(|p| p.name.len() <= 15));
    }

    #[test]
    fn storage_options_become_set_flags() {
        let j = jaeger(json!({"storage": {"options": {"max_traces": "50000"}}}));
        assert!(args(&j).contains(
            &"--set=extensions::jaeger_storage::backends::some_storage::memory::max_traces=50000".to_owned()
        ));
    }

    #[test]
    fn sampling_text_ignores_key_order() {
        let a = sampling_json(Some(
            &json!({"default_strategy": {"type": "probabilistic", "param": 0.5}}),
        ));
        let b = sampling_json(Some(
            &json!({"default_strategy": {"param": 0.5, "type": "probabilistic"}}),
        ));
        assert_eq!(a, b);
        assert_eq!(sampling_json(None), DEFAULT_SAMPLING);
    }
}
