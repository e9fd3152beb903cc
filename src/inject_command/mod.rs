//! `tracehook inject`: the engine applied to the pod templates of manifests, offline.
//!
//! Every document's pod template gets exactly what the webhook would give the Pod it
//! becomes, as if its namespace were labelled for injection; the instance comes from
//! the annotation, or from `--instance` when the annotation says `true` or nothing.
//! Output fed back in comes out unchanged (the marker makes injection idempotent).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::inject::{
    self, Decision, EnvFromKeys, Flavor, InstanceRef, Instances, NamespaceMeta, Settings, Workload,
    keys,
};
use crate::{Error, Result};

pub mod yaml11;

pub struct Options {
    pub settings: Settings,
    pub instance: Option<InstanceRef>,
    /// Default flavor when no annotation chooses one.
    pub flavor: Option<Flavor>,
    /// Namespace of documents that name none. `None`: unknown, so the output reads it
    /// from the downward API and is right in whichever namespace it is applied.
    pub namespace: Option<String>,
}

/// What happened to one document, for messages.
#[derive(Debug, PartialEq)]
pub struct Report {
    pub document: usize,
    pub kind: String,
    pub name: String,
    pub outcome: String,
}

impl std::fmt::Display for Report {
    /// `document 2: Service web: left alone (not a workload)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "document {}: ", self.document)?;
        match (self.kind.is_empty(), self.name.is_empty()) {
            (false, false) => write!(f, "{} {}: ", self.kind, self.name)?,
            (false, true) => write!(f, "{}: ", self.kind)?,
            (true, false) => write!(f, "{}: ", self.name)?,
            (true, true) => {}
        }
        f.write_str(&self.outcome)
    }
}

/// Injects every pod template in a YAML or JSON stream and returns the YAML.
pub fn inject_documents(input: &str, options: &Options) -> Result<String> {
    let (docs, reports) = inject_values(input, options)?;
    for r in &reports {
        eprintln!("{r}");
    }
    to_yaml(&docs)
}

/// The documents after injection, with a report per document.
pub fn inject_values(input: &str, options: &Options) -> Result<(Vec<Value>, Vec<Report>)> {
    let mut docs = parse(input)?;
    let mut settings = options.settings.clone();
    if let Some(flavor) = options.flavor {
        settings.default_flavor = flavor;
    }
    // ConfigMaps in the same stream tell which variables an envFrom defines.
    let env_from = config_map_keys(&docs);
    let mut reports = Vec::new();
    for (index, doc) in docs.iter_mut().enumerate() {
        inject_document(doc, index + 1, options, &settings, &env_from, &mut reports)?;
    }
    Ok((docs, reports))
}

/// The documents as kubectl reads them (see [`yaml11`]), null documents left out.
pub fn parse(input: &str) -> Result<Vec<Value>> {
    let docs = yaml11::read(input).map_err(|e| {
        Error::Manifest(format!(
            "the input is not valid YAML or JSON (document {}, line {}, column {}): {}",
            e.document, e.line, e.column, e.message
        ))
    })?;
    // A null document (`~`, `null`, a bare tag, an empty one) is no object, and kubectl
    // skips them.
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

/// The documents as YAML that kubectl reads back as the same values.
pub fn to_yaml(docs: &[Value]) -> Result<String> {
    yaml11::write(docs).map_err(|e| Error::Manifest(format!("writing YAML: {e}")))
}

fn config_map_keys(docs: &[Value]) -> EnvFromKeys {
    let mut config_maps = BTreeMap::new();
    for doc in docs {
        if doc.get("kind").and_then(Value::as_str) == Some("ConfigMap")
            && let Some(name) = doc.pointer("/metadata/name").and_then(Value::as_str)
        {
            let keys = ["data", "binaryData"]
                .iter()
                .filter_map(|k| doc.get(*k)?.as_object())
                .flat_map(|m| m.keys().cloned())
                .collect();
            config_maps.insert(name.to_owned(), keys);
        }
    }
    EnvFromKeys { config_maps }
}

/// Where a kind keeps its pod template.
fn template_path(api_version: &str, kind: &str) -> Option<&'static str> {
    match kind {
        "Pod" => Some(""),
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "Job"
        | "ReplicationController" => Some("/spec/template"),
        "CronJob" => Some("/spec/jobTemplate/spec/template"),
        // Argo Rollouts.
        "Rollout" if api_version.starts_with("argoproj.io/") => Some("/spec/template"),
        _ => None,
    }
}

/// Why a document is left alone, when it is.
fn left_alone(doc: &Value, api_version: &str, kind: &str) -> Option<String> {
    let text = |p: &str| {
        doc.pointer(p)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    if !doc.is_object() {
        return Some("left alone (not a Kubernetes object)".to_owned());
    }
    if kind.is_empty() {
        return Some("left alone (no kind)".to_owned());
    }
    if template_path(api_version, kind).is_none() {
        return Some("left alone (not a workload)".to_owned());
    }
    if kind == "Rollout" && doc.pointer("/spec/workloadRef").is_some() {
        let target = match (
            text("/spec/workloadRef/kind"),
            text("/spec/workloadRef/name"),
        ) {
            (Some(kind), Some(name)) => format!("{kind} {name}"),
            (None, Some(name)) => format!("Deployment {name}"),
            _ => "Deployment".to_owned(),
        };
        return Some(format!(
            "left alone (its spec.workloadRef takes the pod template of {target}: inject that {} instead)",
            target.split(' ').next().unwrap_or("Deployment")
        ));
    }
    None
}

fn inject_document(
    doc: &mut Value,
    number: usize,
    options: &Options,
    settings: &Settings,
    env_from: &EnvFromKeys,
    reports: &mut Vec<Report>,
) -> Result<()> {
    let text = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let kind = text(doc, "/kind").unwrap_or_default();
    let api_version = text(doc, "/apiVersion").unwrap_or_default();
    let name = text(doc, "/metadata/name").unwrap_or_default();
    if kind == "List"
        && let Some(items) = doc.get_mut("items").and_then(Value::as_array_mut)
    {
        for item in items {
            inject_document(item, number, options, settings, env_from, reports)?;
        }
        return Ok(());
    }
    if let Some(outcome) = left_alone(doc, &api_version, &kind) {
        reports.push(Report {
            document: number,
            kind,
            name,
            outcome,
        });
        return Ok(());
    }
    let Some(path) = template_path(&api_version, &kind) else {
        return Ok(());
    };
    let namespace = text(doc, "/metadata/namespace")
        .or_else(|| options.namespace.clone())
        .unwrap_or_default();
    let workload = (kind != "Pod").then(|| Workload {
        kind: kind.clone(),
        name: name.clone(),
        annotations: doc
            .pointer("/metadata/annotations")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default(),
    });
    let mut ns = NamespaceMeta::named(&namespace);
    ns.labels
        .insert(keys::INJECTION_LABEL.to_owned(), "enabled".to_owned());
    let Some(template) = doc.pointer_mut(path) else {
        return Err(Error::Manifest(format!(
            "document {number}: {kind} {name} has no pod template at {path}"
        )));
    };
    let decision = inject::decide(&inject::Input {
        pod: template,
        namespace: &ns,
        workload: workload.as_ref(),
        instances: Instances::Offline {
            default: options.instance.as_ref(),
        },
        env_from,
        settings,
    });
    let outcome = match &decision {
        Decision::Injected(injection) => {
            json_patch::patch(template, &injection.patch).map_err(|e| {
                Error::Manifest(format!(
                    "document {number}: {kind} {name}: applying the patch: {e}"
                ))
            })?;
            let mut s = format!("injected {} for {}", injection.flavor, injection.instance);
            for w in &injection.warnings {
                s.push_str(&format!("; {w}"));
            }
            s
        }
        Decision::Skipped(skip) => format!("skipped: {}", skip.message),
        Decision::AlreadyInjected => "already injected".to_owned(),
        Decision::NotRequested => "injection disabled by annotation".to_owned(),
        Decision::Ignored(reason) => format!("ignored ({})", reason.as_str()),
    };
    reports.push(Report {
        document: number,
        kind,
        name,
        outcome,
    });
    Ok(())
}
