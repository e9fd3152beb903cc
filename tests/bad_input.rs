//! Hostile and broken input, with the answer each must get.
//!
//! `tests/data/bad/NAME.expect.json` describes one case: the body is
//! `NAME.body.json` or `NAME.body` (sent byte for byte, so it may be anything), or is
//! built from the case's `generate` entry when it is too big to commit. Every case goes
//! through the admission router in memory and through a real TLS server, which must
//! answer exactly as the router did and still inject a good review afterwards.
//!
//! `tests/data/bad/manifests/NAME.yaml` (or `generate`) with `NAME.expect.json` are
//! manifests for `tracehook inject`: the exit code and what stdout and stderr say.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use base64::Engine as _;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rstest::rstest;
use serde::Deserialize;
use serde_json::{Value, json};
use tower::ServiceExt as _;
use tracehook::server::{self, Context};

mod common;
use common::{TlsServer, body_bytes, bundle, client_config, connect, context, pod, review_of};

const BAD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/bad");

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    /// What the case is about, and why this is the right answer.
    description: String,
    generate: Option<Generate>,
    /// The HTTP status.
    status: u16,
    /// For 400: a substring of the JSON body's `error`.
    error: Option<String>,
    /// For 200: `response.allowed` (always true: the webhook never denies).
    allowed: Option<bool>,
    /// For 200: a substring of some warning; `null` means no warning at all.
    warning: Option<String>,
    /// For 200: whether a JSON Patch comes back.
    patch: Option<bool>,
}

/// Bodies too big to commit, built from a plain Pod review in namespace `demo`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Generate {
    /// That many containers `c0`, `c1`, ….
    containers: Option<usize>,
    /// One container with that many variables `V0`, `V1`, ….
    env_vars: Option<usize>,
    /// That many annotations `a0`, `a1`, ….
    annotations: Option<usize>,
    /// An annotation padding the body to exactly that many bytes.
    body_bytes: Option<usize>,
    /// A request field tracehook does not read, holding that many nested arrays.
    unread_field_nesting: Option<usize>,
}

struct Case {
    name: String,
    expect: Expect,
    body: Vec<u8>,
}

impl Case {
    fn load(expect_path: &Path) -> Case {
        let name = expect_path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".expect.json"))
            .expect("NAME.expect.json")
            .to_owned();
        let text = std::fs::read_to_string(expect_path).expect("readable");
        let expect: Expect = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", expect_path.display()));
        let dir = expect_path.parent().expect("a directory");
        let body = match &expect.generate {
            Some(g) => generate(g),
            None => [".body.json", ".body"]
                .iter()
                .find_map(|ext| std::fs::read(dir.join(format!("{name}{ext}"))).ok())
                .unwrap_or_else(|| panic!("{name}: no {name}.body.json or {name}.body")),
        };
        Case { name, expect, body }
    }

    fn all() -> Vec<Case> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(BAD)
            .expect("tests/data/bad")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().ends_with(".expect.json"))
            .collect();
        paths.sort();
        paths.iter().map(|p| Case::load(p)).collect()
    }

    fn context(&self) -> String {
        format!("{} ({})", self.name, self.expect.description)
    }
}

fn review(uid: &str, pod: Value) -> Value {
    review_of(uid, "pods", "CREATE", pod)
}

fn generate(g: &Generate) -> Vec<u8> {
    let mut pod = pod();
    if let Some(n) = g.containers {
        pod["spec"]["containers"] = (0..n)
            .map(|i| json!({"name": format!("c{i}"), "image": "nginx:1.27"}))
            .collect();
    }
    if let Some(n) = g.env_vars {
        pod["spec"]["containers"][0]["env"] = (0..n)
            .map(|i| json!({"name": format!("V{i}"), "value": format!("value {i}")}))
            .collect();
    }
    if let Some(n) = g.annotations {
        pod["metadata"]["annotations"] = (0..n)
            .map(|i| (format!("example.com/a{i}"), json!(format!("{i}"))))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    let mut body = review("generated", pod.clone());
    if let Some(size) = g.body_bytes {
        pod["metadata"]["annotations"] = json!({"padding": ""});
        let empty = review("generated", pod.clone()).to_string().len();
        pod["metadata"]["annotations"]["padding"] = json!("x".repeat(size - empty));
        body = review("generated", pod);
    }
    if g.unread_field_nesting.is_some() {
        body["request"]["x-unread"] = json!("NESTED");
    }
    let mut bytes = body.to_string().into_bytes();
    if let Some(depth) = g.unread_field_nesting {
        // Too deep for serde_json to serialize from a Value: spliced in as text.
        let text = body.to_string().replace(
            "\"NESTED\"",
            &format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        );
        bytes = text.into_bytes();
    }
    if let Some(size) = g.body_bytes {
        assert_eq!(bytes.len(), size, "generated body size");
    }
    bytes
}

/// Status and body of `POST /mutate` through the router, in memory.
async fn post_in_memory(ctx: &Arc<Context>, body: Vec<u8>) -> (StatusCode, Bytes) {
    let request = Request::builder()
        .method(Method::POST)
        .uri("/mutate")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .expect("a valid request");
    let response = server::admission_router(ctx.clone())
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let body = body_bytes(response).await;
    (status, body)
}

/// What a 200 case sent, read as the webhook reads it (fields it skips stay skipped).
#[derive(Deserialize)]
struct Sent {
    request: SentRequest,
}

#[derive(Deserialize)]
struct SentRequest {
    uid: Value,
    #[serde(default)]
    object: Value,
}

/// Checks one answer against the case; returns the patched Pod when there is a patch.
fn check(case: &Case, status: StatusCode, body: &[u8]) -> Option<Value> {
    let ctx = case.context();
    let e = &case.expect;
    assert_eq!(status.as_u16(), e.status, "{ctx}: status");
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return None;
    }
    let answer: Value = serde_json::from_slice(body).unwrap_or_else(|err| {
        panic!(
            "{ctx}: the answer is not JSON ({err}): {}",
            String::from_utf8_lossy(body)
        )
    });
    if status == StatusCode::BAD_REQUEST {
        let error = answer["error"].as_str().unwrap_or_default();
        let wanted = e.error.as_deref().expect("a 400 case names its error");
        assert!(error.contains(wanted), "{ctx}: error {error:?}");
        return None;
    }
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1", "{ctx}");
    assert_eq!(answer["kind"], "AdmissionReview", "{ctx}");
    let sent: Sent = serde_json::from_slice(&case.body).expect("a 200 case sends a review");
    let response = &answer["response"];
    assert_eq!(response["uid"], sent.request.uid, "{ctx}: uid echoed");
    assert_eq!(
        response["allowed"],
        json!(e.allowed.unwrap_or(true)),
        "{ctx}: allowed"
    );
    let warnings: Vec<&str> = response["warnings"]
        .as_array()
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match &e.warning {
        Some(wanted) => assert!(
            warnings.iter().any(|w| w.contains(wanted.as_str())),
            "{ctx}: no warning contains {wanted:?}: {warnings:?}"
        ),
        None => assert!(warnings.is_empty(), "{ctx}: unexpected {warnings:?}"),
    }
    if !e.patch.unwrap_or(false) {
        assert!(
            response.get("patch").is_none() && response.get("patchType").is_none(),
            "{ctx}: unexpected patch"
        );
        return None;
    }
    assert_eq!(response["patchType"], "JSONPatch", "{ctx}");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(response["patch"].as_str().expect("a base64 patch"))
        .unwrap_or_else(|err| panic!("{ctx}: base64: {err}"));
    let patch: json_patch::Patch =
        serde_json::from_slice(&raw).unwrap_or_else(|err| panic!("{ctx}: JSON Patch: {err}"));
    let mut pod = sent.request.object;
    json_patch::patch(&mut pod, &patch)
        .unwrap_or_else(|err| panic!("{ctx}: the patch does not apply: {err}"));
    assert!(
        pod["metadata"]["annotations"]["tracehook.dev/status"].is_string(),
        "{ctx}: marker"
    );
    let sidecars = ["initContainers", "containers"]
        .iter()
        .filter_map(|list| pod["spec"][list].as_array())
        .flatten()
        .filter(|c| c["name"] == "jaeger-agent" || c["name"] == "otc-container")
        .count();
    assert_eq!(sidecars, 1, "{ctx}: exactly one sidecar");
    Some(pod)
}

/// The API server calls again with the patched Pod (reinvocation): nothing more.
async fn reinvoke(ctx: &Arc<Context>, case: &Case, patched: Value) {
    let (status, body) = post_in_memory(ctx, review("again", patched).to_string().into()).await;
    assert_eq!(status, StatusCode::OK, "{}", case.context());
    let answer: Value = serde_json::from_slice(&body).expect("JSON");
    assert!(
        answer["response"].get("patch").is_none(),
        "{}: reinvocation added more",
        case.context()
    );
}

#[test]
fn the_corpus_has_at_least_30_reviews_and_10_manifests() {
    let reviews = Case::all().len();
    assert!(reviews >= 30, "only {reviews} bad reviews");
    let manifests = manifest_cases().len();
    assert!(manifests >= 10, "only {manifests} bad manifests");
}

#[rstest]
#[tokio::test]
async fn bad_review_through_the_router(#[files("tests/data/bad/*.expect.json")] path: PathBuf) {
    let case = Case::load(&path);
    let ctx = context();
    let (status, body) = post_in_memory(&ctx, case.body.clone()).await;
    if let Some(patched) = check(&case, status, &body) {
        reinvoke(&ctx, &case, patched).await;
    }
}

// ------------------------------------------------------------------ real TLS

struct Running {
    server: TlsServer,
    ca_pem: String,
    ctx: Arc<Context>,
}

async fn start_server() -> Running {
    let bundle = bundle();
    let ctx = context();
    Running {
        server: TlsServer::start_with(&bundle, ctx.clone()).await,
        ca_pem: bundle.ca_pem,
        ctx,
    }
}

impl Running {
    async fn post(&self, body: Vec<u8>) -> (StatusCode, Bytes) {
        // A body over the limit is refused with 413 before it is read, and the server
        // closes the connection: the client may still be writing and see a broken pipe
        // instead of the answer. Such a request is retried until the 413 is read.
        let attempts = if body.len() > tracehook::server::MAX_BODY_BYTES {
            5
        } else {
            1
        };
        let body = Bytes::from(body);
        let mut last_error = None;
        for _ in 0..attempts {
            match self.post_once(body.clone()).await {
                Ok(answer) => return answer,
                Err(e) => last_error = Some(e),
            }
        }
        panic!("no response: {last_error:?}");
    }

    async fn post_once(&self, body: Bytes) -> Result<(StatusCode, Bytes), hyper::Error> {
        let tls = connect(self.server.addr, client_config(&self.ca_pem, b"http/1.1"))
            .await
            .expect("TLS handshake");
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let request = Request::builder()
            .method(Method::POST)
            .uri("/mutate")
            .header(header::HOST, "localhost")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .expect("a valid request");
        let response = sender.send_request(request).await?;
        let status = response.status();
        let body = body_bytes(response).await;
        Ok((status, body))
    }

    async fn stop(self) {
        self.server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_answers_every_bad_review_as_the_router_does_and_stays_healthy() {
    let server = start_server().await;
    let cases = Case::all();
    for case in &cases {
        let (status, body) = server.post(case.body.clone()).await;
        check(case, status, &body);
        let (status_in_memory, body_in_memory) =
            post_in_memory(&context(), case.body.clone()).await;
        assert_eq!(status, status_in_memory, "{}", case.context());
        assert_eq!(body, body_in_memory, "{}: same answer", case.context());
    }
    // Still healthy: a good review gets its patch, nothing is left in flight.
    let (status, body) = server
        .post(review("after", pod()).to_string().into_bytes())
        .await;
    assert_eq!(status, StatusCode::OK);
    let answer: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
    let metrics = server.ctx.metrics.render();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tracehook_admission_in_flight") && l.ends_with(" 0")),
        "{metrics}"
    );
    server.stop().await;
}

// ------------------------------------------------------------------ tracehook inject

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestExpect {
    description: String,
    /// `{"nesting": N}`: N nested flow sequences.
    generate: Option<Value>,
    exit: i32,
    /// Substrings of stderr.
    #[serde(default)]
    stderr: Vec<String>,
    /// Substrings of stdout.
    #[serde(default)]
    stdout: Vec<String>,
}

fn manifest_cases() -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(Path::new(BAD).join("manifests"))
        .expect("tests/data/bad/manifests")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(".expect.json"))
        .collect();
    paths.sort();
    paths
}

#[rstest]
fn bad_manifest_through_tracehook_inject(
    #[files("tests/data/bad/manifests/*.expect.json")] path: PathBuf,
) {
    let text = std::fs::read_to_string(&path).expect("readable");
    let expect: ManifestExpect =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".expect.json"))
        .expect("NAME.expect.json");
    let ctx = format!("{name} ({})", expect.description);
    let scratch = tempfile::tempdir().expect("temporary directory");
    let manifest = match &expect.generate {
        Some(g) => {
            let depth = g["nesting"].as_u64().expect("generate.nesting") as usize;
            let file = scratch.path().join(format!("{name}.yaml"));
            std::fs::write(&file, format!("{}{}", "[".repeat(depth), "]".repeat(depth)))
                .expect("write");
            file
        }
        None => path.with_file_name(format!("{name}.yaml")),
    };
    let out = Command::new(env!("CARGO_BIN_EXE_tracehook"))
        .args(["inject", "-f"])
        .arg(&manifest)
        .output()
        .expect("tracehook runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(expect.exit),
        "{ctx}: exit status\nstderr: {stderr}"
    );
    assert!(
        !stderr.contains("panicked"),
        "{ctx}: tracehook panicked: {stderr}"
    );
    for wanted in &expect.stderr {
        assert!(
            stderr.contains(wanted.as_str()),
            "{ctx}: stderr lacks {wanted:?}: {stderr}"
        );
    }
    for wanted in &expect.stdout {
        assert!(
            stdout.contains(wanted.as_str()),
            "{ctx}: stdout lacks {wanted:?}: {stdout}"
        );
    }
}
