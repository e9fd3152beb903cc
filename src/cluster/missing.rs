//! Missed injections (DESIGN.md): with `failurePolicy: Ignore`, a Pod created while
//! tracehook was down or unreachable, before its namespace was labelled or before its
//! instance existed is admitted without the sidecar, silently. The elected leader
//! watches Pods (trimmed to what the decision reads) and runs the webhook's own
//! decision, with the webhook's caches, on every live Pod without the marker: a Pod
//! that would be injected now is **missing** its sidecar. It is counted
//! (`tracehook_pods_missing_sidecar{namespace}`, the instance's `status.missingPods`),
//! told once (an `InjectionMissed` Event on the Pod, with the fix), and, when healing is
//! on, replaced ([`super::heal`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Container, ObjectReference, Pod, PodSpec, PodStatus};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, ResourceExt as _};
use serde_json::json;

use super::Caches;
use super::events::EventSink;
use super::heal::{self, Heal};
use super::registration::{self, Seen};
use crate::crd::Jaeger;
use crate::inject::marker::Status;
use crate::inject::{Decision, Input, InstanceRef, Instances, Settings, Workload, decide};
use crate::metrics::{InstanceLabels, NamespaceLabels, PodMetrics};

/// The field manager of the Pod counts in a `Jaeger`'s status; the reconciler's own
/// manager writes (and compares) the rest, so neither undoes the other.
pub const COUNTS_MANAGER: &str = "tracehook-pods";

/// What the detector needs; built by `serve`.
pub struct Detector {
    pub caches: Arc<Caches>,
    pub events: EventSink,
    pub metrics: PodMetrics,
    /// The webhook's settings (native sidecars decided), so the decision is its own.
    pub settings: Settings,
    /// The MutatingWebhookConfiguration whose selector says which namespaces the
    /// webhook sees.
    pub registration: String,
    pub heal: Heal,
    /// At most one eviction per this long (`--heal-interval`).
    pub heal_interval: Duration,
    /// How often the live Pods are looked through (`--missing-scan-interval`).
    pub scan_interval: Duration,
}

/// A live Pod that would be injected now and has no sidecar.
#[derive(Clone, Debug)]
pub struct Missing {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub instance: InstanceRef,
    pub seen: Seen,
    /// The workload a user wrote (a Deployment rather than its ReplicaSet).
    pub workload: Option<Workload>,
    /// The Pod's controller ownerReference: (kind, name, uid).
    pub controller: Option<(String, String, String)>,
}

/// What one pass found.
#[derive(Debug, Default)]
pub struct Found {
    pub missing: Vec<Missing>,
    /// Live Pods carrying the marker, by instance.
    pub injected: BTreeMap<InstanceRef, i64>,
}

impl Found {
    fn missing_by_instance(&self) -> BTreeMap<InstanceRef, i64> {
        let mut counts = BTreeMap::new();
        for m in &self.missing {
            *counts.entry(m.instance.clone()).or_default() += 1;
        }
        counts
    }
}

impl Detector {
    /// Watches Pods and reports, until cancelled (leadership lost).
    pub async fn run(self: Arc<Self>) {
        let client = self.caches.client().clone();
        let (pods, writer) = reflector::store::<Pod>();
        let watch = watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .modify(trim)
            .default_backoff()
            .reflect(writer)
            .for_each(|_| std::future::ready(()));
        // The values describe what the leader sees: a replica that stops leading
        // exports none (the guard runs when this task is cancelled).
        let _clear = ClearOnDrop(self.metrics.clone());
        tokio::select! {
            () = watch => tracing::error!("the Pod watch stopped"),
            () = self.passes(client, pods) => {}
        }
    }

    async fn passes(&self, client: Client, pods: Store<Pod>) {
        if pods.wait_until_ready().await.is_err() {
            return;
        }
        let mut state = State {
            written: stored_counts(&client).await,
            ..State::default()
        };
        let mut heal = heal::Healer::new(
            client.clone(),
            self.heal,
            self.heal_interval,
            self.metrics.clone(),
        );
        loop {
            if self.caches.is_synced() {
                let registration = match registration::read(&client, &self.registration).await {
                    Ok(r) => Some(r),
                    Err(e) => {
                        tracing::warn!(error = %e, "could not read the webhook registration; not judging missed injections this pass");
                        None
                    }
                };
                if let Some(registration) = registration {
                    let live = pods.state();
                    let found = self.pass(&live, registration.as_ref()).await;
                    self.report(&found, &mut state, &client).await;
                    heal.pass(&found.missing, &live, registration.as_ref(), &self.events)
                        .await;
                }
            }
            tokio::time::sleep(self.scan_interval).await;
        }
    }

    /// The decision on every live Pod without the marker.
    pub async fn pass(
        &self,
        pods: &[Arc<Pod>],
        registration: Option<&MutatingWebhookConfiguration>,
    ) -> Found {
        let mut found = Found::default();
        for pod in pods {
            if !is_live(pod) {
                continue;
            }
            let namespace = pod.namespace().unwrap_or_default();
            if let Some(status) = Status::of(pod.annotations()) {
                *found
                    .injected
                    .entry(status.instance_in(&namespace))
                    .or_default() += 1;
                continue;
            }
            let Ok(json) = serde_json::to_value(pod.as_ref()) else {
                continue;
            };
            let snapshot = self.caches.snapshot(&namespace, &json).await;
            let decision = decide(&Input {
                pod: &json,
                namespace: &snapshot.namespace,
                workload: snapshot.workload.as_ref(),
                instances: Instances::Known(&snapshot.instances),
                env_from: &snapshot.env_from,
                settings: &self.settings,
            });
            let Decision::Injected(injection) = decision else {
                continue;
            };
            let controller = pod
                .owner_references()
                .iter()
                .find(|o| o.controller == Some(true))
                .map(|o| (o.kind.clone(), o.name.clone(), o.uid.clone()));
            found.missing.push(Missing {
                seen: registration::sees(registration, &snapshot.namespace.labels),
                namespace,
                name: pod.name_any(),
                uid: pod.uid().unwrap_or_default(),
                instance: injection.instance,
                workload: snapshot.workload,
                controller,
            });
        }
        found
    }

    /// Metrics, one Event per newly missing Pod, and the instances' counts.
    async fn report(&self, found: &Found, state: &mut State, client: &Client) {
        let mut by_namespace: BTreeMap<&str, i64> = BTreeMap::new();
        for m in &found.missing {
            *by_namespace.entry(&m.namespace).or_default() += 1;
        }
        set_gauges(
            &self.metrics.missing,
            &mut state.namespaces,
            by_namespace.iter().map(|(ns, n)| {
                (
                    NamespaceLabels {
                        namespace: (*ns).to_owned(),
                    },
                    *n,
                )
            }),
        );
        set_gauges(
            &self.metrics.injected,
            &mut state.instances,
            found.injected.iter().map(|(i, n)| {
                (
                    InstanceLabels {
                        instance: i.to_string(),
                    },
                    *n,
                )
            }),
        );

        let live: HashSet<&str> = found.missing.iter().map(|m| m.uid.as_str()).collect();
        state.told.retain(|uid| live.contains(uid.as_str()));
        for m in &found.missing {
            if state.told.insert(m.uid.clone()) {
                tracing::warn!(namespace = %m.namespace, pod = %m.name, instance = %m.instance, "Pod missing its tracing sidecar");
                self.events.on_workload(
                    pod_reference(m),
                    "InjectionMissed",
                    &note(m, self.heal, &self.registration),
                );
            }
        }

        let missing = found.missing_by_instance();
        for instance in self.caches.instances().iter() {
            let key = InstanceRef::new(&instance.namespace, &instance.name);
            let counts = Counts {
                injected: found.injected.get(&key).copied().unwrap_or(0),
                missing: missing.get(&key).copied().unwrap_or(0),
            };
            if state.written.get(&key) == Some(&counts) {
                continue;
            }
            match write_counts(client, &key, counts).await {
                Ok(()) => {
                    state.written.insert(key, counts);
                }
                Err(e) => {
                    tracing::warn!(instance = %key, error = %e, "could not write the Pod counts")
                }
            }
        }
    }
}

/// What the detector remembers between passes (for one leadership).
#[derive(Default)]
struct State {
    /// Pods told with an `InjectionMissed` Event (uids), so each hears it once.
    told: HashSet<String>,
    /// The counts each instance's status holds.
    written: HashMap<InstanceRef, Counts>,
    /// Label sets exported last pass, so that those gone are removed.
    namespaces: HashSet<NamespaceLabels>,
    instances: HashSet<InstanceLabels>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counts {
    injected: i64,
    missing: i64,
}

/// Sets each gauge of `family` and removes those set last time and not now.
fn set_gauges<L>(
    family: &prometheus_client::metrics::family::Family<
        L,
        prometheus_client::metrics::gauge::Gauge,
    >,
    last: &mut HashSet<L>,
    values: impl Iterator<Item = (L, i64)>,
) where
    L: Clone + std::hash::Hash + Eq + prometheus_client::encoding::EncodeLabelSet + std::fmt::Debug,
{
    let mut now = HashSet::new();
    for (labels, value) in values {
        family.get_or_create(&labels).set(value);
        now.insert(labels);
    }
    for gone in last.difference(&now) {
        family.remove(gone);
    }
    *last = now;
}

struct ClearOnDrop(PodMetrics);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.missing.clear();
        self.0.injected.clear();
    }
}

/// Running or about to: not finished, not being deleted.
fn is_live(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    pod.metadata.deletion_timestamp.is_none() && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The counts the instances' statuses hold now (one LIST per leadership), so that a
/// new leader writes only what changed.
async fn stored_counts(client: &Client) -> HashMap<InstanceRef, Counts> {
    let list = match Api::<Jaeger>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => list,
        Err(e) => {
            tracing::warn!(error = %e, "could not list the Jaeger instances; their Pod counts will be written");
            return HashMap::new();
        }
    };
    list.items
        .iter()
        .filter_map(|j| {
            let status = j.status.as_ref()?;
            let counts = Counts {
                injected: status.injected_pods?,
                missing: status.missing_pods?,
            };
            Some((InstanceRef::new(j.namespace()?, j.name_any()), counts))
        })
        .collect()
}

async fn write_counts(client: &Client, instance: &InstanceRef, counts: Counts) -> kube::Result<()> {
    let api: Api<Jaeger> = Api::namespaced(client.clone(), &instance.namespace);
    let patch = json!({
        "apiVersion": "tracehook.dev/v1alpha1",
        "kind": "Jaeger",
        "status": {"injectedPods": counts.injected, "missingPods": counts.missing},
    });
    api.patch_status(
        &instance.name,
        &PatchParams::apply(COUNTS_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map(drop)
}

pub(super) fn pod_reference(m: &Missing) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(m.namespace.clone()),
        name: Some(m.name.clone()),
        uid: Some(m.uid.clone()),
        ..ObjectReference::default()
    }
}

/// The sentence a person reads in `kubectl describe pod`.
pub fn note(m: &Missing, heal: Heal, registration: &str) -> String {
    let head = format!(
        "this Pod asks for the tracing sidecar of {} and would get it if created now, but has none",
        m.instance
    );
    if m.seen != Seen::Yes {
        return format!(
            "{head}: {}; then recreate the Pod",
            registration::fix(m.seen, &m.namespace, registration)
        );
    }
    let cause = "it was created while tracehook was down or unreachable, before its namespace was labelled, or before its instance existed";
    let remedy = match (heal, heal::replaceable(m)) {
        (Heal::Evict, true) => "tracehook will evict it (--heal-missing=evict) so that its controller replaces it with an injected Pod".to_owned(),
        (Heal::Report, true) => "with --heal-missing=evict tracehook would evict it so that its controller replaces it; or delete it yourself".to_owned(),
        (_, true) => "delete it and its controller replaces it with an injected Pod (or run tracehook with --heal-missing=evict)".to_owned(),
        (_, false) => "recreate it (tracehook never evicts bare Pods or Jobs' Pods)".to_owned(),
    };
    format!("{head}: {cause}. Fix: {remedy}.")
}

/// Keeps of a Pod only what the decision and healing read, so that a cluster's Pods
/// cost little memory: metadata without managedFields, the containers' names,
/// variables, ports and resources, and the spec fields that skips, LimitRanges and
/// quota scopes depend on; of the status, the phase and the Ready condition.
fn trim(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    if let Some(spec) = pod.spec.take() {
        let keep = |c: Container| Container {
            name: c.name,
            env: c.env,
            env_from: c.env_from,
            ports: c.ports,
            resources: c.resources,
            restart_policy: c.restart_policy,
            ..Container::default()
        };
        let os_selector = spec.node_selector.and_then(|s| {
            let os = s.get("kubernetes.io/os")?.clone();
            Some(BTreeMap::from([("kubernetes.io/os".to_owned(), os)]))
        });
        pod.spec = Some(PodSpec {
            containers: spec.containers.into_iter().map(keep).collect(),
            init_containers: spec
                .init_containers
                .map(|list| list.into_iter().map(keep).collect()),
            host_network: spec.host_network,
            os: spec.os,
            node_selector: os_selector,
            overhead: spec.overhead,
            priority_class_name: spec.priority_class_name,
            active_deadline_seconds: spec.active_deadline_seconds,
            ..PodSpec::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            conditions: status
                .conditions
                .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect()),
            ..PodStatus::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_keeps_what_the_decision_reads() {
        let mut pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "annotations": {"a": "b"},
                "managedFields": [{"manager": "kubectl"}],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": true}]},
            "spec": {
                "nodeSelector": {"kubernetes.io/os": "linux", "disk": "ssd"},
                "priorityClassName": "high",
                "volumes": [{"name": "data", "emptyDir": {}}],
                "containers": [{"name": "web", "image": "nginx", "command": ["nginx"],
                    "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80, "name": "http"}],
                    "resources": {"limits": {"cpu": "1"}}, "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]
            },
            "status": {"phase": "Running", "conditions": [
                {"type": "Ready", "status": "True"}, {"type": "PodScheduled", "status": "True"}],
                "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "nginx", "imageID": "x"}]}
        }))
        .expect("a Pod");
        trim(&mut pod);
        let value = serde_json::to_value(&pod).expect("JSON");
        assert_eq!(
            value,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web", "namespace": "shop", "annotations": {"a": "b"},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-1", "uid": "u", "controller": true}]},
                "spec": {
                    "nodeSelector": {"kubernetes.io/os": "linux"},
                    "priorityClassName": "high",
                    "containers": [{"name": "web",
                        "env": [{"name": "A", "value": "1"}], "ports": [{"containerPort": 80, "name": "http"}],
                        "resources": {"limits": {"cpu": "1"}}}]
                },
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
            })
        );
    }
}
