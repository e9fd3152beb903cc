//! tracehook: a mutating admission webhook that adds a tracing agent sidecar to Pods
//! at creation time, and a reconciler for the `Jaeger` backend custom resource.
//!
//! Layout: [`inject`] is the pure injection engine (no I/O); [`admission`] turns
//! AdmissionReviews into engine calls and back; [`server`] and [`tls`] are the HTTP
//! adapters; [`cluster`] holds the Kubernetes-facing caches; [`reconciler`] provisions
//! the `Jaeger` backends; [`manifest`] is the `tracehook inject` command's document
//! handling.

pub mod admission;
pub mod certs;
pub mod cluster;
pub mod crd;
pub mod inject;
pub mod manifest;
pub mod metrics;
pub mod reconciler;
pub mod server;
pub mod tls;

/// Everything that can go wrong outside the pure engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("certificate generation: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Manifest(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Error {
    /// A short, stable label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Tls(_) => "tls",
            Error::Certificate(_) => "certificate",
            Error::Io { .. } => "io",
            Error::Manifest(_) => "manifest",
            Error::Config(_) => "config",
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
