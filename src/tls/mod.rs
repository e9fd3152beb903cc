//! TLS for the admission endpoint: rustls (TLS 1.2 and 1.3 only) with a certificate
//! resolver whose key pair is swapped atomically, so a renewed or reloaded certificate
//! takes effect on the next handshake without restarting the listener.
//!
//! - [`issue`]: an ECDSA P-256 CA and serving certificates, with rcgen
//! - [`files`]: `files` mode, certificate files reloaded when they change
//! - [`self_signed`]: the default mode, a pair in a Secret shared by the replicas

pub mod files;
pub mod issue;
pub mod self_signed;

pub use files::CertFiles;

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::{Error, Result};

/// Serves whatever key pair was stored last.
#[derive(Debug)]
pub struct CertResolver {
    current: ArcSwap<CertifiedKey>,
}

impl CertResolver {
    pub fn new(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self> {
        Ok(Self {
            current: ArcSwap::from_pointee(certified_key(cert_pem, key_pem)?),
        })
    }

    /// Replaces the key pair; handshakes already under way keep the old one.
    pub fn swap(&self, cert_pem: &[u8], key_pem: &[u8]) -> Result<()> {
        self.current
            .store(Arc::new(certified_key(cert_pem, key_pem)?));
        Ok(())
    }

    /// The leaf certificate currently served (DER).
    pub fn leaf(&self) -> CertificateDer<'static> {
        self.current.load().cert[0].clone()
    }
}

impl ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()))
}

/// Parses a PEM chain and key into a key pair rustls can serve.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> Result<CertifiedKey> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::InvalidCertificate(format!("reading the certificate PEM: {e}")))?;
    if chain.is_empty() {
        return Err(Error::InvalidCertificate(
            "the certificate file holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| Error::InvalidCertificate(format!("reading the private key PEM: {e}")))?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|e| {
        Error::InvalidCertificate(format!("the certificate and key do not form a pair: {e}"))
    })
}

/// The server configuration: TLS 1.2+, ALPN `h2` then `http/1.1`.
pub fn server_config(resolver: Arc<CertResolver>) -> Result<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
