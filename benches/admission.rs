//! One admission request without HTTP: the AdmissionReview body parsed, the engine
//! called, the response (base64 JSON Patch) encoded — `server::admit` and
//! `into_review_json`, the work `POST /mutate` does per request besides TLS and HTTP.
//!
//! `cargo bench --bench admission`; results in BENCHMARKS.md.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use support::pods;
use tracehook::server;

fn admit(c: &mut Criterion) {
    let ctx = support::context();
    let mut group = c.benchmark_group("admit");
    for (name, shape) in [
        ("minimal", pods::MINIMAL),
        ("typical", pods::TYPICAL),
        ("large", pods::LARGE),
    ] {
        let body =
            serde_json::to_vec(&pods::review(&pods::pod(shape), "bench-uid")).expect("serializes");
        let response = futures::executor::block_on(server::admit(&ctx, &body)).expect("answered");
        assert!(response.patch.is_some(), "{name}: no patch");
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| {
                let response = futures::executor::block_on(server::admit(&ctx, black_box(&body)))
                    .expect("answered");
                response.into_review_json()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = admit
}
criterion_main!(benches);
