//! Gathers an explanation's [`Case`] from the live cluster the way the webhook sees a
//! Pod: through its own caches ([`Caches`], synced first) and the same snapshot, with
//! native sidecars decided from the API server's version, and the registered webhook's
//! namespaceSelector.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt as _};
use serde_json::{Value, json};

use super::Case;
use crate::cluster::Caches;
use crate::cluster::registration;
use crate::inject::{Settings, Workload};
use crate::{Error, Result};

/// How long the caches may take to fill.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// What `tracehook explain` is asked about: `pod/NAME`, `deployment/NAME`, …
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub kind: Kind,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Pod,
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    CronJob,
    Rollout,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Pod => "Pod",
            Kind::Deployment => "Deployment",
            Kind::StatefulSet => "StatefulSet",
            Kind::DaemonSet => "DaemonSet",
            Kind::ReplicaSet => "ReplicaSet",
            Kind::Job => "Job",
            Kind::CronJob => "CronJob",
            Kind::Rollout => "Rollout",
        }
    }

    /// (group, version, plural)
    fn resource(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Kind::Pod => ("", "v1", "pods"),
            Kind::Deployment => ("apps", "v1", "deployments"),
            Kind::StatefulSet => ("apps", "v1", "statefulsets"),
            Kind::DaemonSet => ("apps", "v1", "daemonsets"),
            Kind::ReplicaSet => ("apps", "v1", "replicasets"),
            Kind::Job => ("batch", "v1", "jobs"),
            Kind::CronJob => ("batch", "v1", "cronjobs"),
            Kind::Rollout => ("argoproj.io", "v1alpha1", "rollouts"),
        }
    }
}

impl std::str::FromStr for Subject {
    type Err = String;

    /// `KIND/NAME`, with kubectl's names for the kinds (`deploy`, `sts`, plurals, …).
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, name) = s
            .split_once('/')
            .ok_or_else(|| format!("{s}: expected KIND/NAME, e.g. pod/web-1 or deployment/web"))?;
        let kind = match kind.to_ascii_lowercase().as_str() {
            "pod" | "pods" | "po" => Kind::Pod,
            "deployment" | "deployments" | "deploy" => Kind::Deployment,
            "statefulset" | "statefulsets" | "sts" => Kind::StatefulSet,
            "daemonset" | "daemonsets" | "ds" => Kind::DaemonSet,
            "replicaset" | "replicasets" | "rs" => Kind::ReplicaSet,
            "job" | "jobs" => Kind::Job,
            "cronjob" | "cronjobs" | "cj" => Kind::CronJob,
            "rollout" | "rollouts" | "ro" => Kind::Rollout,
            other => {
                return Err(format!(
                    "{other}: not a kind tracehook injects (pod, deployment, statefulset, daemonset, replicaset, job, cronjob, rollout)"
                ));
            }
        };
        if name.is_empty() {
            return Err(format!("{s}: no name"));
        }
        Ok(Subject {
            kind,
            name: name.to_owned(),
        })
    }
}

/// The case for `subject` in `namespace`, as the webhook would see it now.
pub async fn gather(
    client: Client,
    subject: &Subject,
    namespace: &str,
    settings: Settings,
    native_sidecars: Option<bool>,
    registration_name: &str,
) -> Result<Case> {
    let caches = Caches::start(client.clone());
    let version = client.apiserver_version().await?;
    let settings = Settings {
        native_sidecars: crate::inject::native_sidecars(
            native_sidecars,
            Some((&version.major, &version.minor)),
        ),
        ..settings
    };
    let (pod, workload) = match subject.kind {
        Kind::Pod => {
            let pod = Api::<Pod>::namespaced(client.clone(), namespace)
                .get(&subject.name)
                .await?;
            (serde_json::to_value(pod)?, None)
        }
        kind => template_pod(&client, kind, &subject.name, namespace).await?,
    };
    let deadline = tokio::time::Instant::now() + SYNC_TIMEOUT;
    while !caches.is_synced() {
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Argument(format!(
                "the caches did not fill within {}s (is the API server slow, or is RBAC missing?)",
                SYNC_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut snapshot = caches.snapshot(namespace, &pod).await;
    if workload.is_some() {
        snapshot.workload = workload;
    }
    let registration = registration::read(&client, registration_name).await?;
    Ok(Case {
        subject: format!("{} {}", subject.kind.name(), subject.name),
        live_pod: subject.kind == Kind::Pod,
        seen: registration::sees(registration.as_ref(), &snapshot.namespace.labels),
        pod,
        namespace: snapshot.namespace,
        workload: snapshot.workload,
        instances: snapshot.instances,
        env_from: snapshot.env_from,
        settings,
        registration: registration_name.to_owned(),
        warnings: snapshot.warnings,
    })
}

/// The Pod a workload's controller would create from its template: owned by the
/// controller that creates it (so the owner chain resolves as for a real Pod), or,
/// where that controller does not exist yet (a Deployment's next ReplicaSet, a
/// CronJob's next Job, a Rollout's), with the workload given directly.
async fn template_pod(
    client: &Client,
    kind: Kind,
    name: &str,
    namespace: &str,
) -> Result<(Value, Option<Workload>)> {
    let (group, version, plural) = kind.resource();
    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind.name()),
        plural,
    );
    let object = Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &resource)
        .get(name)
        .await?;
    let template = match kind {
        Kind::CronJob => object.data.pointer("/spec/jobTemplate/spec/template"),
        _ => object.data.pointer("/spec/template"),
    }
    .cloned()
    .ok_or_else(|| Error::MissingField(format!("{} {name}", kind.name()), "pod template"))?;
    let mut metadata = template
        .get("metadata")
        .cloned()
        .unwrap_or_else(|| json!({}));
    metadata["namespace"] = namespace.into();
    let direct = matches!(kind, Kind::Deployment | Kind::CronJob | Kind::Rollout);
    if !direct {
        metadata["ownerReferences"] = json!([{
            "apiVersion": resource.api_version,
            "kind": kind.name(),
            "name": name,
            "uid": object.uid().unwrap_or_default(),
            "controller": true
        }]);
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": template.get("spec").cloned().unwrap_or_else(|| json!({}))
    });
    let workload = direct.then(|| Workload {
        kind: kind.name().to_owned(),
        name: name.to_owned(),
        annotations: object.annotations().clone(),
    });
    Ok((pod, workload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_read_as_kubectl_names_them() {
        let s: Subject = "deploy/web".parse().expect("parses");
        assert_eq!(s.kind, Kind::Deployment);
        assert_eq!(s.name, "web");
        assert_eq!(
            "pod/web-1".parse::<Subject>().map(|s| s.kind),
            Ok(Kind::Pod)
        );
        assert_eq!(
            "sts/db".parse::<Subject>().map(|s| s.kind),
            Ok(Kind::StatefulSet)
        );
        assert_eq!(
            "cronjobs/nightly".parse::<Subject>().map(|s| s.kind),
            Ok(Kind::CronJob)
        );
        assert!("web".parse::<Subject>().is_err());
        assert!("service/web".parse::<Subject>().is_err());
        assert!("pod/".parse::<Subject>().is_err());
    }
}
