//! Who gets in, and what leaks: TLS 1.2+ only, no admission over plain HTTP, no key
//! material in logs (at trace level), and the RBAC of manifests/ checked with the
//! real API server's authorizer. (Pod Security `restricted` for both sidecar flavors
//! is `webhook::injected_pods_pass_the_restricted_pod_security_profile`.)

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use testcluster::Cluster;

use crate::support::*;

// ------------------------------------------------------------------ TLS versions

/// `openssl s_client` with one protocol version: (handshake completed, output).
fn s_client(port: u16, version: &str) -> (bool, String) {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .arg(version)
        // OpenSSL 3 refuses to even offer TLS 1.0/1.1 at its default security level.
        .args(["-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "localhost"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl runs (Debian package openssl)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A bare TLS ClientHello offering only `version` (0x0301 = TLS 1.0, 0x0302 = 1.1);
/// returns the first bytes the server sends back.
fn raw_client_hello(port: u16, version: [u8; 2]) -> Vec<u8> {
    let mut hello = Vec::new();
    hello.extend_from_slice(&version); // client_version
    hello.extend_from_slice(&[0x42; 32]); // random
    hello.push(0); // no session id
    // TLS_RSA_WITH_AES_128_CBC_SHA, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
    // TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA
    hello.extend_from_slice(&[0x00, 0x06, 0x00, 0x2f, 0xc0, 0x09, 0xc0, 0x13]);
    hello.extend_from_slice(&[0x01, 0x00]); // compression: null
    let mut handshake = vec![0x01, 0x00];
    handshake.extend_from_slice(&u16::try_from(hello.len()).expect("short").to_be_bytes());
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, version[0], version[1]];
    record.extend_from_slice(&u16::try_from(handshake.len()).expect("short").to_be_bytes());
    record.extend_from_slice(&handshake);

    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tcp.write_all(&record).expect("send the ClientHello");
    let mut answer = vec![0u8; 64];
    let n = tcp.read(&mut answer).unwrap_or(0);
    answer.truncate(n);
    answer
}

#[tokio::test]
async fn tls_1_0_and_1_1_handshakes_fail_and_1_2_and_1_3_succeed() {
    let port = env().webhook.port;
    for version in ["-tls1", "-tls1_1"] {
        let (ok, text) = s_client(port, version);
        assert!(!ok, "openssl {version} completed a handshake: {text}");
        assert!(
            text.contains("alert") && text.contains("Cipher is (NONE)"),
            "the server refused {version} with an alert: {text}"
        );
    }
    for (version, name) in [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")] {
        let (ok, text) = s_client(port, version);
        assert!(ok, "openssl {version} failed: {text}");
        assert!(text.contains(&format!("New, {name}, Cipher is ")), "{text}");
    }
    // The same without OpenSSL's help: the answer to a TLS 1.0 or 1.1 ClientHello is
    // a fatal alert record, not a ServerHello.
    for version in [[0x03, 0x01], [0x03, 0x02]] {
        let answer = raw_client_hello(port, version);
        assert!(
            answer.first() == Some(&0x15) && answer.get(5) == Some(&2),
            "a fatal alert for {version:02x?}, got {answer:02x?}"
        );
    }
}

// ------------------------------------------------------------------ plain HTTP

/// The creation of a Pod in `default` that asks for `obs/test`.
fn review_asking_for_injection(uid: &str) -> serde_json::Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "object": {"metadata": {"name": "p", "annotations": {"tracehook.dev/inject": "obs/test"}},
                       "spec": {"containers": [{"name": "a", "image": "b"}]}}
        }
    })
}

/// A raw HTTP/1.1 POST of an AdmissionReview; returns what came back.
fn plain_post(port: u16, path: &str) -> String {
    let body = review_asking_for_injection("plain").to_string();
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        tcp,
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = Vec::new();
    let _ = tcp.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn admission_is_not_served_over_plain_http() {
    let webhook = &env().webhook;
    // The plain-HTTP port has the probes and nothing else.
    let answer = plain_post(webhook.probe_port, "/mutate");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(
        http_get(webhook.probe_port, "/mutate").map(|(s, _)| s),
        Some(404)
    );
    assert_eq!(
        http_get(webhook.probe_port, "/healthz").map(|(s, _)| s),
        Some(200)
    );
    // The TLS port does not speak HTTP in the clear.
    let answer = plain_post(webhook.port, "/mutate");
    assert!(
        !answer.contains("HTTP/") && !answer.contains("AdmissionReview"),
        "{answer:?}"
    );
}

// ------------------------------------------------------------------ key material in logs

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `tracehook serve` logging at trace level into its own file.
struct Traced {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Traced {
    /// Starts it on `port` and waits for `/readyz`.
    fn start(cluster: &Cluster, name: &str, port: u16, args: &[&str]) -> Traced {
        let probe_port = free_port();
        let log = cluster
            .dir()
            .join(format!("tracehook-{name}"))
            .join("trace.log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tracehook"));
        cmd.arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--probe-listen")
            .arg(format!("127.0.0.1:{probe_port}"))
            .args(args)
            .env("KUBECONFIG", cluster.kubeconfig_path())
            .env("RUST_LOG", "trace");
        let child = cluster.spawn_attached(cmd, &log).expect("tracehook serve");
        let mut traced = Traced { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(probe_port, "/readyz").map(|(s, _)| s) != Some(200) {
            if let Ok(Some(status)) = traced.child.try_wait() {
                panic!("tracehook serve exited ({status}): {}", traced.text());
            }
            assert!(Instant::now() < deadline, "not ready: {}", traced.text());
            std::thread::sleep(Duration::from_millis(100));
        }
        traced
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Stops the process and returns everything it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.text()
    }
}

/// The log holds none of the key: no PEM marker, no line or the whole of its base64
/// body, not the PEM base64-encoded again (as a Secret's data is), and no 16 bytes of
/// its secret scalar as hex or as a Rust byte list (the rest of the DER is public:
/// algorithm identifiers and the public point, which certificates carry too).
fn assert_no_key_material(log: &str, key_pem: &str, what: &str) {
    assert!(
        log.len() > 10_000,
        "{what}: the trace log is suspiciously short"
    );
    assert!(!log.contains("PRIVATE KEY"), "{what}: a PEM key marker");
    let b64 = base64::engine::general_purpose::STANDARD;
    assert!(
        !log.contains(&b64.encode("-----BEGIN")),
        "{what}: a base64-encoded PEM block"
    );
    let body_lines: Vec<&str> = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----") && !l.is_empty())
        .collect();
    assert!(!body_lines.is_empty(), "{what}: no key body");
    let body = body_lines.concat();
    assert!(!log.contains(&body), "{what}: the key's base64 body");
    for line in &body_lines {
        assert!(
            line.len() < 16 || !log.contains(line),
            "{what}: a line of the key's base64 body: {line}"
        );
    }
    let encoded_pem = b64.encode(key_pem);
    assert!(
        !log.contains(&encoded_pem[..48]),
        "{what}: the PEM base64-encoded (Secret data)"
    );
    let lower = log.to_ascii_lowercase();
    let der = b64.decode(&body).expect("the key's base64");
    // ECPrivateKey: version 1 (02 01 01), then the scalar as an OCTET STRING (04 20).
    let at = der
        .windows(5)
        .position(|w| w == [0x02, 0x01, 0x01, 0x04, 0x20])
        .expect("a P-256 private key");
    let scalar = &der[at + 5..at + 5 + 32];
    for window in scalar.windows(16) {
        let hex: String = window.iter().map(|b| format!("{b:02x}")).collect();
        let list = format!("{window:?}");
        let list = &list[1..list.len() - 1];
        assert!(!lower.contains(&hex), "{what}: key bytes as hex");
        assert!(!log.contains(list), "{what}: key bytes as a byte list");
    }
}

/// Self-signed mode: the CA and serving keys are generated, stored in a Secret, the
/// caBundle patched, Pods admitted; the keys appear nowhere in the trace log.
#[tokio::test]
async fn no_key_material_in_trace_logs_in_self_signed_mode() {
    let env = env();
    let client = env.cluster.client().await.expect("client");
    let system = "e2e-keys-system";
    let ns = "e2e-keys";
    namespace(&client, system, json!({}), json!({})).await;
    namespace(&client, ns, json!({}), json!({})).await;
    // Registered first: tracehook patches the caBundle when it starts (and then only
    // on its next certificate check, a minute later).
    let port = free_port();
    apply(
        &client,
        &registration_without_ca_bundle("e2e-keys", port, ns, "Never"),
    )
    .await;
    let traced = Traced::start(
        env.cluster,
        "keys-secret",
        port,
        &[
            "--namespace",
            system,
            "--webhook-configuration",
            "e2e-keys",
            "--no-reconciler",
        ],
    );
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    wait_until(Duration::from_secs(30), "the caBundle patched", || {
        let configs = configs.clone();
        async move {
            configs
                .get("e2e-keys")
                .await
                .ok()
                .and_then(|c| c.webhooks)
                .is_some_and(|w| w.iter().all(|w| w.client_config.ca_bundle.is_some()))
        }
    })
    .await;
    let stored = poll(Duration::from_secs(30), "an admitted Pod", || {
        let client = client.clone();
        async move {
            let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client, ns);
            pods.create(
                &Default::default(),
                &pod(
                    &fresh_name("keys"),
                    json!({"tracehook.dev/inject": "obs/test"}),
                ),
            )
            .await
            .ok()
        }
    })
    .await;
    assert!(is_injected(&stored));
    delete_webhook_configuration(&client, "e2e-keys").await;
    let log = traced.stop();

    let secret = Api::<Secret>::namespaced(client.clone(), system)
        .get("tracehook-tls")
        .await
        .expect("the certificate Secret");
    let data = secret.data.expect("Secret data");
    let keys: Vec<(&String, String)> = data
        .iter()
        .filter(|(k, _)| k.ends_with(".key"))
        .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    assert!(
        keys.len() >= 2,
        "the CA and serving keys: {:?}",
        data.keys()
    );
    for (name, pem) in keys {
        assert_no_key_material(&log, &pem, &format!("self-signed mode, {name}"));
    }
}

/// An AdmissionReview over TLS, trusting `ca_pem` only; the answer's JSON.
async fn admit_over_tls(port: u16, ca_pem: &str) -> Value {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("a CA certificate");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await
        .expect("TLS handshake");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1");
    tokio::spawn(connection);
    let review = review_asking_for_injection("keys");
    let request = hyper::Request::post("/mutate")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(review.to_string())))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let body = body_bytes(response).await;
    serde_json::from_slice(&body).expect("JSON")
}

fn certs(dir: &Path) -> (String, String) {
    let status = Command::new(env!("CARGO_BIN_EXE_tracehook"))
        .args(["certs", "--out"])
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("tracehook certs");
    assert!(status.success());
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("certificate file");
    (read("ca.crt"), read("tls.key"))
}

/// Files mode: a pair read from files, then a half-written replacement (rejected and
/// logged), then the complete one (reloaded); neither key appears in the trace log.
#[tokio::test]
async fn no_key_material_in_trace_logs_in_files_mode() {
    let env = env();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = env.cluster.dir().join("tracehook-keys-files");
    let (first_ca, first_key) = certs(&dir.join("first"));
    let serving = dir.join("serving");
    std::fs::create_dir_all(&serving).expect("dir");
    for f in ["tls.crt", "tls.key"] {
        std::fs::copy(dir.join("first").join(f), serving.join(f)).expect("copy");
    }
    let traced = Traced::start(
        env.cluster,
        "keys-files",
        free_port(),
        &[
            "--no-cluster",
            "--instance",
            "obs/test",
            "--tls-cert-file",
            &serving.join("tls.crt").display().to_string(),
            "--tls-key-file",
            &serving.join("tls.key").display().to_string(),
        ],
    );
    let answer = admit_over_tls(traced.port, &first_ca).await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");

    let (second_ca, second_key) = certs(&dir.join("second"));
    // Half written: the new certificate, a truncated new key.
    std::fs::copy(dir.join("second/tls.crt"), serving.join("tls.crt")).expect("copy");
    std::fs::write(serving.join("tls.key"), &second_key[..second_key.len() / 2]).expect("write");
    wait_until(
        Duration::from_secs(20),
        "the half-written pair to be refused",
        || async {
            traced
                .text()
                .contains("not reloading the serving certificate yet")
        },
    )
    .await;
    std::fs::copy(dir.join("second/tls.key"), serving.join("tls.key")).expect("copy");
    wait_until(
        Duration::from_secs(20),
        "the new pair to be loaded",
        || async { traced.text().contains("reloaded the serving certificate") },
    )
    .await;
    let answer = admit_over_tls(traced.port, &second_ca).await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    let log = traced.stop();

    assert_no_key_material(&log, &first_key, "files mode, first key");
    assert_no_key_material(&log, &second_key, "files mode, second key");
}

// ------------------------------------------------------------------ RBAC

const SERVICE_ACCOUNT: &str = "system:serviceaccount:tracehook:tracehook";

/// `kubectl auth can-i` as tracehook's ServiceAccount.
fn can_i(cluster: &Cluster, check: &str) -> bool {
    let out = cluster
        .kubectl(["auth", "can-i"])
        .args(check.split_whitespace())
        .arg(format!("--as={SERVICE_ACCOUNT}"))
        .output()
        .expect("kubectl runs");
    let answer = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        answer == "yes" || answer == "no",
        "kubectl auth can-i {check}: {answer} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    answer == "yes"
}

/// Everything tracehook calls (src/cluster/, src/reconciler/).
const NEEDED: &[&str] = &[
    // The webhook's caches: metadata watches, and a GET on a cache miss.
    "get namespaces",
    "list namespaces",
    "watch namespaces",
    "get jaegers.tracehook.dev -A",
    "list jaegers.tracehook.dev -A",
    "watch jaegers.tracehook.dev -A",
    "get replicasets.apps -A",
    "list replicasets.apps -A",
    "watch replicasets.apps -A",
    "get deployments.apps -A",
    "list deployments.apps -A",
    "watch deployments.apps -A",
    "list statefulsets.apps -A",
    "watch statefulsets.apps -A",
    "get statefulsets.apps -n shop",
    "list daemonsets.apps -A",
    "watch daemonsets.apps -A",
    "get daemonsets.apps -n shop",
    "list jobs.batch -A",
    "watch jobs.batch -A",
    "get jobs.batch -n shop",
    "list cronjobs.batch -A",
    "watch cronjobs.batch -A",
    "get cronjobs.batch -n shop",
    "list rollouts.argoproj.io -A",
    "watch rollouts.argoproj.io -A",
    "get rollouts.argoproj.io -n shop",
    // The sidecar fitted into LimitRanges and ResourceQuotas.
    "list limitranges -A",
    "watch limitranges -A",
    "list resourcequotas -A",
    "watch resourcequotas -A",
    // envFrom ConfigMaps' keys.
    "get configmaps -n shop",
    // InjectionSkipped Events (and the reconciler's).
    "create events.events.k8s.io -n shop",
    "patch events.events.k8s.io -n shop",
    // Self-signed mode: its Secret, and the caBundle of its own registration.
    "create secrets -n tracehook",
    "get secrets/tracehook-tls -n tracehook",
    "update secrets/tracehook-tls -n tracehook",
    "get mutatingwebhookconfigurations.admissionregistration.k8s.io/tracehook",
    "patch mutatingwebhookconfigurations.admissionregistration.k8s.io/tracehook",
    // Missed injections: the leader's Pod watch and the registration's selector.
    "get pods -n shop",
    "list pods -A",
    "watch pods -A",
    // The reconciler: its Lease, the Jaeger status, the children.
    "create leases.coordination.k8s.io -n tracehook",
    "get leases.coordination.k8s.io/tracehook-reconciler -n tracehook",
    "update leases.coordination.k8s.io/tracehook-reconciler -n tracehook",
    "patch jaegers.tracehook.dev --subresource=status -n obs",
    "update jaegers.tracehook.dev --subresource=finalizers -n obs",
    "list serviceaccounts -A",
    "watch serviceaccounts -A",
    "get serviceaccounts -n obs",
    "create serviceaccounts -n obs",
    "patch serviceaccounts -n obs",
    "list configmaps -A",
    "watch configmaps -A",
    "create configmaps -n obs",
    "patch configmaps -n obs",
    "list services -A",
    "watch services -A",
    "get services -n obs",
    "create services -n obs",
    "patch services -n obs",
    "create deployments.apps -n obs",
    "patch deployments.apps -n obs",
    "list ingresses.networking.k8s.io -A",
    "watch ingresses.networking.k8s.io -A",
    "get ingresses.networking.k8s.io -n obs",
    "create ingresses.networking.k8s.io -n obs",
    "patch ingresses.networking.k8s.io -n obs",
    "delete ingresses.networking.k8s.io -n obs",
];

/// What it must not do.
const FORBIDDEN: &[&str] = &[
    // Secrets outside its namespace, or other Secrets in it.
    "get secrets -n default",
    "get secrets -n kube-system",
    "list secrets -n shop",
    "watch secrets -n shop",
    "list secrets -A",
    "get secrets/other -n tracehook",
    "list secrets -n tracehook",
    "watch secrets -n tracehook",
    "delete secrets/tracehook-tls -n tracehook",
    // Other webhook configurations.
    "patch mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
    "update mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
    "delete mutatingwebhookconfigurations.admissionregistration.k8s.io/other",
    "delete mutatingwebhookconfigurations.admissionregistration.k8s.io/tracehook",
    "create mutatingwebhookconfigurations.admissionregistration.k8s.io",
    "list mutatingwebhookconfigurations.admissionregistration.k8s.io",
    "patch validatingwebhookconfigurations.admissionregistration.k8s.io/tracehook",
    // Pods.
    "create pods -n shop",
    "create pods -n tracehook",
    "patch pods -n shop",
    "delete pods -n shop",
    "create pods --subresource=exec -n shop",
    "create pods --subresource=eviction -n shop",
    // Escalation.
    "create clusterrolebindings.rbac.authorization.k8s.io",
    "create rolebindings.rbac.authorization.k8s.io -n tracehook",
    "bind clusterroles.rbac.authorization.k8s.io",
    "escalate clusterroles.rbac.authorization.k8s.io",
    "impersonate serviceaccounts -n tracehook",
    "create serviceaccounts --subresource=token -n tracehook",
    "create certificatesigningrequests.certificates.k8s.io",
    // More than it uses.
    "patch namespaces",
    "delete namespaces",
    "update jaegers.tracehook.dev -n obs",
    "delete jaegers.tracehook.dev -n obs",
    "delete deployments.apps -n obs",
    "delete services -n obs",
    "get leases.coordination.k8s.io/other -n tracehook",
    "create leases.coordination.k8s.io -n shop",
    "* *",
];

#[tokio::test]
async fn rbac_allows_what_tracehook_calls_and_nothing_more() {
    let cluster = env().cluster;
    let manifests = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests");
    // The namespace may exist already (other tests use it); its manifest's Pod Security
    // label is not applied to the shared cluster.
    let _ = cluster
        .kubectl(["create", "namespace", "tracehook"])
        .output();
    // `kubectl auth can-i` answers no for a resource the API server does not serve.
    install_rollout_crd(&cluster.client().await.expect("client")).await;
    for file in [
        "serviceaccount.yaml",
        "rbac-webhook.yaml",
        "rbac-reconciler.yaml",
    ] {
        let out = cluster
            .kubectl(["apply", "-f"])
            .arg(manifests.join(file))
            .output()
            .expect("kubectl runs");
        assert!(
            out.status.success(),
            "applying {file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let missing: Vec<&str> = NEEDED
        .iter()
        .copied()
        .filter(|c| !can_i(cluster, c))
        .collect();
    let excess: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|c| can_i(cluster, c))
        .collect();
    eprintln!(
        "figure: RBAC checked with kubectl auth can-i as {SERVICE_ACCOUNT}: {} needed verbs, {} forbidden",
        NEEDED.len(),
        FORBIDDEN.len()
    );
    assert!(missing.is_empty(), "tracehook may not: {missing:#?}");
    assert!(
        excess.is_empty(),
        "tracehook may, but must not: {excess:#?}"
    );
}
