//! The fixed world of the in-process tests: namespace `demo` labelled for injection
//! and one instance, `obs/test`.

use std::sync::Arc;

use tracehook::cluster::{FixedWorld, Lookup};
use tracehook::inject::{Instance, NamespaceMeta, Settings};
use tracehook::server::Context;

/// Namespace `demo` labelled for injection, and one instance, `obs/test`.
pub fn context() -> Arc<Context> {
    let mut demo = NamespaceMeta::named("demo");
    demo.labels
        .insert("tracehook.dev/injection".into(), "enabled".into());
    let world = FixedWorld {
        namespaces: [("demo".to_owned(), demo)].into(),
        instances: vec![Instance {
            namespace: "obs".into(),
            name: "test".into(),
            ..Instance::default()
        }]
        .into(),
    };
    Arc::new(Context::new(
        Settings::default(),
        Lookup::Fixed(Arc::new(world)),
    ))
}
