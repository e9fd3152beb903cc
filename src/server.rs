//! The HTTP adapters: `POST /mutate` over TLS, and `/healthz`, `/readyz`, `/metrics`
//! on a separate plain-HTTP port.
//!
//! The admission server accepts only `POST /mutate`, reads at most 4 MiB, bounds
//! TLS handshakes, header and body reads and idle connections in time and
//! connections in number, and drains open connections on shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest as _, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{Instrument as _, Span, field};

use crate::admission::{self, AdmissionResponse, AdmissionReview};
use crate::cluster::events::EventSink;
use crate::cluster::{Lookup, Snapshot};
use crate::inject::{Decision, Settings};
use crate::metrics::Metrics;

/// The largest AdmissionReview read; a bigger body gets 413.
pub const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Connections served at once; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// Time allowed for a TLS handshake, for a new connection's first request to begin,
/// for a request's headers from their first byte, and then for its body.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// An HTTP/2 connection with no request in flight for this long is closed gracefully
/// (a GOAWAY, which clients handle); otherwise it would hold its slot forever.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// An HTTP/1.1 keep-alive connection with no request for this long is closed. Longer
/// than the API server's own idle timeout (90 s, Go's), so that the client closes first:
/// a server closing a keep-alive connection races a request the client is writing on
/// it, and the API server does not retry a webhook POST that meets a closed connection
/// (with `failurePolicy: Fail` that Pod creation fails: `write: broken pipe`).
pub const HTTP1_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Time open connections get to finish on shutdown.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the handlers share.
pub struct Context {
    pub settings: Settings,
    pub lookup: Lookup,
    pub metrics: Metrics,
    pub events: Option<EventSink>,
    /// The TLS listener is up with a certificate.
    pub serving: AtomicBool,
    /// The replica is shutting down but still answering (`--shutdown-delay`): HTTP/1.1
    /// answers carry `Connection: close`.
    pub draining: AtomicBool,
}

impl Context {
    pub fn new(settings: Settings, lookup: Lookup) -> Self {
        Self {
            settings,
            lookup,
            metrics: Metrics::default(),
            events: None,
            serving: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }
}

/// `POST /mutate`; any other method on it gets 405, any other path 404.
pub fn admission_router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route(
            "/mutate",
            post(mutate).fallback(|| async { ApiError::MethodNotAllowed }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(
            ctx.clone(),
            close_when_draining,
        ))
        .with_state(ctx)
}

/// While the replica drains, an HTTP/1.1 answer closes its connection. The API server
/// keeps a pool of keep-alive connections per webhook (HTTP/1.1 for a Service) that
/// outlives the endpoints' update, and it does not retry a POST that meets a connection
/// the server has just closed: with `failurePolicy: Fail` that Pod creation would fail.
/// Closed after an answer, a connection is never reused, so none is open when the
/// drain starts. (HTTP/2 gets a GOAWAY at the drain, which clients handle.)
async fn close_when_draining(
    State(ctx): State<Arc<Context>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let http1 = request.version() < axum::http::Version::HTTP_2;
    let mut response = next.run(request).await;
    if http1 && ctx.draining.load(Ordering::Acquire) {
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// `/healthz`, `/readyz`, `/metrics`.
pub fn probes_router(ctx: Arc<Context>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ctx)
}

async fn readyz(State(ctx): State<Arc<Context>>) -> Response {
    let serving = ctx.serving.load(Ordering::Acquire);
    let synced = ctx.lookup.is_synced();
    if serving && synced {
        "ok".into_response()
    } else {
        let body = format!("not ready: tls listener up = {serving}, caches synced = {synced}\n");
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(ctx): State<Arc<Context>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ctx.metrics.render(),
    )
        .into_response()
}

async fn mutate(State(ctx): State<Arc<Context>>, request: Request) -> Response {
    // The header-read timeout stops at the headers: a body trickled in byte by byte
    // would hold the connection for as long as the client likes.
    let body = match tokio::time::timeout(HANDSHAKE_TIMEOUT, Bytes::from_request(request, &()))
        .await
    {
        Ok(Ok(body)) => body,
        Ok(Err(rejection)) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ctx.metrics.count("error", "too_large");
            return ApiError::PayloadTooLarge.into_response();
        }
        Ok(Err(rejection)) => return ApiError::BadRequest(rejection.body_text()).into_response(),
        Err(_) => {
            ctx.metrics.count("error", "slow_body");
            return ApiError::RequestTimeout.into_response();
        }
    };
    let start = Instant::now();
    ctx.metrics.in_flight.inc();
    let span = tracing::info_span!(
        "admission",
        uid = field::Empty,
        namespace = field::Empty,
        outcome = field::Empty,
        reason = field::Empty
    );
    let response = admit(&ctx, &body).instrument(span).await;
    ctx.metrics.in_flight.dec();
    ctx.metrics.duration.observe(start.elapsed().as_secs_f64());
    match response {
        Ok(review) => (
            [(header::CONTENT_TYPE, "application/json")],
            review.into_review_json(),
        )
            .into_response(),
        Err(error) => error.into_response(),
    }
}

/// Answers one AdmissionReview body: parse, gather the snapshot, [`admission::review`],
/// then record the metric, log and hand the Event on. `Err` is a body that cannot be
/// answered at all (not an AdmissionReview, no uid).
pub async fn admit(ctx: &Context, body: &[u8]) -> Result<AdmissionResponse, ApiError> {
    let span = Span::current();
    let request = match AdmissionReview::parse(body) {
        Ok(r) => r,
        Err(e) => {
            ctx.metrics.count("error", "bad_request");
            span.record("outcome", "error");
            tracing::warn!(error = %e, "rejected a malformed AdmissionReview");
            return Err(ApiError::BadRequest(e.to_string()));
        }
    };
    span.record("uid", request.uid.as_str());
    let snapshot = match request.subject() {
        Ok((namespace, pod)) => {
            span.record("namespace", namespace);
            ctx.lookup.snapshot(namespace, pod).await
        }
        Err(_) => Snapshot::default(),
    };
    let reviewed = admission::review(&request, &snapshot, &ctx.settings);
    ctx.metrics.count(reviewed.outcome, reviewed.reason);
    span.record("outcome", reviewed.outcome);
    span.record("reason", reviewed.reason);
    match &reviewed.decision {
        Some(Decision::Injected(injection)) => {
            tracing::info!(instance = %injection.instance, flavor = %injection.flavor, "injected");
            if !injection.kept.is_empty() {
                tracing::debug!(kept = ?injection.kept, "left the user's settings alone");
            }
        }
        Some(Decision::Skipped(skip)) => tracing::info!(message = %skip.message, "skipped"),
        Some(_) => tracing::debug!("no injection"),
        None => tracing::warn!(
            warning = ?reviewed.response.warnings,
            "admitted a request tracehook is not registered for"
        ),
    }
    if let (Some(events), Some(event)) = (&ctx.events, &reviewed.event) {
        events.publish(event);
    }
    Ok(reviewed.response)
}

/// Every refusal of `POST /mutate`, with one JSON shape: `{"error": "..."}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("only POST is served here")]
    MethodNotAllowed,
    #[error("the request body took longer than {HANDSHAKE_TIMEOUT:?}")]
    RequestTimeout,
    #[error("the request body is larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.to_string()}).to_string();
        let mut response = (
            self.status(),
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response();
        if matches!(self, ApiError::MethodNotAllowed) {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        }
        response
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` completes, then drains.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    router: Router,
    shutdown: impl Future<Output = ()>,
) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Every connection holds a receiver until it is done: the drain waits for all.
    let (stop, _) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's timer runs while a keep-alive connection waits for its next request
        // too; `Activity` times the headers from their first byte instead.
        .header_read_timeout(None);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = TowerToHyperService::new(router.clone());
        let builder = builder.clone();
        let mut stopping = stop.subscribe();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let idle_timeout = if h2 { IDLE_TIMEOUT } else { HTTP1_IDLE_TIMEOUT };
            let activity = Arc::new(Activity::new());
            // HTTP/2 sends frames between requests (PING, WINDOW_UPDATE): only HTTP/1
            // bytes outside a request are the start of the next one's headers.
            let tls = Watched {
                inner: tls,
                activity: (!h2).then(|| activity.clone()),
            };
            let tracker = activity.clone();
            let service = hyper::service::service_fn(move |request| {
                let busy = tracker.begin();
                let response = hyper::service::Service::call(&router, request);
                async move {
                    let response = response.await;
                    drop(busy);
                    response
                }
            });
            let connection = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(connection);
            let mut closing = false;
            let result = loop {
                tokio::select! {
                    result = connection.as_mut() => break result,
                    _ = stopping.wait_for(|stop| *stop), if !closing => {
                        connection.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    why = activity.expired(idle_timeout), if !closing => match why {
                        Expired::Idle => {
                            tracing::debug!(%peer, "closing an idle connection");
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Expired::SlowStart => {
                            tracing::debug!(%peer, "no complete request headers in time: dropping the connection");
                            break Ok(());
                        }
                    }
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            drop(stopping);
        });
    }
    drop(listener);
    let _ = stop.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, stop.closed())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout");
    }
}

/// Requests in flight on one connection, when the last one ended, and when the next
/// one's headers began to arrive.
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds from `opened` to the end of the last request; `u64::MAX` before the
    /// first request.
    last_ms: AtomicU64,
    /// Milliseconds from `opened` to the first byte read outside a request, plus one
    /// (0: none since the last request began).
    head_ms: AtomicU64,
}

/// Why a connection should end.
#[derive(Debug, PartialEq, Eq)]
enum Expired {
    /// No request for the idle timeout: closed gracefully.
    Idle,
    /// No first request within [`HANDSHAKE_TIMEOUT`] of the handshake, or headers begun
    /// and not complete within it (a slow-headers client): dropped.
    SlowStart,
}

/// One request in flight; its end is recorded on drop.
struct Busy(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicUsize::new(0),
            last_ms: AtomicU64::new(u64::MAX),
            head_ms: AtomicU64::new(0),
        }
    }

    fn ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_ms.store(0, Ordering::Release);
        Busy(self.clone())
    }

    /// Bytes arrived: outside a request they begin the next one's headers.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0 && self.head_ms.load(Ordering::Acquire) == 0
        {
            self.head_ms.store(self.ms() + 1, Ordering::Release);
        }
    }

    /// Completes when the connection has been idle for `idle_timeout`, or a request is
    /// late to begin or to complete its headers (checked every second).
    async fn expired(&self, idle_timeout: Duration) -> Expired {
        let limit = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        loop {
            if self.in_flight.load(Ordering::Acquire) == 0 {
                let now = self.ms();
                let head = self.head_ms.load(Ordering::Acquire);
                let last = self.last_ms.load(Ordering::Acquire);
                if head != 0 && now.saturating_sub(head - 1) >= limit(HANDSHAKE_TIMEOUT) {
                    return Expired::SlowStart;
                }
                if last == u64::MAX {
                    if now >= limit(HANDSHAKE_TIMEOUT) {
                        return Expired::SlowStart;
                    }
                } else if head == 0 && now.saturating_sub(last) >= limit(idle_timeout) {
                    return Expired::Idle;
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The connection's stream, telling `Activity` when bytes arrive.
struct Watched<S> {
    inner: S,
    activity: Option<Arc<Activity>>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Watched<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before
            && let Some(activity) = &self.activity
        {
            activity.read();
        }
        polled
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
