//! Slow and idle clients against a real TLS server (slowloris and its relatives):
//! none of them can hold a connection slot for long, and a normal request is served
//! while they try.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::Request;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracehook::server::{HANDSHAKE_TIMEOUT, HTTP1_IDLE_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};

mod common;
use common::{
    TlsServer, bundle, client_config, connect, context, http2_client, json_body, pod_review,
    post_json,
};

/// How much later than the server's timeout a connection may be closed.
const SLACK: Duration = Duration::from_secs(5);

struct Running {
    addr: SocketAddr,
    ca_pem: String,
    server: TlsServer,
}

async fn start() -> Running {
    let bundle = bundle();
    let server = TlsServer::start_with(&bundle, context()).await;
    Running {
        addr: server.addr,
        ca_pem: bundle.ca_pem,
        server,
    }
}

impl Running {
    async fn tls(&self, alpn: &[u8]) -> TlsStream<TcpStream> {
        connect(self.addr, client_config(&self.ca_pem, alpn))
            .await
            .expect("TLS handshake")
    }

    /// A normal review over a fresh HTTP/1.1 connection: it must get its patch.
    async fn mutate(&self) {
        let tls = self.tls(b"http/1.1").await;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(connection);
        let response = sender
            .send_request(request("/mutate"))
            .await
            .expect("a response");
        assert_patched(response).await;
    }

    async fn stop(self) {
        self.server.stop_within(Duration::from_secs(20)).await;
    }
}

fn review() -> Value {
    pod_review("slow")
}

fn request(uri: &str) -> Request<Full<Bytes>> {
    post_json(uri, review().to_string())
}

async fn assert_patched(response: hyper::Response<hyper::body::Incoming>) {
    let answer = json_body(response).await;
    assert_eq!(answer["response"]["patchType"], "JSONPatch", "{answer}");
}

/// The head of a raw HTTP/1.1 `POST /mutate` of `body`.
fn post_head(body: &str) -> String {
    format!(
        "POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
}

/// Reads until the server closes the connection (EOF, reset or TLS close); returns
/// when that happened, or `None` if it stayed open past `limit`.
async fn closed_within<S>(stream: &mut S, limit: Duration) -> Option<Duration>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    let wait = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, wait)
        .await
        .ok()
        .map(|()| start.elapsed())
}

/// Slowloris: connections that send their request headers one byte at a time are
/// closed after the header-read timeout, and a normal request is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_sent_byte_by_byte_are_cut_off_and_others_are_served_meanwhile() {
    let server = start().await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut tls = server.tls(b"http/1.1").await;
        slow.push(tokio::spawn(async move {
            let start = Instant::now();
            let headers = b"POST /mutate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nX-Padding: ";
            let endless = headers.iter().copied().chain(std::iter::repeat(b'a'));
            for byte in endless {
                if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
                    break;
                }
                // Also notice a close while writing slowly.
                let mut buf = [0u8; 64];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(300), tls.read(&mut buf)).await
                {
                    break;
                }
                if start.elapsed() > HANDSHAKE_TIMEOUT + SLACK {
                    return None;
                }
            }
            Some(start.elapsed())
        }));
    }
    // Meanwhile, normal requests are answered promptly.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for _ in 0..5 {
        let t = Instant::now();
        server.mutate().await;
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "slow: {:?}",
            t.elapsed()
        );
    }
    for handle in slow {
        let closed = handle.await.expect("slow client task");
        let closed = closed.expect("the server kept a byte-by-byte client past its timeout");
        assert!(
            closed >= HANDSHAKE_TIMEOUT - Duration::from_secs(1),
            "closed early: {closed:?}"
        );
    }
    server.mutate().await;
    server.stop().await;
}

/// Connections that never start the TLS handshake are dropped after the handshake
/// timeout.
#[tokio::test]
async fn silent_connections_are_dropped_after_the_handshake_timeout() {
    let server = start().await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    for tcp in &mut silent {
        let closed = closed_within(tcp, HANDSHAKE_TIMEOUT + SLACK).await;
        assert!(closed.is_some(), "a silent connection stayed open");
    }
    server.mutate().await;
    server.stop().await;
}

/// More silent connections than the cap: they cannot keep a normal client out for
/// longer than the handshake timeout, and the server keeps serving afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_connections_than_the_cap_delay_a_client_by_at_most_the_handshake_timeout() {
    let server = start().await;
    let mut silent = Vec::new();
    for _ in 0..MAX_CONNECTIONS + 100 {
        match TcpStream::connect(server.addr).await {
            Ok(tcp) => silent.push(tcp),
            // The listen backlog is full: the point is made.
            Err(_) => break,
        }
    }
    assert!(
        silent.len() > MAX_CONNECTIONS,
        "only {} connected",
        silent.len()
    );
    let t = Instant::now();
    tokio::time::timeout(HANDSHAKE_TIMEOUT + SLACK, server.mutate())
        .await
        .expect("a normal client got through once the silent ones timed out");
    eprintln!(
        "with {} silent connections, a normal request took {:?}",
        silent.len(),
        t.elapsed()
    );
    drop(silent);
    server.mutate().await;
    server.stop().await;
}

/// An HTTP/1.1 connection left idle after a request does not hold its slot forever,
/// but it outlives the API server's own idle timeout (90 s), so that the client is the
/// one to close it: closed by the server, it would race the client's next request.
#[tokio::test]
async fn idle_http1_keep_alive_connections_are_closed_after_the_clients_idle_timeout() {
    let server = start().await;
    let mut tls = server.tls(b"http/1.1").await;
    let body = review().to_string();
    let head = post_head(&body);
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.write_all(body.as_bytes()).await.expect("write");
    tls.flush().await.expect("flush");
    let mut first = [0u8; 12];
    tls.read_exact(&mut first).await.expect("a response");
    assert_eq!(&first, b"HTTP/1.1 200");
    let closed = closed_within(&mut tls, HTTP1_IDLE_TIMEOUT + SLACK).await;
    let closed = closed.expect("an idle keep-alive connection stayed open");
    assert!(
        closed >= HTTP1_IDLE_TIMEOUT - Duration::from_secs(1),
        "an idle keep-alive connection closed after {closed:?}, before the client's 90 s"
    );
    server.stop().await;
}

/// An HTTP/2 connection left idle after a request does not hold its slot forever.
#[tokio::test]
async fn idle_http2_connections_are_closed() {
    let server = start().await;
    let tls = server.tls(b"h2").await;
    let (mut sender, connection) = http2_client(tls).await;
    let response = sender
        .send_request(request("https://localhost/mutate"))
        .await
        .expect("a response");
    assert_patched(response).await;
    let start = Instant::now();
    let closed = tokio::time::timeout(IDLE_TIMEOUT + SLACK, connection).await;
    assert!(closed.is_ok(), "an idle HTTP/2 connection stayed open");
    assert!(
        start.elapsed() >= IDLE_TIMEOUT - Duration::from_secs(1),
        "closed early: {:?}",
        start.elapsed()
    );
    drop(sender);
    server.stop().await;
}

/// A client that completes TLS with ALPN h2 and then says nothing (not even the
/// HTTP/2 preface) is dropped too.
#[tokio::test]
async fn silent_http2_connections_are_closed() {
    let server = start().await;
    let mut tls = server.tls(b"h2").await;
    let closed = closed_within(&mut tls, IDLE_TIMEOUT + SLACK).await;
    assert!(closed.is_some(), "a silent HTTP/2 connection stayed open");
    server.mutate().await;
    server.stop().await;
}

/// A body trickled one byte at a time after complete headers (slow POST) is cut off
/// too.
#[tokio::test]
async fn a_body_sent_byte_by_byte_is_cut_off() {
    let server = start().await;
    let mut tls = server.tls(b"http/1.1").await;
    let body = review().to_string();
    let head = post_head(&body);
    tls.write_all(head.as_bytes()).await.expect("write");
    tls.flush().await.expect("flush");
    let start = Instant::now();
    let mut answer = Vec::new();
    for byte in body.bytes() {
        if tls.write_all(&[byte]).await.is_err() || tls.flush().await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(500), tls.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let elapsed = start.elapsed();
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // The same JSON shape as every other refusal.
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.contains("application/json")
            && text.contains(r#"{"error":"the request body took longer"#),
        "{text}"
    );
    assert!(
        elapsed < HANDSHAKE_TIMEOUT + SLACK,
        "a trickled body held the connection for {elapsed:?}"
    );
    server.stop().await;
}
