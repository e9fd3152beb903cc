//! The set-up the test files share (after Kubewarden's `tests/common/mod.rs`), one copy
//! of each helper: the fixed world (`world.rs`), a real TLS server and a client that
//! trusts it (`tls.rs`), AdmissionReview builders (`review.rs`), hyper requests and answers
//! (`client.rs`), the raw loopback GET (`http.rs`), and the webhook's registration (`registration.rs`), and the `tracehook`
//! binary run with text on stdin (`command.rs`).
//! Each test file uses part of it; `tests/e2e/support` and `sysbench` include the parts
//! they share.
#![allow(dead_code, unused_imports)]

pub mod client;
pub mod command;
pub mod crd;
pub mod http;
pub mod registration;
pub mod review;
pub mod tls;
pub mod world;

pub use client::{body_bytes, http2_client, json_body, post_json};
pub use command::{assert_success, tracehook};
pub use crd::established;
pub use http::http_get;
pub use review::{pod, pod_review, review_of};
pub use tls::{TlsServer, bundle, client_config, connect, install_provider, resolver, roots};
pub use world::context;
