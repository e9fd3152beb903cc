//! Where the decision is made: is injection requested, may this Pod be injected,
//! with what, and the patch that does it.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::instance::{self, Target};
use super::patch::PatchBuilder;
use super::{
    Decision, Flavor, Injection, Input, Resources, Skip, SkipReason, Workload, env, keys, limits,
    quantity, sidecar,
};

/// Decides what to do with one Pod and builds the patch. Pure: no I/O, no clock.
pub fn decide(input: &Input<'_>) -> Decision {
    let Some(pod) = input.pod.as_object() else {
        return Decision::Skipped(Skip::new(
            SkipReason::InvalidPod,
            "the Pod is not a JSON object",
        ));
    };
    let metadata = pod.get("metadata");
    let annotations = metadata.and_then(|m| m.get("annotations"));
    let labels = metadata.and_then(|m| m.get("labels"));
    let pod_annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);

    if pod_annotation(keys::STATUS).is_some() {
        return Decision::AlreadyInjected;
    }
    let derived;
    let workload = match input.workload {
        Some(w) => Some(w),
        None => {
            derived = workload_from_owner_references(metadata);
            derived.as_ref()
        }
    };
    let target = match requested(&pod_annotation, workload, input.namespace) {
        Ok(Some(target)) => target,
        Ok(None) => return Decision::NotRequested,
        Err(skip) => return Decision::Skipped(skip),
    };

    if labels
        .and_then(|l| l.get(keys::MANAGED_BY))
        .and_then(Value::as_str)
        == Some(keys::MANAGED_BY_VALUE)
    {
        return Decision::Ignored(SkipReason::BackendPod);
    }
    // The Jaeger operator never injects its own Pods; neither does tracehook.
    if labels
        .and_then(|l| l.get(keys::APP_NAME))
        .and_then(Value::as_str)
        == Some(keys::JAEGER_OPERATOR_APP)
    {
        return Decision::Ignored(SkipReason::JaegerOperatorPod);
    }
    let namespace = input.namespace.name.as_str();
    if !namespace.is_empty()
        && (keys::SYSTEM_NAMESPACES.contains(&namespace)
            || namespace == input.settings.own_namespace)
    {
        return skipped(
            SkipReason::ExcludedNamespace,
            format!("namespace {namespace} is never injected"),
        );
    }
    let spec = pod.get("spec").and_then(Value::as_object);
    let Some(spec) = spec else {
        return skipped(SkipReason::InvalidPod, "the Pod has no spec");
    };
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return skipped(
            SkipReason::HostNetwork,
            "the Pod uses hostNetwork: the agent's ports would clash on the node",
        );
    }
    if is_windows(spec) {
        return skipped(
            SkipReason::WindowsPod,
            "the Pod runs on Windows nodes; the sidecar images are Linux only",
        );
    }
    let containers = match container_list(spec, "containers") {
        Ok(Some(c)) if !c.is_empty() => c,
        Ok(_) => return skipped(SkipReason::InvalidPod, "the Pod has no containers"),
        Err(skip) => return Decision::Skipped(skip),
    };
    let init_containers = match container_list(spec, "initContainers") {
        Ok(c) => c.unwrap_or_default(),
        Err(skip) => return Decision::Skipped(skip),
    };
    if let Some(name) = containers
        .iter()
        .chain(&init_containers)
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .find(|n| sidecar::SIDECAR_NAMES.contains(n))
    {
        return skipped(
            SkipReason::ExistingSidecar,
            format!("the Pod already has a container named {name} that tracehook did not add"),
        );
    }

    let (instance, instance_sidecar) = match instance::resolve(&target, namespace, input.instances)
    {
        Ok(found) => found,
        Err(skip) => return Decision::Skipped(skip),
    };

    let flavor = match pod_annotation(keys::SIDECAR_FLAVOR) {
        Some(value) => match Flavor::parse(value) {
            Some(f) => f,
            None => {
                return invalid_annotation(
                    keys::SIDECAR_FLAVOR,
                    value,
                    "jaeger-agent or otel-collector",
                );
            }
        },
        None => instance_sidecar
            .flavor
            .unwrap_or(input.settings.default_flavor),
    };
    let native = match pod_annotation(keys::NATIVE_SIDECAR) {
        None => input.settings.native_sidecars,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) if v.eq_ignore_ascii_case("true") => input.settings.native_sidecars,
        Some(v) => return invalid_annotation(keys::NATIVE_SIDECAR, v, "true or false"),
    };
    let default_image = match flavor {
        Flavor::JaegerAgent => &input.settings.jaeger_agent_image,
        Flavor::OtelCollector => &input.settings.otel_collector_image,
    };
    let image = match pod_annotation(keys::SIDECAR_IMAGE) {
        Some(v) if is_image(v) => v,
        Some(v) => return invalid_annotation(keys::SIDECAR_IMAGE, v, "an image reference"),
        None => instance_sidecar.image.as_deref().unwrap_or(default_image),
    };
    if let Some(clash) = port_clash(flavor, containers.iter().chain(&init_containers)) {
        return skipped(SkipReason::PortClash, clash);
    }
    // What runs beside the sidecar: the app containers and the sidecars already there.
    let running: Vec<&Value> =
        containers
            .iter()
            .copied()
            .chain(init_containers.iter().copied().filter(|c| {
                env::field(c, "restartPolicy").and_then(Value::as_str) == Some("Always")
            }))
            .collect();
    let resources = match sidecar_resources(
        &input.settings.default_resources,
        &instance_sidecar.resources,
        &pod_annotation,
    )
    .and_then(|r| limits::fit(r, &input.namespace.policy, spec, &running))
    {
        Ok(r) => r,
        Err(skip) => return Decision::Skipped(skip),
    };

    let first_name = containers[0]
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("app");
    let service = env::service_name(metadata, workload, first_name);
    let env_plan = env::Plan {
        service,
        namespace,
        flavor,
        instance: &instance,
        workload,
    };

    let mut agent_tags = BTreeMap::new();
    if let [only] = containers.as_slice()
        && let Some(name) = only.get("name").and_then(Value::as_str)
    {
        agent_tags.insert("container.name", name.to_owned());
    }
    if let Some(w) = workload.filter(|w| !w.name.is_empty()) {
        agent_tags.insert("deployment.name", w.name.clone());
    }
    agent_tags.insert("host.ip", "${HOST_IP:}".to_owned());
    agent_tags.insert("pod.name", "${POD_NAME:}".to_owned());
    agent_tags.insert(
        "pod.namespace",
        if namespace.is_empty() {
            "${POD_NAMESPACE:}".to_owned()
        } else {
            namespace.to_owned()
        },
    );
    let taken_port_names: Vec<&str> = containers
        .iter()
        .chain(&init_containers)
        .filter_map(|c| env::field(c, "ports")?.as_array())
        .flatten()
        .filter_map(|p| env::field(p, "name")?.as_str())
        .collect();
    let container = sidecar::container(&sidecar::Plan {
        flavor,
        image,
        resources: &resources,
        native,
        instance: &instance,
        agent_tags,
        agent_options: &instance_sidecar.agent_options,
        taken_port_names: &taken_port_names,
    });

    let mut patch = PatchBuilder::default();
    let mut warnings = Vec::new();
    let mut env_added = Map::new();
    let mut env_kept = Map::new();
    let mut kept = Vec::new();
    for (index, c) in containers.iter().enumerate() {
        let added = env::for_container(c, &env_plan, input.env_from);
        let index = index.to_string();
        if let Some((at, values)) = added.insert {
            for (offset, value) in values.into_iter().enumerate() {
                let position = (at + offset).to_string();
                patch.add(&["spec", "containers", &index, "env", &position], value);
            }
        }
        if let Some((at, value)) = added.replace {
            let position = at.to_string();
            patch.replace(
                &["spec", "containers", &index, "env", &position, "value"],
                value,
            );
        }
        patch.append(
            env::field(c, "env"),
            &["spec", "containers", &index, "env"],
            added.add,
        );
        warnings.extend(added.warning);
        let name = env::field(c, "name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if !added.names.is_empty() {
            let names = added.names.into_iter().map(Value::String).collect();
            env_added.insert(name.to_owned(), names);
        }
        if !added.kept.is_empty() {
            kept.extend(added.kept.iter().map(|v| format!("{name}: {v}")));
            let list = added.kept.into_iter().map(Value::String).collect();
            env_kept.insert(name.to_owned(), list);
        }
    }
    let (list, current) = if native {
        ("initContainers", spec.get("initContainers"))
    } else {
        ("containers", spec.get("containers"))
    };
    patch.append(current, &["spec", list], vec![container]);

    let mut status = Map::new();
    status.insert("instance".to_owned(), instance.to_string().into());
    status.insert("flavor".to_owned(), flavor.as_str().into());
    status.insert("containers".to_owned(), json!([flavor.container_name()]));
    status.insert("native".to_owned(), native.into());
    status.insert("env".to_owned(), Value::Object(env_added));
    if !env_kept.is_empty() {
        // The user's own settings tracehook left alone (where spans go, resources).
        status.insert("kept".to_owned(), Value::Object(env_kept));
    }
    status.insert("version".to_owned(), crate::VERSION.into());
    let status = serde_json::to_string(&status).expect("a map of strings always serializes");
    let label = marker_label(&instance.namespace, &instance.name);
    match metadata {
        Some(Value::Object(m)) => {
            patch.insert(
                m.get("annotations"),
                &["metadata", "annotations"],
                keys::STATUS,
                Value::String(status),
            );
            patch.insert(
                m.get("labels"),
                &["metadata", "labels"],
                keys::INJECTED_LABEL,
                Value::String(label),
            );
        }
        _ => patch.add(
            &["metadata"],
            json!({
                "annotations": {keys::STATUS: status},
                "labels": {keys::INJECTED_LABEL: label},
            }),
        ),
    }

    Decision::Injected(Injection {
        patch: patch.build(),
        instance,
        flavor,
        warnings,
        kept,
    })
}

fn skipped(reason: SkipReason, message: impl Into<String>) -> Decision {
    Decision::Skipped(Skip::new(reason, message))
}

fn invalid_annotation(key: &str, value: &str, expected: &str) -> Decision {
    skipped(
        SkipReason::InvalidAnnotation,
        format!("annotation {key} has the invalid value {value:?}: expected {expected}"),
    )
}

/// The injection request by precedence, most specific first: Pod, owning workload,
/// Namespace annotation, Namespace label. `None` when nothing asks, or the most
/// specific level that speaks says `false`/`disabled`.
fn requested<'a>(
    pod_annotation: &dyn Fn(&str) -> Option<&'a str>,
    workload: Option<&Workload>,
    namespace: &super::NamespaceMeta,
) -> Result<Option<Target>, Skip> {
    let levels: [(&str, Option<&str>); 3] = [
        (
            "the Pod",
            pod_annotation(keys::INJECT).or_else(|| pod_annotation(keys::JAEGER_OPERATOR_INJECT)),
        ),
        (
            "the owning workload",
            workload.and_then(|w| annotation_of(&w.annotations)),
        ),
        ("the Namespace", annotation_of(&namespace.annotations)),
    ];
    for (place, value) in levels {
        if let Some(value) = value {
            return parse_request(value).map_err(|()| {
                Skip::new(
                    SkipReason::InvalidAnnotation,
                    format!(
                        "the injection annotation on {place} has the invalid value {value:?}: expected true, false, <instance> or <namespace>/<instance>"
                    ),
                )
            });
        }
    }
    Ok(
        match namespace
            .labels
            .get(keys::INJECTION_LABEL)
            .map(String::as_str)
        {
            Some("enabled") => Some(Target::Any),
            _ => None,
        },
    )
}

fn annotation_of(map: &BTreeMap<String, String>) -> Option<&str> {
    map.get(keys::INJECT)
        .or_else(|| map.get(keys::JAEGER_OPERATOR_INJECT))
        .map(String::as_str)
}

fn parse_request(value: &str) -> Result<Option<Target>, ()> {
    let value = value.trim();
    if value.eq_ignore_ascii_case("true") {
        Ok(Some(Target::Any))
    } else if value.eq_ignore_ascii_case("false") {
        Ok(None)
    } else {
        Target::parse(value).map(Some).ok_or(())
    }
}

/// The container list `key` of the spec: `Ok(None)` if absent, an error if it is not
/// a list of objects with names.
fn container_list<'a>(
    spec: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<Vec<&'a Value>>, Skip> {
    let Some(list) = spec.get(key) else {
        return Ok(None);
    };
    if list.is_null() {
        return Ok(None);
    }
    let invalid = || {
        Skip::new(
            SkipReason::InvalidPod,
            format!("spec.{key} is not a list of named containers"),
        )
    };
    let items = list.as_array().ok_or_else(invalid)?;
    items
        .iter()
        .map(|c| {
            c.get("name")
                .and_then(Value::as_str)
                .map(|_| c)
                .ok_or_else(invalid)
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn is_windows(spec: &Map<String, Value>) -> bool {
    let os = spec
        .get("os")
        .and_then(|o| o.get("name"))
        .and_then(Value::as_str);
    let selector = spec
        .get("nodeSelector")
        .and_then(|s| s.get("kubernetes.io/os"))
        .and_then(Value::as_str);
    os == Some("windows") || selector == Some("windows")
}

fn is_image(value: &str) -> bool {
    !value.is_empty() && value.len() <= 1024 && !value.chars().any(char::is_whitespace)
}

/// Defaults, then the instance's `spec.sidecar.resources`, then the Pod's annotations.
/// A request above a limit that only came from the defaults raises that limit; a
/// default request above a limit the user set is lowered to it; a request the user
/// set above a limit the user set is an error (the API server would reject the Pod).
fn sidecar_resources<'a>(
    defaults: &Resources,
    instance: &Resources,
    pod_annotation: &dyn Fn(&str) -> Option<&'a str>,
) -> Result<limits::SidecarResources, Skip> {
    let from_pod = |key| pod_annotation(key).map(str::to_owned);
    let pod = Resources {
        cpu_request: from_pod(keys::SIDECAR_CPU_REQUEST),
        memory_request: from_pod(keys::SIDECAR_MEMORY_REQUEST),
        cpu_limit: from_pod(keys::SIDECAR_CPU_LIMIT),
        memory_limit: from_pod(keys::SIDECAR_MEMORY_LIMIT),
    };
    let chosen = instance.overlay(&pod);
    let mut out = defaults.overlay(&chosen);
    let fields = [
        (keys::SIDECAR_CPU_REQUEST, &out.cpu_request),
        (keys::SIDECAR_MEMORY_REQUEST, &out.memory_request),
        (keys::SIDECAR_CPU_LIMIT, &out.cpu_limit),
        (keys::SIDECAR_MEMORY_LIMIT, &out.memory_limit),
    ];
    for (key, value) in fields {
        if let Some(v) = value
            && quantity::parse(v).is_none_or(|q| q < 0.0)
        {
            return Err(Skip::new(
                SkipReason::InvalidAnnotation,
                format!("{key} has the invalid quantity {v:?}"),
            ));
        }
    }
    let value = |q: &Option<String>| q.as_deref().and_then(quantity::parse);
    for (what, request, limit, user_request, user_limit) in [
        (
            "cpu",
            &mut out.cpu_request,
            &mut out.cpu_limit,
            &chosen.cpu_request,
            &chosen.cpu_limit,
        ),
        (
            "memory",
            &mut out.memory_request,
            &mut out.memory_limit,
            &chosen.memory_request,
            &chosen.memory_limit,
        ),
    ] {
        if let (Some(r), Some(l)) = (value(request), value(limit))
            && r > l
        {
            match (user_request.is_some(), user_limit.is_some()) {
                (true, true) => {
                    return Err(Skip::new(
                        SkipReason::InvalidAnnotation,
                        format!(
                            "the sidecar's {what} request {} is above its limit {}",
                            request.as_deref().unwrap_or_default(),
                            limit.as_deref().unwrap_or_default()
                        ),
                    ));
                }
                // Only the default request is in the way of the user's limit.
                (false, true) => *request = limit.clone(),
                _ => *limit = request.clone(),
            }
        }
    }
    let pair =
        |request: &Option<String>, limit: &Option<String>, user_request, user_limit| limits::Pair {
            request: request.as_deref().and_then(limits::Amount::parse),
            limit: limit.as_deref().and_then(limits::Amount::parse),
            user_request,
            user_limit,
        };
    Ok([
        (
            "cpu".to_owned(),
            pair(
                &out.cpu_request,
                &out.cpu_limit,
                chosen.cpu_request.is_some(),
                chosen.cpu_limit.is_some(),
            ),
        ),
        (
            "memory".to_owned(),
            pair(
                &out.memory_request,
                &out.memory_limit,
                chosen.memory_request.is_some(),
                chosen.memory_limit.is_some(),
            ),
        ),
    ]
    .into())
}

/// A port of the sidecar that a container of the Pod declares too.
fn port_clash<'a>(
    flavor: Flavor,
    containers: impl Iterator<Item = &'a &'a Value>,
) -> Option<String> {
    let ours = sidecar::ports(flavor);
    for c in containers {
        for port in c
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(number) = port.get("containerPort").and_then(Value::as_u64) else {
                continue;
            };
            let protocol = port
                .get("protocol")
                .and_then(Value::as_str)
                .unwrap_or("TCP");
            if let Some(p) = ours
                .iter()
                .find(|p| u64::from(p.port) == number && p.protocol() == protocol)
            {
                let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
                return Some(format!(
                    "container {name} uses port {number}/{protocol}, which the {flavor} sidecar needs ({})",
                    p.name
                ));
            }
        }
    }
    None
}

/// Without a cache, the workload is read from the controller ownerReference; a
/// ReplicaSet named `<deployment>-<pod-template-hash>` stands for its Deployment.
pub fn workload_from_owner_references(metadata: Option<&Value>) -> Option<Workload> {
    let refs = metadata?.get("ownerReferences")?.as_array()?;
    let owner = refs
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
        .or_else(|| refs.first())?;
    let kind = owner.get("kind")?.as_str()?;
    let name = owner.get("name")?.as_str()?;
    let hash = metadata?
        .get("labels")
        .and_then(|l| l.get("pod-template-hash"))
        .and_then(Value::as_str);
    let deployment = hash.and_then(|h| {
        name.strip_suffix(h)
            .and_then(|rest| rest.strip_suffix('-'))
            .filter(|_| kind == "ReplicaSet")
    });
    Some(match deployment {
        Some(d) => Workload {
            kind: "Deployment".to_owned(),
            name: d.to_owned(),
            annotations: BTreeMap::new(),
        },
        None => Workload {
            kind: kind.to_owned(),
            name: name.to_owned(),
            annotations: BTreeMap::new(),
        },
    })
}

/// `<namespace>.<instance>`, shortened with a hash to a label value's 63 characters.
pub fn marker_label(namespace: &str, name: &str) -> String {
    // An instance in the namespace the output is applied to (offline, not known).
    let full = if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    };
    if full.len() <= 63 {
        return full;
    }
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let hash = full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    // Cut on a character boundary: `inject` takes the namespace from the manifest,
    // which need not be ASCII.
    let head = full[..full.floor_char_boundary(54)].trim_end_matches(['-', '.']);
    format!("{head}-{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_label_fits_a_label_value() {
        let long = "a".repeat(63);
        let label = marker_label(&long, &long);
        assert!(label.len() <= 63, "{label}");
        assert_ne!(label, marker_label(&long, &"b".repeat(63)));
        assert_eq!(marker_label("obs", "test"), "obs.test");
    }

    #[test]
    fn marker_label_cuts_multi_byte_names_on_a_character_boundary() {
        let label = marker_label(&format!("a{}", "名".repeat(30)), "test");
        assert!(label.len() <= 63, "{label}");
        assert!(label.starts_with("a名"), "{label}");
    }

    #[test]
    fn user_limit_below_the_default_request_lowers_the_request() {
        let defaults = crate::inject::Settings::default().default_resources;
        let pod = |key: &str| (key == keys::SIDECAR_MEMORY_LIMIT).then_some("16Mi");
        let r = sidecar_resources(&defaults, &Resources::default(), &pod).expect("valid");
        let memory = &r["memory"];
        assert_eq!(
            memory.request.as_ref().map(|a| a.text.as_str()),
            Some("16Mi")
        );
        assert_eq!(memory.limit.as_ref().map(|a| a.text.as_str()), Some("16Mi"));
        assert!(memory.user_limit && !memory.user_request);

        let both = |key: &str| match key {
            keys::SIDECAR_MEMORY_LIMIT => Some("16Mi"),
            keys::SIDECAR_MEMORY_REQUEST => Some("64Mi"),
            _ => None,
        };
        let err = sidecar_resources(&defaults, &Resources::default(), &both).expect_err("above");
        assert_eq!(err.reason, SkipReason::InvalidAnnotation);
    }

    #[test]
    fn replica_set_owner_stands_for_its_deployment() {
        let meta = json!({
            "labels": {"pod-template-hash": "5d8f7c9b4"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": "hotrod-5d8f7c9b4", "controller": true}]
        });
        let w = workload_from_owner_references(Some(&meta)).expect("owner");
        assert_eq!((w.kind.as_str(), w.name.as_str()), ("Deployment", "hotrod"));
    }
}
