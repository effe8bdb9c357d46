//! Prometheus metrics, served at `GET /metrics`: OpenMetrics text when the
//! scraper asks for it (as Prometheus does), else the classic text format
//! (`text/plain; version=0.0.4`, which `promtool check metrics` reads).
//!
//! One [`Metrics`] per running service, handed to the parts that record —
//! no process-wide registry, so app instances in one process (the tests)
//! keep their own counts. Every name starts with `gifts_`, but the
//! standard `process_*` set (CPU, memory, open files, start time), which
//! every Prometheus client library exports under those names.
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
    pub request_seconds: Family<RequestLabels, Histogram>,
    /// HTTP requests being served now.
    pub requests_in_flight: Gauge,
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
        let mut root = Registry::default();
        root.register_collector(Box::new(ProcessCollector));
        let registry = root.sub_registry_with_prefix("gifts");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered, by method, matched route and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RequestLabels, Histogram>::new_with_constructor(latency as fn() -> Histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency in seconds, by method, matched route and status",
            request_seconds.clone(),
        );
        let requests_in_flight = Gauge::default();
        registry.register(
            "http_requests_in_flight",
            "HTTP requests being served now",
            requests_in_flight.clone(),
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
            registry: std::sync::Mutex::new(root),
            requests,
            request_seconds,
            requests_in_flight,
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
            .sub_registry_with_prefix("gifts")
            .register(name, help, metric);
    }

    /// Registers a backend's collector, whose metrics are read when scraped
    /// (named `gifts_<name>` by the collector).
    pub fn register_collector(&self, collector: Box<dyn prometheus_client::collector::Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .sub_registry_with_prefix("gifts")
            .register_collector(collector);
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

/// The standard process metrics of the Prometheus client libraries
/// (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
/// `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
/// `process_threads`, `process_start_time_seconds`), read from `/proc` at
/// each scrape. A value `/proc` cannot give is left out.
#[derive(Debug)]
struct ProcessCollector;

impl prometheus_client::collector::Collector for ProcessCollector {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        let Ok(me) = procfs::process::Process::myself() else {
            return Ok(());
        };
        let mut gauge = |name: &str, help: &str, value: Option<f64>| {
            let Some(value) = value else {
                return Ok(());
            };
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)
        };
        #[allow(clippy::cast_precision_loss)] // counts far below 2^52
        let float = |n: u64| n as f64;
        let stat = me.stat().ok();
        let ticks = float(procfs::ticks_per_second());
        gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stat.as_ref().map(|s| float(s.rss * procfs::page_size())),
        )?;
        gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            stat.as_ref().map(|s| float(s.vsize)),
        )?;
        gauge(
            "process_threads",
            "Number of OS threads in the process.",
            stat.as_ref()
                .and_then(|s| u64::try_from(s.num_threads).ok())
                .map(float),
        )?;
        gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            stat.as_ref().and_then(|s| {
                let boot = procfs::boot_time_secs().ok()?;
                Some(float(boot) + float(s.starttime) / ticks)
            }),
        )?;
        gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            me.fd_count()
                .ok()
                .and_then(|n| u64::try_from(n).ok())
                .map(float),
        )?;
        gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
            me.limits()
                .ok()
                .and_then(|l| match l.max_open_files.soft_limit {
                    procfs::process::LimitValue::Value(n) => Some(float(n)),
                    procfs::process::LimitValue::Unlimited => None,
                }),
        )?;
        if let Some(s) = &stat {
            let cpu = ConstCounter::new(float(s.utime + s.stime) / ticks);
            let metric = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds.",
                None,
                cpu.metric_type(),
            )?;
            cpu.encode(metric)?;
        }
        Ok(())
    }
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics text: a
/// counter's family is named with its `_total` (as its samples are), and
/// the `# UNIT` and `# EOF` lines, which that format lacks, go.
pub fn classic_text(openmetrics: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(openmetrics.len());
    let mut lines = openmetrics.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("# EOF") || line.starts_with("# UNIT ") {
            continue;
        }
        // Writing to a String cannot fail.
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let name = rest.split(' ').next().unwrap_or_default();
            let counter = lines
                .peek()
                .is_some_and(|next| *next == format!("# TYPE {name} counter"));
            if counter && !name.ends_with("_total") {
                let help = &rest[name.len()..];
                let _ = write!(
                    out,
                    "# HELP {name}_total{help}\n# TYPE {name}_total counter\n"
                );
                lines.next();
                continue;
            }
        } else if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" unknown"))
        {
            let _ = writeln!(out, "# TYPE {name} untyped");
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
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
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("gifts_") || line.starts_with("process_"),
                "{line}"
            );
        }
    }

    #[test]
    fn the_classic_text_names_counter_families_with_their_total() {
        let openmetrics = "# HELP gifts_x Things.\n# TYPE gifts_x counter\ngifts_x_total 3\n\
            # HELP gifts_y Now.\n# TYPE gifts_y gauge\n# UNIT gifts_y bytes\ngifts_y 1\n\
            # HELP gifts_z_total Done.\n# TYPE gifts_z_total counter\ngifts_z_total 1\n\
            # TYPE gifts_u unknown\ngifts_u 2\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP gifts_x_total Things.\n# TYPE gifts_x_total counter\ngifts_x_total 3\n\
             # HELP gifts_y Now.\n# TYPE gifts_y gauge\ngifts_y 1\n\
             # HELP gifts_z_total Done.\n# TYPE gifts_z_total counter\ngifts_z_total 1\n\
             # TYPE gifts_u untyped\ngifts_u 2\n"
        );
    }
}
