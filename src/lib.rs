//! tracehook: a mutating admission webhook that adds a tracing agent sidecar to Pods
//! at creation time, and a reconciler for the `Jaeger` backend custom resource.
//!
//! Layout: [`inject`] is the pure injection engine (no I/O); [`admission`] is the one
//! review step from an AdmissionReview to its answer; [`server`] and [`tls`] are the
//! HTTP adapters, [`serve`] runs them and the rest under one supervisor; [`cluster`]
//! holds the Kubernetes-facing caches, Events and the leader's watch of Pods missing
//! their sidecar; [`explain`] is `tracehook explain`; [`reconciler`] provisions the
//! `Jaeger` backends; [`inject_command`] is the `tracehook inject` command's document
//! handling.

pub mod admission;
pub mod cluster;
pub mod crd;
pub mod explain;
pub mod inject;
pub mod inject_command;
pub mod metrics;
pub mod reconciler;
pub mod serve;
pub mod server;
pub mod tls;

/// Everything that can go wrong outside the pure engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// PEM text or a key pair that cannot be served (files, the Secret, a flag).
    #[error("certificate material: {0}")]
    InvalidCertificate(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    /// The certificate Secret was replaced by other replicas every time we read it.
    #[error("the Secret {0} kept changing under us")]
    SecretContended(String),
    /// One of `serve`'s tasks ended before shutdown.
    #[error("the {name} stopped: {reason}")]
    TaskStopped { name: &'static str, reason: String },
    /// A blocking task (key generation) panicked or was cancelled.
    #[error("{what}: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    /// An object the API server returned without a field it always sets.
    #[error("{0} has no {1}")]
    MissingField(String, &'static str),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Manifest(String),
    /// A command-line value that does not parse.
    #[error("{0}")]
    Argument(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable label for metrics (`tracehook_reconcile_errors_total{error}`).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::InvalidCertificate(_) => "invalid_certificate",
            Error::Tls(_) => "tls",
            Error::Certificate(_) => "certificate",
            Error::SecretContended(_) => "secret_contended",
            Error::Task { .. } => "task",
            Error::TaskStopped { .. } => "task_stopped",
            Error::MissingField(..) => "missing_field",
            Error::Io { .. } => "io",
            Error::Manifest(_) => "manifest",
            Error::Argument(_) => "argument",
            Error::Json(_) => "json",
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The version stamped into the `tracehook.dev/status` marker.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
