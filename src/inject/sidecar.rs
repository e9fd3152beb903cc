//! The sidecar container of each flavor. It passes the Pod Security "restricted"
//! profile on its own (non-root, no privilege escalation, no capabilities, seccomp
//! RuntimeDefault, read-only root filesystem), whatever the Pod says.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde_json::{Map, Value, json};

use super::{Flavor, InstanceRef, Resources};

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

const fn tcp(name: &'static str, port: u16) -> Port {
    Port {
        name,
        port,
        udp: false,
    }
}

const fn udp(name: &'static str, port: u16) -> Port {
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
    pub resources: Resources,
    pub native: bool,
    pub instance: &'a InstanceRef,
    /// `--agent.tags` for the Jaeger agent, by key.
    pub agent_tags: BTreeMap<&'static str, String>,
    pub agent_options: &'a BTreeMap<String, String>,
}

/// The container to add (to `initContainers` when native, else to `containers`).
pub fn container(plan: &Plan<'_>) -> Value {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("HOST_IP", "status.hostIP"),
    ];
    let args = match plan.flavor {
        Flavor::JaegerAgent => jaeger_agent_args(plan),
        Flavor::OtelCollector => {
            env.push(named(
                "OTEL_CONFIG",
                "value",
                otel_config(plan.instance).into(),
            ));
            vec!["--config=env:OTEL_CONFIG".to_owned()]
        }
    };
    // Everything else depends on the flavor and the kind of sidecar alone.
    let mut container = template(plan.flavor, plan.native).clone();
    let parts = [
        ("image", plan.image.into()),
        ("args", args.into_iter().map(Value::String).collect()),
        ("env", Value::Array(env)),
        ("resources", resources(&plan.resources)),
    ];
    for (key, value) in parts {
        // Replaces the template's placeholder, keeping its place in the order.
        container.insert(key.to_owned(), value);
    }
    Value::Object(container)
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
        // The app containers start only once the startup probe passes, so the agent
        // is up before the first span; `restartPolicy: Always` lets Jobs complete.
        json!({
            "restartPolicy": "Always",
            "startupProbe": merge(&probe, json!({"periodSeconds": 1, "failureThreshold": 30}))
        })
    } else {
        json!({"readinessProbe": merge(&probe, json!({"periodSeconds": 5}))})
    };
    match (container, extra) {
        (Value::Object(mut c), Value::Object(e)) => {
            c.extend(e);
            c
        }
        _ => unreachable!("json! objects are objects"),
    }
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

/// The collector's configuration, inline: JSON is YAML, and no ConfigMap per Pod.
fn otel_config(instance: &InstanceRef) -> String {
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
        "processors": {"batch": {}},
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
                "processors": ["batch"],
                "exporters": ["otlp"]
            }}
        }
    })
    .to_string()
}

fn field_env(name: &str, field: &str) -> Value {
    named(
        name,
        "valueFrom",
        json!({"fieldRef": {"apiVersion": "v1", "fieldPath": field}}),
    )
}

/// `{"name": name, key: value}`, an env entry.
pub(crate) fn named(name: &str, key: &str, value: Value) -> Value {
    let mut entry = Map::with_capacity(2);
    entry.insert("name".to_owned(), name.into());
    entry.insert(key.to_owned(), value);
    Value::Object(entry)
}

fn resources(r: &Resources) -> Value {
    let pair = |cpu: &Option<String>, memory: &Option<String>| {
        let mut m = serde_json::Map::new();
        if let Some(cpu) = cpu {
            m.insert("cpu".into(), cpu.clone().into());
        }
        if let Some(memory) = memory {
            m.insert("memory".into(), memory.clone().into());
        }
        m
    };
    let mut out = serde_json::Map::new();
    let requests = pair(&r.cpu_request, &r.memory_request);
    if !requests.is_empty() {
        out.insert("requests".into(), requests.into());
    }
    let limits = pair(&r.cpu_limit, &r.memory_limit);
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
