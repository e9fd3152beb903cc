//! Reflector caches of what injection decisions read: Namespaces, `Jaeger` instances
//! and the metadata of the workloads that own Pods (for the Jaeger operator's
//! annotation on a Deployment, StatefulSet, …). Metadata-only watches, with
//! managedFields dropped, keep the memory small.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{StreamExt as _, future};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, ResourceQuota};
use kube::api::{Api, PartialObjectMeta, ResourceExt as _};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::Snapshot;
use crate::crd::Jaeger;
use crate::inject::limits::{self, ResourcePolicy};
use crate::inject::{EnvFromKeys, Instance, NamespaceMeta, Workload, keys};

/// How long one cache-miss GET may take: well inside the webhook's 5 s timeout.
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(1500);

type MetaStore<K> = Store<PartialObjectMeta<K>>;

/// The namespaced kinds whose metadata is cached to follow a Pod's owners.
trait Workloadish:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Debug
    + Send
    + Sync
    + 'static
{
}

// Listed, not a blanket impl: the bounds are stated once, above.
impl Workloadish for ReplicaSet {}
impl Workloadish for Deployment {}
impl Workloadish for StatefulSet {}
impl Workloadish for DaemonSet {}
impl Workloadish for Job {}
impl Workloadish for CronJob {}

#[derive(Clone)]
pub struct Caches {
    client: Client,
    namespaces: MetaStore<Namespace>,
    instance_list: Arc<ArcSwap<Arc<[Instance]>>>,
    replica_sets: MetaStore<ReplicaSet>,
    deployments: MetaStore<Deployment>,
    stateful_sets: MetaStore<StatefulSet>,
    daemon_sets: MetaStore<DaemonSet>,
    jobs: MetaStore<Job>,
    cron_jobs: MetaStore<CronJob>,
    /// ConfigMaps with their keys only (values dropped as they arrive), for `envFrom`.
    config_maps: Store<ConfigMap>,
    /// LimitRanges and ResourceQuotas by namespace, rebuilt on every change of either.
    policies: Arc<ArcSwap<BTreeMap<String, ResourcePolicy>>>,
    rollouts: rollouts::Rollouts,
    synced: Arc<AtomicBool>,
}

impl Caches {
    /// Starts the watches; [`Caches::is_synced`] turns true once every cache is filled.
    pub fn start(client: Client) -> Self {
        let instance_list: Arc<ArcSwap<Arc<[Instance]>>> =
            Arc::new(ArcSwap::from_pointee(Arc::from(Vec::new())));
        let (jaeger_store, jaeger_ready) = watch_instances(client.clone(), instance_list.clone());
        let namespaces = watch_metadata::<Namespace>(client.clone());
        let policies = Arc::new(ArcSwap::from_pointee(BTreeMap::new()));
        let (limit_ranges, quotas) = watch_policies(client.clone(), policies.clone());
        let caches = Self {
            config_maps: watch_config_map_keys(client.clone()),
            policies,
            rollouts: rollouts::Rollouts::start(client.clone()),
            namespaces: namespaces.clone(),
            instance_list,
            replica_sets: watch_metadata(client.clone()),
            deployments: watch_metadata(client.clone()),
            stateful_sets: watch_metadata(client.clone()),
            daemon_sets: watch_metadata(client.clone()),
            jobs: watch_metadata(client.clone()),
            cron_jobs: watch_metadata(client.clone()),
            synced: Arc::new(AtomicBool::new(false)),
            client,
        };
        let waiting = caches.clone();
        tokio::spawn(async move {
            let all = future::join_all([
                Box::pin(async { waiting.namespaces.wait_until_ready().await.is_ok() })
                    as std::pin::Pin<Box<dyn Future<Output = bool> + Send>>,
                Box::pin(async { jaeger_store.wait_until_ready().await.is_ok() }),
                Box::pin(async {
                    jaeger_ready.notified().await;
                    true
                }),
                Box::pin(async { waiting.replica_sets.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.deployments.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.stateful_sets.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.daemon_sets.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.jobs.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.cron_jobs.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.config_maps.wait_until_ready().await.is_ok() }),
                Box::pin(async { limit_ranges.wait_until_ready().await.is_ok() }),
                Box::pin(async { quotas.wait_until_ready().await.is_ok() }),
                Box::pin(async { waiting.rollouts.wait_until_ready().await }),
            ])
            .await;
            if all.into_iter().all(|ok| ok) {
                tracing::info!("caches synced");
                waiting.synced.store(true, Ordering::Release);
            }
        });
        caches
    }

    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The known instances, as the engine sees them.
    pub fn instances(&self) -> Arc<[Instance]> {
        self.instance_list.load_full().as_ref().clone()
    }

    pub async fn snapshot(&self, namespace: &str, pod: &Value) -> Snapshot {
        let mut warnings = Vec::new();
        let namespace_meta = match self.namespace(namespace).await {
            Ok(meta) => meta,
            Err(e) => {
                warnings.push(format!("namespace {namespace} could not be read ({e}); its labels and annotations were not considered"));
                NamespaceMeta::named(namespace)
            }
        };
        let workload = match self.workload(namespace, pod).await {
            Ok(w) => w,
            Err(e) => {
                warnings.push(format!(
                    "the Pod's owner could not be read ({e}); its annotations were not considered"
                ));
                None
            }
        };
        let env_from = self.env_from(namespace, pod, &mut warnings).await;
        Snapshot {
            namespace: namespace_meta,
            workload,
            instances: self.instances(),
            env_from,
            warnings,
        }
    }

    async fn namespace(&self, name: &str) -> Result<NamespaceMeta, String> {
        let meta =
            cached_or_get(&self.namespaces, Api::all(self.client.clone()), None, name).await?;
        Ok(match meta {
            Some(ns) => NamespaceMeta {
                name: name.to_owned(),
                labels: ns.labels().clone(),
                annotations: ns.annotations().clone(),
                policy: self.policy(name),
            },
            None => NamespaceMeta::named(name),
        })
    }

    /// Workloads whose annotation asks for injection (not `false`) in a namespace that
    /// is neither labelled `enabled` nor says no itself: with the default
    /// `labeled-namespaces` registration, the API server never sends their Pods.
    pub fn unseen_requests(&self, own_namespace: &str) -> Vec<UnseenRequest> {
        let not_enabled = |namespace: &str| {
            if keys::SYSTEM_NAMESPACES.contains(&namespace) || namespace == own_namespace {
                return false;
            }
            let Some(ns) = self.namespaces.get(&ObjectRef::new(namespace)) else {
                return false;
            };
            let label = ns.labels().get(keys::INJECTION_LABEL).map(String::as_str);
            let annotation = [keys::INJECT, keys::JAEGER_OPERATOR_INJECT]
                .iter()
                .find_map(|k| ns.annotations().get(*k));
            label.is_none() && annotation.is_none_or(|a| !a.trim().eq_ignore_ascii_case("false"))
        };
        let mut found = Vec::new();
        collect_unseen(&self.deployments, "apps/v1", &not_enabled, &mut found);
        collect_unseen(&self.stateful_sets, "apps/v1", &not_enabled, &mut found);
        collect_unseen(&self.daemon_sets, "apps/v1", &not_enabled, &mut found);
        collect_unseen(&self.cron_jobs, "batch/v1", &not_enabled, &mut found);
        found
    }

    fn policy(&self, namespace: &str) -> ResourcePolicy {
        self.policies
            .load()
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }

    /// Follows the Pod's controller ownerReferences up to the workload a user wrote.
    async fn workload(&self, namespace: &str, pod: &Value) -> Result<Option<Workload>, String> {
        let Some((kind, name)) = controller_of(pod.get("metadata")) else {
            return Ok(None);
        };
        let found = match kind.as_str() {
            "ReplicaSet" => {
                self.owned(namespace, &name, &self.replica_sets, &self.deployments)
                    .await?
            }
            "Job" => {
                self.owned(namespace, &name, &self.jobs, &self.cron_jobs)
                    .await?
            }
            "StatefulSet" => self.top(namespace, &name, &self.stateful_sets).await?,
            "DaemonSet" => self.top(namespace, &name, &self.daemon_sets).await?,
            _ => workload(&kind, &name, None),
        };
        Ok(Some(found))
    }

    /// A workload at the top of the chain (StatefulSet, DaemonSet, or the owner found
    /// by [`Caches::owned`]).
    async fn top<K: Workloadish>(
        &self,
        namespace: &str,
        name: &str,
        store: &MetaStore<K>,
    ) -> Result<Workload, String> {
        let api = Api::namespaced(self.client.clone(), namespace);
        let found = cached_or_get(store, api, Some(namespace), name).await?;
        Ok(workload(
            &K::kind(&()),
            name,
            found.as_deref().map(|o| o.annotations()),
        ))
    }

    /// The owner of `name` (a ReplicaSet or Job) when it is of kind `P` (its Deployment
    /// or CronJob); a controller tracehook does not cache (an Argo Rollout) by name
    /// only; `name` itself when nothing controls it.
    async fn owned<K: Workloadish, P: Workloadish>(
        &self,
        namespace: &str,
        name: &str,
        store: &MetaStore<K>,
        parents: &MetaStore<P>,
    ) -> Result<Workload, String> {
        let api = Api::namespaced(self.client.clone(), namespace);
        let Some(object) = cached_or_get(store, api, Some(namespace), name).await? else {
            return Ok(workload(&K::kind(&()), name, None));
        };
        match owner_of(object.owner_references()) {
            Some((kind, parent)) if kind == P::kind(&()) => {
                self.top(namespace, &parent, parents).await
            }
            Some((kind, parent)) if kind == "Rollout" => {
                let annotations = self.rollouts.annotations(namespace, &parent).await?;
                Ok(workload(&kind, &parent, annotations.as_ref()))
            }
            Some((kind, parent)) => Ok(workload(&kind, &parent, None)),
            None => Ok(workload(&K::kind(&()), name, Some(object.annotations()))),
        }
    }

    /// The keys of the ConfigMaps app containers import with `envFrom`, so variables
    /// they define are not overridden. Secrets are never read.
    async fn env_from(
        &self,
        namespace: &str,
        pod: &Value,
        warnings: &mut Vec<String>,
    ) -> EnvFromKeys {
        let names: BTreeSet<&str> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c.get("envFrom")?.as_array())
            .flatten()
            .filter_map(|s| s.get("configMapRef")?.get("name")?.as_str())
            .collect();
        let mut config_maps = BTreeMap::new();
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        for name in names {
            let key = ObjectRef::new(name).within(namespace);
            let found = match self.config_maps.get(&key) {
                Some(cm) => Some(keys_of(&cm)),
                // Not in the cache: created a moment ago, or missing. One bounded GET.
                None => match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_opt(name)).await {
                    Ok(Ok(cm)) => Some(cm.as_ref().map(keys_of).unwrap_or_default()),
                    Ok(Err(e)) => {
                        warnings.push(format!("ConfigMap {name} could not be read ({e})"));
                        None
                    }
                    Err(_) => {
                        warnings.push(format!("ConfigMap {name} could not be read in time"));
                        None
                    }
                },
            };
            // A missing ConfigMap defines nothing (the kubelet fails the container
            // unless the reference is optional).
            if let Some(keys) = found {
                config_maps.insert(name.to_owned(), keys);
            }
        }
        EnvFromKeys { config_maps }
    }
}

/// A workload asking for injection where the webhook is not called.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnseenRequest {
    pub namespace: String,
    pub api_version: &'static str,
    pub kind: String,
    pub name: String,
    pub uid: Option<String>,
    /// The annotation that asks, and its value.
    pub key: &'static str,
    pub value: String,
}

fn collect_unseen<K: Workloadish>(
    store: &MetaStore<K>,
    api_version: &'static str,
    not_enabled: &dyn Fn(&str) -> bool,
    found: &mut Vec<UnseenRequest>,
) {
    for object in store.state() {
        let namespace = object.namespace().unwrap_or_default();
        let asking = [keys::INJECT, keys::JAEGER_OPERATOR_INJECT]
            .into_iter()
            .find_map(|k| Some((k, object.annotations().get(k)?)));
        let Some((key, value)) = asking else { continue };
        if value.trim().eq_ignore_ascii_case("false") || !not_enabled(&namespace) {
            continue;
        }
        found.push(UnseenRequest {
            namespace,
            api_version,
            kind: K::kind(&()).into_owned(),
            name: object.name_any(),
            uid: object.uid(),
            key,
            value: value.clone(),
        });
    }
}

fn workload(kind: &str, name: &str, annotations: Option<&BTreeMap<String, String>>) -> Workload {
    Workload {
        kind: kind.to_owned(),
        name: name.to_owned(),
        annotations: annotations.cloned().unwrap_or_default(),
    }
}

fn controller_of(metadata: Option<&Value>) -> Option<(String, String)> {
    let owner = crate::inject::decide::controller_reference(metadata)?;
    Some((
        owner.get("kind")?.as_str()?.to_owned(),
        owner.get("name")?.as_str()?.to_owned(),
    ))
}

fn owner_of(
    refs: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference],
) -> Option<(String, String)> {
    refs.iter()
        .find(|r| r.controller == Some(true))
        .map(|r| (r.kind.clone(), r.name.clone()))
}

/// The cached object, or — on a miss, e.g. an owner created a moment ago — one GET
/// bounded by [`LOOKUP_TIMEOUT`]. `Ok(None)`: it does not exist.
async fn cached_or_get<K>(
    store: &MetaStore<K>,
    api: Api<K>,
    namespace: Option<&str>,
    name: &str,
) -> Result<Option<Arc<PartialObjectMeta<K>>>, String>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let key = match namespace {
        Some(ns) => ObjectRef::new(name).within(ns),
        None => ObjectRef::new(name),
    };
    if let Some(found) = store.get(&key) {
        return Ok(Some(found));
    }
    match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(name)).await {
        Ok(Ok(found)) => Ok(found.map(Arc::new)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no answer within {} ms",
            LOOKUP_TIMEOUT.as_millis()
        )),
    }
}

fn watch_metadata<K>(client: Client) -> MetaStore<K>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    // An Api of PartialObjectMeta makes metadata-only requests.
    let api = Api::<PartialObjectMeta<K>>::all(client);
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|meta: &mut PartialObjectMeta<K>| meta.managed_fields_mut().clear())
        .reflect(writer)
        .for_each(|event| {
            if let Err(e) = event {
                tracing::warn!(kind = %K::kind(&()), error = %e, "watch failed; retrying");
            }
            future::ready(())
        });
    tokio::spawn(stream);
    reader
}

fn watch_instances(
    client: Client,
    list: Arc<ArcSwap<Arc<[Instance]>>>,
) -> (Store<Jaeger>, Arc<tokio::sync::Notify>) {
    let (reader, writer) = reflector::store();
    let ready = Arc::new(tokio::sync::Notify::new());
    let store = reader.clone();
    let notify = ready.clone();
    let stream = watcher(
        Api::<Jaeger>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|j: &mut Jaeger| j.managed_fields_mut().clear())
    .reflect(writer)
    .for_each(move |event| {
        match event {
            Ok(watcher::Event::InitDone)
            | Ok(watcher::Event::Apply(_))
            | Ok(watcher::Event::Delete(_)) => {
                let mut instances: Vec<Instance> = store
                    .state()
                    .iter()
                    .filter_map(|j| j.to_instance())
                    .collect();
                instances.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
                list.store(Arc::new(Arc::from(instances)));
                notify.notify_one();
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "watch of Jaeger instances failed; retrying"),
        }
        future::ready(())
    });
    tokio::spawn(stream);
    (reader, ready)
}

fn keys_of(cm: &ConfigMap) -> Vec<String> {
    let mut keys: Vec<String> = cm.data.iter().flatten().map(|(k, _)| k.clone()).collect();
    keys.extend(cm.binary_data.iter().flatten().map(|(k, _)| k.clone()));
    keys
}

/// Watches ConfigMaps and keeps their names and keys only: values (which may be large,
/// and are not tracehook's business) are dropped as each object arrives.
fn watch_config_map_keys(client: Client) -> Store<ConfigMap> {
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream = watcher(
        Api::<ConfigMap>::all(client),
        watcher::Config::default().any_semantic(),
    )
    .default_backoff()
    .modify(|cm: &mut ConfigMap| {
        cm.managed_fields_mut().clear();
        cm.annotations_mut().clear();
        cm.labels_mut().clear();
        for value in cm.data.iter_mut().flat_map(|d| d.values_mut()) {
            *value = String::new();
        }
        for value in cm.binary_data.iter_mut().flat_map(|d| d.values_mut()) {
            value.0 = Vec::new();
        }
    })
    .reflect(writer)
    .for_each(|event| {
        if let Err(e) = event {
            tracing::warn!(error = %e, "watch of ConfigMaps failed; retrying");
        }
        future::ready(())
    });
    tokio::spawn(stream);
    reader
}

/// Watches LimitRanges and ResourceQuotas (small objects, few per namespace) and keeps
/// what the engine reads of them by namespace.
fn watch_policies(
    client: Client,
    policies: Arc<ArcSwap<BTreeMap<String, ResourcePolicy>>>,
) -> (Store<LimitRange>, Store<ResourceQuota>) {
    let (ranges, ranges_writer) = reflector::store::<LimitRange>();
    let (quotas, quotas_writer) = reflector::store::<ResourceQuota>();
    let rebuild = {
        let (ranges, quotas) = (ranges.clone(), quotas.clone());
        move || {
            let mut by_namespace: BTreeMap<String, ResourcePolicy> = BTreeMap::new();
            for r in ranges.state() {
                let spec = serde_json::to_value(&r.spec).ok();
                by_namespace
                    .entry(r.namespace().unwrap_or_default())
                    .or_default()
                    .limit_ranges
                    .push(limits::LimitRange::from_spec(&r.name_any(), spec.as_ref()));
            }
            for q in quotas.state() {
                let spec = serde_json::to_value(&q.spec).ok();
                let status = serde_json::to_value(&q.status).ok();
                by_namespace
                    .entry(q.namespace().unwrap_or_default())
                    .or_default()
                    .quotas
                    .push(limits::ResourceQuota::from_parts(
                        &q.name_any(),
                        spec.as_ref(),
                        status.as_ref(),
                    ));
            }
            policies.store(Arc::new(by_namespace));
        }
    };
    let on_ranges = rebuild.clone();
    spawn_watch(
        Api::<LimitRange>::all(client.clone()),
        ranges_writer,
        "LimitRanges",
        on_ranges,
    );
    spawn_watch(
        Api::<ResourceQuota>::all(client),
        quotas_writer,
        "ResourceQuotas",
        rebuild,
    );
    (ranges, quotas)
}

/// Watches every object of `api` into `writer` (managedFields dropped), calling
/// `changed` once the first list is in and after every change.
fn spawn_watch<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    what: &'static str,
    changed: impl Fn() + Send + 'static,
) where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let stream = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .modify(|o: &mut K| o.meta_mut().managed_fields = None)
        .reflect(writer)
        .for_each(move |event| {
            match event {
                Ok(
                    watcher::Event::InitDone | watcher::Event::Apply(_) | watcher::Event::Delete(_),
                ) => changed(),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "watch of {what} failed; retrying"),
            }
            future::ready(())
        });
    tokio::spawn(stream);
}

/// Argo Rollouts, a CRD that may or may not be installed: their metadata is watched
/// when the API server serves them at start-up, else each lookup is one bounded GET
/// (which finds them once Argo Rollouts is installed).
mod rollouts {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, RwLock};

    use futures::StreamExt as _;
    use kube::Client;
    use kube::api::{
        Api, ApiResource, DynamicObject, GroupVersionKind, PartialObjectMeta, ResourceExt as _,
    };
    use kube::runtime::{WatchStreamExt as _, watcher};

    use super::LOOKUP_TIMEOUT;

    type Annotations = BTreeMap<String, String>;
    /// (namespace, name) → annotations; `None` until the first list is in.
    type Known = Arc<RwLock<Option<HashMap<(String, String), Annotations>>>>;

    #[derive(Clone)]
    pub struct Rollouts {
        client: Client,
        resource: ApiResource,
        known: Known,
        /// Turns true once the watch has listed, or is known not to run.
        ready: tokio::sync::watch::Sender<bool>,
    }

    impl Rollouts {
        pub fn start(client: Client) -> Self {
            let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
            let rollouts = Self {
                resource: ApiResource::from_gvk_with_plural(&gvk, "rollouts"),
                client,
                known: Arc::new(RwLock::new(None)),
                ready: tokio::sync::watch::Sender::new(false),
            };
            let this = rollouts.clone();
            tokio::spawn(async move { this.run().await });
            rollouts
        }

        async fn run(self) {
            let gvk = GroupVersionKind::gvk("argoproj.io", "v1alpha1", "Rollout");
            let served = kube::discovery::pinned_kind(&self.client, &gvk)
                .await
                .is_ok();
            if !served {
                tracing::debug!(
                    "Argo Rollouts are not served: Rollout owners are looked up on demand"
                );
                self.ready.send_replace(true);
                return;
            }
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(self.client.clone(), &self.resource);
            let known = self.known.clone();
            let ready = self.ready.clone();
            let mut pending: HashMap<(String, String), Annotations> = HashMap::new();
            let stream = watcher(api, watcher::Config::default().any_semantic()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                let key = |o: &PartialObjectMeta<DynamicObject>| {
                    (o.namespace().unwrap_or_default(), o.name_any())
                };
                match event {
                    Ok(watcher::Event::Init) => pending.clear(),
                    Ok(watcher::Event::InitApply(o)) => {
                        pending.insert(key(&o), o.annotations().clone());
                    }
                    Ok(watcher::Event::InitDone) => {
                        *known.write().unwrap_or_else(|e| e.into_inner()) =
                            Some(std::mem::take(&mut pending));
                        ready.send_replace(true);
                    }
                    Ok(watcher::Event::Apply(o)) => {
                        if let Some(map) = known.write().unwrap_or_else(|e| e.into_inner()).as_mut()
                        {
                            map.insert(key(&o), o.annotations().clone());
                        }
                    }
                    Ok(watcher::Event::Delete(o)) => {
                        if let Some(map) = known.write().unwrap_or_else(|e| e.into_inner()).as_mut()
                        {
                            map.remove(&key(&o));
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "watch of Argo Rollouts failed; retrying"),
                }
            }
        }

        /// Resolves once the watch has listed, or it is known not to run.
        pub async fn wait_until_ready(&self) -> bool {
            self.ready
                .subscribe()
                .wait_for(|ready| *ready)
                .await
                .is_ok()
        }

        /// The annotations of Rollout `name`; `None` when it does not exist.
        pub async fn annotations(
            &self,
            namespace: &str,
            name: &str,
        ) -> Result<Option<Annotations>, String> {
            let key = (namespace.to_owned(), name.to_owned());
            if let Some(map) = self
                .known
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                && let Some(found) = map.get(&key)
            {
                return Ok(Some(found.clone()));
            }
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &self.resource);
            match tokio::time::timeout(LOOKUP_TIMEOUT, api.get_metadata_opt(name)).await {
                Ok(Ok(found)) => Ok(found.map(|o| o.annotations().clone())),
                // Not served: Argo Rollouts is not installed.
                Ok(Err(kube::Error::Api(e))) if e.code == 404 => Ok(None),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!(
                    "no answer within {} ms",
                    LOOKUP_TIMEOUT.as_millis()
                )),
            }
        }
    }
}
