//! The Kubernetes side of the webhook: what the engine needs to know about a Pod's
//! surroundings, served from in-memory caches so that an admission request costs no
//! API round trip (a just-created owner missing from the cache costs one bounded GET).

pub mod caches;
pub mod events;
pub mod heal;
pub mod missing;
pub mod registration;
pub mod unseen;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::Value;

use crate::inject::{EnvFromKeys, Instance, NamespaceMeta, Workload};

pub use caches::Caches;

/// What the engine needs for one Pod, gathered before calling it.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub namespace: NamespaceMeta,
    pub workload: Option<Workload>,
    pub instances: Arc<[Instance]>,
    pub env_from: EnvFromKeys,
    /// Something could not be looked up; injection went ahead without it.
    pub warnings: Vec<String>,
}

/// Where the surroundings come from.
#[derive(Clone)]
pub enum Lookup {
    /// Fixed data, for `tracehook serve` without a cluster and for handler tests.
    Fixed(Arc<FixedWorld>),
    /// The API server, through reflector caches.
    Live(Arc<Caches>),
}

/// Namespaces and instances given up front.
#[derive(Clone, Debug, Default)]
pub struct FixedWorld {
    pub namespaces: BTreeMap<String, NamespaceMeta>,
    pub instances: Arc<[Instance]>,
}

impl Lookup {
    pub async fn snapshot(&self, namespace: &str, pod: &Value) -> Snapshot {
        match self {
            Lookup::Fixed(world) => Snapshot {
                namespace: world
                    .namespaces
                    .get(namespace)
                    .cloned()
                    .unwrap_or_else(|| NamespaceMeta::named(namespace)),
                workload: None,
                instances: world.instances.clone(),
                env_from: EnvFromKeys::default(),
                warnings: Vec::new(),
            },
            Lookup::Live(caches) => caches.snapshot(namespace, pod).await,
        }
    }

    /// Are the caches filled (the `/readyz` condition)?
    pub fn is_synced(&self) -> bool {
        match self {
            Lookup::Fixed(_) => true,
            Lookup::Live(caches) => caches.is_synced(),
        }
    }
}
