//! tracehook's marker on an injected Pod: the annotation `tracehook.dev/status` (JSON:
//! the instance, flavor, containers, the variables added and those the user had set)
//! and the label `tracehook.dev/injected=<instance-namespace>.<instance>`. A Pod that
//! carries the annotation gets nothing more (the webhook may be called again).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::patch::PatchBuilder;
use super::text::fnv1a;
use super::{Flavor, InstanceRef, keys};

pub struct Marker {
    status: Map<String, Value>,
    env_added: Map<String, Value>,
    env_kept: Map<String, Value>,
    label: String,
}

impl Marker {
    pub fn new(instance: &InstanceRef, flavor: Flavor, native: bool) -> Self {
        let mut status = Map::new();
        status.insert("instance".to_owned(), instance.to_string().into());
        status.insert("flavor".to_owned(), flavor.as_str().into());
        status.insert("containers".to_owned(), json!([flavor.container_name()]));
        status.insert("native".to_owned(), native.into());
        Self {
            status,
            env_added: Map::new(),
            env_kept: Map::new(),
            label: label(&instance.namespace, &instance.name),
        }
    }

    /// What app container `name` got, and what of the user's it left alone.
    pub fn container(&mut self, name: &str, added: Vec<String>, kept: Vec<String>) {
        if !added.is_empty() {
            let names = added.into_iter().map(Value::String).collect();
            self.env_added.insert(name.to_owned(), names);
        }
        if !kept.is_empty() {
            let names = kept.into_iter().map(Value::String).collect();
            self.env_kept.insert(name.to_owned(), names);
        }
    }

    /// `container: VARIABLE` for each variable the user set that tracehook left alone.
    pub fn kept_lines(&self) -> Vec<String> {
        self.env_kept
            .iter()
            .flat_map(|(container, names)| {
                names
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .map(move |v| format!("{container}: {v}"))
            })
            .collect()
    }

    /// Adds the annotation and the label to `patch`, for a Pod whose `metadata` is given.
    pub fn patch(mut self, patch: &mut PatchBuilder, metadata: Option<&Value>) {
        self.status
            .insert("env".to_owned(), Value::Object(self.env_added));
        if !self.env_kept.is_empty() {
            // The user's own settings tracehook left alone (where spans go, attributes).
            self.status
                .insert("kept".to_owned(), Value::Object(self.env_kept));
        }
        self.status
            .insert("version".to_owned(), crate::VERSION.into());
        let status = Value::String(Value::Object(self.status).to_string());
        let label = Value::String(self.label);
        match metadata {
            Some(Value::Object(m)) => {
                patch.insert(
                    m.get("annotations"),
                    &["metadata", "annotations"],
                    keys::STATUS,
                    status,
                );
                patch.insert(
                    m.get("labels"),
                    &["metadata", "labels"],
                    keys::INJECTED_LABEL,
                    label,
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
    }
}

/// The annotation read back: what was injected (the Pod watch, `tracehook explain`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Status {
    /// `<namespace>/<name>`, or `<name>` for output applied in any namespace.
    pub instance: String,
    pub flavor: String,
    #[serde(default)]
    pub containers: Vec<String>,
    #[serde(default)]
    pub native: bool,
    /// App container → the variables tracehook added.
    #[serde(default)]
    pub env: BTreeMap<String, Vec<String>>,
    /// App container → the variables the user had set, left alone.
    #[serde(default)]
    pub kept: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    pub version: String,
}

impl Status {
    /// The marker of a Pod (its `metadata.annotations`), if it has a readable one.
    pub fn of(annotations: &BTreeMap<String, String>) -> Option<Status> {
        serde_json::from_str(annotations.get(keys::STATUS)?).ok()
    }

    /// The instance, in the Pod's namespace when the marker names none.
    pub fn instance_in(&self, pod_namespace: &str) -> InstanceRef {
        InstanceRef::parse(&self.instance)
            .unwrap_or_else(|| InstanceRef::new(pod_namespace, &self.instance))
    }
}

/// `<namespace>.<instance>`, shortened with a hash to a label value's 63 characters.
pub fn label(namespace: &str, name: &str) -> String {
    // An instance in the namespace the output is applied to (offline, not known).
    let full = if namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    };
    if full.len() <= 63 {
        return full;
    }
    let hash = fnv1a(full.as_bytes());
    // Cut on a character boundary: `inject` takes the namespace from the manifest,
    // which need not be ASCII.
    let head = full[..full.floor_char_boundary(54)].trim_end_matches(['-', '.']);
    format!("{head}-{:08x}", hash as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_reads_back_what_was_written() {
        let mut marker = Marker::new(&InstanceRef::new("obs", "test"), Flavor::JaegerAgent, true);
        marker.container(
            "web",
            vec!["OTEL_SERVICE_NAME".into()],
            vec!["OTEL_EXPORTER_OTLP_ENDPOINT".into()],
        );
        let mut patch = PatchBuilder::default();
        marker.patch(&mut patch, None);
        let mut pod = json!({});
        json_patch::patch(&mut pod, &patch.build()).expect("applies");
        let annotations: BTreeMap<String, String> =
            serde_json::from_value(pod["metadata"]["annotations"].clone()).expect("annotations");
        let status = Status::of(&annotations).expect("a marker");
        assert_eq!(status.instance_in("shop"), InstanceRef::new("obs", "test"));
        assert_eq!(status.containers, ["jaeger-agent"]);
        assert_eq!(status.env["web"], ["OTEL_SERVICE_NAME"]);
        assert_eq!(status.kept["web"], ["OTEL_EXPORTER_OTLP_ENDPOINT"]);
        let offline = Status {
            instance: "test".into(),
            ..Status::default()
        };
        assert_eq!(
            offline.instance_in("shop"),
            InstanceRef::new("shop", "test")
        );
    }

    #[test]
    fn marker_label_fits_a_label_value() {
        let long = "a".repeat(63);
        let got = label(&long, &long);
        assert!(got.len() <= 63, "{got}");
        assert_ne!(got, label(&long, &"b".repeat(63)));
        assert_eq!(label("obs", "test"), "obs.test");
    }

    #[test]
    fn marker_label_cuts_multi_byte_names_on_a_character_boundary() {
        let got = label(&format!("a{}", "名".repeat(30)), "test");
        assert!(got.len() <= 63, "{got}");
        assert!(got.starts_with("a名"), "{got}");
    }
}
