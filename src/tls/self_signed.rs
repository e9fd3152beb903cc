//! Self-signed certificate mode: a CA and a serving certificate kept in one Secret, so
//! that every replica serves the same pair, with the CA patched into the
//! `MutatingWebhookConfiguration`'s `caBundle`, and the serving certificate renewed
//! well before it expires.
//!
//! Replicas race safely: the Secret is created with `create` (the loser of a race gets
//! 409 and reads the winner's) and renewed with a `replace` carrying the
//! resourceVersion it read (the loser gets 409 and takes the winner's). The CA lives
//! ten years, so a renewal never changes the `caBundle` and the API server never sees
//! a certificate it does not trust.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt as _};
use serde_json::json;
use time::OffsetDateTime;

use crate::tls::CertResolver;
use crate::tls::issue::{self as certs, Bundle, Ca};
use crate::{Error, Result};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const TLS_CERT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";

#[derive(Clone, Debug)]
pub struct SelfSigned {
    pub namespace: String,
    pub secret: String,
    pub webhook_configuration: String,
    /// Names the serving certificate is valid for.
    pub names: Vec<String>,
    /// Lifetime of each serving certificate.
    pub validity: Duration,
    /// Renew when less than this is left.
    pub renew_before: Duration,
}

/// The pair in the Secret, as read.
struct Stored {
    ca: Ca,
    bundle: Bundle,
    resource_version: Option<String>,
}

impl SelfSigned {
    /// Reads or creates the Secret (renewing a pair that is due) and returns a resolver
    /// serving it, with the `caBundle` patched.
    pub async fn start(&self, client: &Client) -> Result<Arc<CertResolver>> {
        let stored = self.ensure(client).await?;
        let resolver = Arc::new(CertResolver::new(
            stored.bundle.cert_pem.as_bytes(),
            stored.bundle.key_pem.as_bytes(),
        )?);
        if let Err(e) = self.patch_ca_bundle(client, &stored.ca.cert_pem).await {
            // The configuration may be installed after tracehook: the loop retries.
            tracing::warn!(error = %e, "could not patch the caBundle yet");
        }
        Ok(resolver)
    }

    /// Keeps the served pair in step with the Secret, renews it when due, and keeps the
    /// `caBundle` right, until the task is dropped.
    pub async fn maintain(self, client: Client, resolver: Arc<CertResolver>) {
        // Check often enough to renew several times within the renewal window.
        let every = (self.renew_before / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut served = resolver.leaf();
        loop {
            tick.tick().await;
            let stored = match self.ensure(&client).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read or renew the certificate Secret");
                    continue;
                }
            };
            if let Err(e) = self.patch_ca_bundle(&client, &stored.ca.cert_pem).await {
                tracing::warn!(error = %e, "could not patch the caBundle");
            }
            match resolver.swap(
                stored.bundle.cert_pem.as_bytes(),
                stored.bundle.key_pem.as_bytes(),
            ) {
                Ok(()) => {
                    let leaf = resolver.leaf();
                    if leaf != served {
                        tracing::info!(not_after = %stored.bundle.not_after, "serving the renewed certificate");
                        served = leaf;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the Secret holds an unusable pair"),
            }
        }
    }

    /// The pair from the Secret: created if missing, renewed if due.
    async fn ensure(&self, client: &Client) -> Result<Stored> {
        let api: Api<Secret> = Api::namespaced(client.clone(), &self.namespace);
        for _ in 0..5 {
            let Some(secret) = api.get_opt(&self.secret).await? else {
                let ca = generate_ca().await?;
                let bundle = self.issue(&ca).await?;
                match api
                    .create(&PostParams::default(), &self.secret_of(&ca, &bundle, None))
                    .await
                {
                    Ok(created) => {
                        tracing::info!(secret = %self.secret, "generated a CA and serving certificate");
                        return Ok(Stored {
                            ca,
                            bundle,
                            resource_version: created.resource_version(),
                        });
                    }
                    // Another replica created it first: use theirs.
                    Err(kube::Error::Api(e)) if e.code == 409 => continue,
                    Err(e) => return Err(e.into()),
                }
            };
            let stored = read(&secret)?;
            if !self.is_due(&stored.bundle) {
                return Ok(stored);
            }
            let bundle = self.issue(&stored.ca).await?;
            let renewed = self.secret_of(&stored.ca, &bundle, stored.resource_version.clone());
            match api
                .replace(&self.secret, &PostParams::default(), &renewed)
                .await
            {
                Ok(written) => {
                    tracing::info!(secret = %self.secret, not_after = %bundle.not_after, "renewed the serving certificate");
                    return Ok(Stored {
                        ca: stored.ca,
                        bundle,
                        resource_version: written.resource_version(),
                    });
                }
                // Another replica renewed it first: read theirs.
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(Error::SecretContended(format!(
            "{}/{}",
            self.namespace, self.secret
        )))
    }

    fn is_due(&self, bundle: &Bundle) -> bool {
        bundle.not_after - OffsetDateTime::now_utc() < self.renew_before
    }

    async fn issue(&self, ca: &Ca) -> Result<Bundle> {
        let (ca, names, validity) = (ca.clone(), self.names.clone(), self.validity);
        // Key generation is CPU work: keep it off the async workers.
        tokio::task::spawn_blocking(move || certs::issue(&ca, &names, validity))
            .await
            .map_err(|source| Error::Task {
                what: "certificate generation",
                source,
            })?
    }

    fn secret_of(&self, ca: &Ca, bundle: &Bundle, resource_version: Option<String>) -> Secret {
        let data = [
            (CA_CERT, &ca.cert_pem),
            (CA_KEY, &ca.key_pem),
            (TLS_CERT, &bundle.cert_pem),
            (TLS_KEY, &bundle.key_pem),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), ByteString(v.as_bytes().to_vec())))
        .collect::<BTreeMap<_, _>>();
        Secret {
            metadata: kube::api::ObjectMeta {
                name: Some(self.secret.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version,
                labels: Some(
                    [("app.kubernetes.io/name".to_owned(), "tracehook".to_owned())].into(),
                ),
                ..Default::default()
            },
            type_: Some("kubernetes.io/tls".to_owned()),
            data: Some(data),
            ..Default::default()
        }
    }

    /// Sets the CA as the `caBundle` of every webhook in the configuration, if it is
    /// not already. Only this one configuration is read or patched.
    async fn patch_ca_bundle(&self, client: &Client, ca_pem: &str) -> Result<()> {
        let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        let config = api.get(&self.webhook_configuration).await?;
        let want = ByteString(ca_pem.as_bytes().to_vec());
        let webhooks = config.webhooks.unwrap_or_default();
        if webhooks
            .iter()
            .all(|w| w.client_config.ca_bundle.as_ref() == Some(&want))
        {
            return Ok(());
        }
        // A JSON Patch that tests each webhook's name, so a concurrent edit of the list
        // makes it fail instead of writing to the wrong entry.
        let mut ops = Vec::new();
        for (i, w) in webhooks.iter().enumerate() {
            ops.push(json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": w.name}));
            ops.push(json!({
                "op": "add",
                "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                "value": want,
            }));
        }
        let patch: json_patch::Patch = serde_json::from_value(json!(ops))?;
        api.patch(
            &self.webhook_configuration,
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await?;
        tracing::info!(configuration = %self.webhook_configuration, "patched the caBundle");
        Ok(())
    }
}

async fn generate_ca() -> Result<Ca> {
    tokio::task::spawn_blocking(|| certs::generate_ca(certs::CA_VALIDITY))
        .await
        .map_err(|source| Error::Task {
            what: "CA generation",
            source,
        })?
}

fn read(secret: &Secret) -> Result<Stored> {
    let data = secret.data.as_ref();
    let field = |key: &str| -> Result<String> {
        let bytes = data.and_then(|d| d.get(key)).ok_or_else(|| {
            Error::InvalidCertificate(format!("the certificate Secret has no {key}"))
        })?;
        String::from_utf8(bytes.0.clone()).map_err(|_| {
            Error::InvalidCertificate(format!("the certificate Secret's {key} is not PEM text"))
        })
    };
    let ca = Ca {
        cert_pem: field(CA_CERT)?,
        key_pem: field(CA_KEY)?,
    };
    let cert_pem = field(TLS_CERT)?;
    let not_after = certs::not_after(&cert_pem)?;
    Ok(Stored {
        bundle: Bundle {
            ca_pem: ca.cert_pem.clone(),
            cert_pem,
            key_pem: field(TLS_KEY)?,
            not_after,
        },
        ca,
        resource_version: secret.resource_version(),
    })
}
