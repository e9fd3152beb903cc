//! The injection engine: a pure function from a Pod (raw JSON) and what is known about
//! its namespace, owner and the Jaeger instances to a [`Decision`] carrying an RFC 6902
//! patch. No I/O happens here: the webhook, the `inject` command, the benchmarks and
//! the fuzzers all call [`decide`].
//!
//! - [`decide`]: where the decision is made (annotations, precedence, skips)
//! - [`instance`]: which Jaeger instance a request names
//! - [`sidecar`]: the sidecar container of each flavor
//! - [`env`]: the variables app containers get, and the service name
//! - [`limits`]: the sidecar's resources fitted into LimitRanges and ResourceQuotas
//! - [`marker`]: the annotation and label an injected Pod carries
//! - [`patch`]: how the JSON Patch is built from the raw Pod

pub mod decide;
pub mod env;
pub mod instance;
pub mod keys;
pub mod limits;
pub mod marker;
pub mod patch;
pub mod quantity;
pub mod sidecar;
pub mod text;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use decide::decide;
pub use instance::{Instance, InstanceRef, Instances};

/// The sidecar flavors tracehook can inject.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Flavor {
    /// A Jaeger agent forwarding to the instance's collector over gRPC.
    #[default]
    JaegerAgent,
    /// An OpenTelemetry Collector receiving OTLP and Jaeger thrift on localhost.
    OtelCollector,
}

impl Flavor {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavor::JaegerAgent => "jaeger-agent",
            Flavor::OtelCollector => "otel-collector",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "jaeger-agent" => Some(Flavor::JaegerAgent),
            "otel-collector" => Some(Flavor::OtelCollector),
            _ => None,
        }
    }

    /// The name of the container this flavor injects.
    pub fn container_name(self) -> &'static str {
        match self {
            Flavor::JaegerAgent => sidecar::JAEGER_AGENT_CONTAINER,
            Flavor::OtelCollector => sidecar::OTEL_COLLECTOR_CONTAINER,
        }
    }
}

impl fmt::Display for Flavor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Labels, annotations and resource policy of the Pod's namespace. An empty `name`
/// means the namespace is not known (`tracehook inject` on a document that names
/// none): what depends on it then comes from the downward API at run time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceMeta {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The namespace's LimitRanges and ResourceQuotas.
    pub policy: limits::ResourcePolicy,
}

impl NamespaceMeta {
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }
}

/// The workload that owns the Pod at the top of its ownerReferences chain
/// (Pod → ReplicaSet → Deployment, Pod → Job → CronJob, Pod → StatefulSet, …).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Workload {
    pub kind: String,
    pub name: String,
    pub annotations: BTreeMap<String, String>,
}

/// Resources for the sidecar: Kubernetes quantities as strings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl Resources {
    /// Fields set in `over` replace those in `self`.
    pub fn overlay(&self, over: &Resources) -> Resources {
        Resources {
            cpu_request: over
                .cpu_request
                .clone()
                .or_else(|| self.cpu_request.clone()),
            memory_request: over
                .memory_request
                .clone()
                .or_else(|| self.memory_request.clone()),
            cpu_limit: over.cpu_limit.clone().or_else(|| self.cpu_limit.clone()),
            memory_limit: over
                .memory_limit
                .clone()
                .or_else(|| self.memory_limit.clone()),
        }
    }
}

/// Sidecar settings an instance may carry (`spec.sidecar` of a `Jaeger`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarSettings {
    pub flavor: Option<Flavor>,
    pub image: Option<String>,
    pub resources: Resources,
    /// Extra `--key=value` options for the Jaeger agent.
    pub agent_options: BTreeMap<String, String>,
}

/// Process-wide settings: defaults and what the API server supports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub jaeger_agent_image: String,
    pub otel_collector_image: String,
    pub default_flavor: Flavor,
    pub default_resources: Resources,
    /// The API server runs native sidecars (Kubernetes ≥ 1.29).
    pub native_sidecars: bool,
    /// tracehook's own namespace: never injected.
    pub own_namespace: String,
}

pub const DEFAULT_JAEGER_AGENT_IMAGE: &str = "jaegertracing/jaeger-agent:1.62.0";
/// The sidecar's default resources (the `serve` flags' defaults too).
pub const DEFAULT_CPU_REQUEST: &str = "25m";
pub const DEFAULT_MEMORY_REQUEST: &str = "32Mi";
pub const DEFAULT_CPU_LIMIT: &str = "200m";
pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";

/// Whether Pods get a native sidecar: `choice` (`None`: automatic) against the API
/// server's version, when known. Native sidecars are on by default from 1.29; offline
/// (`tracehook inject`, `serve --no-cluster`) the automatic choice is native.
pub fn native_sidecars(choice: Option<bool>, server: Option<(&str, &str)>) -> bool {
    let digits = |s: &str| s.trim_end_matches('+').parse::<u32>().ok();
    choice.unwrap_or_else(|| match server {
        None => true,
        Some((major, minor)) => match (digits(major), digits(minor)) {
            (Some(1), Some(m)) => m >= 29,
            (Some(major), _) => major > 1,
            _ => false,
        },
    })
}
pub const DEFAULT_OTEL_COLLECTOR_IMAGE: &str = "otel/opentelemetry-collector-contrib:0.140.0";

impl Default for Settings {
    fn default() -> Self {
        Self {
            jaeger_agent_image: DEFAULT_JAEGER_AGENT_IMAGE.to_owned(),
            otel_collector_image: DEFAULT_OTEL_COLLECTOR_IMAGE.to_owned(),
            default_flavor: Flavor::JaegerAgent,
            default_resources: Resources {
                cpu_request: Some(DEFAULT_CPU_REQUEST.to_owned()),
                memory_request: Some(DEFAULT_MEMORY_REQUEST.to_owned()),
                cpu_limit: Some(DEFAULT_CPU_LIMIT.to_owned()),
                memory_limit: Some(DEFAULT_MEMORY_LIMIT.to_owned()),
            },
            native_sidecars: true,
            own_namespace: "tracehook".to_owned(),
        }
    }
}

/// Keys an `envFrom` source is known to define, so that variables it sets are not
/// overridden. ConfigMaps can be looked up; Secrets are never read by tracehook.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EnvFromKeys {
    /// ConfigMap name → its keys.
    pub config_maps: BTreeMap<String, Vec<String>>,
}

/// Everything [`decide`] looks at.
#[derive(Clone, Copy, Debug)]
pub struct Input<'a> {
    /// The Pod (or pod template: an object with `metadata` and `spec`) as raw JSON.
    pub pod: &'a Value,
    pub namespace: &'a NamespaceMeta,
    /// The owning workload, when the caller knows it; otherwise it is derived from
    /// the Pod's ownerReferences (without annotations).
    pub workload: Option<&'a Workload>,
    pub instances: Instances<'a>,
    pub env_from: &'a EnvFromKeys,
    pub settings: &'a Settings,
}

/// Why a Pod that asked for injection did not get it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipReason {
    HostNetwork,
    ExcludedNamespace,
    BackendPod,
    ExistingSidecar,
    PortClash,
    NoInstance,
    UnknownInstance,
    AmbiguousInstance,
    InvalidAnnotation,
    WindowsPod,
    InvalidPod,
    LimitRange,
    ResourceQuota,
    JaegerOperatorPod,
}

impl SkipReason {
    /// A short, stable label for metrics and events.
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::HostNetwork => "host_network",
            SkipReason::ExcludedNamespace => "excluded_namespace",
            SkipReason::BackendPod => "backend_pod",
            SkipReason::ExistingSidecar => "existing_sidecar",
            SkipReason::PortClash => "port_clash",
            SkipReason::NoInstance => "no_instance",
            SkipReason::UnknownInstance => "unknown_instance",
            SkipReason::AmbiguousInstance => "ambiguous_instance",
            SkipReason::InvalidAnnotation => "invalid_annotation",
            SkipReason::WindowsPod => "windows_pod",
            SkipReason::InvalidPod => "invalid_pod",
            SkipReason::LimitRange => "limit_range",
            SkipReason::ResourceQuota => "resource_quota",
            SkipReason::JaegerOperatorPod => "jaeger_operator_pod",
        }
    }
}

/// A skipped request: the reason, and a sentence for the warning and the Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub reason: SkipReason,
    pub message: String,
}

impl Skip {
    pub fn new(reason: SkipReason, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }
}

/// A successful injection.
#[derive(Clone, Debug, PartialEq)]
pub struct Injection {
    pub patch: json_patch::Patch,
    pub instance: InstanceRef,
    pub flavor: Flavor,
    /// Things the user should know although the Pod was injected.
    pub warnings: Vec<String>,
    /// `container: VARIABLE` for what the user set and tracehook left alone.
    pub kept: Vec<String>,
}

/// What the engine decided for one Pod.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Nothing asked for injection, or the most specific level said `false`.
    NotRequested,
    /// The Pod carries tracehook's marker already (reinvocation, or re-applied output).
    AlreadyInjected,
    /// A Pod that tracehook never touches and that need not be told (its own backend).
    Ignored(SkipReason),
    /// Injection was asked for but cannot be done: the Pod is admitted unchanged and
    /// told why.
    Skipped(Skip),
    Injected(Injection),
}

impl Decision {
    /// The outcome label for metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::NotRequested => "not_requested",
            Decision::AlreadyInjected => "already_injected",
            Decision::Ignored(_) => "ignored",
            Decision::Skipped(_) => "skipped",
            Decision::Injected(_) => "injected",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::native_sidecars;

    #[test]
    fn native_sidecars_follow_the_api_server_unless_chosen() {
        assert!(native_sidecars(None, Some(("1", "29"))));
        assert!(native_sidecars(None, Some(("1", "35+"))));
        assert!(!native_sidecars(None, Some(("1", "28"))));
        assert!(native_sidecars(None, Some(("2", "0"))));
        assert!(!native_sidecars(None, Some(("x", "y"))));
        assert!(native_sidecars(None, None), "offline: native");
        assert!(!native_sidecars(Some(false), Some(("1", "35"))));
        assert!(native_sidecars(Some(true), Some(("1", "28"))));
    }
}
