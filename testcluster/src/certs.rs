//! The cluster's PKI, generated with rcgen (ring): one CA that signs the API server's
//! serving certificate and the admin client certificate (group `system:masters`), a
//! front-proxy CA for the aggregation layer, and the service-account signing key.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// PEM text of everything the control plane needs.
pub struct Pki {
    pub ca_cert: String,
    pub ca_key: String,
    pub serving_cert: String,
    pub serving_key: String,
    pub admin_cert: String,
    pub admin_key: String,
    /// The aggregation layer's request-header CA and the API server's proxy client
    /// certificate (without them kube-controller-manager and kube-scheduler log
    /// "missing content for CA bundle ... requestheader-client-ca-file" forever).
    pub front_proxy_ca_cert: String,
    pub front_proxy_client_cert: String,
    pub front_proxy_client_key: String,
    /// PKCS#8 private key the API server signs service-account tokens with (and the
    /// controller-manager too); the API server also verifies with it.
    pub sa_key: String,
    pub sa_pub: String,
}

fn params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.use_authority_key_identifier_extension = true;
    p
}

/// The cluster CA's subject (also how [`node_pki`] finds the issuer again).
const CA_NAME: &str = "tracehook-testcluster-ca";

fn ca_params(cn: &str) -> CertificateParams {
    let mut ca = params(cn);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.use_authority_key_identifier_extension = false;
    ca
}

fn new_ca(cn: &str) -> Result<(CertifiedIssuer<'static, KeyPair>, String)> {
    let ca = ca_params(cn);
    let key = KeyPair::generate().context("generating CA key")?;
    let key_pem = key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca, key).context("self-signing CA")?;
    Ok((ca, key_pem))
}

/// A client certificate (and its key) signed by `ca`.
fn client_cert(ca: &Issuer<'_, KeyPair>, cn: &str, org: Option<&str>) -> Result<(String, String)> {
    let mut p = params(cn);
    if let Some(org) = org {
        p.distinguished_name.push(DnType::OrganizationName, org);
    }
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate()?;
    let cert = p
        .signed_by(&key, ca)
        .with_context(|| format!("signing the {cn} client cert"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

pub fn generate() -> Result<Pki> {
    let (ca, ca_key_pem) = new_ca(CA_NAME)?;
    let (front_proxy_ca, _) = new_ca("tracehook-testcluster-front-proxy-ca")?;

    let mut serving = params("kube-apiserver");
    serving.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        // The `kubernetes` Service's cluster IP (first of 10.0.0.0/24).
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
    ];
    for dns in [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    ] {
        serving
            .subject_alt_names
            .push(SanType::DnsName(dns.try_into().context("DNS SAN")?));
    }
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .context("signing serving cert")?;

    let (admin_cert, admin_key) = client_cert(&ca, "testcluster-admin", Some("system:masters"))?;
    let (front_proxy_client_cert, front_proxy_client_key) =
        client_cert(&front_proxy_ca, "front-proxy-client", None)?;

    let sa = KeyPair::generate()?;
    Ok(Pki {
        ca_cert: ca.pem(),
        ca_key: ca_key_pem,
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        admin_cert,
        admin_key,
        front_proxy_ca_cert: front_proxy_ca.pem(),
        front_proxy_client_cert,
        front_proxy_client_key,
        sa_key: sa.serialize_pem(),
        sa_pub: sa.public_key_pem(),
    })
}

/// PEM pairs (certificate, key) for a real node, signed by the cluster CA.
pub struct NodePki {
    /// The kubelet's client certificate: `CN=system:node:<node>`, `O=system:nodes` (the
    /// Node authorizer and NodeRestriction admission key on both).
    pub kubelet_client: (String, String),
    /// The kubelet's serving certificate (SANs: the node IP and name).
    pub kubelet_serving: (String, String),
    /// kube-proxy's client certificate: `CN=system:kube-proxy`, bound to
    /// `system:node-proxier` by the default RBAC.
    pub kube_proxy_client: (String, String),
    /// The API server's client certificate towards kubelets, in `system:masters` (the
    /// kubelet's webhook authorizer then allows logs, exec and port-forward).
    pub apiserver_kubelet_client: (String, String),
}

/// Signs [`NodePki`] with the cluster CA, given the CA's private key (`pki/ca.key`).
///
/// The issuer is rebuilt from the key and the CA's fixed parameters: rcgen puts only the
/// subject and the key identifier (derived from the key) of the issuer into a signed
/// certificate, both identical to the CA certificate's, so chains verify against
/// `pki/ca.crt` without parsing it.
pub fn node_pki(ca_key_pem: &str, node_name: &str, node_ip: Ipv4Addr) -> Result<NodePki> {
    let key = KeyPair::from_pem(ca_key_pem).context("parsing the cluster CA key")?;
    let ca = Issuer::new(ca_params(CA_NAME), key);

    let mut serving = params(node_name);
    serving.subject_alt_names = vec![
        SanType::IpAddress(IpAddr::V4(node_ip)),
        SanType::DnsName(node_name.try_into().context("node name as DNS SAN")?),
    ];
    serving.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving
        .signed_by(&serving_key, &ca)
        .context("signing the kubelet serving cert")?;

    Ok(NodePki {
        kubelet_client: client_cert(
            &ca,
            &format!("system:node:{node_name}"),
            Some("system:nodes"),
        )?,
        kubelet_serving: (serving_cert.pem(), serving_key.serialize_pem()),
        kube_proxy_client: client_cert(&ca, "system:kube-proxy", None)?,
        apiserver_kubelet_client: client_cert(
            &ca,
            "kube-apiserver-kubelet-client",
            Some("system:masters"),
        )?,
    })
}
