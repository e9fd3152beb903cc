//! The sidecar container of each flavor. It passes the Pod Security "restricted"
//! profile on its own (non-root, no privilege escalation, no capabilities, seccomp
//! RuntimeDefault, read-only root filesystem), whatever the Pod says.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::env::{entry, field_ref};
use super::limits::SidecarResources;
use super::{Flavor, InstanceRef, Workload};

pub const JAEGER_AGENT_CONTAINER: &str = "jaeger-agent";
pub const OTEL_COLLECTOR_CONTAINER: &str = "otc-container";
/// Every name tracehook's sidecars use: a container with one of these names and no
/// marker is a hand-written sidecar, which is left alone.
pub const SIDECAR_NAMES: [&str; 2] = [JAEGER_AGENT_CONTAINER, OTEL_COLLECTOR_CONTAINER];

/// The user both images run as.
const SIDECAR_UID: u32 = 10001;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: &'static str,
    pub port: u16,
    pub udp: bool,
}

impl Port {
    pub fn protocol(&self) -> &'static str {
        if self.udp { "UDP" } else { "TCP" }
    }
}

pub const fn tcp(name: &'static str, port: u16) -> Port {
    Port {
        name,
        port,
        udp: false,
    }
}

pub const fn udp(name: &'static str, port: u16) -> Port {
    Port {
        name,
        port,
        udp: true,
    }
}

const JAEGER_AGENT_PORTS: [Port; 5] = [
    udp("zk-compact-trft", 5775),
    tcp("config-rest", 5778),
    udp("jg-compact-trft", 6831),
    udp("jg-binary-trft", 6832),
    tcp("admin-http", 14271),
];

const OTEL_COLLECTOR_PORTS: [Port; 5] = [
    tcp("otlp-grpc", 4317),
    tcp("otlp-http", 4318),
    udp("jg-compact-trft", 6831),
    udp("jg-binary-trft", 6832),
    tcp("health", 13133),
];

/// The ports the sidecar of `flavor` uses in the Pod's network namespace.
pub fn ports(flavor: Flavor) -> &'static [Port] {
    match flavor {
        Flavor::JaegerAgent => &JAEGER_AGENT_PORTS,
        Flavor::OtelCollector => &OTEL_COLLECTOR_PORTS,
    }
}

fn health_port(flavor: Flavor) -> &'static str {
    match flavor {
        Flavor::JaegerAgent => "admin-http",
        Flavor::OtelCollector => "health",
    }
}

/// Everything that shapes the sidecar container.
#[derive(Debug)]
pub struct Plan<'a> {
    pub flavor: Flavor,
    pub image: &'a str,
    pub resources: &'a SidecarResources,
    pub native: bool,
    pub instance: &'a InstanceRef,
    /// `--agent.tags` for the Jaeger agent, by key.
    pub agent_tags: BTreeMap<&'static str, String>,
    pub agent_options: &'a BTreeMap<String, String>,
    /// tracehook's resource attributes (`key=value`, `$(VAR)` expanded by the kubelet
    /// from the sidecar's own variables), which the collector adds to every span that
    /// lacks them: Jaeger-thrift clients (jaeger-client-go and its kin) and SDKs that
    /// build their own resource never read `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: &'a [String],
    /// The API token's mount that the ServiceAccount admission plugin gave the app
    /// containers. See [`token_mount`].
    pub token_mount: Option<&'a Value>,
    /// Port names the Pod's containers use already: the sidecar's ports of the same
    /// name go unnamed (a repeated name makes Services and probes that select ports by
    /// name pick one of them).
    pub taken_port_names: &'a [&'a str],
}

/// The container to add (to `initContainers` when native, else to `containers`).
pub fn container(plan: &Plan<'_>) -> Value {
    let mut env = vec![
        entry("POD_NAME", field_ref("metadata.name")),
        entry("HOST_IP", field_ref("status.hostIP")),
    ];
    if plan.agent_tags.get("pod.namespace").map(String::as_str) == Some(NAMESPACE_FROM_ENV) {
        env.push(entry("POD_NAMESPACE", field_ref("metadata.namespace")));
    }
    let args = match plan.flavor {
        Flavor::JaegerAgent => jaeger_agent_args(plan),
        Flavor::OtelCollector => {
            // Defined before OTEL_CONFIG, whose `$(POD_UID)` and `$(NODE_NAME)` they fill.
            env.push(entry("POD_UID", field_ref("metadata.uid")));
            env.push(entry("NODE_NAME", field_ref("spec.nodeName")));
            env.push(entry(
                "OTEL_CONFIG",
                otel_config(plan.instance, plan.resource_attributes, plan.resources).into(),
            ));
            vec!["--config=env:OTEL_CONFIG".to_owned()]
        }
    };
    env.extend(go_runtime_env(plan.resources));
    // Everything else depends on the flavor and the kind of sidecar alone.
    let mut container = template(plan.flavor, plan.native).clone();
    let parts = [
        ("image", plan.image.into()),
        ("args", args.into_iter().map(Value::String).collect()),
        ("env", Value::Array(env)),
        ("resources", resources(plan.resources)),
    ];
    for (key, value) in parts {
        // Replaces the template's placeholder, keeping its place in the order.
        container.insert(key.to_owned(), value);
    }
    if let Some(mount) = plan.token_mount {
        container.insert("volumeMounts".to_owned(), Value::Array(vec![mount.clone()]));
    }
    if ports(plan.flavor)
        .iter()
        .any(|p| plan.taken_port_names.contains(&p.name))
    {
        unname_ports(&mut container, plan);
    }
    Value::Object(container)
}

/// Where the ServiceAccount admission plugin mounts the API token in every container.
const TOKEN_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// The app containers' mount of the API token, if the ServiceAccount admission plugin
/// (which runs before webhooks) gave them one. The sidecar gets the same mount: the API
/// server runs that plugin again after a webhook's patch, and a sidecar without it would
/// get it then, a change that calls the webhook a second time (`reinvocationPolicy:
/// IfNeeded`) only to find the marker. The sidecar has no more than the plugin would give
/// it; the agent never uses the token.
pub fn token_mount<'a>(containers: &[&'a Value]) -> Option<&'a Value> {
    containers.iter().find_map(|c| {
        c.get("volumeMounts")?
            .as_array()?
            .iter()
            .find(|m| m.get("mountPath").and_then(Value::as_str) == Some(TOKEN_PATH))
    })
}

/// Drops the names the Pod uses already from the sidecar's ports; a probe that named
/// such a port uses its number.
fn unname_ports(container: &mut Map<String, Value>, plan: &Plan<'_>) {
    let taken = |name: &str| plan.taken_port_names.contains(&name);
    if let Some(Value::Array(list)) = container.get_mut("ports") {
        for port in list.iter_mut().filter_map(Value::as_object_mut) {
            if port.get("name").and_then(Value::as_str).is_some_and(taken) {
                port.remove("name");
            }
        }
    }
    let health = health_port(plan.flavor);
    if !taken(health) {
        return;
    }
    let number = ports(plan.flavor)
        .iter()
        .find(|p| p.name == health)
        .map_or(0, |p| p.port);
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(get) = container
            .get_mut(probe)
            .and_then(|p| p.get_mut("httpGet"))
            .and_then(Value::as_object_mut)
        {
            get.insert("port".to_owned(), number.into());
        }
    }
}

/// The sidecar with `null` where the Pod's own parts go, built once per flavor and
/// kind: building it per Pod (every map insert hashes its key) took a fifth of the
/// admission of a small Pod; cloning it takes a fraction of that.
fn template(flavor: Flavor, native: bool) -> &'static Map<String, Value> {
    static TEMPLATES: LazyLock<[Map<String, Value>; 4]> = LazyLock::new(|| {
        [
            (Flavor::JaegerAgent, false),
            (Flavor::JaegerAgent, true),
            (Flavor::OtelCollector, false),
            (Flavor::OtelCollector, true),
        ]
        .map(|(flavor, native)| build_template(flavor, native))
    });
    let flavor = match flavor {
        Flavor::JaegerAgent => 0,
        Flavor::OtelCollector => 2,
    };
    &TEMPLATES[flavor + usize::from(native)]
}

fn build_template(flavor: Flavor, native: bool) -> Map<String, Value> {
    let ports: Vec<Value> = ports(flavor)
        .iter()
        .map(|p| json!({"name": p.name, "containerPort": p.port, "protocol": p.protocol()}))
        .collect();
    let probe = json!({"httpGet": {"path": "/", "port": health_port(flavor)}});
    let container = json!({
        "name": flavor.container_name(),
        "image": null,
        "args": null,
        "env": null,
        "ports": ports,
        "resources": null,
        "livenessProbe": merge(&probe, json!({"periodSeconds": 10, "failureThreshold": 5})),
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": SIDECAR_UID,
            "runAsGroup": SIDECAR_UID,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}
        }
    });
    let extra = if native {
        // Probed every second until the agent answers (30 s before the kubelet
        // restarts it): the app containers start only once it passes, so the agent is
        // up before the first span; `restartPolicy: Always` lets Jobs complete.
        json!({
            "restartPolicy": "Always",
            "startupProbe": merge(&probe, json!({"periodSeconds": 1, "failureThreshold": 30}))
        })
    } else {
        // A plain sidecar starts beside the app and gates nothing: no readiness probe
        // (a tracing agent never takes the app out of its Service's endpoints, and the
        // probe's period delayed Ready by up to 5 s) and no startup probe (it would
        // hold Ready back to its next 1 s tick); the liveness probe restarts a stuck
        // agent (BENCHMARKS.md, time to Ready).
        json!({})
    };
    match (container, extra) {
        (Value::Object(mut c), Value::Object(e)) => {
            c.extend(e);
            c
        }
        _ => unreachable!("json! objects are objects"),
    }
}

/// The agent's `pod.namespace` tag when the namespace is not known (offline): read
/// from the sidecar's own `POD_NAMESPACE` at start-up.
const NAMESPACE_FROM_ENV: &str = "${POD_NAMESPACE:}";

/// `--agent.tags` of the Jaeger agent, by key, as the Jaeger operator sets them: the
/// single app container, the owning workload, the node's IP, the Pod and namespace.
pub fn agent_tags(
    containers: &[&Value],
    workload: Option<&Workload>,
    namespace: &str,
) -> BTreeMap<&'static str, String> {
    let mut tags = BTreeMap::new();
    if let [only] = containers
        && let Some(name) = only.get("name").and_then(Value::as_str)
    {
        tags.insert("container.name", name.to_owned());
    }
    if let Some(w) = workload.filter(|w| !w.name.is_empty()) {
        tags.insert("deployment.name", w.name.clone());
    }
    tags.insert("host.ip", "${HOST_IP:}".to_owned());
    tags.insert("pod.name", "${POD_NAME:}".to_owned());
    let namespace = if namespace.is_empty() {
        NAMESPACE_FROM_ENV
    } else {
        namespace
    };
    tags.insert("pod.namespace", namespace.to_owned());
    tags
}

fn jaeger_agent_args(plan: &Plan<'_>) -> Vec<String> {
    let tags = plan
        .agent_tags
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut options = BTreeMap::new();
    options.insert("agent.tags".to_owned(), tags);
    options.insert(
        "reporter.grpc.host-port".to_owned(),
        format!("dns:///{}:14250", plan.instance.collector_headless_host()),
    );
    // The instance's own options win over the defaults above.
    for (key, value) in plan.agent_options {
        options.insert(key.trim_start_matches('-').to_owned(), value.clone());
    }
    // A BTreeMap yields the arguments sorted.
    options
        .into_iter()
        .map(|(k, v)| format!("--{k}={v}"))
        .collect()
}

/// The share of the sidecar's memory limit its Go runtime aims to stay under
/// (`GOMEMLIMIT`), and the collector's `memory_limiter` its heap: the rest is for what
/// the Go runtime does not count (stacks of goroutines being created, the kernel's
/// page cache charged to the cgroup) before the limit's OOM kill.
const GO_MEMORY_SHARE: f64 = 0.8;

/// The sidecar's memory limit in bytes, if it has one (the user's, the default, or a
/// LimitRange's default: the fit has run).
fn memory_limit(resources: &SidecarResources) -> Option<f64> {
    resources
        .get("memory")
        .and_then(|pair| pair.limit.as_ref())
        .map(|limit| limit.value)
        .filter(|bytes| *bytes >= 1.0)
}

/// The Go runtime's settings from the sidecar's limits (both images are Go programs).
/// `GOMEMLIMIT`, in bytes: the garbage collector works harder as the heap nears it,
/// rather than the heap doubling past the cgroup's limit in a burst of spans.
/// `GOMAXPROCS` from the CPU limit through the downward API, which rounds it up to
/// whole cores: a Go runtime older than 1.25 sees every core of the node and is
/// throttled by the CFS quota at each of its garbage collections.
fn go_runtime_env(resources: &SidecarResources) -> Vec<Value> {
    let mut env = Vec::new();
    if let Some(bytes) = memory_limit(resources) {
        let target = (bytes * GO_MEMORY_SHARE).floor() as u64;
        env.push(entry("GOMEMLIMIT", target.to_string().into()));
    }
    if resources
        .get("cpu")
        .is_some_and(|pair| pair.limit.is_some())
    {
        let cores = json!({"resourceFieldRef": {"resource": "limits.cpu", "divisor": "1"}});
        env.push(entry("GOMAXPROCS", cores));
    }
    env
}

/// The collector's `memory_limiter`, first in the pipeline, for a sidecar with a memory
/// limit: above `limit_mib` less `spike_limit_mib` of heap it refuses new spans (OTLP
/// clients are told to retry later, UDP datagrams are dropped) instead of queueing them
/// until the kernel kills it. Without a memory limit there is nothing to protect.
fn memory_limiter(resources: &SidecarResources) -> Option<Value> {
    let mib = memory_limit(resources)? * GO_MEMORY_SHARE / (1024.0 * 1024.0);
    let limit_mib = mib.floor() as u64;
    // The collector requires a spike limit below the limit; a quarter of it, as the
    // collector's own documentation suggests for bursts.
    let spike_limit_mib = limit_mib / 4;
    (limit_mib >= 4).then(|| {
        json!({
            "check_interval": "1s",
            "limit_mib": limit_mib,
            "spike_limit_mib": spike_limit_mib
        })
    })
}

/// The collector's configuration, inline: JSON is YAML, and no ConfigMap per Pod.
fn otel_config(
    instance: &InstanceRef,
    resource_attributes: &[String],
    resources: &SidecarResources,
) -> String {
    // `insert`: an attribute the application set itself stays as it is.
    let attributes: Vec<Value> = resource_attributes
        .iter()
        .filter_map(|a| a.split_once('='))
        .map(|(key, value)| json!({"key": key, "value": value, "action": "insert"}))
        .collect();
    let mut processors = json!({"resource": {"attributes": attributes}, "batch": {}});
    let mut pipeline = vec!["resource", "batch"];
    if let Some(limiter) = memory_limiter(resources) {
        processors["memory_limiter"] = limiter;
        pipeline.insert(0, "memory_limiter");
    }
    json!({
        "receivers": {
            "otlp": {"protocols": {
                "grpc": {"endpoint": "localhost:4317"},
                "http": {"endpoint": "localhost:4318"}
            }},
            "jaeger": {"protocols": {
                "thrift_compact": {"endpoint": "localhost:6831"},
                "thrift_binary": {"endpoint": "localhost:6832"}
            }}
        },
        "processors": processors,
        "exporters": {"otlp": {
            "endpoint": format!("{}:4317", instance.collector_host()),
            "tls": {"insecure": true}
        }},
        // The kubelet probes the Pod IP, so the health endpoint listens on all.
        "extensions": {"health_check": {"endpoint": "0.0.0.0:13133"}},
        "service": {
            "extensions": ["health_check"],
            "pipelines": {"traces": {
                "receivers": ["otlp", "jaeger"],
                "processors": pipeline,
                "exporters": ["otlp"]
            }}
        }
    })
    .to_string()
}

fn resources(r: &SidecarResources) -> Value {
    let list = |limit: bool| -> Map<String, Value> {
        r.iter()
            .filter_map(|(name, pair)| {
                let amount = if limit { &pair.limit } else { &pair.request };
                Some((name.clone(), amount.as_ref()?.text.clone().into()))
            })
            .collect()
    };
    let mut out = Map::new();
    let requests = list(false);
    if !requests.is_empty() {
        out.insert("requests".into(), requests.into());
    }
    let limits = list(true);
    if !limits.is_empty() {
        out.insert("limits".into(), limits.into());
    }
    out.into()
}

fn merge(base: &Value, extra: Value) -> Value {
    let mut out = base.clone();
    if let (Value::Object(o), Value::Object(e)) = (&mut out, extra) {
        o.extend(e);
    }
    out
}
