//! Server-side apply that writes only when something differs.
//!
//! An apply is skipped when the object exists and already holds every field tracehook
//! would set, with tracehook's values. Fields the API server or other managers add
//! are ignored. A field tracehook stops setting (a label removed from `spec.labels`)
//! leaves nothing to compare, so every child also carries a hash of its desired
//! content: a changed desire changes the hash, which differs from the stored one and
//! leads to an apply, and server-side apply then removes what tracehook no longer owns.

use std::fmt::Debug;

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::Result;
use crate::inject::quantity;

/// The field manager of everything the reconciler writes.
pub const MANAGER: &str = "tracehook";

/// Annotation holding the hash of a child's desired content.
pub const HASH_ANNOTATION: &str = "tracehook.dev/desired-hash";

pub use crate::inject::text::fnv1a;

/// Puts the hash of `object`'s content into its annotations.
pub fn stamp<K: Resource + Serialize>(object: &mut K) -> Result<()> {
    let hash = fnv1a(&serde_json::to_vec(&*object)?);
    object
        .annotations_mut()
        .insert(HASH_ANNOTATION.to_owned(), format!("{hash:016x}"));
    Ok(())
}

/// Does `have` (an object as stored) hold everything in `want` (as tracehook would
/// apply it)? Maps may hold more keys; lists must match item by item; empty values
/// match absent ones (the API server drops them); resource quantities compare by
/// value (`"1000m"` is stored as `"1"`).
pub fn satisfied(want: &Value, have: &Value) -> bool {
    covers(want, Some(have), None)
}

fn covers(want: &Value, have: Option<&Value>, key: Option<&str>) -> bool {
    let Some(have) = have else {
        return is_empty(want);
    };
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => {
            let quantities = matches!(key, Some("requests" | "limits"));
            w.iter().all(|(k, v)| match (v, h.get(k)) {
                (Value::String(a), Some(Value::String(b))) if quantities => same_quantity(a, b),
                (v, h) => covers(v, h, Some(k)),
            })
        }
        (Value::Object(w), Value::Null) => w.values().all(is_empty),
        (Value::Array(w), Value::Array(h)) => {
            w.len() == h.len() && w.iter().zip(h).all(|(w, h)| covers(w, Some(h), None))
        }
        (Value::Array(w), Value::Null) => w.is_empty(),
        (w, h) => w == h,
    }
}

fn same_quantity(a: &str, b: &str) -> bool {
    a == b
        || matches!((quantity::parse(a), quantity::parse(b)), (Some(x), Some(y)) if (x - y).abs() <= f64::EPSILON * x.abs().max(y.abs()) * 4.0)
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(m) => m.values().all(is_empty),
        Value::Array(a) => a.is_empty(),
        _ => false,
    }
}

/// Applies `desired` unless the stored object already satisfies it. Returns the
/// object as stored and whether it was written.
pub async fn ensure<K>(api: &Api<K>, mut desired: K) -> Result<(K, bool)>
where
    K: Resource + Clone + Serialize + DeserializeOwned + Debug,
{
    stamp(&mut desired)?;
    let name = desired.name_any();
    if let Some(current) = api.get_opt(&name).await?
        && satisfied(
            &serde_json::to_value(&desired)?,
            &serde_json::to_value(&current)?,
        )
    {
        return Ok((current, false));
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    Ok((applied, true))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn server_added_fields_are_ignored() {
        let want = json!({"spec": {"ports": [{"name": "a", "port": 1}]}});
        let have = json!({"spec": {"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 1, "protocol": "TCP"}]}});
        assert!(satisfied(&want, &have));
    }

    #[test]
    fn a_changed_value_is_drift() {
        let want = json!({"spec": {"ports": [{"name": "a", "port": 1}]}});
        let have = json!({"spec": {"ports": [{"name": "a", "port": 2}]}});
        assert!(!satisfied(&want, &have));
    }

    #[test]
    fn a_missing_list_item_is_drift() {
        let want = json!({"args": ["a", "b"]});
        assert!(!satisfied(&want, &json!({"args": ["a"]})));
        assert!(!satisfied(&want, &json!({"args": ["a", "b", "c"]})));
    }

    #[test]
    fn empty_values_match_absent_ones() {
        let want = json!({"volumes": [{"name": "tmp", "emptyDir": {}}], "env": []});
        assert!(satisfied(
            &want,
            &json!({"volumes": [{"name": "tmp", "emptyDir": {}}]})
        ));
    }

    #[test]
    fn quantities_compare_by_value() {
        let want = json!({"resources": {"requests": {"cpu": "1000m", "memory": "1Gi"}}});
        let have = json!({"resources": {"requests": {"cpu": "1", "memory": "1Gi"}}});
        assert!(satisfied(&want, &have));
        let less = json!({"resources": {"requests": {"cpu": "999m", "memory": "1Gi"}}});
        assert!(!satisfied(&want, &less));
    }

    #[test]
    fn only_quantities_compare_by_value() {
        assert!(!satisfied(
            &json!({"labels": {"size": "1000m"}}),
            &json!({"labels": {"size": "1"}})
        ));
    }

    #[test]
    fn the_hash_follows_the_content() {
        let mut one = k8s_openapi::api::core::v1::ConfigMap::default();
        one.metadata.name = Some("x".into());
        let mut same = one.clone();
        let mut other = one.clone();
        other.metadata.labels = Some([("k".to_owned(), "v".to_owned())].into());
        for object in [&mut one, &mut same, &mut other] {
            stamp(object).expect("stamp");
        }
        let hash = |c: &k8s_openapi::api::core::v1::ConfigMap| {
            c.annotations().get(HASH_ANNOTATION).cloned()
        };
        assert_eq!(hash(&one), hash(&same));
        assert_ne!(hash(&one), hash(&other));
    }
}
