//! Synthetic Pods of a chosen size, shaped like real workloads: several containers
//! with ports, probes, resources, environment variables (plain values and downward-API
//! references) and volume mounts, owned by a Deployment's ReplicaSet and asking for
//! injection by annotation. Shared by the criterion benches and the load driver.

use serde_json::{Value, json};

/// How big a Pod is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub containers: usize,
    /// Environment variables over the whole Pod, spread evenly over its containers.
    pub env_vars: usize,
    pub volumes: usize,
}

/// One container, nothing else: the smallest Pod that gets injected.
pub const MINIMAL: Shape = Shape {
    containers: 1,
    env_vars: 0,
    volumes: 0,
};

/// 3 containers (app, a proxy, a log shipper), 40 env vars, 4 volumes.
pub const TYPICAL: Shape = Shape {
    containers: 3,
    env_vars: 40,
    volumes: 4,
};

/// Istio's pathological case (istio#34799): 20 containers, 1,500 env vars.
pub const LARGE: Shape = Shape {
    containers: 20,
    env_vars: 1500,
    volumes: 20,
};

impl Shape {
    /// The typical Pod `k` times over: `3k` containers, `40k` env vars, `4k` volumes.
    pub fn typical_times(k: usize) -> Shape {
        Shape {
            containers: TYPICAL.containers * k,
            env_vars: TYPICAL.env_vars * k,
            volumes: TYPICAL.volumes * k,
        }
    }
}

/// The Pod (as the API server sends it in an AdmissionReview: defaults not yet set).
pub fn pod(shape: Shape) -> Value {
    let volumes: Vec<Value> = (0..shape.volumes)
        .map(|v| match v % 4 {
            0 => json!({"name": volume_name(v), "configMap": {"name": format!("app-config-{v}")}}),
            1 => {
                json!({"name": volume_name(v), "secret": {"secretName": format!("app-secret-{v}")}})
            }
            2 => json!({"name": volume_name(v), "emptyDir": {"sizeLimit": "256Mi"}}),
            _ => json!({"name": volume_name(v), "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
            ]}}),
        })
        .collect();
    let containers: Vec<Value> = (0..shape.containers).map(|c| container(c, shape)).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "shop-frontend-5d8f7c9b4-",
            "namespace": "shop",
            "labels": {
                "app.kubernetes.io/name": "frontend",
                "app.kubernetes.io/instance": "shop-frontend",
                "app.kubernetes.io/version": "2.4.1",
                "pod-template-hash": "5d8f7c9b4"
            },
            "annotations": {
                "tracehook.dev/inject": "true",
                "prometheus.io/scrape": "true",
                "prometheus.io/port": "9090"
            },
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "shop-frontend-5d8f7c9b4",
                "uid": "0b5e1f0c-3a8e-4c55-9d0f-6f1f5b1c2d3e",
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "serviceAccountName": "frontend",
            "securityContext": {"runAsNonRoot": true, "fsGroup": 2000},
            "containers": containers,
            "volumes": volumes,
            "terminationGracePeriodSeconds": 30
        }
    })
}

fn volume_name(v: usize) -> String {
    format!("volume-{v}")
}

fn container(c: usize, shape: Shape) -> Value {
    let per = shape.env_vars / shape.containers;
    let extra = usize::from(c < shape.env_vars % shape.containers);
    let env: Vec<Value> = (0..per + extra)
        .map(|e| {
            if e % 10 == 9 {
                json!({"name": format!("SECRET_{c}_{e}"), "valueFrom": {"secretKeyRef": {"name": "app-secrets", "key": format!("key-{e}")}}})
            } else {
                json!({"name": format!("SETTING_{c}_{e}"), "value": format!("value-{c}-{e}-abcdefghijklmnop")})
            }
        })
        .collect();
    let mounts: Vec<Value> = (0..shape.volumes)
        .filter(|v| v % shape.containers.max(1) == c % shape.containers.max(1))
        .map(|v| json!({"name": volume_name(v), "mountPath": format!("/mnt/{}", volume_name(v)), "readOnly": true}))
        .collect();
    let port = 8000 + c;
    json!({
        "name": format!("app-{c}"),
        "image": format!("registry.example/shop/app-{c}:2.4.1"),
        "args": ["--listen", format!(":{port}"), "--log-format=json"],
        "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "envFrom": [{"configMapRef": {"name": "shop-common"}, "prefix": "SHOP_"}],
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"cpu": "1", "memory": "512Mi"}
        },
        "readinessProbe": {"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/health", "port": port}, "periodSeconds": 10},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true}
    })
}

/// An AdmissionReview v1 for creating `pod` in its namespace, as the API server sends it.
pub fn review(pod: &Value, uid: &str) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": pod.pointer("/metadata/namespace").cloned().unwrap_or(json!("default")),
            "operation": "CREATE",
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "4a0f7f0e-2b6c-4f0e-8f4e-0c7d1d8a9b10",
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]
            },
            "object": pod,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}
