//! Properties of the injection engine over generated Pods and surroundings: whatever
//! the Pod looks like, the answer is allowed, a patch exists only for an injection, it
//! applies to the raw Pod, the result is still a Pod, injecting it again does nothing,
//! and the patch only adds: the user's containers, env entries, labels and
//! annotations are all still there with their values.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select, subsequence};
use serde_json::{Map, Value, json};
use tracehook::admission::{AdmissionResponse, pod_fields};
use tracehook::inject::{
    self, Decision, EnvFromKeys, Flavor, Instance, Instances, NamespaceMeta, Settings,
    SidecarSettings,
};

/// The variables tracehook may add, and a few it never does.
const VARS: &[&str] = &[
    "JAEGER_SERVICE_NAME",
    "JAEGER_PROPAGATION",
    "OTEL_SERVICE_NAME",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_RESOURCE_ATTRIBUTES",
    "POD_NAME",
    "HOST_IP",
    "LOG_LEVEL",
    "DB_URL",
];

/// Container names, JSON Pointer specials included. The hand-written sidecar names
/// are added now and then, apart, so that most cases reach an injection.
const NAMES: &[&str] = &["web", "api", "worker", "a~b", "x/y", "~1", "proxy"];
const SIDECAR_NAMES: &[&str] = &["jaeger-agent", "otc-container"];

const ANNOTATIONS: &[(&str, &str)] = &[
    ("tracehook.dev/inject", "true"),
    ("tracehook.dev/inject", "false"),
    ("tracehook.dev/inject", "test"),
    ("tracehook.dev/inject", "obs/test"),
    ("tracehook.dev/inject", "not an instance"),
    ("sidecar.jaegertracing.io/inject", "true"),
    ("sidecar.jaegertracing.io/inject", "other"),
    ("tracehook.dev/sidecar-flavor", "otel-collector"),
    ("tracehook.dev/sidecar-flavor", "jaeger-agent"),
    ("tracehook.dev/native-sidecar", "false"),
    ("tracehook.dev/native-sidecar", "true"),
    ("tracehook.dev/sidecar-image", "mirror.local/agent:1"),
    ("tracehook.dev/sidecar-cpu-request", "500m"),
    ("tracehook.dev/sidecar-cpu-limit", "100m"),
    ("tracehook.dev/sidecar-memory-limit", "16Mi"),
    ("tracehook.dev/sidecar-memory-request", "lots"),
    ("tracehook.dev/service-name", "checkout"),
    ("example.com/a~b/c", "x"),
    ("~0~1/", ""),
    ("note", "hello"),
];

const LABELS: &[(&str, &str)] = &[
    ("app", "web"),
    ("app.kubernetes.io/name", "shop"),
    ("app.kubernetes.io/instance", "shop-eu"),
    ("app.kubernetes.io/managed-by", "helm"),
    ("pod-template-hash", "5d8f7c9b4"),
    ("example.com/team~a", "payments"),
];

fn env_entry(name: &str, value: Value) -> Value {
    let mut entry = Map::new();
    entry.insert("name".into(), json!(name));
    if let Some(v) = value.as_str() {
        entry.insert("value".into(), json!(v));
    } else {
        entry.insert("valueFrom".into(), value);
    }
    Value::Object(entry)
}

/// `env`: absent, `null`, or a list with distinct names (some of them tracehook's).
fn env_list() -> impl Strategy<Value = Option<Value>> {
    let value = prop_oneof![
        4 => "[a-z0-9/:._=,$()-]{0,16}".prop_map(Value::String),
        1 => Just(json!({"fieldRef": {"fieldPath": "metadata.name"}})),
        1 => Just(json!({"configMapKeyRef": {"name": "settings", "key": "x"}})),
    ];
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        5 => btree_map(select(VARS), value, 0..6).prop_map(|m| {
            Some(Value::Array(m.into_iter().map(|(k, v)| env_entry(k, v)).collect()))
        }),
    ]
}

fn env_from_list() -> impl Strategy<Value = Option<Value>> {
    let source = (
        select(&["configMapRef", "secretRef"][..]),
        select(&["tracing", "settings", "creds"][..]),
        option::of(select(&["", "OTEL_", "DB_", "JAEGER_", "POD_"][..])),
    )
        .prop_map(|(kind, name, prefix)| {
            let mut s = Map::new();
            s.insert(kind.into(), json!({"name": name}));
            if let Some(p) = prefix {
                s.insert("prefix".into(), json!(p));
            }
            Value::Object(s)
        });
    option::weighted(0.3, vec(source, 0..3).prop_map(Value::Array))
}

fn ports() -> impl Strategy<Value = Option<Value>> {
    let port = (
        select(&[80u16, 8080, 4317, 4318, 5775, 6831, 6832, 9000, 14271][..]),
        option::of(select(&["TCP", "UDP"][..])),
    )
        .prop_map(|(number, protocol)| {
            let mut p = Map::new();
            p.insert("containerPort".into(), json!(number));
            if let Some(protocol) = protocol {
                p.insert("protocol".into(), json!(protocol));
            }
            Value::Object(p)
        });
    option::weighted(0.3, vec(port, 0..3).prop_map(Value::Array))
}

/// The parts of one container besides its name.
fn container_body() -> impl Strategy<Value = Map<String, Value>> {
    (env_list(), env_from_list(), ports(), any::<bool>()).prop_map(
        |(env, env_from, ports, restart)| {
            let mut c = Map::new();
            c.insert("image".into(), json!("busybox"));
            for (key, value) in [("env", env), ("envFrom", env_from), ("ports", ports)] {
                if let Some(v) = value {
                    c.insert(key.into(), v);
                }
            }
            // Fields the Rust types may not know must survive; on init containers
            // this also makes some of them native sidecars of the user's own.
            if restart {
                c.insert("restartPolicy".into(), json!("Always"));
            }
            c
        },
    )
}

/// A string map given as absent, `null`, or an object.
fn string_map(
    pool: &'static [(&'static str, &'static str)],
) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        1 => Just(None),
        1 => Just(Some(Value::Null)),
        4 => vec(select(pool), 0..4).prop_map(|pairs| {
            Some(Value::Object(
                pairs.into_iter().map(|(k, v)| (k.to_owned(), json!(v))).collect(),
            ))
        }),
    ]
}

fn metadata() -> impl Strategy<Value = Option<Value>> {
    let labels = (string_map(LABELS), 0..20u8).prop_map(|(labels, dice)| {
        if dice > 0 {
            return labels;
        }
        // Now and then, a Pod of the tracing backend.
        let mut m = labels
            .and_then(|l| l.as_object().cloned())
            .unwrap_or_default();
        m.insert("app.kubernetes.io/managed-by".into(), json!("tracehook"));
        Some(Value::Object(m))
    });
    let owner = json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7c9b4",
        "uid": "5b9c0c6e-2f6e-4a3f-9a53-6f4a7e0f2c11", "controller": true
    }]);
    let present = (
        labels,
        string_map(ANNOTATIONS),
        option::of(Just(owner)),
        option::of(prop_oneof![
            Just(("name", "web-0")),
            Just(("generateName", "web-"))
        ]),
    )
        .prop_map(|(labels, annotations, owners, name)| {
            let mut m = Map::new();
            if let Some((key, value)) = name {
                m.insert(key.into(), json!(value));
            }
            for (key, value) in [
                ("labels", labels),
                ("annotations", annotations),
                ("ownerReferences", owners),
            ] {
                if let Some(v) = value {
                    m.insert(key.into(), v);
                }
            }
            Value::Object(m)
        });
    option::weighted(0.9, present)
}

fn pod() -> impl Strategy<Value = Value> {
    let names = (
        subsequence(NAMES.to_vec(), 1..=4),
        option::weighted(0.08, select(SIDECAR_NAMES)),
    )
        .prop_map(|(mut names, hand_written)| {
            names.extend(hand_written);
            names
        })
        .prop_shuffle();
    (names, any::<Index>())
        .prop_flat_map(|(names, split)| {
            let count = names.len();
            // At least one app container; the rest are init containers.
            let init = split.index(count);
            (
                Just(names),
                Just(init),
                vec(container_body(), count),
                metadata(),
                prop_oneof![16 => Just(None), 1 => Just(Some("hostNetwork")), 1 => Just(Some("windows"))],
                any::<bool>(),
            )
        })
        .prop_map(|(names, init, bodies, metadata, special, null_init)| {
            let mut containers = Vec::new();
            let mut init_containers = Vec::new();
            for (i, (name, mut body)) in names.into_iter().zip(bodies).enumerate() {
                body.insert("name".into(), json!(name));
                if i < init {
                    init_containers.push(Value::Object(body));
                } else {
                    body.remove("restartPolicy");
                    containers.push(Value::Object(body));
                }
            }
            let mut spec = Map::new();
            spec.insert("containers".into(), Value::Array(containers));
            if !init_containers.is_empty() {
                spec.insert("initContainers".into(), Value::Array(init_containers));
            } else if null_init {
                spec.insert("initContainers".into(), Value::Null);
            }
            match special {
                Some("hostNetwork") => {
                    spec.insert("hostNetwork".into(), json!(true));
                }
                Some(_) => {
                    spec.insert("nodeSelector".into(), json!({"kubernetes.io/os": "windows"}));
                }
                None => {}
            }
            let mut pod = Map::new();
            pod.insert("apiVersion".into(), json!("v1"));
            pod.insert("kind".into(), json!("Pod"));
            if let Some(m) = metadata {
                pod.insert("metadata".into(), m);
            }
            pod.insert("spec".into(), Value::Object(spec));
            Value::Object(pod)
        })
}

#[derive(Debug)]
struct World {
    namespace: NamespaceMeta,
    instances: Vec<Instance>,
    env_from: EnvFromKeys,
    settings: Settings,
}

fn world() -> impl Strategy<Value = World> {
    let namespace = (
        prop_oneof![12 => Just("demo"), 4 => Just("obs"), 1 => Just("kube-system"), 1 => Just("tracehook")],
        prop_oneof![8 => Just(Some("enabled")), 1 => Just(Some("disabled")), 1 => Just(None)],
        option::weighted(0.15, select(&["true", "false", "other", "obs/test"][..])),
    )
        .prop_map(|(name, label, annotation)| {
            let mut ns = NamespaceMeta::named(name);
            if let Some(l) = label {
                ns.labels.insert("tracehook.dev/injection".into(), l.into());
            }
            if let Some(a) = annotation {
                ns.annotations.insert("tracehook.dev/inject".into(), a.into());
            }
            ns
        });
    let instance = (
        select(&["obs", "demo", "mon"][..]),
        select(&["test", "other"][..]),
        option::of(prop_oneof![
            Just(Flavor::JaegerAgent),
            Just(Flavor::OtelCollector)
        ]),
    );
    let instances = btree_map(
        (
            select(&["obs", "demo", "mon"][..]),
            select(&["test", "other"][..]),
        ),
        instance,
        1..3,
    )
    .prop_map(|m| {
        m.into_values()
            .map(|(ns, name, flavor)| Instance {
                namespace: ns.into(),
                name: name.into(),
                sidecar: SidecarSettings {
                    flavor,
                    ..SidecarSettings::default()
                },
            })
            .collect::<Vec<_>>()
    });
    let config_maps = btree_map(
        select(&["tracing", "settings"][..]),
        subsequence(VARS.to_vec(), 0..4)
            .prop_map(|keys| keys.into_iter().map(str::to_owned).collect()),
        0..2,
    )
    .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect());
    // Now and then no instance at all.
    let instances = option::weighted(0.95, instances).prop_map(Option::unwrap_or_default);
    (
        namespace,
        instances,
        config_maps,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(namespace, instances, config_maps, native, otel)| World {
            namespace,
            instances,
            env_from: EnvFromKeys { config_maps },
            settings: Settings {
                native_sidecars: native,
                default_flavor: if otel {
                    Flavor::OtelCollector
                } else {
                    Flavor::JaegerAgent
                },
                ..Settings::default()
            },
        })
}

fn decide(pod: &Value, world: &World) -> Decision {
    inject::decide(&inject::Input {
        pod,
        namespace: &world.namespace,
        workload: None,
        instances: Instances::Known(&world.instances),
        env_from: &world.env_from,
        settings: &world.settings,
    })
}

fn list<'a>(pod: &'a Value, key: &str) -> &'a [Value] {
    pod.pointer(&format!("/spec/{key}"))
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn names(containers: &[Value]) -> Vec<&str> {
    containers
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default())
        .collect()
}

/// The container without its `env`: what the patch must leave alone.
fn without_env(c: &Value) -> Value {
    let mut c = c.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("env");
    }
    c
}

/// What the user wrote is still there: containers in order with everything but `env`
/// unchanged, each user env entry in place with its value, then at most the sidecar.
fn assert_only_added(before: &Value, after: &Value, flavor: Flavor, native: bool) {
    let sidecar = flavor.container_name();
    for (key, gets_sidecar, gets_env) in [
        ("containers", !native, true),
        ("initContainers", native, false),
    ] {
        let (old, new) = (list(before, key), list(after, key));
        let expected_len = old.len() + usize::from(gets_sidecar);
        assert_eq!(
            new.len(),
            expected_len,
            "{key}: {:?} → {:?}",
            names(old),
            names(new)
        );
        if gets_sidecar {
            assert_eq!(
                new[old.len()]["name"],
                sidecar,
                "{key}: the sidecar comes last"
            );
        }
        for (o, n) in old.iter().zip(new) {
            assert_eq!(without_env(o), without_env(n), "{key}: container changed");
            let user_env = o["env"].as_array().map_or(&[][..], Vec::as_slice);
            if !gets_env {
                assert_eq!(o.get("env"), n.get("env"), "init container env changed");
                continue;
            }
            let new_env = n["env"].as_array().map_or(&[][..], Vec::as_slice);
            let name = |e: &Value| e["name"].as_str().unwrap_or_default().to_owned();
            let user_names: BTreeSet<_> = user_env.iter().map(name).collect();
            // The user's entries keep their order and values; the one exception is a
            // literal OTEL_RESOURCE_ATTRIBUTES, which keeps its value as a prefix and
            // gets tracehook's other attributes after it.
            let mut user = user_env.iter().peekable();
            let mut added = BTreeSet::new();
            for e in new_env {
                if let Some(&u) = user.peek()
                    && name(u) == name(e)
                {
                    if e != u {
                        let (Some(was), Some(now)) = (u["value"].as_str(), e["value"].as_str())
                        else {
                            panic!("user env changed: {u} → {e}");
                        };
                        assert!(
                            name(u) == "OTEL_RESOURCE_ATTRIBUTES" && now.starts_with(was),
                            "user env changed: {u} → {e}"
                        );
                    }
                    user.next();
                    continue;
                }
                assert!(!user_names.contains(&name(e)), "{} overridden", e["name"]);
                assert!(added.insert(name(e)), "{} added twice", e["name"]);
            }
            assert!(
                user.next().is_none(),
                "user env lost: {user_env:?} → {new_env:?}"
            );
        }
    }
    for key in ["labels", "annotations"] {
        if let Some(old) = before
            .pointer(&format!("/metadata/{key}"))
            .and_then(Value::as_object)
        {
            let new = &after["metadata"][key];
            for (k, v) in old {
                assert_eq!(&new[k], v, "metadata.{key}.{k} changed");
            }
        }
    }
    let rest = |pod: &Value| {
        let mut spec = pod["spec"].clone();
        if let Some(m) = spec.as_object_mut() {
            m.remove("containers");
            m.remove("initContainers");
        }
        spec
    };
    assert_eq!(
        rest(before),
        rest(after),
        "spec fields besides containers changed"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_patch_only_adds_and_injection_is_idempotent(pod in pod(), world in world()) {
        let decision = decide(&pod, &world);
        let response = AdmissionResponse::for_decision("uid-1", &decision);
        prop_assert!(response.allowed);
        prop_assert_eq!(&response.uid, "uid-1");
        let body: Value = serde_json::from_slice(&response.into_review_json()).expect("JSON body");
        let patch = body.pointer("/response/patch").and_then(Value::as_str);

        let Decision::Injected(injection) = &decision else {
            prop_assert!(patch.is_none(), "a patch without an injection: {decision:?}");
            return Ok(());
        };
        prop_assert_eq!(&body["response"]["patchType"], "JSONPatch");
        let raw = base64::engine::general_purpose::STANDARD
            .decode(patch.expect("an injection has a patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("a JSON Patch");
        let mut result = pod.clone();
        json_patch::patch(&mut result, &patch).expect("the patch applies");
        serde_json::from_value::<k8s_openapi::api::core::v1::Pod>(result.clone())
            .expect("the result is a Pod");

        let native = list(&result, "initContainers")
            .iter()
            .any(|c| c["name"] == injection.flavor.container_name());
        assert_only_added(&pod, &result, injection.flavor, native);
        prop_assert_eq!(decide(&result, &world), Decision::AlreadyInjected);
    }

    /// The webhook reads only some fields of the Pod (admission::pod_fields); what it
    /// decides from them is what it would decide from the whole Pod.
    #[test]
    fn the_fields_read_decide_as_the_whole_pod(pod in pod(), world in world()) {
        let read = pod_fields::from_slice(pod.to_string().as_bytes(), pod_fields::POD)
            .expect("valid JSON");
        prop_assert_eq!(decide(&read, &world), decide(&pod, &world));
    }

    #[test]
    fn never_injected_pods_stay_untouched(pod in pod(), world in world()) {
        let spec = &pod["spec"];
        let hand_written = list(&pod, "containers")
            .iter()
            .chain(list(&pod, "initContainers"))
            .any(|c| c["name"] == "jaeger-agent" || c["name"] == "otc-container");
        let never = hand_written
            || spec["hostNetwork"] == true
            || spec["nodeSelector"]["kubernetes.io/os"] == "windows"
            || ["kube-system", "tracehook"].contains(&world.namespace.name.as_str())
            || pod.pointer("/metadata/labels/app.kubernetes.io~1managed-by")
                == Some(&json!("tracehook"));
        let decision = decide(&pod, &world);
        if never {
            prop_assert!(!matches!(decision, Decision::Injected(_)), "{decision:?}");
        }
    }
}

#[test]
fn user_env_and_unknown_fields_survive_a_typical_pod() {
    // A fixed case of the property, so that a failure here reads without shrinking.
    let pod = json!({
        "metadata": {"name": "web", "labels": {"app": "web"}},
        "spec": {
            "containers": [{"name": "web", "image": "nginx", "futureField": 1,
                "env": [{"name": "OTEL_SERVICE_NAME", "value": "mine"}]}],
            "initContainers": [{"name": "setup", "image": "busybox", "restartPolicy": "Always"}]
        }
    });
    let mut namespace = NamespaceMeta::named("demo");
    namespace
        .labels
        .insert("tracehook.dev/injection".into(), "enabled".into());
    let world = World {
        namespace,
        instances: vec![Instance {
            namespace: "obs".into(),
            name: "test".into(),
            sidecar: SidecarSettings::default(),
        }],
        env_from: EnvFromKeys {
            config_maps: BTreeMap::new(),
        },
        settings: Settings::default(),
    };
    let Decision::Injected(injection) = decide(&pod, &world) else {
        panic!("expected an injection");
    };
    let mut result = pod.clone();
    json_patch::patch(&mut result, &injection.patch).expect("applies");
    assert_only_added(&pod, &result, injection.flavor, true);
    assert_eq!(decide(&result, &world), Decision::AlreadyInjected);
}

/// The properties above say little unless many generated cases are injected.
#[test]
fn generated_cases_often_reach_injection() {
    use proptest::strategy::ValueTree as _;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (pod(), world());
    let mut outcomes = BTreeMap::<String, usize>::new();
    for _ in 0..1000 {
        let (pod, world) = strategy.new_tree(&mut runner).expect("a case").current();
        let key = match decide(&pod, &world) {
            Decision::Skipped(s) => format!("skipped: {}", s.reason.as_str()),
            Decision::Ignored(r) => format!("ignored: {}", r.as_str()),
            d => d.outcome().to_owned(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    let injected = outcomes.get("injected").copied().unwrap_or_default();
    assert!(injected >= 250, "{outcomes:#?}");
}
