//! The `Jaeger` reconciler: provisions each instance's backend (ServiceAccount,
//! sampling ConfigMap, Deployment, four Services, optional Ingress) and reports its
//! state in the status subresource. Only the replica holding the Lease reconciles.
//!
//! - [`children`]: what an instance should own (pure)
//! - [`apply`]: server-side apply that writes only when something differs
//! - [`leader`]: the Lease election

pub mod apply;
pub mod children;
pub mod leader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tracing::instrument;

use crate::crd::{Jaeger, JaegerStatus, Phase};
use crate::inject::keys;
use crate::metrics::ReconcilerMetrics;
use crate::{Error, Result};

pub use apply::MANAGER;

/// The Lease that elects the reconciling replica, in tracehook's namespace.
pub const LEASE_NAME: &str = "tracehook-reconciler";

/// How often an instance is reconciled without any change (a safety net for missed
/// watch events; a reconcile with nothing to change only reads).
const RESYNC: Duration = Duration::from_secs(300);

/// The longest wait between retries of a failing instance.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub struct Context {
    client: Client,
    recorder: Recorder,
    /// Consecutive failures per instance, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<Jaeger>, u32>>,
    metrics: ReconcilerMetrics,
}

impl Context {
    pub fn new(client: Client, identity: &str, metrics: ReconcilerMetrics) -> Self {
        let reporter = Reporter {
            controller: "tracehook".into(),
            instance: Some(identity.to_owned()),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            failures: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<Jaeger>, u32>> {
        self.failures.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// This replica's name in the Lease: the Pod name, else host name and process id.
pub fn identity() -> String {
    if let Ok(pod) = std::env::var("POD_NAME")
        && !pod.is_empty()
    {
        return pod;
    }
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tracehook".to_owned());
    format!("{host}-{}", std::process::id())
}

/// Work that only the elected leader does beside reconciling (started anew on each
/// leadership, cancelled when it is lost).
pub type LeaderTask = Arc<dyn Fn() -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// Campaigns for the Lease `tracehook-reconciler` in `namespace` and runs the
/// controller, and `also`, while this replica holds it. Never returns; on `shutdown`
/// the Lease is released.
pub async fn run(
    client: Client,
    namespace: String,
    identity: String,
    also: Option<LeaderTask>,
    metrics: ReconcilerMetrics,
    shutdown: Option<leader::Shutdown>,
) {
    let config = leader::LeaseConfig::new(LEASE_NAME, namespace, identity.clone());
    let mut leading = leader::elect(client.clone(), config, shutdown);
    loop {
        while !*leading.borrow_and_update() {
            if leading.changed().await.is_err() {
                return;
            }
        }
        tracing::info!(%identity, "leading: reconciling Jaeger instances");
        metrics.leader.set(1);
        let ctx = Arc::new(Context::new(client.clone(), &identity, metrics.clone()));
        let lost = async {
            loop {
                if leading.changed().await.is_err() || !*leading.borrow_and_update() {
                    return;
                }
            }
        };
        let also = async {
            match &also {
                Some(task) => task().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = also => tracing::error!("a leader task stopped"),
            () = controller(client.clone(), ctx) => {
                tracing::error!("the controller stopped; restarting it");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            () = lost => tracing::warn!(%identity, "no longer leading: stopped reconciling"),
        }
        metrics.leader.set(0);
    }
}

/// Reconciles run at once, at most. Unbounded, 500 instances created together put
/// hundreds of reconciles (8 reads and up to 7 applies each) in flight at once, and
/// kube's client opens a connection per concurrent request: the process grew to 102 MiB
/// and stayed there; with 8, 39 MiB, converging as fast (BENCHMARKS.md, issue 15.4).
const RECONCILE_CONCURRENCY: u16 = 8;

/// The controller: `Jaeger` objects, and the children tracehook manages (a change or
/// deletion of one reconciles its owner).
async fn controller(client: Client, ctx: Arc<Context>) {
    let managed = watcher::Config::default().labels(&format!(
        "{}={}",
        keys::MANAGED_BY,
        keys::MANAGED_BY_VALUE
    ));
    Controller::new(
        Api::<Jaeger>::all(client.clone()),
        watcher::Config::default().any_semantic(),
    )
    .owns(Api::<ServiceAccount>::all(client.clone()), managed.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), managed.clone())
    .owns(Api::<Deployment>::all(client.clone()), managed.clone())
    .owns(Api::<Service>::all(client.clone()), managed.clone())
    .owns(Api::<Ingress>::all(client), managed)
    .with_config(
        controller::Config::default()
            .debounce(Duration::from_millis(500))
            .concurrency(RECONCILE_CONCURRENCY),
    )
    .run(measured, error_policy, ctx)
    .for_each(|result| {
        match result {
            Ok(_) => {}
            // Reconcile failures were logged where they happened.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            // A child changed after its Jaeger was deleted (the garbage collector at work).
            Err(e @ controller::Error::ObjectNotFound(_)) => {
                tracing::debug!(error = %e, "controller")
            }
            Err(e) => tracing::warn!(error = %e, "controller"),
        }
        std::future::ready(())
    })
    .await;
}

/// [`reconcile`], counted and timed.
async fn measured(obj: Arc<Jaeger>, ctx: Arc<Context>) -> Result<Action> {
    let start = std::time::Instant::now();
    let result = reconcile(obj, ctx.clone()).await;
    ctx.metrics
        .observe(start.elapsed().as_secs_f64(), result.as_ref().err());
    result
}

#[instrument(skip(ctx, obj), fields(namespace = obj.namespace().unwrap_or_default(), name = obj.name_any()))]
async fn reconcile(obj: Arc<Jaeger>, ctx: Arc<Context>) -> Result<Action> {
    if obj.meta().deletion_timestamp.is_some() {
        // The garbage collector removes the children.
        return Ok(Action::await_change());
    }
    let outcome = converge(&obj, &ctx.client).await;
    let status = status(&obj, outcome.as_ref().map(|c| &c.deployment));
    let written = outcome
        .as_ref()
        .map(|c| c.written.clone())
        .unwrap_or_default();
    if obj.status.as_ref().map(own_part).as_ref() != Some(&status) {
        let previous = obj.status.as_ref().and_then(|s| s.phase);
        if let Err(e) = write_status(&obj, &ctx.client, &status).await {
            tracing::warn!(error = %e, "could not write the status");
        }
        if status.phase != previous && status.phase == Some(Phase::Running) {
            publish(
                &ctx,
                &obj,
                EventType::Normal,
                "Available",
                "the backend Deployment is available".into(),
            )
            .await;
        }
    }
    if !written.is_empty() {
        tracing::info!(objects = %written.join(", "), "applied");
        publish(
            &ctx,
            &obj,
            EventType::Normal,
            "Applied",
            format!("applied {}", written.join(", ")),
        )
        .await;
    }
    match outcome {
        Ok(_) => {
            if written.is_empty() {
                tracing::debug!("in sync: nothing to write");
            }
            ctx.failures().remove(&ObjectRef::from_obj(&*obj));
            Ok(Action::requeue(RESYNC))
        }
        Err(e) => {
            tracing::warn!(error = %e, "reconcile failed");
            publish(
                &ctx,
                &obj,
                EventType::Warning,
                "ReconcileFailed",
                e.to_string(),
            )
            .await;
            Err(e)
        }
    }
}

/// Retries a failing instance after 2, 4, 8, … seconds, at most [`MAX_BACKOFF`].
fn error_policy(obj: Arc<Jaeger>, _error: &Error, ctx: Arc<Context>) -> Action {
    let mut failures = ctx.failures();
    let count = failures.entry(ObjectRef::from_obj(&*obj)).or_insert(0);
    *count = count.saturating_add(1);
    let delay = Duration::from_secs(1u64.checked_shl(*count).unwrap_or(u64::MAX)).min(MAX_BACKOFF);
    Action::requeue(delay)
}

/// What one successful pass left behind.
struct Converged {
    deployment: Deployment,
    /// `Kind name` of every object written.
    written: Vec<String>,
}

async fn converge(jaeger: &Jaeger, client: &Client) -> Result<Converged> {
    let namespace = jaeger.namespace().unwrap_or_default();
    let children = children::desired(jaeger).ok_or_else(|| {
        Error::MissingField(format!("Jaeger {namespace}/{}", jaeger.name_any()), "uid")
    })?;
    let mut written = Vec::new();
    let mut note = |kind: &str, name: String, changed: bool| {
        if changed {
            written.push(format!("{kind} {name}"));
        }
    };
    let (sa, changed) = apply::ensure(
        &Api::namespaced(client.clone(), &namespace),
        children.service_account,
    )
    .await?;
    note("ServiceAccount", sa.name_any(), changed);
    let (cm, changed) = apply::ensure(
        &Api::namespaced(client.clone(), &namespace),
        children.sampling,
    )
    .await?;
    note("ConfigMap", cm.name_any(), changed);
    let (deployment, changed) = apply::ensure(
        &Api::<Deployment>::namespaced(client.clone(), &namespace),
        children.deployment,
    )
    .await?;
    note("Deployment", deployment.name_any(), changed);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    for service in children.services {
        let (service, changed) = apply::ensure(&services, service).await?;
        note("Service", service.name_any(), changed);
    }
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &namespace);
    match children.ingress {
        Some(ingress) => {
            let (ingress, changed) = apply::ensure(&ingresses, ingress).await?;
            note("Ingress", ingress.name_any(), changed);
        }
        None => {
            let name = children::query_name(&jaeger.name_any());
            if let Some(existing) = ingresses.get_metadata_opt(&name).await?
                && owned_by(existing.owner_references(), jaeger)
            {
                ingresses.delete(&name, &DeleteParams::background()).await?;
                written.push(format!("Ingress {name} (deleted)"));
            }
        }
    }
    Ok(Converged {
        deployment,
        written,
    })
}

/// Is `jaeger` the controller of an object with these owner references? (An Ingress
/// of the same name that someone else made is left alone.)
fn owned_by(
    owners: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
    jaeger: &Jaeger,
) -> bool {
    owners
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == jaeger.meta().uid.as_ref())
}

/// The status for this pass: `Failed` with the error, else `Running` once the
/// Deployment is available, else `Pending`. The Ready condition keeps its transition
/// time while its status stays the same.
fn status(jaeger: &Jaeger, outcome: Result<&Deployment, &Error>) -> JaegerStatus {
    let (phase, ready, reason, message) = match outcome {
        Err(e) => (Phase::Failed, false, "ReconcileFailed", e.to_string()),
        Ok(deployment) => {
            let (available, message) = availability(deployment);
            if available {
                (Phase::Running, true, "DeploymentAvailable", message)
            } else {
                (Phase::Pending, false, "DeploymentNotAvailable", message)
            }
        }
    };
    let ready = if ready { "True" } else { "False" };
    let generation = jaeger.meta().generation;
    let previous = jaeger
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match previous {
        Some(p) if p.status == ready => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let namespace = jaeger.namespace().unwrap_or_default();
    let name = jaeger.name_any();
    JaegerStatus {
        phase: Some(phase),
        conditions: vec![Condition {
            type_: "Ready".into(),
            status: ready.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: generation,
        }],
        observed_generation: generation,
        collector_endpoint: Some(children::collector_endpoint(&namespace, &name)),
        query_endpoint: Some(children::query_endpoint(&namespace, &name)),
        // The Pod counts are the Pod watch's (another field manager): never written,
        // nor compared, here.
        injected_pods: None,
        missing_pods: None,
    }
}

/// The part of a stored status the reconciler writes.
fn own_part(status: &JaegerStatus) -> JaegerStatus {
    JaegerStatus {
        injected_pods: None,
        missing_pods: None,
        ..status.clone()
    }
}

/// Whether the Deployment is available (its `Available` condition, which the
/// Deployment controller sets once enough Pods are ready), and a message saying so.
fn availability(deployment: &Deployment) -> (bool, String) {
    let status = deployment.status.as_ref();
    let wanted = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let ready = status.and_then(|s| s.available_replicas).unwrap_or(0);
    let available = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Available" && c.status == "True");
    (
        available && ready > 0,
        format!("{ready}/{wanted} backend replicas available"),
    )
}

async fn write_status(jaeger: &Jaeger, client: &Client, status: &JaegerStatus) -> Result<()> {
    let api: Api<Jaeger> = Api::namespaced(client.clone(), &jaeger.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": "tracehook.dev/v1alpha1",
        "kind": "Jaeger",
        "status": status,
    });
    api.patch_status(
        &jaeger.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(ctx: &Context, jaeger: &Jaeger, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(crate::inject::text::truncate(&note, 1024).to_owned()),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &jaeger.object_ref(&())).await {
        tracing::warn!(error = %e, "could not publish an Event");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn jaeger(status: Value) -> Jaeger {
        serde_json::from_value(json!({
            "apiVersion": "tracehook.dev/v1alpha1",
            "kind": "Jaeger",
            "metadata": {"name": "test", "namespace": "obs", "uid": "1", "generation": 3},
            "spec": {},
            "status": status,
        }))
        .expect("a valid Jaeger")
    }

    fn deployment(status: Value) -> Deployment {
        serde_json::from_value(
            json!({"spec": {"replicas": 1, "selector": {}, "template": {}}, "status": status}),
        )
        .expect("a valid Deployment")
    }

    #[test]
    fn running_once_the_deployment_is_available() {
        let d = deployment(
            json!({"availableReplicas": 1, "conditions": [{"type": "Available", "status": "True"}]}),
        );
        let s = status(&jaeger(json!({})), Ok(&d));
        assert_eq!(s.phase, Some(Phase::Running));
        assert_eq!(s.conditions[0].reason, "DeploymentAvailable");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(
            s.collector_endpoint.as_deref(),
            Some("test-collector.obs.svc:4317")
        );
        assert_eq!(
            s.query_endpoint.as_deref(),
            Some("http://test-query.obs.svc:16686")
        );
    }

    #[test]
    fn pending_until_then() {
        let s = status(&jaeger(json!({})), Ok(&deployment(json!({}))));
        assert_eq!(s.phase, Some(Phase::Pending));
        assert_eq!(s.conditions[0].status, "False");
    }

    #[test]
    fn an_error_is_a_failed_condition() {
        let s = status(
            &jaeger(json!({})),
            Err(&Error::MissingField("Jaeger obs/test".into(), "uid")),
        );
        assert_eq!(s.phase, Some(Phase::Failed));
        assert_eq!(s.conditions[0].reason, "ReconcileFailed");
        assert!(
            s.conditions[0]
                .message
                .contains("Jaeger obs/test has no uid")
        );
    }

    #[test]
    fn an_unchanged_status_is_equal_to_the_stored_one() {
        let d = deployment(json!({}));
        let first = status(&jaeger(json!({})), Ok(&d));
        let stored = jaeger(serde_json::to_value(&first).expect("status"));
        assert_eq!(stored.status.as_ref(), Some(&status(&stored, Ok(&d))));
    }

    #[test]
    fn the_pod_counts_of_another_manager_are_not_the_reconcilers_to_write() {
        let d = deployment(json!({}));
        let first = status(&jaeger(json!({})), Ok(&d));
        let mut stored = serde_json::to_value(&first).expect("status");
        stored["injectedPods"] = 12.into();
        stored["missingPods"] = 3.into();
        let stored = jaeger(stored);
        let own = stored.status.as_ref().map(own_part);
        assert_eq!(
            own.as_ref(),
            Some(&status(&stored, Ok(&d))),
            "nothing to write"
        );
        let serialized = serde_json::to_value(status(&stored, Ok(&d))).expect("JSON");
        assert!(serialized.get("injectedPods").is_none(), "{serialized}");
    }
}
