//! What the benches share: the Pods, and the world the engine sees (namespace `shop`
//! labelled for injection, the instance `obs/test`, the ConfigMap `shop-common`).

#![allow(dead_code)] // each bench uses part of it

pub mod pods;

use std::sync::Arc;

use serde_json::Value;
use tracehook::cluster::{FixedWorld, Lookup};
use tracehook::inject::{
    self, Decision, EnvFromKeys, Instance, Instances, NamespaceMeta, Settings,
};
use tracehook::server::Context;

pub struct Engine {
    namespace: NamespaceMeta,
    instances: Vec<Instance>,
    env_from: EnvFromKeys,
    settings: Settings,
}

impl Engine {
    pub fn new() -> Self {
        Self {
            namespace: shop(),
            instances: instances(),
            env_from: EnvFromKeys {
                config_maps: [(
                    "shop-common".to_owned(),
                    (0..10).map(|i| format!("KEY_{i}")).collect(),
                )]
                .into(),
            },
            settings: Settings::default(),
        }
    }

    pub fn decide(&self, pod: &Value) -> Decision {
        inject::decide(&inject::Input {
            pod,
            namespace: &self.namespace,
            workload: None,
            instances: Instances::Known(&self.instances),
            env_from: &self.env_from,
            settings: &self.settings,
        })
    }
}

fn shop() -> NamespaceMeta {
    let mut ns = NamespaceMeta::named("shop");
    ns.labels
        .insert("tracehook.dev/injection".into(), "enabled".into());
    ns
}

fn instances() -> Vec<Instance> {
    vec![Instance {
        namespace: "obs".into(),
        name: "test".into(),
        ..Instance::default()
    }]
}

/// The webhook's context without a cluster, as `tracehook serve --no-cluster` has it.
pub fn context() -> Arc<Context> {
    let world = FixedWorld {
        namespaces: [("shop".to_owned(), shop())].into(),
        instances: instances().into(),
    };
    Arc::new(Context::new(
        Settings::default(),
        Lookup::Fixed(Arc::new(world)),
    ))
}
