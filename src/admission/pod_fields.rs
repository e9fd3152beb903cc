//! The Pod of an AdmissionReview, read for what the engine looks at and nothing more.
//!
//! Parsing the whole Pod into a [`Value`] allocated every key and string of it (managed
//! fields, probes, volumes, security contexts, images, arguments) and freed it all
//! again: half of an admission's instructions (BENCHMARKS.md, "Profile of the admission
//! hot path"). Here the request's `object` is read in one pass: the fields listed in
//! [`POD`] become a [`Value`], the rest is skipped by the parser without being built.
//!
//! Nothing is lost: the API server applies our JSON Patch to the Pod it holds, whole.
//! The patch only needs the paths it appends or inserts at (the containers' and init
//! containers' arrays, each container's `env`, the metadata's maps), and those are
//! kept, with every array's length. A field the engine starts to read must be added to
//! [`POD`]; `tests/engine_fixtures.rs` and `tests/engine_properties.rs` check that the
//! whole Pod and the one read here decide alike.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Which part of a JSON value is kept.
#[derive(Clone, Copy, Debug)]
pub enum Keep {
    /// The whole value.
    All,
    /// An object: these fields, each by its own rule; any other is skipped. (A value
    /// that is not an object is kept whole, for the engine to find it invalid.)
    Fields(&'static [(&'static str, Keep)]),
    /// An array whose items each follow the rule.
    Items(&'static Keep),
}

use Keep::{All, Fields, Items};

/// What the engine, the caches and the Events read of a container (`inject::decide`,
/// `env`, `limits`, `sidecar`; `cluster::caches` for `envFrom`).
const CONTAINER: Keep = Fields(&[
    ("name", All),
    ("env", All),
    ("envFrom", All),
    ("ports", All),
    ("resources", All),
    ("restartPolicy", All),
    ("volumeMounts", All),
]);

/// What is read of a Pod.
pub const POD: Keep = Fields(&[
    ("apiVersion", All),
    ("kind", All),
    (
        "metadata",
        Fields(&[
            ("name", All),
            ("generateName", All),
            ("namespace", All),
            ("uid", All),
            ("labels", All),
            ("annotations", All),
            ("ownerReferences", All),
        ]),
    ),
    (
        "spec",
        Fields(&[
            ("containers", Items(&CONTAINER)),
            ("initContainers", Items(&CONTAINER)),
            ("hostNetwork", All),
            ("os", All),
            ("nodeSelector", All),
            ("priorityClassName", All),
            ("activeDeadlineSeconds", All),
        ]),
    ),
]);

/// `#[serde(deserialize_with)]` for the request's `object`: `null` or absent is `None`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Ok(match Read(POD).deserialize(d)? {
        Value::Null => None,
        pod => Some(pod),
    })
}

/// Parses `json` keeping what `keep` says (for tests and benchmarks).
pub fn from_slice(json: &[u8], keep: Keep) -> serde_json::Result<Value> {
    let mut d = serde_json::Deserializer::from_slice(json);
    let value = Read(keep).deserialize(&mut d)?;
    d.end()?;
    Ok(value)
}

/// A value read by its rule.
#[derive(Clone, Copy)]
struct Read(Keep);

impl<'de> DeserializeSeed<'de> for Read {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.0 {
            All => Value::deserialize(d),
            _ => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Read {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As serde_json's own: a number that is not finite becomes null.
        Ok(v.into())
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        self.deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let item = match self.0 {
            Items(rule) => *rule,
            _ => All,
        };
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element_seed(Read(item))? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let fields = match self.0 {
            Fields(fields) => Some(fields),
            _ => None,
        };
        let mut out = Map::new();
        while let Some(Key(key)) = map.next_key()? {
            let rule = match fields {
                None => All,
                Some(fields) => match fields.iter().find(|(name, _)| *name == key) {
                    Some((_, rule)) => *rule,
                    None => {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    }
                },
            };
            let value = map.next_value_seed(Read(rule))?;
            out.insert(key.into_owned(), value);
        }
        Ok(Value::Object(out))
    }
}

/// An object's key, borrowed from the body when it has no escapes: a skipped field's
/// key is never allocated.
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn read(v: &Value) -> Value {
        from_slice(v.to_string().as_bytes(), POD).expect("valid JSON")
    }

    #[test]
    fn keeps_what_the_engine_reads_and_drops_the_rest() {
        let pod = json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "generateName": "web-",
                "labels": {"app": "web"},
                "annotations": {"tracehook.dev/inject": "true"},
                "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {}}}],
                "ownerReferences": [{"kind": "ReplicaSet", "name": "web-1", "controller": true}]
            },
            "spec": {
                "volumes": [{"name": "data", "emptyDir": {}}],
                "securityContext": {"runAsNonRoot": true},
                "containers": [{
                    "name": "web",
                    "image": "web:1",
                    "args": ["--port", "8080"],
                    "env": [{"name": "A", "value": "1"}],
                    "readinessProbe": {"httpGet": {"path": "/", "port": 8080}},
                    "volumeMounts": [{"name": "data", "mountPath": "/data"}]
                }],
                "initContainers": [{"name": "init", "image": "busybox", "restartPolicy": "Always"}]
            }
        });
        // What is dropped, and nothing else.
        let mut expected = pod.clone();
        for (parent, field) in [
            ("/metadata", "managedFields"),
            ("/spec", "volumes"),
            ("/spec", "securityContext"),
            ("/spec/containers/0", "image"),
            ("/spec/containers/0", "args"),
            ("/spec/containers/0", "readinessProbe"),
            ("/spec/initContainers/0", "image"),
        ] {
            let object = expected.pointer_mut(parent).and_then(Value::as_object_mut);
            assert!(
                object.and_then(|o| o.remove(field)).is_some(),
                "{parent}/{field}"
            );
        }
        assert_eq!(read(&pod), expected);
    }

    #[test]
    fn values_of_the_wrong_type_are_kept_whole_for_the_engine_to_refuse() {
        for pod in [
            json!([1, 2]),
            json!("a string"),
            json!(3.5),
            json!({"spec": "not an object"}),
            json!({"spec": {"containers": {"name": "not a list"}}}),
            json!({"spec": {"containers": [7, null, {"name": "c", "image": "x"}]}}),
        ] {
            let expected = match &pod {
                Value::Object(_) if pod["spec"]["containers"].is_array() => {
                    json!({"spec": {"containers": [7, null, {"name": "c"}]}})
                }
                _ => pod.clone(),
            };
            assert_eq!(read(&pod), expected, "{pod}");
        }
    }

    #[test]
    fn escaped_keys_and_duplicates_read_as_serde_json_reads_them() {
        let body = br#"{"metadata":{"na\u006de":"a","name":"b","x\"y":1},"spec":{}}"#;
        let whole: Value = serde_json::from_slice(body).unwrap();
        let read = from_slice(body, POD).unwrap();
        assert_eq!(read["metadata"]["name"], whole["metadata"]["name"]);
        assert_eq!(read["metadata"]["name"], "b");
        assert!(read["metadata"].get("x\"y").is_none());
    }

    #[test]
    fn bad_json_is_refused_as_serde_json_refuses_it() {
        for body in [&b"{"[..], b"{\"spec\": }", b"[1,]", b"{\"a\":1} x"] {
            assert!(
                from_slice(body, POD).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(serde_json::from_slice::<Value>(body).is_err());
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(from_slice(deep.as_bytes(), POD).is_err(), "recursion limit");
        // A skipped field is passed over without recursion (serde_json skips with a
        // stack of its own), so depth there costs neither stack nor an error.
        let n = 100_000;
        let skipped = format!(
            r#"{{"spec":{{"volumes":{}{}}}}}"#,
            "[".repeat(n),
            "]".repeat(n)
        );
        assert_eq!(
            from_slice(skipped.as_bytes(), POD).unwrap(),
            json!({"spec": {}})
        );
    }
}
