//! Where the decision is made: is injection requested, may this Pod be injected,
//! with what, and the patch that does it.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::instance::{self, Target};
use super::patch::PatchBuilder;
use super::{
    Decision, Flavor, Injection, Input, InstanceRef, Resources, SidecarSettings, Skip, SkipReason,
    Workload, env, keys, limits, marker, quantity, sidecar,
};

/// Decides what to do with one Pod and builds the patch. Pure: no I/O, no clock.
///
/// In three steps, each of which may end with a decision: is injection requested
/// ([`request`]), may this Pod be injected ([`eligible`]), with what ([`choose`]); then
/// the patch that does it ([`build`]).
pub fn decide(input: &Input<'_>) -> Decision {
    let steps = || -> Result<Decision, Early> {
        let (target, workload) = request(input)?;
        let pod = eligible(input)?;
        let choice = choose(input, &pod, &target)?;
        Ok(build(input, &pod, workload.as_deref(), &choice))
    };
    steps().unwrap_or_else(Early::into_decision)
}

/// A decision made before anything is built (every one but `Injected`).
enum Early {
    NotRequested,
    AlreadyInjected,
    Ignored(SkipReason),
    Skipped(Skip),
}

impl Early {
    fn into_decision(self) -> Decision {
        match self {
            Early::NotRequested => Decision::NotRequested,
            Early::AlreadyInjected => Decision::AlreadyInjected,
            Early::Ignored(reason) => Decision::Ignored(reason),
            Early::Skipped(skip) => Decision::Skipped(skip),
        }
    }
}

/// The parts of the Pod the decision reads.
struct PodView<'a> {
    metadata: Option<&'a Value>,
    spec: &'a Map<String, Value>,
    containers: Vec<&'a Value>,
    init_containers: Vec<&'a Value>,
}

impl<'a> PodView<'a> {
    fn annotation(&self, key: &str) -> Option<&'a str> {
        annotation(self.metadata, key)
    }

    /// App containers, then init containers.
    fn all_containers(&self) -> impl Iterator<Item = &'a Value> + '_ {
        self.containers.iter().chain(&self.init_containers).copied()
    }
}

fn annotation<'a>(metadata: Option<&'a Value>, key: &str) -> Option<&'a str> {
    metadata?.get("annotations")?.get(key)?.as_str()
}

/// What the chosen sidecar is.
struct Choice<'a> {
    instance: InstanceRef,
    settings: &'a SidecarSettings,
    flavor: Flavor,
    native: bool,
    image: &'a str,
    resources: limits::SidecarResources,
}

/// Step 1: the injection request by precedence, and the Pods tracehook never touches.
fn request<'a>(input: &Input<'a>) -> Result<(Target, Option<Cow<'a, Workload>>), Early> {
    let pod = input.pod.as_object().ok_or_else(|| {
        Early::Skipped(Skip::new(
            SkipReason::InvalidPod,
            "the Pod is not a JSON object",
        ))
    })?;
    let metadata = pod.get("metadata");
    if annotation(metadata, keys::STATUS).is_some() {
        return Err(Early::AlreadyInjected);
    }
    let workload = match input.workload {
        Some(w) => Some(Cow::Borrowed(w)),
        None => workload_from_owner_references(metadata).map(Cow::Owned),
    };
    let target = requested(metadata, workload.as_deref(), input.namespace)
        .map_err(Early::Skipped)?
        .ok_or(Early::NotRequested)?;
    let label = |key: &str| metadata?.get("labels")?.get(key)?.as_str();
    if label(keys::MANAGED_BY) == Some(keys::MANAGED_BY_VALUE) {
        return Err(Early::Ignored(SkipReason::BackendPod));
    }
    // The Jaeger operator never injects its own Pods; neither does tracehook.
    if label(keys::APP_NAME) == Some(keys::JAEGER_OPERATOR_APP) {
        return Err(Early::Ignored(SkipReason::JaegerOperatorPod));
    }
    Ok((target, workload))
}

/// Step 2: skips that do not depend on what would be injected.
fn eligible<'a>(input: &Input<'a>) -> Result<PodView<'a>, Early> {
    let namespace = input.namespace.name.as_str();
    if !namespace.is_empty()
        && (keys::SYSTEM_NAMESPACES.contains(&namespace)
            || namespace == input.settings.own_namespace)
    {
        return Err(skipped(
            SkipReason::ExcludedNamespace,
            format!("namespace {namespace} is never injected"),
        ));
    }
    let metadata = input.pod.get("metadata");
    let spec = input
        .pod
        .get("spec")
        .and_then(Value::as_object)
        .ok_or_else(|| skipped(SkipReason::InvalidPod, "the Pod has no spec"))?;
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(skipped(
            SkipReason::HostNetwork,
            "the Pod uses hostNetwork: the agent's ports would clash on the node",
        ));
    }
    if is_windows(spec) {
        return Err(skipped(
            SkipReason::WindowsPod,
            "the Pod runs on Windows nodes; the sidecar images are Linux only",
        ));
    }
    let containers = match container_list(spec, "containers").map_err(Early::Skipped)? {
        Some(c) if !c.is_empty() => c,
        _ => return Err(skipped(SkipReason::InvalidPod, "the Pod has no containers")),
    };
    let init_containers = container_list(spec, "initContainers")
        .map_err(Early::Skipped)?
        .unwrap_or_default();
    let pod = PodView {
        metadata,
        spec,
        containers,
        init_containers,
    };
    if let Some(name) = pod
        .all_containers()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .find(|n| sidecar::SIDECAR_NAMES.contains(n))
    {
        return Err(skipped(
            SkipReason::ExistingSidecar,
            format!("the Pod already has a container named {name} that tracehook did not add"),
        ));
    }
    Ok(pod)
}

/// Step 3: the instance, the flavor, the kind of sidecar, its image and resources.
fn choose<'a>(input: &Input<'a>, pod: &PodView<'a>, target: &Target) -> Result<Choice<'a>, Early> {
    let (instance, settings) = instance::resolve(target, &input.namespace.name, input.instances)
        .map_err(Early::Skipped)?;
    let flavor = match pod.annotation(keys::SIDECAR_FLAVOR) {
        Some(value) => Flavor::parse(value).ok_or_else(|| {
            invalid_annotation(
                keys::SIDECAR_FLAVOR,
                value,
                "jaeger-agent or otel-collector",
            )
        })?,
        None => settings.flavor.unwrap_or(input.settings.default_flavor),
    };
    let native = match pod.annotation(keys::NATIVE_SIDECAR) {
        None => input.settings.native_sidecars,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(v) if v.eq_ignore_ascii_case("true") => input.settings.native_sidecars,
        Some(v) => return Err(invalid_annotation(keys::NATIVE_SIDECAR, v, "true or false")),
    };
    let default_image = match flavor {
        Flavor::JaegerAgent => &input.settings.jaeger_agent_image,
        Flavor::OtelCollector => &input.settings.otel_collector_image,
    };
    let image = match pod.annotation(keys::SIDECAR_IMAGE) {
        Some(v) if is_image(v) => v,
        Some(v) => {
            return Err(invalid_annotation(
                keys::SIDECAR_IMAGE,
                v,
                "an image reference",
            ));
        }
        None => settings.image.as_deref().unwrap_or(default_image),
    };
    if let Some(clash) = port_clash(flavor, pod.all_containers()) {
        return Err(skipped(SkipReason::PortClash, clash));
    }
    // What runs beside the sidecar: the app containers and the sidecars already there.
    let running: Vec<&Value> =
        pod.containers
            .iter()
            .copied()
            .chain(pod.init_containers.iter().copied().filter(|c| {
                env::field(c, "restartPolicy").and_then(Value::as_str) == Some("Always")
            }))
            .collect();
    let pod_annotation = |key: &str| pod.annotation(key);
    let resources = sidecar_resources(
        &input.settings.default_resources,
        &settings.resources,
        &pod_annotation,
    )
    .and_then(|r| limits::fit(r, &input.namespace.policy, pod.spec, &running))
    .map_err(Early::Skipped)?;
    Ok(Choice {
        instance,
        settings,
        flavor,
        native,
        image,
        resources,
    })
}

/// Step 4: the patch: each app container's variables, the sidecar, the marker.
fn build(
    input: &Input<'_>,
    pod: &PodView<'_>,
    workload: Option<&Workload>,
    choice: &Choice<'_>,
) -> Decision {
    let namespace = input.namespace.name.as_str();
    let first_name = pod.containers[0]
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("app");
    let resource_attributes = env::resource_attributes(namespace, workload);
    let env_plan = env::Plan {
        service: env::service_name(pod.metadata, workload, first_name),
        namespace,
        flavor: choice.flavor,
        instance: &choice.instance,
        attributes: &resource_attributes,
    };
    let taken_port_names: Vec<&str> = pod
        .all_containers()
        .filter_map(|c| env::field(c, "ports")?.as_array())
        .flatten()
        .filter_map(|p| env::field(p, "name")?.as_str())
        .collect();
    let container = sidecar::container(&sidecar::Plan {
        flavor: choice.flavor,
        image: choice.image,
        resources: &choice.resources,
        native: choice.native,
        instance: &choice.instance,
        agent_tags: sidecar::agent_tags(&pod.containers, workload, namespace),
        agent_options: &choice.settings.agent_options,
        resource_attributes: &resource_attributes,
        token_mount: sidecar::token_mount(&pod.containers),
        taken_port_names: &taken_port_names,
    });

    let mut patch = PatchBuilder::default();
    let mut warnings = Vec::new();
    let mut marker = marker::Marker::new(&choice.instance, choice.flavor, choice.native);
    for (index, c) in pod.containers.iter().enumerate() {
        let mut added = env::for_container(c, &env_plan, input.env_from);
        added.patch(&mut patch, index, env::field(c, "env"));
        warnings.extend(added.warning);
        let name = env::field(c, "name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        marker.container(name, added.names, added.kept);
    }
    let (list, current) = if choice.native {
        ("initContainers", pod.spec.get("initContainers"))
    } else {
        ("containers", pod.spec.get("containers"))
    };
    patch.append(current, &["spec", list], vec![container]);
    let kept = marker.kept_lines();
    marker.patch(&mut patch, pod.metadata);

    Decision::Injected(Injection {
        patch: patch.build(),
        instance: choice.instance.clone(),
        flavor: choice.flavor,
        warnings,
        kept,
    })
}

fn skipped(reason: SkipReason, message: impl Into<String>) -> Early {
    Early::Skipped(Skip::new(reason, message))
}

fn invalid_annotation(key: &str, value: &str, expected: &str) -> Early {
    skipped(
        SkipReason::InvalidAnnotation,
        format!("annotation {key} has the invalid value {value:?}: expected {expected}"),
    )
}

/// Where an injection request was found: the most specific level that speaks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub level: Level,
    /// The annotation or label key.
    pub key: &'static str,
    pub value: String,
}

/// The levels an injection request is read from, most specific first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Pod,
    Workload,
    NamespaceAnnotation,
    NamespaceLabel,
}

impl Level {
    /// How a sentence names it.
    pub fn place(self) -> &'static str {
        match self {
            Level::Pod => "the Pod",
            Level::Workload => "the owning workload",
            Level::NamespaceAnnotation => "the Namespace",
            Level::NamespaceLabel => "the Namespace label",
        }
    }
}

/// The level that decides whether injection is requested, by precedence (Pod, owning
/// workload, Namespace annotation, Namespace label), or `None` when none speaks. What
/// it says is read by [`decide`]; `tracehook explain` shows it.
pub fn origin(
    pod_metadata: Option<&Value>,
    workload: Option<&Workload>,
    namespace: &super::NamespaceMeta,
) -> Option<Origin> {
    let found = |level, map_get: &dyn Fn(&str) -> Option<String>| {
        [keys::INJECT, keys::JAEGER_OPERATOR_INJECT]
            .into_iter()
            .find_map(|key| {
                Some(Origin {
                    level,
                    key,
                    value: map_get(key)?,
                })
            })
    };
    found(Level::Pod, &|k| {
        annotation(pod_metadata, k).map(str::to_owned)
    })
    .or_else(|| {
        let w = workload?;
        found(Level::Workload, &|k| w.annotations.get(k).cloned())
    })
    .or_else(|| {
        found(Level::NamespaceAnnotation, &|k| {
            namespace.annotations.get(k).cloned()
        })
    })
    .or_else(|| {
        Some(Origin {
            level: Level::NamespaceLabel,
            key: keys::INJECTION_LABEL,
            value: namespace.labels.get(keys::INJECTION_LABEL)?.clone(),
        })
    })
}

/// The injection request by precedence, most specific first: Pod, owning workload,
/// Namespace annotation, Namespace label. `None` when nothing asks, or the most
/// specific level that speaks says `false`/`disabled`.
fn requested(
    pod_metadata: Option<&Value>,
    workload: Option<&Workload>,
    namespace: &super::NamespaceMeta,
) -> Result<Option<Target>, Skip> {
    match origin(pod_metadata, workload, namespace) {
        Some(origin) => target(&origin),
        None => Ok(None),
    }
}

/// What `origin` asks for: `None` for `false` (or a label other than `enabled`); a
/// value that is not a request is a skip.
pub fn target(origin: &Origin) -> Result<Option<Target>, Skip> {
    if origin.level == Level::NamespaceLabel {
        return Ok((origin.value == "enabled").then_some(Target::Any));
    }
    parse_request(&origin.value).map_err(|()| {
        Skip::new(
            SkipReason::InvalidAnnotation,
            format!(
                "the injection annotation on {} has the invalid value {:?}: expected true, false, <instance> or <namespace>/<instance>",
                origin.level.place(),
                origin.value
            ),
        )
    })
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
fn port_clash<'a>(flavor: Flavor, containers: impl Iterator<Item = &'a Value>) -> Option<String> {
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

/// The ownerReference with `controller: true` of an object's `metadata` (raw JSON): the
/// one reader of it, for the engine, the caches and the Events.
pub fn controller_reference(metadata: Option<&Value>) -> Option<&Value> {
    metadata?
        .get("ownerReferences")?
        .as_array()?
        .iter()
        .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
}

/// Without a cache, the workload is read from the controller ownerReference; a
/// ReplicaSet named `<deployment>-<pod-template-hash>` stands for its Deployment.
pub fn workload_from_owner_references(metadata: Option<&Value>) -> Option<Workload> {
    let owner = controller_reference(metadata)
        .or_else(|| metadata?.get("ownerReferences")?.as_array()?.first())?;
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

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
