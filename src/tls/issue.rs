//! Certificates for the HTTPS endpoint: an ECDSA P-256 CA and a serving certificate
//! signed by it, generated with rcgen.

use std::path::Path;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

use crate::{Error, Result};

/// A CA, and a serving certificate with its key, all PEM.
#[derive(Clone)]
pub struct Bundle {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for Bundle {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The names a serving certificate for Service `service` in `namespace` carries:
/// the in-cluster Service names, and loopback for local use.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ]
}

/// A certificate authority: its certificate and private key, PEM.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

/// How long a generated CA lives: serving certificates are renewed many times under
/// one CA, so the webhook's `caBundle` rarely changes.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A little back-dating tolerates clock skew between nodes.
fn not_before() -> OffsetDateTime {
    OffsetDateTime::now_utc() - time::Duration::minutes(5)
}

/// Generates a CA valid for `validity`.
pub fn generate_ca(validity: Duration) -> Result<Ca> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = name("tracehook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = not_before();
    params.not_after = OffsetDateTime::now_utc() + validity;
    let cert = params.self_signed(&key)?;
    Ok(Ca {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Issues a serving certificate for `names` from `ca`, valid for `validity` (never
/// beyond the CA's own expiry).
pub fn issue(ca: &Ca, names: &[String], validity: Duration) -> Result<Bundle> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut serving = CertificateParams::new(names.to_vec())?;
    serving.distinguished_name = name(names.first().map_or("tracehook", String::as_str));
    serving.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    serving.use_authority_key_identifier_extension = true;
    serving.not_before = not_before();
    let ca_not_after = not_after(&ca.cert_pem)?;
    serving.not_after = (OffsetDateTime::now_utc() + validity).min(ca_not_after);
    let cert = serving.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_pem: ca.cert_pem.clone(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        not_after: serving.not_after,
    })
}

/// Generates a CA and a serving certificate for `names`, both valid for `validity`.
pub fn generate(names: &[String], validity: Duration) -> Result<Bundle> {
    issue(&generate_ca(validity)?, names, validity)
}

/// The expiry of the first certificate in a PEM text.
pub fn not_after(cert_pem: &str) -> Result<OffsetDateTime> {
    let invalid =
        |what: String| Error::InvalidCertificate(format!("reading a certificate: {what}"));
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| invalid(e.to_string()))?;
    let cert = pem.parse_x509().map_err(|e| invalid(e.to_string()))?;
    Ok(cert.validity().not_after.to_datetime())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes `ca.crt`, `tls.crt` and `tls.key` (owner-only) into `dir`.
pub fn write(bundle: &Bundle, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let files = [
        ("ca.crt", &bundle.ca_pem),
        ("tls.crt", &bundle.cert_pem),
        ("tls.key", &bundle.key_pem),
    ];
    for (file, content) in files {
        let path = dir.join(file);
        write_private(&path, content.as_bytes(), file.ends_with(".key"))
            .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

fn write_private(path: &Path, content: &[u8], private: bool) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)?;
    file.write_all(content)
}
