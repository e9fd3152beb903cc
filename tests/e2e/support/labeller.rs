//! A second, independent mutating webhook for the reinvocation test: it adds a label
//! to Pods that lack it. Served over TLS on loopback like tracehook itself.

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
        let router = Router::new().route("/mutate", post(label));
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

    pub fn configuration(&self, name: &str, namespace: &str) -> MutatingWebhookConfiguration {
        serde_json::from_value(json!({
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": name},
            "webhooks": [{
                "name": "label.e2e.tracehook.dev",
                "admissionReviewVersions": ["v1"],
                "clientConfig": {
                    "url": format!("https://127.0.0.1:{}/mutate", self.port),
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
    let review: Value = serde_json::from_slice(&body).unwrap_or_default();
    let uid = review.pointer("/request/uid").cloned().unwrap_or_default();
    let has_label = review
        .pointer("/request/object/metadata/labels")
        .and_then(|l| l.get(LABEL))
        .is_some();
    let mut response = json!({"uid": uid, "allowed": true});
    if !has_label {
        let patch = json!([{"op": "add", "path": "/metadata/labels/e2e.tracehook.dev~1labelled", "value": "true"}]);
        response["patchType"] = json!("JSONPatch");
        response["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
    }
    axum::Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}
