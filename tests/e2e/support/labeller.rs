//! A second, independent mutating webhook for the reinvocation tests: on `/mutate` it
//! adds a label to Pods that lack it; on `/request-injection` it adds tracehook's
//! `tracehook.dev/inject: "true"` annotation (a policy engine or a platform's own
//! webhook doing so after tracehook has been called). Served over TLS on loopback like
//! tracehook itself.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use base64::Engine as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const LABEL: &str = "e2e.tracehook.dev/labelled";

pub struct Labeller {
    port: u16,
    ca_pem: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Labeller {
    pub async fn start() -> Labeller {
        let bundle = tracehook::tls::issue::generate(
            &["127.0.0.1".to_owned()],
            std::time::Duration::from_secs(3600),
        )
        .expect("certificate");
        let resolver = Arc::new(
            tracehook::tls::CertResolver::new(
                bundle.cert_pem.as_bytes(),
                bundle.key_pem.as_bytes(),
            )
            .expect("resolver"),
        );
        let config = tracehook::tls::server_config(resolver).expect("tls config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (stop, stopped) = oneshot::channel::<()>();
        let router = Router::new()
            .route("/mutate", post(label))
            .route("/request-injection", post(request_injection));
        tokio::spawn(tracehook::server::serve_tls(
            listener,
            tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            router,
            async {
                let _ = stopped.await;
            },
        ));
        Labeller {
            port,
            ca_pem: bundle.ca_pem,
            stop: Some(stop),
        }
    }

    /// A configuration that calls `/mutate` (adds [`LABEL`]) for Pods in `namespace`.
    pub fn configuration(&self, name: &str, namespace: &str) -> MutatingWebhookConfiguration {
        self.configuration_for("mutate", name, namespace)
    }

    /// A configuration that calls `/request-injection` for Pods in `namespace`.
    pub fn requesting_injection(
        &self,
        name: &str,
        namespace: &str,
    ) -> MutatingWebhookConfiguration {
        self.configuration_for("request-injection", name, namespace)
    }

    fn configuration_for(
        &self,
        path: &str,
        name: &str,
        namespace: &str,
    ) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "label.e2e.tracehook.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{}/{path}", self.port),
                    "caBundle": base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
                },
                "rules": [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]}],
                "sideEffects": "None",
                "reinvocationPolicy": "Never",
                "failurePolicy": "Fail",
                "timeoutSeconds": 5,
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            }]
        }))
        .expect("configuration")
    }
}

impl Drop for Labeller {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn label(body: Bytes) -> axum::Json<Value> {
    add_once(&body, "labels", LABEL)
}

async fn request_injection(body: Bytes) -> axum::Json<Value> {
    add_once(&body, "annotations", "tracehook.dev/inject")
}

/// The review's answer: `key: "true"` added to the Pod's `field` (labels or
/// annotations) unless it is there already.
fn add_once(body: &[u8], field: &str, key: &str) -> axum::Json<Value> {
    let review: Value = serde_json::from_slice(body).unwrap_or_default();
    let uid = review.pointer("/request/uid").cloned().unwrap_or_default();
    let map = review.pointer(&format!("/request/object/metadata/{field}"));
    let mut response = json!({"uid": uid, "allowed": true});
    if map.and_then(|m| m.get(key)).is_none() {
        let patch = match map {
            Some(_) => {
                json!([{"op": "add", "path": format!("/metadata/{field}/{}", key.replace('/', "~1")), "value": "true"}])
            }
            None => {
                json!([{"op": "add", "path": format!("/metadata/{field}"), "value": {key: "true"}}])
            }
        };
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    axum::Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}
