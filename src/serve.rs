//! `tracehook serve`, as a library: a [`Config`] built from the command line, and
//! [`run`], which starts every task under one supervisor. A task that ends before
//! shutdown (the TLS listener, the probes, certificate renewal or file reload, the
//! reconciler) takes readiness down and makes [`run`] return its name and reason, so
//! the process exits non-zero and Kubernetes restarts it, instead of serving on with a
//! part silently gone.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::task::JoinSet;

use crate::cluster::events::EventSink;
use crate::cluster::heal::Heal;
use crate::cluster::missing::Detector;
use crate::cluster::{Caches, FixedWorld, Lookup};
use crate::inject::{Instance, InstanceRef, Settings};
use crate::metrics::Metrics;
use crate::server::{self, Context};
use crate::tls::issue as certs;
use crate::tls::self_signed::SelfSigned;
use crate::tls::{CertFiles, CertResolver};
use crate::{Error, Result};

/// Everything `serve` is told.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub probe_listen: SocketAddr,
    /// Serve these files (reloaded when they change) instead of the self-signed pair.
    pub tls_files: Option<(PathBuf, PathBuf)>,
    /// tracehook's own namespace.
    pub namespace: String,
    pub service_name: String,
    pub cert_secret: String,
    pub webhook_configuration: String,
    pub cert_validity: Duration,
    pub cert_renew_before: Duration,
    /// `None`: native sidecars when the API server is 1.29 or later.
    pub native_sidecars: Option<bool>,
    /// Report workloads annotated in namespaces the registration does not send.
    pub report_unseen: bool,
    /// What the leader does with Pods missing their sidecar (`--heal-missing`).
    pub heal: Heal,
    /// At most one eviction per this long (`--heal-interval`).
    pub heal_interval: Duration,
    /// How often the leader looks through the live Pods (`--missing-scan-interval`).
    pub missing_scan_interval: Duration,
    /// After the shutdown signal: not ready, still answering, for this long.
    pub shutdown_delay: Duration,
    /// `Some`: no cluster; these instances exist.
    pub no_cluster: Option<Vec<InstanceRef>>,
    pub webhook: bool,
    pub reconciler: bool,
    /// The engine's settings, but for `native_sidecars` (decided here).
    pub settings: Settings,
    /// The `POD_NAME` of this replica, for Events.
    pub pod_name: Option<String>,
    /// The log writer's count of dropped lines, exposed as a metric.
    pub dropped_log_lines: Option<tracing_appender::non_blocking::ErrorCounter>,
}

/// Named tasks; the first to end, or to fail, ends the process.
struct Supervisor {
    tasks: JoinSet<(&'static str, Result<()>)>,
}

impl Supervisor {
    fn new() -> Self {
        Self {
            tasks: JoinSet::new(),
        }
    }

    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = Result<()>> + Send + 'static,
    ) {
        self.tasks.spawn(async move { (name, task.await) });
    }

    /// Waits for `shutdown`, or for a task to end: that one's name and reason.
    async fn watch(&mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        tokio::select! {
            () = shutdown => Ok(()),
            ended = self.tasks.join_next() => match ended {
                None => Ok(()),
                Some(Ok((name, Ok(())))) => Err(Error::TaskStopped { name, reason: "it returned".into() }),
                Some(Ok((name, Err(e)))) => Err(Error::TaskStopped { name, reason: e.to_string() }),
                Some(Err(e)) => Err(Error::TaskStopped { name: "a task", reason: e.to_string() }),
            },
        }
    }
}

/// A task that is meant never to end, as `Ok` when it does (the supervisor then says
/// it stopped).
async fn forever(task: impl Future<Output = ()>) -> Result<()> {
    task.await;
    Ok(())
}

/// Runs until `shutdown` completes (then drains) or a task ends (an error).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut tasks = Supervisor::new();
    let mut metrics = Metrics::default();
    if let Some(dropped) = config.dropped_log_lines.clone() {
        metrics.count_dropped_log_lines(dropped);
    }
    // Ends the reconciler's campaign on a graceful shutdown, releasing its Lease so that
    // another replica leads at once.
    let (stop_campaign, campaign_stop) = tokio::sync::watch::channel(false);
    let mut released = None;
    let (lookup, events, client, native) = match &config.no_cluster {
        Some(instances) => {
            let world = FixedWorld {
                instances: instances
                    .iter()
                    .map(|r| Instance {
                        namespace: r.namespace.clone(),
                        name: r.name.clone(),
                        ..Default::default()
                    })
                    .collect::<Vec<_>>()
                    .into(),
                ..FixedWorld::default()
            };
            let native = crate::inject::native_sidecars(config.native_sidecars, None);
            (Lookup::Fixed(Arc::new(world)), None, None, native)
        }
        None => {
            let client = kube::Client::try_default().await?;
            let version = client.apiserver_version().await?;
            let native = crate::inject::native_sidecars(
                config.native_sidecars,
                Some((&version.major, &version.minor)),
            );
            tracing::info!(version = %version.git_version, native_sidecars = native, "connected to the API server");
            let events = EventSink::new(client.clone(), config.pod_name.clone());
            let caches = Arc::new(Caches::start(client.clone()));
            if config.reconciler {
                let detector = Arc::new(Detector {
                    caches: caches.clone(),
                    events: events.clone(),
                    metrics: metrics.pods.clone(),
                    settings: Settings {
                        native_sidecars: native,
                        ..config.settings.clone()
                    },
                    registration: config.webhook_configuration.clone(),
                    heal: config.heal,
                    heal_interval: config.heal_interval,
                    scan_interval: config.missing_scan_interval,
                });
                let unseen = config
                    .report_unseen
                    .then(|| unseen_task(&caches, &events, &config.namespace));
                tasks.spawn(
                    "reconciler",
                    forever(crate::reconciler::run(
                        client.clone(),
                        config.namespace.clone(),
                        crate::reconciler::identity(),
                        Some(leader_tasks(detector, unseen)),
                        metrics.reconciler.clone(),
                        Some(crate::reconciler::leader::Shutdown {
                            stop: campaign_stop.clone(),
                            released: {
                                let (tx, rx) = tokio::sync::oneshot::channel();
                                released = Some(rx);
                                tx
                            },
                        }),
                    )),
                );
            }
            (Lookup::Live(caches), Some(events), Some(client), native)
        }
    };
    let mut ctx = Context::new(
        Settings {
            native_sidecars: native,
            ..config.settings.clone()
        },
        lookup,
    );
    ctx.events = events;
    ctx.metrics = metrics;
    let ctx = Arc::new(ctx);

    let probes = tokio::net::TcpListener::bind(config.probe_listen)
        .await
        .map_err(|e| Error::io(format!("binding {}", config.probe_listen), e))?;
    let probes_router = server::probes_router(ctx.clone());
    tasks.spawn("probe server", async move {
        axum::serve(probes, probes_router)
            .await
            .map_err(|e| Error::io("serving the probes", e))
    });

    if !config.webhook {
        tracing::info!("webhook disabled (--no-webhook)");
        let result = tasks.watch(shutdown).await;
        release_lease(&stop_campaign, released).await;
        return result;
    }
    let resolver = certificate(&config, client, &mut tasks).await?;
    let tls = crate::tls::server_config(resolver)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("binding {}", config.listen), e))?;
    tracing::info!(address = %config.listen, probes = %config.probe_listen, "serving POST /mutate over TLS");
    ctx.serving.store(true, Ordering::Release);
    // The listener drains on shutdown; the supervisor says when that is.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let drained = tokio::spawn(server::serve_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        server::admission_router(ctx.clone()),
        async {
            let _ = stopped.await;
        },
    ));
    let result = tasks.watch(shutdown).await;
    ctx.serving.store(false, Ordering::Release);
    match &result {
        Err(e) => tracing::error!(error = %e, "a task stopped: not ready, exiting"),
        Ok(()) if !config.shutdown_delay.is_zero() => {
            // The API server still sends to this replica until the endpoints and
            // kube-proxy have dropped it, and on its pooled connections after that:
            // answer those, closing each connection after its answer, then drain.
            ctx.draining.store(true, Ordering::Release);
            tracing::info!(delay = ?config.shutdown_delay, "not ready; answering until the endpoints drop this replica");
            tokio::time::sleep(config.shutdown_delay).await;
        }
        Ok(()) => {}
    }
    let _ = stop.send(());
    let _ = drained.await;
    release_lease(&stop_campaign, released).await;
    tracing::info!("stopped");
    result
}

/// Stops the reconciler's campaign and waits (briefly) until its Lease is released.
async fn release_lease(
    stop: &tokio::sync::watch::Sender<bool>,
    released: Option<tokio::sync::oneshot::Receiver<()>>,
) {
    let _ = stop.send(true);
    if let Some(released) = released {
        let _ = tokio::time::timeout(Duration::from_secs(5), released).await;
    }
}

/// What the leader does beside reconciling: the Pod watch for missed injections and,
/// in the labelled-namespaces mode, the report of workloads annotated where the webhook
/// is not called. The first to end ends this leadership's work (it is started again).
fn leader_tasks(
    detector: Arc<Detector>,
    unseen: Option<crate::reconciler::LeaderTask>,
) -> crate::reconciler::LeaderTask {
    Arc::new(move || {
        let detector = detector.clone().run();
        let unseen = unseen.as_ref().map(|task| task());
        Box::pin(async move {
            match unseen {
                Some(unseen) => {
                    tokio::select! {
                        () = detector => tracing::error!("the missed-injection watch stopped"),
                        () = unseen => tracing::error!("the unseen-namespace report stopped"),
                    }
                }
                None => detector.await,
            }
        }) as BoxFuture<'static, ()>
    })
}

/// The leader's report of workloads annotated where the webhook is not called.
fn unseen_task(
    caches: &Arc<Caches>,
    events: &EventSink,
    namespace: &str,
) -> crate::reconciler::LeaderTask {
    let (caches, events, namespace) = (caches.clone(), events.clone(), namespace.to_owned());
    Arc::new(move || {
        Box::pin(crate::cluster::unseen::report(
            caches.clone(),
            events.clone(),
            namespace.clone(),
        )) as BoxFuture<'static, ()>
    })
}

/// The serving certificate: files (reloaded), the self-signed pair in a Secret
/// (renewed), or, without a cluster, one generated in memory.
async fn certificate(
    config: &Config,
    client: Option<kube::Client>,
    tasks: &mut Supervisor,
) -> Result<Arc<CertResolver>> {
    let names = certs::service_names(&config.service_name, &config.namespace);
    if let Some((cert, key)) = &config.tls_files {
        let files = CertFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let (c, k) = files.read()?;
        let resolver = Arc::new(CertResolver::new(&c, &k)?);
        tasks.spawn(
            "certificate file reload",
            forever(files.watch(resolver.clone(), Duration::from_secs(2))),
        );
        tracing::info!(cert = %cert.display(), "serving the certificate files (reloaded on change)");
        return Ok(resolver);
    }
    if let Some(client) = client {
        let mode = SelfSigned {
            namespace: config.namespace.clone(),
            secret: config.cert_secret.clone(),
            webhook_configuration: config.webhook_configuration.clone(),
            names,
            validity: config.cert_validity,
            renew_before: config.cert_renew_before,
        };
        let resolver = mode.start(&client).await?;
        tasks.spawn(
            "certificate renewal",
            forever(mode.maintain(client, resolver.clone())),
        );
        tracing::info!(secret = %config.cert_secret, "serving the self-signed pair from the Secret");
        return Ok(resolver);
    }
    let validity = config.cert_validity;
    let bundle = tokio::task::spawn_blocking(move || certs::generate(&names, validity))
        .await
        .map_err(|source| Error::Task {
            what: "certificate generation",
            source,
        })??;
    tracing::info!("serving a certificate generated in memory");
    Ok(Arc::new(CertResolver::new(
        bundle.cert_pem.as_bytes(),
        bundle.key_pem.as_bytes(),
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_task_that_stops_ends_the_run_with_its_name_and_reason() {
        let mut tasks = Supervisor::new();
        tasks.spawn("steady", forever(std::future::pending()));
        tasks.spawn("certificate renewal", async {
            Err(Error::SecretContended("tracehook/tracehook-tls".into()))
        });
        let stopped = tasks.watch(std::future::pending()).await;
        let message = stopped.expect_err("a task stopped").to_string();
        assert!(message.contains("certificate renewal"), "{message}");
        assert!(message.contains("kept changing"), "{message}");
    }

    #[tokio::test]
    async fn shutdown_ends_the_run_cleanly() {
        let mut tasks = Supervisor::new();
        tasks.spawn("steady", forever(std::future::pending()));
        assert!(tasks.watch(async {}).await.is_ok());
    }

    #[tokio::test]
    async fn a_task_that_returns_counts_as_stopped() {
        let mut tasks = Supervisor::new();
        tasks.spawn("reconciler", forever(async {}));
        let message = tasks
            .watch(std::future::pending())
            .await
            .expect_err("stopped")
            .to_string();
        assert!(message.contains("the reconciler stopped"), "{message}");
    }
}
