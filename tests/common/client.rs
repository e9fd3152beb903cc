//! Requests to the TLS server from hyper's clients, and their answers.

use axum::http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Bytes};
use serde_json::Value;

/// `POST uri` with a JSON body, for hyper's HTTP/1.1 and HTTP/2 clients.
pub fn post_json(uri: &str, body: String) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::HOST, "localhost")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a valid request")
}

/// A whole answer's body (hyper's client, or axum's router called in memory).
pub async fn body_bytes<B>(response: Response<B>) -> Bytes
where
    B: Body,
    B::Error: std::fmt::Debug,
{
    response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
}

/// A 200 answer's JSON body.
pub async fn json_body(response: hyper::Response<hyper::body::Incoming>) -> Value {
    assert_eq!(response.status(), StatusCode::OK);
    let body = body_bytes(response).await;
    serde_json::from_slice(&body).expect("JSON")
}

/// An HTTP/2 client over `tls`, its connection driven by a task of its own.
pub async fn http2_client(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
) {
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("HTTP/2 handshake");
    (sender, tokio::spawn(connection))
}
