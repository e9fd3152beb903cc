//! End-to-end tests on a real node: kubelet, containerd and runc, the CNI bridge,
//! kube-proxy and CoreDNS run what tracehook injects, with images built from source by
//! tests/node/build.sh (nothing is pulled).
//!
//! One cluster with a real node, one `tracehook serve` process (webhook and reconciler)
//! and the backend `Jaeger obs/test` (the reconciler's Deployment, running Jaeger 2.12.0)
//! are shared by the binary; each test works in its own namespace. Spans are sent from
//! inside the Pods by the SDKs' own clients (tests/node/spans: the OpenTelemetry Go SDK
//! and jaeger-client-go, configured only by the environment tracehook injects) and read
//! back from Jaeger's query API through the API server's service proxy.
//!
//! Needs root; fails, never skips, when the node cannot start.

#[allow(dead_code)]
#[path = "../e2e/support/mod.rs"]
mod support;

mod backend;
mod footprint;
mod hotrod;
mod missed;
mod ready;
mod spans;
// sysbench's percentiles (median is not used here).
#[allow(dead_code)]
#[path = "../../sysbench/src/stats.rs"]
mod stats;
mod world;
