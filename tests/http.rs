//! The HTTP adapters from the outside: the admission router and the probes router
//! called in memory with `oneshot`, and the TLS server over a real handshake
//! (HTTP/1.1 and HTTP/2 by ALPN, TLS 1.2 and 1.3, certificate hot swap).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use rustls::{ClientConfig, ProtocolVersion, SupportedProtocolVersion};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tower::ServiceExt as _;
use tracehook::server::{self, Context};
use tracehook::tls::issue::Bundle;

mod common;
use common::{
    TlsServer, body_bytes, bundle, connect, context, http2_client, install_provider, json_body,
    pod, pod_review, post_json, resolver, review_of, roots,
};

async fn call(
    router: Router,
    method: Method,
    uri: &str,
    body: impl Into<Body>,
) -> (StatusCode, Option<String>, Bytes) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.into())
        .expect("a valid request");
    let response = router.oneshot(request).await.expect("infallible");
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = body_bytes(response).await;
    (status, content_type, body)
}

async fn post_mutate(
    ctx: &Arc<Context>,
    body: impl Into<Body>,
) -> (StatusCode, Option<String>, Value) {
    let (status, content_type, body) = call(
        server::admission_router(ctx.clone()),
        Method::POST,
        "/mutate",
        body,
    )
    .await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("JSON body ({e}): {}", String::from_utf8_lossy(&body)));
    (status, content_type, json)
}

/// Checks an AdmissionReview answer injecting the sidecar into [`pod`].
fn assert_injected(review: &Value, uid: &str) {
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(review["kind"], "AdmissionReview");
    let response = &review["response"];
    assert_eq!(response["uid"], uid);
    assert_eq!(response["allowed"], true);
    assert_eq!(response["patchType"], "JSONPatch");
    let patch = response["patch"]
        .as_str()
        .expect("patch is a base64 string");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("a JSON Patch");
    let mut patched = pod();
    json_patch::patch(&mut patched, &patch).expect("applies");
    assert_eq!(patched["spec"]["initContainers"][0]["name"], "jaeger-agent");
    assert_eq!(
        patched["metadata"]["labels"]["tracehook.dev/injected"],
        "obs.test"
    );
}

#[tokio::test]
async fn valid_review_gets_a_json_patch() {
    let ctx = context();
    let body =
        serde_json::to_vec(&pod_review("705ab4f5-6393-11e8-b7cc-42010a800002")).expect("json");
    let (status, content_type, review) = post_mutate(&ctx, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_injected(&review, "705ab4f5-6393-11e8-b7cc-42010a800002");
}

/// The raw AdmissionReviews in tests/data/reviews (the README's curl example uses
/// them) are answered with a patch that applies to their own Pod.
#[tokio::test]
async fn review_files_get_a_patch_that_applies() {
    let ctx = context();
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/reviews");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("tests/data/reviews") {
        let path = entry.expect("entry").path();
        let body = std::fs::read(&path).expect("readable");
        let sent: Value = serde_json::from_slice(&body).expect("JSON");
        let (status, _, review) = post_mutate(&ctx, body).await;
        assert_eq!(status, StatusCode::OK, "{}", path.display());
        let response = &review["response"];
        assert_eq!(response["uid"], sent["request"]["uid"]);
        let raw = base64::engine::general_purpose::STANDARD
            .decode(response["patch"].as_str().expect("a patch"))
            .expect("base64");
        let patch: json_patch::Patch = serde_json::from_slice(&raw).expect("a JSON Patch");
        let mut pod = sent["request"]["object"].clone();
        json_patch::patch(&mut pod, &patch).expect("applies");
        assert!(pod["metadata"]["annotations"]["tracehook.dev/status"].is_string());
        seen += 1;
    }
    assert!(seen > 0, "no review files");
}

#[tokio::test]
async fn invalid_json_is_400_with_a_json_error() {
    let (status, content_type, body) = post_mutate(&context(), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let error = body["error"].as_str().expect("an error message");
    assert!(error.contains("not valid JSON"), "{error}");
}

#[tokio::test]
async fn wrong_api_version_or_kind_is_400() {
    let ctx = context();
    for (api_version, kind) in [
        ("admission.k8s.io/v1beta1", "AdmissionReview"),
        ("admission.k8s.io/v1", "Pod"),
    ] {
        let mut review = pod_review("u1");
        review["apiVersion"] = json!(api_version);
        review["kind"] = json!(kind);
        let (status, _, body) = post_mutate(&ctx, review.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{api_version} {kind}");
        let error = body["error"].as_str().expect("an error message");
        assert!(
            error.contains(api_version) && error.contains(kind),
            "{error}"
        );
    }
}

#[tokio::test]
async fn missing_request_is_400() {
    let body = json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"});
    let (status, _, body) = post_mutate(&context(), body.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("no request")),
        "{body}"
    );
}

#[tokio::test]
async fn empty_uid_is_400() {
    let (status, _, body) = post_mutate(&context(), pod_review("").to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("uid")),
        "{body}"
    );
}

#[tokio::test]
async fn body_over_4_mib_is_413() {
    let mut review = pod_review("big");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"padding": "x".repeat(server::MAX_BODY_BYTES)});
    let body = review.to_string();
    assert!(body.len() > server::MAX_BODY_BYTES);
    let (status, content_type, body) = call(
        server::admission_router(context()),
        Method::POST,
        "/mutate",
        body,
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_is_json_error(content_type, &body, "larger than");
}

/// Every refusal has one shape: `{"error": "..."}` as application/json.
fn assert_is_json_error(content_type: Option<String>, body: &[u8], contains: &str) {
    assert_eq!(content_type.as_deref(), Some("application/json"));
    let error: Value = serde_json::from_slice(body).expect("a JSON body");
    let message = error["error"].as_str().expect("an error message");
    assert!(message.contains(contains), "{message}");
    assert_eq!(error.as_object().map(|o| o.len()), Some(1), "{error}");
}

#[tokio::test]
async fn body_just_under_the_limit_is_answered() {
    let mut review = pod_review("large");
    let padding = server::MAX_BODY_BYTES - pod_review("large").to_string().len() - 64;
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"padding": "x".repeat(padding)});
    let body = review.to_string();
    assert!(body.len() <= server::MAX_BODY_BYTES);
    let (status, _, review) = post_mutate(&context(), body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(review["response"]["patchType"], "JSONPatch");
}

#[tokio::test]
async fn get_mutate_is_405() {
    let (status, content_type, body) = call(
        server::admission_router(context()),
        Method::GET,
        "/mutate",
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_is_json_error(content_type, &body, "only POST");
}

#[tokio::test]
async fn unknown_path_is_404() {
    let router = server::admission_router(context());
    let (status, _, _) = call(
        router,
        Method::POST,
        "/validate",
        pod_review("u").to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn non_pod_resource_or_update_is_allowed_unchanged_with_a_warning() {
    let ctx = context();
    let deployment =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
    for (uid, review) in [
        ("d1", review_of("d1", "deployments", "CREATE", deployment)),
        ("u1", review_of("u1", "pods", "UPDATE", pod())),
    ] {
        let (status, _, body) = post_mutate(&ctx, review.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{uid}");
        let response = &body["response"];
        assert_eq!(response["uid"], uid);
        assert_eq!(response["allowed"], true);
        assert!(
            response.get("patch").is_none() && response.get("patchType").is_none(),
            "{body}"
        );
        let warnings = response["warnings"].as_array().expect("warnings");
        assert!(
            warnings.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("only mutates Pod creations"))),
            "{warnings:?}"
        );
    }
}

#[tokio::test]
async fn healthz_is_200() {
    let (status, _, body) = call(
        server::probes_router(context()),
        Method::GET,
        "/healthz",
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"ok");
}

/// While a replica drains (`--shutdown-delay`), its HTTP/1.1 answers close their
/// connection, so the API server does not reuse one the replica is about to close;
/// before that, and over HTTP/2, answers say nothing about the connection.
#[tokio::test]
async fn http1_answers_close_the_connection_while_draining() {
    let ctx = context();
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/reviews/pod-asking-for-injection.json"
    ))
    .expect("a review file");
    let answer = |version: axum::http::Version| {
        let request = Request::builder()
            .method(Method::POST)
            .uri("/mutate")
            .version(version)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.clone()))
            .expect("a valid request");
        let router = server::admission_router(ctx.clone());
        async move {
            let response = router.oneshot(request).await.expect("infallible");
            assert_eq!(response.status(), StatusCode::OK);
            response
                .headers()
                .get(header::CONNECTION)
                .map(|v| v.to_str().expect("ASCII").to_owned())
        }
    };
    assert_eq!(answer(axum::http::Version::HTTP_11).await, None);
    ctx.draining.store(true, Ordering::Release);
    assert_eq!(
        answer(axum::http::Version::HTTP_11).await.as_deref(),
        Some("close")
    );
    assert_eq!(
        answer(axum::http::Version::HTTP_10).await.as_deref(),
        Some("close")
    );
    assert_eq!(answer(axum::http::Version::HTTP_2).await, None);
}

#[tokio::test]
async fn readyz_is_503_until_serving() {
    let ctx = context();
    let (status, _, _) = call(
        server::probes_router(ctx.clone()),
        Method::GET,
        "/readyz",
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    ctx.serving.store(true, Ordering::Release);
    let (status, _, _) = call(
        server::probes_router(ctx),
        Method::GET,
        "/readyz",
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_count_requests_by_outcome() {
    let ctx = context();
    post_mutate(&ctx, pod_review("m1").to_string()).await;
    let (status, _, _) = call(
        server::admission_router(ctx.clone()),
        Method::POST,
        "/mutate",
        "{",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, body) = call(
        server::probes_router(ctx),
        Method::GET,
        "/metrics",
        Body::empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(r#"tracehook_admission_requests_total{outcome="injected",reason=""} 1"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"tracehook_admission_requests_total{outcome="error",reason="bad_request"} 1"#
        ),
        "{text}"
    );
}

// ------------------------------------------------------------------ real TLS

/// The leaf certificate the server presented on `tls`.
fn presented(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a peer certificate")[0]
        .clone()
}

fn leaf(bundle: &Bundle) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(bundle.cert_pem.as_bytes()).expect("leaf PEM")
}

fn client_config(
    ca_pem: &str,
    versions: &[&'static SupportedProtocolVersion],
    alpn: &[u8],
) -> ClientConfig {
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots(ca_pem))
            .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config
}

fn mutate_request(uri: &str, uid: &str) -> Request<Full<Bytes>> {
    post_json(uri, pod_review(uid).to_string())
}

async fn review_from(response: hyper::Response<hyper::body::Incoming>) -> Value {
    json_body(response).await
}

async fn mutate_over_http1(tls: TlsStream<TcpStream>, uid: &str) -> Value {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake");
    let connection = tokio::spawn(connection);
    let response = sender
        .send_request(mutate_request("/mutate", uid))
        .await
        .expect("response");
    assert_eq!(response.version(), hyper::Version::HTTP_11);
    let review = review_from(response).await;
    drop(sender);
    let _ = connection.await;
    review
}

async fn mutate_over_http2(tls: TlsStream<TcpStream>, uid: &str) -> Value {
    let (mut sender, connection) = http2_client(tls).await;
    let response = sender
        .send_request(mutate_request("https://localhost/mutate", uid))
        .await
        .expect("response");
    assert_eq!(response.version(), hyper::Version::HTTP_2);
    let review = review_from(response).await;
    drop(sender);
    let _ = connection.await;
    review
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

#[tokio::test]
async fn tls_http1_and_http2_by_alpn() {
    install_provider();
    let bundle = bundle();
    let resolver = resolver(&bundle);
    let server = TlsServer::start(resolver, context()).await;

    let tls = connect(
        server.addr,
        client_config(&bundle.ca_pem, BOTH, b"http/1.1"),
    )
    .await
    .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_injected(&mutate_over_http1(tls, "h1").await, "h1");

    let tls = connect(server.addr, client_config(&bundle.ca_pem, BOTH, b"h2"))
        .await
        .expect("handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_injected(&mutate_over_http2(tls, "h2").await, "h2");

    server.stop().await;
}

#[tokio::test]
async fn tls12_only_client_is_served() {
    install_provider();
    let bundle = bundle();
    let resolver = resolver(&bundle);
    let server = TlsServer::start(resolver, context()).await;

    let tls12 = &[&rustls::version::TLS12][..];
    let tls = connect(
        server.addr,
        client_config(&bundle.ca_pem, tls12, b"http/1.1"),
    )
    .await
    .expect("TLS 1.2 handshake");
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_injected(&mutate_over_http1(tls, "t12").await, "t12");

    let tls = connect(server.addr, client_config(&bundle.ca_pem, tls12, b"h2"))
        .await
        .expect("TLS 1.2 handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_injected(&mutate_over_http2(tls, "t12-h2").await, "t12-h2");

    server.stop().await;
}

#[tokio::test]
async fn swapped_certificate_is_presented_on_the_next_handshake() {
    install_provider();
    let (first, second) = (bundle(), bundle());
    let resolver = resolver(&first);
    let server = TlsServer::start(resolver.clone(), context()).await;

    let tls = connect(server.addr, client_config(&first.ca_pem, BOTH, b"http/1.1"))
        .await
        .expect("handshake");
    assert_eq!(presented(&tls), leaf(&first));
    // A connection open across the swap keeps working.
    let kept = tls;

    resolver
        .swap(second.cert_pem.as_bytes(), second.key_pem.as_bytes())
        .expect("swap");
    assert_eq!(resolver.leaf(), leaf(&second));

    let tls = connect(
        server.addr,
        client_config(&second.ca_pem, BOTH, b"http/1.1"),
    )
    .await
    .expect("handshake with the new certificate");
    assert_eq!(presented(&tls), leaf(&second));
    assert_injected(&mutate_over_http1(tls, "after-swap").await, "after-swap");

    // A client that trusts only the old CA no longer gets through.
    let old = connect(server.addr, client_config(&first.ca_pem, BOTH, b"http/1.1")).await;
    assert!(old.is_err(), "the old certificate is still served");

    assert_injected(&mutate_over_http1(kept, "kept").await, "kept");
    server.stop().await;
}
