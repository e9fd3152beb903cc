//! The real control plane for items 3–5: a `testcluster` cluster, the `Jaeger` CRD,
//! `tracehook serve` (release) against it, and the webhook's registration by URL
//! (taken from tests/e2e/support).

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt as _};
use serde_json::json;
use testcluster::Cluster;
use tracehook::crd::Jaeger;

use crate::load::http_status;
use crate::sys::{self, Memory};

pub const MANAGER: &str = "tracehook-sysbench";

/// Starts a cluster and installs the CRD.
pub async fn start() -> Result<(Cluster, Client)> {
    let started = Instant::now();
    let cluster = Cluster::start(testcluster::Options::default())?;
    println!("cluster up in {:.1} s", started.elapsed().as_secs_f64());
    let client = cluster.client().await?;
    install_crd(&client).await?;
    Ok((cluster, client))
}

/// Applies the `Jaeger` CRD and waits until it is established.
pub async fn install_crd(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "jaegers.tracehook.dev",
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(Jaeger::crd()),
    )
    .await
    .context("applying the CRD")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let established = crds
            .get("jaegers.tracehook.dev")
            .await
            .is_ok_and(|crd| crate::crd::established(&crd));
        if established {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the CRD is not established");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates a namespace with labels (not waiting for its ServiceAccount).
pub async fn create_namespace(
    client: &Client,
    name: &str,
    labels: serde_json::Value,
) -> Result<()> {
    let ns: Namespace = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels}
    }))?;
    match Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating namespace {name}")),
    }
}

/// Creates `count` instances, 16 in flight; `place(i)` is the i-th one's namespace and
/// name.
pub async fn create_instances(
    client: &Client,
    count: usize,
    place: impl Fn(usize) -> (String, String),
) -> Result<()> {
    futures::stream::iter(0..count)
        .map(|i| {
            let client = client.clone();
            let (namespace, name) = place(i);
            async move { create_instance(&client, &namespace, &name).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Creates a `Jaeger` instance with an empty spec.
pub async fn create_instance(client: &Client, namespace: &str, name: &str) -> Result<()> {
    create_namespaced::<Jaeger>(
        client,
        json!({
            "apiVersion": "tracehook.dev/v1alpha1",
            "kind": "Jaeger",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {}
        }),
    )
    .await?;
    Ok(())
}

/// Creates a namespaced object from its manifest (its namespace and name are read
/// from `metadata`) and returns it as stored.
pub async fn create_namespaced<K>(client: &Client, manifest: serde_json::Value) -> Result<K>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
    K::DynamicType: Default,
{
    let object: K = serde_json::from_value(manifest)?;
    let what = format!(
        "{} {}/{}",
        K::kind(&K::DynamicType::default()),
        object.meta().namespace.as_deref().unwrap_or_default(),
        object.meta().name.as_deref().unwrap_or_default()
    );
    let namespace = object
        .meta()
        .namespace
        .clone()
        .with_context(|| format!("{what} has no namespace"))?;
    Api::<K>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &object)
        .await
        .with_context(|| format!("creating {what}"))
}

/// A `tracehook serve` process against the cluster.
pub struct Webhook {
    child: Child,
    pub port: u16,
    pub probe_port: u16,
    pub ca_pem: String,
    pub log: PathBuf,
    pub started: Instant,
}

impl Webhook {
    /// Starts `tracehook serve` with a certificate from `tracehook certs` in `dir`;
    /// returns at once (see [`Webhook::wait_ready`]).
    pub fn start(cluster: &Cluster, dir: &Path, extra_args: &[&str]) -> Result<Webhook> {
        let tracehook = crate::release_binary("tracehook")?;
        let certs = crate::certificates(dir)?;
        let port = sys::free_port();
        let probe_port = sys::free_port();
        let log = dir.join(format!("serve-{port}.log"));
        let mut cmd = Command::new(&tracehook);
        crate::serve_with_cluster(&mut cmd, &cluster.kubeconfig_path(), port, probe_port);
        cmd.arg("--tls-cert-file")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key-file")
            .arg(certs.join("tls.key"))
            .args(extra_args);
        let started = Instant::now();
        let child = cluster.spawn_attached(cmd, &log)?;
        Ok(Webhook {
            child,
            port,
            probe_port,
            ca_pem: std::fs::read_to_string(certs.join("ca.crt"))?,
            log,
            started,
        })
    }

    /// Polls `/readyz` every 5 ms; the time from exec to the first 200.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        loop {
            if http_status(self.probe_port, "/readyz") == Some(200) {
                return Ok(self.started.elapsed());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(
                    "tracehook serve exited ({status}); see {}",
                    self.log.display()
                );
            }
            if self.started.elapsed() > timeout {
                bail!("tracehook serve not ready after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn memory(&self) -> Memory {
        Memory::of(self.child.id()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}/mutate", self.port)
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// DESIGN.md's MutatingWebhookConfiguration `tracehook`, pointing at `webhook` by URL.
pub fn webhook_configuration(webhook: &Webhook) -> Result<MutatingWebhookConfiguration> {
    Ok(serde_json::from_value(
        crate::registration::webhook_configuration_json(
            "tracehook",
            &webhook.url(),
            &webhook.ca_pem,
            "Ignore",
            None,
        ),
    )?)
}

pub async fn register(client: &Client, config: &MutatingWebhookConfiguration) -> Result<()> {
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .patch(
            "tracehook",
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(config),
        )
        .await
        .context("registering the webhook")?;
    Ok(())
}

pub async fn unregister(client: &Client) -> Result<()> {
    match Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete("tracehook", &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e).context("unregistering the webhook"),
    }
}

/// The API server's `/metrics` (the admin client may read it).
pub async fn apiserver_metrics(client: &Client) -> Result<String> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    Ok(client.request_text(request).await?)
}
