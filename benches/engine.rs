//! The injection engine alone: `inject::decide` on a Pod already parsed into a
//! `serde_json::Value`, for a minimal, a typical and a large Pod, and the typical Pod
//! scaled 1× to 64× (the cost must grow linearly with the Pod's size).
//!
//! `cargo bench --bench engine`; targets and results in BENCHMARKS.md.

mod support;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use support::{Engine, pods};
use tracehook::inject::Decision;

fn shapes(c: &mut Criterion) {
    let engine = Engine::new();
    let mut group = c.benchmark_group("decide");
    for (name, shape) in [
        ("minimal", pods::MINIMAL),
        ("typical", pods::TYPICAL),
        ("large", pods::LARGE),
    ] {
        let pod = pods::pod(shape);
        assert!(matches!(engine.decide(&pod), Decision::Injected(_)));
        group.bench_function(name, |b| b.iter(|| engine.decide(black_box(&pod))));
    }
    group.finish();
}

fn scaling(c: &mut Criterion) {
    let engine = Engine::new();
    let mut group = c.benchmark_group("decide_scaling");
    for k in [1, 2, 4, 8, 16, 32, 64] {
        let pod = pods::pod(pods::Shape::typical_times(k));
        let bytes = serde_json::to_vec(&pod).expect("serializes").len();
        group.throughput(Throughput::Bytes(bytes as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(format!("{k}x")),
            &pod,
            |b, pod| b.iter(|| engine.decide(black_box(pod))),
        );
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50)
}

criterion_group! {
    name = benches;
    config = config();
    targets = shapes, scaling
}
criterion_main!(benches);
