//! Self-signed certificate mode against the real API server: one CA for all replicas,
//! the caBundle patched, and renewals while Pods are admitted with failurePolicy Fail.

use std::time::{Duration, Instant};

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use serde_json::json;

use crate::support::*;

fn leaf_of(secret: &Secret) -> Vec<u8> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get("tls.crt"))
        .map(|b| b.0.clone())
        .unwrap_or_default()
}

#[tokio::test]
async fn renewals_while_pods_are_created_fail_no_admission() {
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let system = "e2e-rotation-system";
    let ns = "e2e-rotation";
    namespace(&client, system, json!({}), json!({})).await;
    namespace(&client, ns, json!({}), json!({})).await;
    // The port must be known before the process starts, for the registration's URL.
    let webhook = Webhook::start_with(
        env.cluster,
        "rotation",
        Certificates::Secret,
        &[
            "--namespace",
            system,
            "--webhook-configuration",
            "e2e-rotation",
            // A serving certificate lives 40 s and is renewed with 30 s left: every
            // ~10 s under load.
            "--cert-validity",
            "40s",
            "--cert-renew-before",
            "30s",
        ],
    );
    apply(
        &client,
        &registration_without_ca_bundle("e2e-rotation", webhook.port, ns, "IfNeeded"),
    )
    .await;
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait_until(
        Duration::from_secs(30),
        "tracehook to patch the caBundle",
        || {
            let configs = configs.clone();
            async move {
                configs
                    .get("e2e-rotation")
                    .await
                    .ok()
                    .and_then(|c| c.webhooks)
                    .is_some_and(|w| w.iter().all(|w| w.client_config.ca_bundle.is_some()))
            }
        },
    )
    .await;

    let secrets: Api<Secret> = Api::namespaced(client.clone(), system);
    let mut leaves = vec![leaf_of(
        &secrets.get("tracehook-tls").await.expect("secret"),
    )];
    let start = Instant::now();
    let mut created = 0;
    while start.elapsed() < Duration::from_secs(45) {
        let p = create_pod(
            &client,
            ns,
            &pod(
                &fresh_name("rot"),
                json!({"tracehook.dev/inject": "obs/test"}),
            ),
        )
        .await;
        assert!(is_injected(&p), "every Pod admitted and injected");
        created += 1;
        let leaf = leaf_of(&secrets.get("tracehook-tls").await.expect("secret"));
        if leaves.last() != Some(&leaf) {
            leaves.push(leaf);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    delete_webhook_configuration(&client, "e2e-rotation").await;
    // Hundreds of Pods would fill the kwok node for the tests that need it to run Pods.
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .delete_collection(
            &kube::api::DeleteParams::default(),
            &kube::api::ListParams::default(),
        )
        .await
        .expect("Pods deleted");
    let renewals = leaves.len() - 1;
    eprintln!("{created} Pods admitted across {renewals} certificate renewals, none failed");
    assert!(
        renewals >= 2,
        "the certificate was renewed during the run ({renewals})"
    );
    assert!(created > 50, "{created}");
}

#[tokio::test]
async fn replicas_starting_together_share_one_ca() {
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let system = "e2e-two-replicas";
    namespace(&client, system, json!({}), json!({})).await;
    let args = [
        "--namespace",
        system,
        "--webhook-configuration",
        "e2e-two-replicas-absent",
    ];
    let (a, b) = std::thread::scope(|s| {
        let a =
            s.spawn(|| Webhook::start_with(env.cluster, "replica-a", Certificates::Secret, &args));
        let b =
            s.spawn(|| Webhook::start_with(env.cluster, "replica-b", Certificates::Secret, &args));
        (a.join().expect("a"), b.join().expect("b"))
    });
    let secret = Api::<Secret>::namespaced(client.clone(), system)
        .get("tracehook-tls")
        .await
        .expect("one Secret");
    let ca = String::from_utf8(
        secret
            .data
            .as_ref()
            .and_then(|d| d.get("ca.crt"))
            .expect("ca.crt")
            .0
            .clone(),
    )
    .expect("PEM");
    // Both replicas serve a certificate the Secret's CA vouches for.
    for replica in [&a, &b] {
        assert!(
            handshake_trusting(&ca, replica.port).await,
            "replica on {} serves the shared pair",
            replica.port
        );
    }
}

/// A TLS handshake with `127.0.0.1:port` trusting only `ca_pem`.
async fn handshake_trusting(ca_pem: &str, port: u16) -> bool {
    use rustls::pki_types::pem::PemObject as _;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()).flatten() {
        let _ = roots.add(cert);
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    connector.connect(name, tcp).await.is_ok()
}
