//! `capture`: an AdmissionReview as a real API server sends it, for the load's bodies
//! (BENCHMARKS.md). A local control plane (testcluster), DESIGN.md's webhook
//! registration pointing at an in-process HTTPS server that keeps the first body it is
//! sent and allows it unchanged, and a Deployment whose Pod template is the typical
//! Pod's (`pods::TYPICAL`), created with Helm's field manager. The ReplicaSet
//! controller creates its Pod; the API server's review of it (defaults, the
//! ServiceAccount token volume, managedFields, the controller's userInfo) is written to
//! `--out` byte for byte.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::header;
use axum::routing::post;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use serde_json::{Value, json};
use tracehook::server::{self, MAX_BODY_BYTES};
use tracehook::tls::{self, CertResolver};

use crate::cluster::{self, create_namespaced};

/// The bodies the server was sent, in order.
type Kept = Arc<Mutex<Vec<Bytes>>>;

pub async fn run(out: &Path) -> Result<()> {
    let dir = crate::run_dir("capture")?;
    let (cluster, client) = cluster::start().await?;
    let certs = crate::certificates(&dir)?;
    let kept = Kept::default();
    let port = serve(&certs, kept.clone()).await?;

    let pod = crate::pods::pod(crate::pods::TYPICAL);
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .context("the typical Pod has a namespace")?
        .to_owned();
    cluster::create_namespace(
        &client,
        &namespace,
        json!({"tracehook.dev/injection": "enabled"}),
    )
    .await?;
    let ca_pem = std::fs::read_to_string(certs.join("ca.crt"))?;
    let registration = crate::registration::webhook_configuration_json(
        "tracehook",
        &format!("https://127.0.0.1:{port}/mutate"),
        &ca_pem,
        "Fail",
        Some(&namespace),
    );
    cluster::register(&client, &serde_json::from_value(registration)?).await?;
    let account = pod["spec"]["serviceAccountName"].clone();
    create_namespaced::<ServiceAccount>(
        &client,
        json!({"metadata": {"name": account, "namespace": namespace}}),
    )
    .await?;
    let config_map = pod
        .pointer("/spec/containers/0/envFrom/0/configMapRef/name")
        .cloned()
        .context("the typical Pod imports a ConfigMap")?;
    create_namespaced::<ConfigMap>(
        &client,
        json!({"metadata": {"name": config_map, "namespace": namespace},
               "data": {"REGION": "eu-1"}}),
    )
    .await?;
    let deployment = deployment_of(&pod)?;
    kube::Api::<Deployment>::namespaced(client.clone(), &namespace)
        .create(
            &kube::api::PostParams {
                field_manager: Some("helm".to_owned()),
                ..Default::default()
            },
            &serde_json::from_value(deployment)?,
        )
        .await
        .context("creating the Deployment")?;

    let started = Instant::now();
    let body = loop {
        if let Some(body) = kept.lock().expect("lock").first().cloned() {
            break body;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no AdmissionReview in 60 s (is the ReplicaSet controller running?)");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let review: Value = serde_json::from_slice(&body).context("the body is JSON")?;
    let user = review
        .pointer("/request/userInfo/username")
        .and_then(Value::as_str)
        .unwrap_or_default();
    std::fs::write(out, &body).with_context(|| format!("writing {}", out.display()))?;
    println!(
        "captured the review of Pod {}/{} sent for {user}: {} bytes, written to {}",
        namespace,
        review
            .pointer("/request/object/metadata/generateName")
            .and_then(Value::as_str)
            .unwrap_or_default(),
        body.len(),
        out.display()
    );
    cluster::unregister(&client).await?;
    drop(cluster);
    Ok(())
}

/// A Deployment of one replica whose template is `pod` (without what the ReplicaSet
/// controller adds: its owner, generateName and the template hash label).
fn deployment_of(pod: &Value) -> Result<Value> {
    let mut labels = pod["metadata"]["labels"].clone();
    labels
        .as_object_mut()
        .context("the typical Pod has labels")?
        .remove("pod-template-hash");
    let name = pod["metadata"]["labels"]["app.kubernetes.io/instance"].clone();
    let selector = json!({"app.kubernetes.io/name": labels["app.kubernetes.io/name"],
                          "app.kubernetes.io/instance": name});
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": pod["metadata"]["namespace"], "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": labels, "annotations": pod["metadata"]["annotations"]},
                "spec": pod["spec"]
            }
        }
    }))
}

/// Serves `POST /mutate` on a free loopback port with the certificate in `certs`:
/// every body is kept and answered "allowed" with its uid.
async fn serve(certs: &Path, kept: Kept) -> Result<u16> {
    let resolver = CertResolver::new(
        &std::fs::read(certs.join("tls.crt"))?,
        &std::fs::read(certs.join("tls.key"))?,
    )?;
    let config = tls::server_config(Arc::new(resolver))?;
    let router = Router::new()
        .route("/mutate", post(keep))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(kept);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(server::serve_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        router,
        std::future::pending::<()>(),
    ));
    Ok(port)
}

async fn keep(State(kept): State<Kept>, body: Bytes) -> impl axum::response::IntoResponse {
    let uid = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|r| r.pointer("/request/uid").cloned())
        .unwrap_or_default();
    kept.lock().expect("lock").push(body);
    let answer = json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid, "allowed": true}
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
}
