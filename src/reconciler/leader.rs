//! Leader election with a `coordination.k8s.io/v1` Lease, the way client-go does it.
//!
//! Each replica reads the Lease every few seconds. The holder renews it; the others
//! take it once it has not changed for its whole duration, measured on their own
//! clock from when they saw it change (so clocks that disagree do not matter). Every
//! write carries the `resourceVersion` that was read, so of two replicas racing for
//! an expired Lease only one succeeds. A holder that cannot renew for
//! [`LeaseConfig::renew_deadline`], shorter than the duration, stops leading before
//! anyone else may start. A holder that shuts down gracefully releases the Lease (as
//! client-go's `ReleaseOnCancel`), so another replica takes over at once; one that
//! dies leaves it to expire.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

/// How long one read-and-write of the Lease may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Who this replica is, unique among the replicas.
    pub identity: String,
    /// How long a Lease that is not renewed stays taken.
    pub duration: Duration,
    /// How often the holder renews.
    pub renew_every: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often the others (and a holder whose renewal failed) try.
    pub retry_every: Duration,
}

impl LeaseConfig {
    /// A 15 s Lease renewed every 5 s.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_every: Duration::from_secs(2),
        }
    }
}

/// How the owner of a campaign ends it: `stop` turns true on a graceful shutdown, and
/// `released` is sent once the Lease is given up (or was not held).
pub struct Shutdown {
    pub stop: watch::Receiver<bool>,
    pub released: oneshot::Sender<()>,
}

/// Campaigns in the background for as long as the receiver lives, or until `shutdown`
/// says stop; the receiver holds `true` while this replica leads.
pub fn elect(
    client: Client,
    config: LeaseConfig,
    shutdown: Option<Shutdown>,
) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    let api = Api::namespaced(client, &config.namespace);
    tokio::spawn(async move {
        match shutdown {
            None => {
                campaign(api, config, tx, std::future::pending()).await;
            }
            Some(Shutdown { mut stop, released }) => {
                let stopping = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Some(leading) = campaign(&api, config.clone(), tx, stopping).await
                    && leading
                {
                    release(&api, &config).await;
                }
                let _ = released.send(());
            }
        }
    });
    rx
}

/// Clears the holder of a Lease this replica holds, so that the others may take it now.
async fn release(api: &Api<Lease>, config: &LeaseConfig) {
    let attempt = async {
        let Some(mut lease) = api.get_opt(&config.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(1);
        api.replace(&config.name, &PostParams::default(), &lease)
            .await
            .map(drop)
    };
    match tokio::time::timeout(ATTEMPT_TIMEOUT, attempt).await {
        Ok(Ok(())) => tracing::info!(lease = %config.name, "released the lease"),
        Ok(Err(e)) => {
            tracing::warn!(lease = %config.name, error = %e, "could not release the lease; the others take it when it expires")
        }
        Err(_) => {
            tracing::warn!(lease = %config.name, "releasing the lease timed out; the others take it when it expires")
        }
    }
}

/// The Lease as last seen, and when it was first seen like that.
struct Observed {
    record: (Option<String>, Option<MicroTime>),
    since: Instant,
    duration: Duration,
}

enum Attempt {
    Leading,
    Following,
}

/// Campaigns until every receiver is gone (`None`) or `stopping` completes
/// (`Some(leading)`).
async fn campaign(
    api: impl std::borrow::Borrow<Api<Lease>>,
    config: LeaseConfig,
    tx: watch::Sender<bool>,
    stopping: impl std::future::Future<Output = ()>,
) -> Option<bool> {
    let api = api.borrow();
    tokio::pin!(stopping);
    let mut observed: Option<Observed> = None;
    let mut renewed_at: Option<Instant> = None;
    loop {
        let deadline = renewed_at.map(|t| t + config.renew_deadline);
        let budget = deadline.map_or(ATTEMPT_TIMEOUT, |d| {
            d.saturating_duration_since(Instant::now())
                .min(ATTEMPT_TIMEOUT)
        });
        let attempt =
            tokio::time::timeout(budget, try_acquire_or_renew(api, &config, &mut observed)).await;
        let succeeded = match attempt {
            Ok(Ok(Attempt::Leading)) => {
                if renewed_at.is_none() {
                    tracing::info!(lease = %config.name, namespace = %config.namespace, identity = %config.identity, "acquired the lease");
                }
                renewed_at = Some(Instant::now());
                true
            }
            Ok(Ok(Attempt::Following)) => {
                if renewed_at.take().is_some() {
                    tracing::warn!(lease = %config.name, "another replica holds the lease now");
                }
                true
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %config.name, error = %e, "could not read or update the lease");
                false
            }
            Err(_) => {
                tracing::warn!(lease = %config.name, "the lease could not be read or updated in time");
                false
            }
        };
        if let Some(d) = deadline
            && !succeeded
            && Instant::now() >= d
        {
            tracing::warn!(lease = %config.name, "could not renew the lease in time: no longer leading");
            renewed_at = None;
        }
        let leading = renewed_at.is_some();
        tx.send_if_modified(|current| std::mem::replace(current, leading) != leading);
        if tx.is_closed() {
            return None;
        }
        let pause = match (leading, succeeded) {
            (true, true) => config.renew_every,
            // A holder whose renewal failed retries soon, and not past its deadline.
            (true, false) => {
                let left = renewed_at
                    .map(|t| (t + config.renew_deadline).saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                config.retry_every.min(left)
            }
            (false, _) => config.retry_every,
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = &mut stopping => return Some(leading),
        }
    }
}

async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &LeaseConfig,
    observed: &mut Option<Observed>,
) -> Result<Attempt, kube::Error> {
    let now = MicroTime(Timestamp::now());
    let duration_seconds = i32::try_from(config.duration.as_secs()).unwrap_or(i32::MAX);
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(config.identity.clone()),
                lease_duration_seconds: Some(duration_seconds),
                acquire_time: Some(now.clone()),
                renew_time: Some(now),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(Attempt::Leading),
            // Another replica created it first.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Following),
            Err(e) => Err(e),
        };
    };
    let spec = lease.spec.clone().unwrap_or_default();
    let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
    let record = (holder.clone(), spec.renew_time.clone());
    if observed.as_ref().is_none_or(|o| o.record != record) {
        let seconds = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok());
        *observed = Some(Observed {
            record,
            since: Instant::now(),
            duration: seconds.map_or(config.duration, Duration::from_secs),
        });
    }
    let ours = holder.as_deref() == Some(config.identity.as_str());
    let expired = observed
        .as_ref()
        .is_some_and(|o| o.since.elapsed() >= o.duration);
    if holder.is_some() && !ours && !expired {
        return Ok(Attempt::Following);
    }
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(duration_seconds),
        acquire_time: if ours {
            spec.acquire_time.clone()
        } else {
            Some(now.clone())
        },
        renew_time: Some(now),
        lease_transitions: Some(if ours {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..spec
    });
    // `replace` sends the resourceVersion that was read: a concurrent change fails it.
    let updated = api
        .replace(&config.name, &PostParams::default(), &lease)
        .await?;
    let spec = updated.spec.unwrap_or_default();
    *observed = Some(Observed {
        record: (spec.holder_identity, spec.renew_time),
        since: Instant::now(),
        duration: config.duration,
    });
    Ok(Attempt::Leading)
}
