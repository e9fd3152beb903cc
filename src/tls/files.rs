//! `files` mode: the serving certificate and key from files (cert-manager, a mounted
//! Secret), reloaded when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::CertResolver;
use crate::{Error, Result};

/// Certificate and key files, reloaded when their content changes. Secret volumes
/// swap a symlink to a new directory, which file-event watches on the old inode miss;
/// comparing contents on a short poll sees every form of update.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    pub fn read(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| Error::io(format!("reading {}", p.display()), e))
        };
        Ok((read(&self.cert)?, read(&self.key)?))
    }

    /// Reloads into `resolver` whenever the files change, until the task is dropped.
    pub async fn watch(self, resolver: Arc<CertResolver>, every: Duration) {
        let mut last = self.read().ok();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let files = self.clone();
            let Ok(read) = tokio::task::spawn_blocking(move || files.read()).await else {
                continue;
            };
            match read {
                Ok(now) if Some(&now) != last.as_ref() => match resolver.swap(&now.0, &now.1) {
                    Ok(()) => {
                        tracing::info!(cert = %self.cert.display(), "reloaded the serving certificate");
                        last = Some(now);
                    }
                    // A half-written pair: keep serving the old one and retry.
                    Err(e) => {
                        tracing::warn!(error = %e, "not reloading the serving certificate yet")
                    }
                },
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the serving certificate"),
            }
        }
    }
}
