//! End-to-end tests against a real control plane (etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler and kwok, built from the official Go
//! modules by tests/cluster/build.sh). One cluster and one `tracehook serve` process
//! are shared by the whole binary; each test works in its own namespace.
//!
//! Missing binaries fail the run (testcluster builds them, or says why it cannot).

mod calls;
mod certificates;
mod faults;
mod install;
mod missing;
mod real_world;
mod reconciler;
mod security;
mod support;
mod webhook;
