//! What app containers get: the SDK's environment variables, each only where the user
//! has not set it — directly, or through an `envFrom` source that does or may define
//! it (a Secret, or a ConfigMap whose keys are unknown) — and the service name.

use serde_json::{Value, json};

use super::{EnvFromKeys, Flavor, InstanceRef, Workload, keys};

pub const PROPAGATION: &str = "jaeger,b3,w3c";

/// What every app container of one Pod would get.
#[derive(Debug)]
pub struct Plan<'a> {
    pub service: &'a str,
    pub namespace: &'a str,
    pub flavor: Flavor,
    pub instance: &'a InstanceRef,
    pub workload: Option<&'a Workload>,
}

/// The variables one container gets.
#[derive(Debug, Default, PartialEq)]
pub struct ContainerEnv {
    pub add: Vec<Value>,
    pub names: Vec<String>,
    /// Set when an `envFrom` source may define variables tracehook would add.
    pub warning: Option<String>,
}

/// The service name: annotation, then the usual labels, then the owning workload,
/// then the Pod's own name.
pub fn service_name<'a>(
    metadata: Option<&'a Value>,
    workload: Option<&'a Workload>,
    first_container: &'a str,
) -> &'a str {
    let annotations = metadata.and_then(|m| m.get("annotations"));
    let labels = metadata.and_then(|m| m.get("labels"));
    let from = |map: Option<&'a Value>, key: &str| -> Option<&'a str> {
        map.and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    from(annotations, keys::SERVICE_NAME)
        .or_else(|| from(labels, "app.kubernetes.io/instance"))
        .or_else(|| from(labels, "app.kubernetes.io/name"))
        .or_else(|| from(labels, "app"))
        .or_else(|| workload.map(|w| w.name.as_str()).filter(|s| !s.is_empty()))
        .or_else(|| from(metadata, "name"))
        .or_else(|| from(metadata, "generateName").map(|g| g.trim_end_matches('-')))
        .unwrap_or(first_container)
}

/// How one container's environment is already populated.
struct Existing<'c> {
    /// `env` entries by name.
    direct: Vec<(&'c str, &'c Value)>,
    /// Prefixes and keys of `envFrom` sources whose keys are known.
    known: Vec<(&'c str, &'c [String])>,
    /// Prefixes of `envFrom` sources whose keys are unknown, with a description.
    unknown: Vec<(&'c str, String)>,
}

impl<'c> Existing<'c> {
    fn read(container: &'c Value, env_from: &'c EnvFromKeys) -> Self {
        let direct = field(container, "env")
            .and_then(Value::as_array)
            .map(|env| {
                env.iter()
                    .filter_map(|e| Some((field(e, "name")?.as_str()?, e)))
                    .collect()
            })
            .unwrap_or_default();
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        for source in field(container, "envFrom")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let prefix = field(source, "prefix")
                .and_then(Value::as_str)
                .unwrap_or("");
            let config_map = field(source, "configMapRef")
                .and_then(|r| field(r, "name"))
                .and_then(Value::as_str);
            match config_map.and_then(|name| env_from.config_maps.get(name)) {
                Some(keys) => known.push((prefix, keys.as_slice())),
                None => {
                    let what = match (config_map, field(source, "secretRef")) {
                        (Some(name), _) => format!("ConfigMap {name}"),
                        (None, Some(secret)) => format!(
                            "Secret {}",
                            field(secret, "name").and_then(Value::as_str).unwrap_or("?")
                        ),
                        (None, None) => "an envFrom source".to_owned(),
                    };
                    unknown.push((prefix, what));
                }
            }
        }
        Self {
            direct,
            known,
            unknown,
        }
    }

    /// `Some(value)` when set directly (`Some(None)`: set by `valueFrom`).
    fn value(&self, name: &str) -> Option<Option<&'c str>> {
        self.direct
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, e)| field(e, "value").and_then(Value::as_str))
    }

    /// Set directly or by a known envFrom key.
    fn is_set(&self, name: &str) -> bool {
        self.direct.iter().any(|(n, _)| *n == name)
            || self.known.iter().any(|(prefix, keys)| {
                name.strip_prefix(prefix)
                    .is_some_and(|key| keys.iter().any(|k| k == key))
            })
    }

    fn maybe_set_by(&self, name: &str) -> Option<&str> {
        self.unknown
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map(|(_, what)| what.as_str())
    }
}

/// `value[key]` of an object. The objects of a Pod have a few keys each (an env
/// entry two, a container a dozen), where comparing them beats hashing the key looked
/// up with SipHash (serde_json's `preserve_order` map): the profile of a Pod with
/// 1,500 env vars showed that hashing as the engine's largest cost.
pub(crate) fn field<'v>(value: &'v Value, key: &str) -> Option<&'v Value> {
    let map = value.as_object()?;
    if map.len() <= 16 {
        map.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    } else {
        map.get(key)
    }
}

/// The variables `container` gets under `plan`.
pub fn for_container(container: &Value, plan: &Plan<'_>, env_from: &EnvFromKeys) -> ContainerEnv {
    let existing = Existing::read(container, env_from);
    // The endpoint's port follows the protocol the user chose; when they chose none,
    // tracehook sets gRPC so that endpoint and protocol agree whatever the SDK's default.
    let protocol_set = existing.is_set("OTEL_EXPORTER_OTLP_PROTOCOL");
    let http = existing
        .value("OTEL_EXPORTER_OTLP_PROTOCOL")
        .flatten()
        .is_some_and(|p| p.starts_with("http"));
    let port = if http { 4318 } else { 4317 };
    let endpoint = match plan.flavor {
        Flavor::OtelCollector => format!("http://localhost:{port}"),
        Flavor::JaegerAgent => format!("http://{}:{port}", plan.instance.collector_host()),
    };
    let mut attributes = format!(
        "k8s.namespace.name={},k8s.pod.name=$(POD_NAME)",
        plan.namespace
    );
    if let Some(w) = plan
        .workload
        .filter(|w| !w.kind.is_empty() && !w.name.is_empty())
    {
        attributes.push_str(&format!(
            ",k8s.{}.name={}",
            w.kind.to_ascii_lowercase(),
            w.name
        ));
    }

    let mut wanted: Vec<(&str, Value)> = vec![
        (
            "JAEGER_SERVICE_NAME",
            format!("{}.{}", plan.service, plan.namespace).into(),
        ),
        ("JAEGER_PROPAGATION", PROPAGATION.into()),
        ("OTEL_SERVICE_NAME", plan.service.into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.into()),
    ];
    if !protocol_set {
        wanted.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()));
    }
    // `$(POD_NAME)` expands only from a variable defined before it.
    if !existing.is_set("OTEL_RESOURCE_ATTRIBUTES") && !existing.is_set("POD_NAME") {
        wanted.push((
            "POD_NAME",
            json!({"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}}),
        ));
    }
    wanted.push(("OTEL_RESOURCE_ATTRIBUTES", attributes.into()));

    let mut out = ContainerEnv::default();
    let mut withheld = Vec::new();
    let mut withheld_by = None;
    for (name, value) in wanted {
        if existing.is_set(name) {
            continue;
        }
        if let Some(what) = existing.maybe_set_by(name) {
            withheld.push(name);
            withheld_by.get_or_insert(what);
            continue;
        }
        let key = if value.is_string() {
            "value"
        } else {
            "valueFrom"
        };
        out.add.push(super::sidecar::named(name, key, value));
        out.names.push(name.to_owned());
    }
    if let Some(what) = withheld_by {
        let container_name = container.get("name").and_then(Value::as_str).unwrap_or("?");
        out.warning = Some(format!(
            "container {container_name}: {} not set because {what} may define {}",
            withheld.join(", "),
            if withheld.len() == 1 { "it" } else { "them" }
        ));
    }
    out
}
