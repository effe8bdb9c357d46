//! Prometheus metrics, served at `GET /metrics` (OpenMetrics text).
//!
//! One [`Metrics`] per running service, handed to the parts that record —
//! no process-wide registry, so app instances in one process (the tests)
//! keep their own counts. Every name starts with `gifts_`.
//!
//! What is common to every store is here; a backend registers its own
//! metrics when it is opened ([`Metrics::register`]), so an instance
//! exports only its backend's (no `gifts_tarantool_connected 0` on SQLite).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

/// Latency buckets in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// HTTP method.
    pub method: String,
    /// The matched route, e.g. `/imports/{import_id}/citizens`.
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// Labels of a request's latency (no status: fewer series).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// HTTP method.
    pub method: String,
    /// The matched route.
    pub route: String,
}

/// Labels of a storage operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// `sqlite`, `tarantool` or `postgres`.
    pub backend: &'static str,
    /// The `Storage` method, e.g. `create_import`.
    pub operation: &'static str,
    /// `ok` or the error kind.
    pub outcome: &'static str,
}

/// Labels of the storage operations waiting for an answer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PendingLabels {
    /// `sqlite`, `tarantool` or `postgres`.
    pub backend: &'static str,
    /// The `Storage` method.
    pub operation: &'static str,
}

/// Labels naming a queue or a cache part.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    /// Which one.
    pub kind: &'static str,
}

/// Labels of the build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
    /// Git commit.
    pub commit: &'static str,
}

/// Everything the service counts.
pub struct Metrics {
    registry: std::sync::Mutex<Registry>,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Request latency.
    pub request_seconds: Family<RouteLabels, Histogram>,
    /// Storage operation latency.
    pub storage_seconds: Family<OperationLabels, Histogram>,
    /// Storage operations started and not yet answered (a stalled store
    /// shows here before any latency does).
    pub storage_in_flight: Family<PendingLabels, Gauge>,
    /// Cache hits (`body`, `snapshot`).
    pub cache_hits: Family<KindLabels, Counter>,
    /// Cache misses (`body`, `snapshot`).
    pub cache_misses: Family<KindLabels, Counter>,
    /// Entries evicted from the cache to stay within its budget.
    pub cache_evictions: Counter,
    /// Bytes the cache holds (by its weights).
    pub cache_bytes: Gauge,
    /// Imports stored (read when scraped).
    pub imports: Gauge,
    /// Citizens stored (read when scraped).
    pub citizens: Gauge,
}

fn latency() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gifts");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by method and matched route",
            request_seconds.clone(),
        );
        let storage_seconds = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency as fn() -> Histogram,
        );
        registry.register(
            "storage_operation_duration_seconds",
            "Storage operation latency in seconds, by backend, operation and outcome",
            storage_seconds.clone(),
        );
        let storage_in_flight = Family::<PendingLabels, Gauge>::default();
        registry.register(
            "storage_operations_in_flight",
            "Storage operations waiting for an answer, by backend and operation",
            storage_in_flight.clone(),
        );
        let cache_hits = Family::<KindLabels, Counter>::default();
        registry.register("cache_hits", "Read cache hits, by kind", cache_hits.clone());
        let cache_misses = Family::<KindLabels, Counter>::default();
        registry.register(
            "cache_misses",
            "Read cache misses, by kind",
            cache_misses.clone(),
        );
        let cache_evictions = Counter::default();
        registry.register(
            "cache_evictions",
            "Read cache entries evicted to stay within --cache-bytes",
            cache_evictions.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register(
            "cache_bytes",
            "Bytes the read cache holds (its weights)",
            cache_bytes.clone(),
        );
        let imports = Gauge::default();
        registry.register("imports", "Imports stored", imports.clone());
        let citizens = Gauge::default();
        registry.register(
            "citizens",
            "Citizens stored, in all imports",
            citizens.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                commit: env!("GIFTS_COMMIT"),
            })
            .set(1);
        registry.register("build_info", "The running build: version and commit", build);
        Self {
            registry: std::sync::Mutex::new(registry),
            requests,
            request_seconds,
            storage_seconds,
            storage_in_flight,
            cache_hits,
            cache_misses,
            cache_evictions,
            cache_bytes,
            imports,
            citizens,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text of everything registered.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Registers a backend's own metric as `gifts_<name>` (the metric is a
    /// handle: the backend keeps a clone and records into it).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .register(name, help, metric);
    }

    /// Counts a hit or a miss of the cache part `kind`.
    pub fn cache_lookup(&self, kind: &'static str, hit: bool) {
        let family = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        family.get_or_create(&KindLabels { kind }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_names_every_metric_with_the_prefix() {
        let metrics = Metrics::default();
        metrics.cache_lookup("body", true);
        metrics
            .requests
            .get_or_create(&RequestLabels {
                method: "GET".into(),
                route: "/health".into(),
                status: 200,
            })
            .inc();
        let text = metrics.render();
        for name in [
            "gifts_http_requests_total{method=\"GET\",route=\"/health\",status=\"200\"} 1",
            "gifts_cache_hits_total{kind=\"body\"} 1",
            "gifts_build_info{version=",
            "# EOF",
        ] {
            assert!(text.contains(name), "{name} in:\n{text}");
        }
    }
}
