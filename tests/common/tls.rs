//! A real TLS server on a free loopback port (`server::serve_tls`), the certificates it
//! presents, and a TLS client that trusts their CA.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracehook::server::{self, Context};
use tracehook::tls::issue::{self as certs, Bundle};
use tracehook::tls::{self, CertResolver};

/// The process's one crypto provider (only the first call installs it).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A CA and a serving pair for `tracehook.tracehook.svc` and localhost, for an hour.
pub fn bundle() -> Bundle {
    certs::generate(
        &certs::service_names("tracehook", "tracehook"),
        Duration::from_secs(3600),
    )
    .expect("certificates")
}

/// A resolver presenting `bundle`'s serving pair.
pub fn resolver(bundle: &Bundle) -> Arc<CertResolver> {
    Arc::new(
        CertResolver::new(bundle.cert_pem.as_bytes(), bundle.key_pem.as_bytes()).expect("resolver"),
    )
}

/// `server::serve_tls` on a free loopback port, stopped (and drained) by [`stop`].
///
/// [`stop`]: TlsServer::stop
pub struct TlsServer {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsServer {
    pub async fn start(resolver: Arc<CertResolver>, ctx: Arc<Context>) -> Self {
        install_provider();
        let config = tls::server_config(resolver).expect("server config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server::serve_tls(
            listener,
            TlsAcceptor::from(Arc::new(config)),
            server::admission_router(ctx),
            async {
                let _ = stopped.await;
            },
        ));
        Self { addr, stop, task }
    }

    /// With a fresh certificate for `bundle`.
    pub async fn start_with(bundle: &Bundle, ctx: Arc<Context>) -> Self {
        Self::start(resolver(bundle), ctx).await
    }

    pub async fn stop(self) {
        self.stop_within(Duration::from_secs(15)).await;
    }

    pub async fn stop_within(self, drain: Duration) {
        let _ = self.stop.send(());
        tokio::time::timeout(drain, self.task)
            .await
            .expect("the server drains")
            .expect("the server task ends cleanly");
    }
}

/// Trusts `ca_pem` only, offers `alpn`.
pub fn client_config(ca_pem: &str, alpn: &[u8]) -> ClientConfig {
    install_provider();
    let mut config = ClientConfig::builder()
        .with_root_certificates(roots(ca_pem))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

pub fn roots(ca_pem: &str) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("a CA certificate");
    }
    roots
}

/// A TLS connection to `addr` as `localhost`.
pub async fn connect(
    addr: SocketAddr,
    config: ClientConfig,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").expect("a DNS name");
    TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
}
