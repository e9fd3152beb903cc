//! Prometheus metrics, served as text on the plain-HTTP port.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// `outcome` is `injected`, `skipped`, `not_requested`, `already_injected`,
/// `ignored` or `error`; `reason` says why for skips and errors, else is empty.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
    pub reason: &'static str,
}

/// `error` is [`crate::Error::metric_label`].
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

/// The reconciler's metrics (after controller-rs): runs, failures by kind, duration,
/// and whether this replica leads.
#[derive(Clone)]
pub struct ReconcilerMetrics {
    pub reconciles: Counter,
    pub failures: Family<ErrorLabels, Counter>,
    pub duration: Histogram,
    pub leader: Gauge,
}

impl Default for ReconcilerMetrics {
    fn default() -> Self {
        Self {
            reconciles: Counter::default(),
            failures: Family::default(),
            // 1 ms … ~16 s: a pass is a handful of API round trips.
            duration: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.001, 2.0, 15,
            )),
            leader: Gauge::default(),
        }
    }
}

impl ReconcilerMetrics {
    /// Records one reconcile that took `seconds` and ended with `error`, if any.
    pub fn observe(&self, seconds: f64, error: Option<&crate::Error>) {
        self.reconciles.inc();
        self.duration.observe(seconds);
        if let Some(e) = error {
            self.failures
                .get_or_create(&ErrorLabels {
                    error: e.metric_label(),
                })
                .inc();
        }
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Reconciles of Jaeger instances",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_failures",
            "Reconciles that failed, by kind of error",
            self.failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconcile of a Jaeger instance took",
            self.duration.clone(),
        );
        registry.register(
            "reconciler_leader",
            "1 while this replica holds the reconciler's Lease",
            self.leader.clone(),
        );
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NamespaceLabels {
    pub namespace: String,
}

/// `instance` is `<namespace>/<name>`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    pub instance: String,
}

/// `result` is `evicted`, `refused` (a PodDisruptionBudget said no) or `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EvictionLabels {
    pub result: &'static str,
}

/// What the leader's Pod watch finds (DESIGN.md "Missed injections"); only the leader
/// exports non-zero values.
#[derive(Clone, Default)]
pub struct PodMetrics {
    pub missing: Family<NamespaceLabels, Gauge>,
    pub injected: Family<InstanceLabels, Gauge>,
    pub evictions: Family<EvictionLabels, Counter>,
}

impl PodMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "pods_missing_sidecar",
            "Live Pods that would be injected now but have no sidecar, by namespace",
            self.missing.clone(),
        );
        registry.register(
            "pods_injected",
            "Live Pods carrying tracehook's sidecar, by the instance it sends to",
            self.injected.clone(),
        );
        registry.register(
            "heal_evictions",
            "Evictions of Pods missing their sidecar (--heal-missing=evict), by result",
            self.evictions.clone(),
        );
    }
}

pub struct Metrics {
    pub requests: Family<OutcomeLabels, Counter>,
    pub duration: Histogram,
    pub in_flight: Gauge,
    pub reconciler: ReconcilerMetrics,
    pub pods: PodMetrics,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<OutcomeLabels, Counter>::default();
        // 50 µs … ~400 ms: the handler takes tens of microseconds; the tail shows
        // stalls such as a cache-miss GET.
        let duration = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            0.000_05, 2.0, 14,
        ));
        let in_flight = Gauge::default();
        let mut registry = Registry::with_prefix("tracehook");
        registry.register(
            "admission_requests",
            "Admission requests by outcome",
            requests.clone(),
        );
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            duration.clone(),
        );
        registry.register(
            "admission_in_flight",
            "Admission requests being answered",
            in_flight.clone(),
        );
        let reconciler = ReconcilerMetrics::default();
        reconciler.register(&mut registry);
        let pods = PodMetrics::default();
        pods.register(&mut registry);
        Self {
            requests,
            duration,
            in_flight,
            reconciler,
            pods,
            registry,
        }
    }
}

/// Log lines the non-blocking log writer dropped because its buffer was full (whatever
/// reads tracehook's stderr fell behind): read at each scrape.
#[derive(Debug)]
struct DroppedLogLines(tracing_appender::non_blocking::ErrorCounter);

impl Collector for DroppedLogLines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counter = ConstCounter::new(self.0.dropped_lines() as u64);
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log reader fell behind (admissions never wait for it)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

impl Metrics {
    /// Exposes `tracehook_log_lines_dropped_total` from the log writer's counter.
    pub fn count_dropped_log_lines(
        &mut self,
        dropped: tracing_appender::non_blocking::ErrorCounter,
    ) {
        self.registry
            .register_collector(Box::new(DroppedLogLines(dropped)));
    }

    pub fn count(&self, outcome: &'static str, reason: &'static str) {
        self.requests
            .get_or_create(&OutcomeLabels { outcome, reason })
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciler_failures_are_counted_by_kind() {
        let metrics = Metrics::default();
        metrics.reconciler.observe(0.01, None);
        metrics.reconciler.observe(
            0.02,
            Some(&crate::Error::MissingField("Jaeger a/b".into(), "uid")),
        );
        metrics.reconciler.leader.set(1);
        let text = metrics.render();
        assert!(text.contains("tracehook_reconciles_total 2"), "{text}");
        assert!(
            text.contains(r#"tracehook_reconcile_failures_total{error="missing_field"} 1"#),
            "{text}"
        );
        assert!(text.contains("tracehook_reconciler_leader 1"), "{text}");
        assert!(
            text.contains("tracehook_reconcile_duration_seconds_count 2"),
            "{text}"
        );
    }

    /// A log reader that reads nothing until released.
    struct Stuck(std::sync::mpsc::Receiver<()>);

    impl std::io::Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let _ = self.0.recv();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_lines_dropped_while_the_reader_is_stuck_are_counted() {
        use std::io::Write as _;
        let (release, stuck) = std::sync::mpsc::channel();
        let (mut writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(1)
            .finish(Stuck(stuck));
        for _ in 0..10 {
            writer.write_all(b"a line\n").expect("never blocks");
        }
        let mut metrics = Metrics::default();
        metrics.count_dropped_log_lines(writer.error_counter());
        let text = metrics.render();
        // One line in the stuck write (or not yet taken), one in the buffer: the rest
        // were dropped.
        let dropped: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("tracehook_log_lines_dropped_total "))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no dropped-lines counter in {text}"));
        assert!((8..=9).contains(&dropped), "{text}");
        drop(release);
        drop(guard);
    }
}
