//! What app containers get: the SDK's environment variables, each only where the user
//! has not set it — directly, or through an `envFrom` source that does or may define
//! it (a Secret, or a ConfigMap whose keys are unknown) — and the service name.

use serde_json::{Value, json};

use super::patch::PatchBuilder;
use super::{EnvFromKeys, Flavor, InstanceRef, Workload, keys};

pub const PROPAGATION: &str = "jaeger,b3,w3c";

/// What every app container of one Pod would get.
#[derive(Debug)]
pub struct Plan<'a> {
    pub service: &'a str,
    pub namespace: &'a str,
    pub flavor: Flavor,
    pub instance: &'a InstanceRef,
    /// [`resource_attributes`] of the Pod.
    pub attributes: &'a [String],
}

/// The variables one container gets.
#[derive(Debug, Default, PartialEq)]
pub struct ContainerEnv {
    /// Appended to the container's `env`.
    pub add: Vec<Value>,
    /// Inserted before the user's `OTEL_RESOURCE_ATTRIBUTES`, at this index of `env`,
    /// so that the `$(VAR)` references merged into it expand.
    pub insert: Option<(usize, Vec<Value>)>,
    /// `env[index].value` replaced (the user's `OTEL_RESOURCE_ATTRIBUTES`, merged),
    /// the index counted after `insert`.
    pub replace: Option<(usize, Value)>,
    /// The names of the variables added or merged into.
    pub names: Vec<String>,
    /// Variables the user set that made tracehook leave something alone.
    pub kept: Vec<String>,
    /// Set when an `envFrom` source may define variables tracehook would add.
    pub warning: Option<String>,
}

impl ContainerEnv {
    /// Moves what app container `index` gets into `patch` (`env` is its current `env`).
    pub fn patch(&mut self, patch: &mut PatchBuilder, index: usize, env: Option<&Value>) {
        let index = index.to_string();
        if let Some((at, values)) = self.insert.take() {
            for (offset, value) in values.into_iter().enumerate() {
                let position = (at + offset).to_string();
                patch.add(&["spec", "containers", &index, "env", &position], value);
            }
        }
        if let Some((at, value)) = self.replace.take() {
            let position = at.to_string();
            patch.replace(
                &["spec", "containers", &index, "env", &position, "value"],
                value,
            );
        }
        patch.append(
            env,
            &["spec", "containers", &index, "env"],
            std::mem::take(&mut self.add),
        );
    }
}

/// Variables that say where spans go: a user who set one has chosen, and no OTLP
/// variable is added.
const OTLP_DESTINATION: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_TRACES_EXPORTER",
];
/// The wire protocol, most specific first. A protocol alone chooses how, not where:
/// tracehook adds the endpoint on the matching port, and never a protocol beside it.
const OTLP_PROTOCOL: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
];

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
    /// `env` entries by name, with their index.
    direct: Vec<(&'c str, usize, &'c Value)>,
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
                    .enumerate()
                    .filter_map(|(i, e)| Some((field(e, "name")?.as_str()?, i, e)))
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
            .find(|(n, _, _)| *n == name)
            .map(|(_, _, e)| field(e, "value").and_then(Value::as_str))
    }

    /// The index and entry of `name` in `env`, when set there.
    fn direct_entry(&self, name: &str) -> Option<(usize, &'c Value)> {
        self.direct
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, index, e)| (*index, *e))
    }

    /// Set directly or by a known envFrom key.
    fn is_set(&self, name: &str) -> bool {
        self.direct.iter().any(|(n, _, _)| *n == name)
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
    let mut out = ContainerEnv::default();
    let namespace = namespace_or_downward(plan.namespace);

    let mut wanted: Vec<(&str, Value)> = Vec::with_capacity(10);
    if plan.namespace.is_empty() && !existing.is_set("POD_NAMESPACE") {
        wanted.push(("POD_NAMESPACE", field_ref("metadata.namespace")));
    }
    wanted.extend([
        (
            "JAEGER_SERVICE_NAME",
            format!("{}.{namespace}", plan.service).into(),
        ),
        ("JAEGER_PROPAGATION", PROPAGATION.into()),
        ("OTEL_SERVICE_NAME", plan.service.into()),
    ]);
    wanted.extend(otlp(&existing, plan, &mut out.kept));

    let attributes = plan.attributes;
    let helpers = [
        ("POD_NAME", "metadata.name"),
        ("POD_UID", "metadata.uid"),
        ("NODE_NAME", "spec.nodeName"),
    ];
    let missing_helpers = || {
        helpers
            .iter()
            .filter(|(name, _)| !existing.is_set(name))
            .map(|(name, path)| (*name, field_ref(path)))
    };
    match existing.direct_entry("OTEL_RESOURCE_ATTRIBUTES") {
        None if existing.is_set("OTEL_RESOURCE_ATTRIBUTES") => {
            out.kept.push("OTEL_RESOURCE_ATTRIBUTES".to_owned());
        }
        None => {
            // `$(POD_NAME)` expands only from a variable defined before it.
            wanted.extend(missing_helpers());
            wanted.push(("OTEL_RESOURCE_ATTRIBUTES", attributes.join(",").into()));
        }
        Some((index, entry)) => {
            out.kept.push("OTEL_RESOURCE_ATTRIBUTES".to_owned());
            if let Some(user) = field(entry, "value").and_then(Value::as_str) {
                merge_attributes(&mut out, index, user, attributes, missing_helpers());
            }
        }
    }

    let mut withheld = Vec::new();
    let mut withheld_by = None;
    for (name, value) in wanted {
        if existing.is_set(name) {
            out.kept.push(name.to_owned());
            continue;
        }
        if let Some(what) = existing.maybe_set_by(name) {
            withheld.push(name);
            withheld_by.get_or_insert(what);
            continue;
        }
        out.add.push(entry(name, value));
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
    out.kept.sort();
    out.kept.dedup();
    out
}

/// The OTLP variables, unless the user chose where spans go.
fn otlp(
    existing: &Existing<'_>,
    plan: &Plan<'_>,
    kept: &mut Vec<String>,
) -> Vec<(&'static str, Value)> {
    let chosen: Vec<&str> = OTLP_DESTINATION
        .into_iter()
        .filter(|n| existing.is_set(n))
        .collect();
    if !chosen.is_empty() {
        kept.extend(chosen.iter().map(|n| (*n).to_owned()));
        return Vec::new();
    }
    let protocol = OTLP_PROTOCOL.into_iter().find(|n| existing.is_set(n));
    let http = match protocol {
        None => false,
        Some(name) => {
            kept.push(name.to_owned());
            match existing.value(name) {
                Some(Some(value)) => value.starts_with("http"),
                // Set by valueFrom or envFrom: the protocol is not known here, so the
                // port cannot be matched to it.
                _ => return Vec::new(),
            }
        }
    };
    let port = if http { 4318 } else { 4317 };
    let endpoint = match plan.flavor {
        Flavor::OtelCollector => format!("http://localhost:{port}"),
        Flavor::JaegerAgent => format!("http://{}:{port}", plan.instance.collector_host()),
    };
    let mut vars = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.into())];
    // Without a protocol the SDK's default applies, which differs between SDKs: gRPC
    // is set so that endpoint and protocol agree.
    if protocol.is_none() {
        vars.push(("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".into()));
    }
    vars
}

/// The Pod's namespace, or where it is unknown (offline) the namespace the Pod runs
/// in, from the downward API (`$(POD_NAMESPACE)`, expanded by the kubelet).
fn namespace_or_downward(namespace: &str) -> &str {
    if namespace.is_empty() {
        "$(POD_NAMESPACE)"
    } else {
        namespace
    }
}

/// tracehook's resource attributes (OpenTelemetry's Kubernetes semantic conventions),
/// as `key=value`, with `$(POD_NAME)`, `$(POD_UID)` and `$(NODE_NAME)` (and
/// `$(POD_NAMESPACE)` offline) for the kubelet to expand.
pub(crate) fn resource_attributes(namespace: &str, workload: Option<&Workload>) -> Vec<String> {
    let namespace = namespace_or_downward(namespace);
    let mut attributes = vec![
        format!("k8s.namespace.name={namespace}"),
        "k8s.pod.name=$(POD_NAME)".to_owned(),
        "k8s.pod.uid=$(POD_UID)".to_owned(),
        "k8s.node.name=$(NODE_NAME)".to_owned(),
    ];
    if let Some(w) = workload.filter(|w| !w.kind.is_empty() && !w.name.is_empty()) {
        attributes.push(format!(
            "k8s.{}.name={}",
            w.kind.to_ascii_lowercase(),
            w.name
        ));
    }
    attributes
}

/// The user's `OTEL_RESOURCE_ATTRIBUTES` (at `index`, a literal value) keeps every
/// attribute it sets; tracehook's others are added after them.
fn merge_attributes<'h>(
    out: &mut ContainerEnv,
    index: usize,
    user: &str,
    ours: &[String],
    helpers: impl Iterator<Item = (&'h str, Value)>,
) {
    let user_keys: Vec<&str> = user
        .split(',')
        .filter_map(|pair| Some(pair.split_once('=')?.0.trim()))
        .collect();
    let missing: Vec<&String> = ours
        .iter()
        .filter(|a| {
            let key = a.split_once('=').map_or(a.as_str(), |(k, _)| k);
            !user_keys.contains(&key)
        })
        .collect();
    if missing.is_empty() {
        return;
    }
    let needed: Vec<(&str, Value)> = helpers
        .filter(|(name, _)| missing.iter().any(|a| a.contains(&format!("$({name})"))))
        .collect();
    let mut merged = user.trim_end_matches(',').to_owned();
    for attribute in missing {
        if !merged.is_empty() {
            merged.push(',');
        }
        merged.push_str(attribute);
    }
    if !needed.is_empty() {
        out.names
            .extend(needed.iter().map(|(n, _)| (*n).to_owned()));
        let values: Vec<Value> = needed.into_iter().map(|(n, v)| entry(n, v)).collect();
        out.replace = Some((index + values.len(), merged.into()));
        out.insert = Some((index, values));
    } else {
        out.replace = Some((index, merged.into()));
    }
    out.names.push("OTEL_RESOURCE_ATTRIBUTES".to_owned());
}

/// A `valueFrom` of the downward API.
pub(crate) fn field_ref(path: &str) -> Value {
    json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}})
}

/// An env entry: `{"name": name, "value": value}` for a string, `valueFrom` otherwise.
pub(crate) fn entry(name: &str, value: Value) -> Value {
    let key = if value.is_string() {
        "value"
    } else {
        "valueFrom"
    };
    let mut entry = serde_json::Map::with_capacity(2);
    entry.insert("name".to_owned(), name.into());
    entry.insert(key.to_owned(), value);
    Value::Object(entry)
}
