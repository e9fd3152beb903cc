//! AdmissionReview v1 requests as the API server sends them.

use serde_json::{Value, json};

/// The Pod `demo/web`: one container, nothing asked for but the namespace's label.
pub fn pod() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web", "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.27"}]}
    })
}

/// A review of `object` in namespace `demo`; `resource` is `pods` or (anything else)
/// `deployments`.
pub fn review_of(uid: &str, resource: &str, operation: &str, object: Value) -> Value {
    let (group, kind) = match resource {
        "pods" => ("", "Pod"),
        _ => ("apps", "Deployment"),
    };
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "namespace": "demo",
            "operation": operation,
            "userInfo": {"username": "admin"},
            "object": object,
            "dryRun": false
        }
    })
}

/// The creation of [`pod`].
pub fn pod_review(uid: &str) -> Value {
    review_of(uid, "pods", "CREATE", pod())
}
