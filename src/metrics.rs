//! Prometheus metrics, served as text on the plain-HTTP port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
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

pub struct Metrics {
    pub requests: Family<OutcomeLabels, Counter>,
    pub duration: Histogram,
    pub in_flight: Gauge,
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
        Self {
            requests,
            duration,
            in_flight,
            registry,
        }
    }
}

impl Metrics {
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
