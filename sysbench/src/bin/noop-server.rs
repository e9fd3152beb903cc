//! The baseline of the load benchmark: tracehook's own HTTPS stack — `server::serve_tls`
//! (rustls with the same `CertResolver` and `server_config`, hyper's HTTP/1.1 and
//! HTTP/2, the same limits and timeouts) and an axum router with the same body limit —
//! whose `POST /mutate` reads the body and answers a fixed "allowed" AdmissionReview
//! without parsing it. The difference to `tracehook serve` is the admission work alone.
//!
//! `noop-server --listen 127.0.0.1:9443 --tls-cert-file tls.crt --tls-key-file tls.key`

use std::sync::Arc;

use anyhow::Result;
use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::header;
use axum::routing::post;
use clap::Parser as _;
use tracehook::server::{self, MAX_BODY_BYTES};
use tracehook::tls::{self, CertResolver};
use tracehook_sysbench::cli::NoopArgs;

/// The uid of tests/data/reviews/pod-asking-for-injection.json; the load generator
/// does not check it.
const RESPONSE: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"705ab4f5-6393-11e8-b7cc-42010a800002","allowed":true}}"#;

/// The allocator of the `tracehook` binary: the baseline's HTTP stack allocates with it
/// too, so the difference stays the admission work alone.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<()> {
    let args = NoopArgs::parse();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let resolver = CertResolver::new(&std::fs::read(&args.cert)?, &std::fs::read(&args.key)?)?;
    let config = tls::server_config(Arc::new(resolver))?;
    let router = Router::new()
        .route(
            "/mutate",
            post(|_body: Bytes| async { ([(header::CONTENT_TYPE, "application/json")], RESPONSE) }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    server::serve_tls(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        router,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await;
    Ok(())
}
