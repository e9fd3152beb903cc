//! The `Jaeger` custom resource (`tracehook.dev/v1alpha1`): the Rust types are the
//! source of the CustomResourceDefinition (`tracehook crd`, `manifests/crd.yaml`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::inject::{self, Flavor};

/// A Jaeger backend (collector, query and UI) and the sidecar settings of the Pods
/// that send to it.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "tracehook.dev",
    version = "v1alpha1",
    kind = "Jaeger",
    namespaced,
    shortname = "jg",
    status = "JaegerStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Strategy","type":"string","jsonPath":".spec.strategy"}"#,
    printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.injectedPods"}"#,
    printcolumn = r#"{"name":"Missing","type":"integer","jsonPath":".status.missingPods"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct JaegerSpec {
    /// How the backend is deployed. Only `allInOne` (one Deployment running the
    /// collector, query and UI) is supported.
    #[serde(default)]
    pub strategy: Strategy,
    /// The backend image (default: the Jaeger v2 all-in-one image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Resources of the backend container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Storage options passed through to Jaeger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSpec>,
    /// Sampling strategies, served to the agents (the Jaeger sampling file format).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub sampling: Option<serde_json::Value>,
    /// An Ingress for the query UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// The sidecar injected into Pods that select this instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sidecar: Option<SidecarSpec>,
    /// Labels added to every object created for this instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to every object created for this instance.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Strategy {
    /// One Deployment running the collector, query and UI.
    #[default]
    AllInOne,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// The storage backend. Only `memory` is supported: the persistent backends need
    /// a configuration file, volumes and credentials that this resource does not model.
    #[serde(default)]
    pub r#type: StorageType,
    /// Options of the backend, passed through to Jaeger: `max_traces: "50000"` becomes
    /// `--set=extensions::jaeger_storage::backends::some_storage::memory::max_traces=50000`.
    /// Nested keys use `::`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum StorageType {
    /// Spans kept in memory by the single backend Pod, lost when it restarts.
    #[default]
    Memory,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// Create the Ingress `<name>-query` (it is deleted again when this turns false).
    #[serde(default)]
    pub enabled: bool,
    /// The host the UI is served on (default: every host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_class_name: Option<String>,
    /// Annotations of the Ingress only (for the ingress controller).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<IngressTls>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SidecarSpec {
    /// `jaeger-agent` (default) or `otel-collector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavor: Option<Flavor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Extra Jaeger agent options, `key: value` → `--key=value`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub agent_options: BTreeMap<String, String>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JaegerStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collector_endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_endpoint: Option<String>,
    /// Live Pods carrying the sidecar of this instance (written by the leader's Pod
    /// watch, field manager `tracehook-pods`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub injected_pods: Option<i64>,
    /// Live Pods that would be injected toward this instance now but have no sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing_pods: Option<i64>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Failed,
}

fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true
    })
}

impl Jaeger {
    /// The instance as the injection engine sees it.
    pub fn to_instance(&self) -> Option<inject::Instance> {
        let namespace = self.metadata.namespace.clone()?;
        let name = self.metadata.name.clone()?;
        let sidecar = self.spec.sidecar.as_ref();
        let quantity =
            |section: Option<
                &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
            >,
             key: &str| { section.and_then(|m| m.get(key)).map(|q| q.0.clone()) };
        let resources = sidecar.and_then(|s| s.resources.as_ref());
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        Some(inject::Instance {
            namespace,
            name,
            sidecar: inject::SidecarSettings {
                flavor: sidecar.and_then(|s| s.flavor),
                image: sidecar.and_then(|s| s.image.clone()),
                resources: inject::Resources {
                    cpu_request: quantity(requests, "cpu"),
                    memory_request: quantity(requests, "memory"),
                    cpu_limit: quantity(limits, "cpu"),
                    memory_limit: quantity(limits, "memory"),
                },
                agent_options: sidecar.map(|s| s.agent_options.clone()).unwrap_or_default(),
            },
        })
    }
}

/// The CustomResourceDefinition as YAML, as `tracehook crd` prints it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt as _;
    let crd = Jaeger::crd();
    let value = serde_json::to_value(&crd).expect("a CRD always serializes");
    serde_saphyr::to_string(&value).expect("a JSON value always serializes to YAML")
}
