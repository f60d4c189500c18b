//! Prometheus metrics, named `valkyrie_<area>_<name>_<unit>`. Counters and
//! histograms are recorded where things happen; gauges that describe the
//! core's state (jobs by state, queue depth, runners by state) are computed
//! when scraped, from a [`CoreSnapshot`](crate::core::CoreSnapshot).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

/// A `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// unix, tcp, tls or quic.
    pub transport: String,
}

/// The labels of the HTTP request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabel {
    /// GET, POST, …
    pub method: String,
    /// The route template (`/api/ci/pipelines/{id}`), never the concrete
    /// path, so the label's values stay few.
    pub route: String,
    /// The response's status code.
    pub status: u16,
}

/// A `priority` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PriorityLabel {
    /// 0 to 255.
    pub priority: String,
}

fn latency_buckets() -> Histogram {
    // 10 µs .. ~42 s
    Histogram::new(exponential_buckets(0.000_01, 4.0, 12))
}

/// The metrics recorded as things happen.
#[derive(Debug)]
pub struct Metrics {
    /// Queue → assignment, seconds: from the moment a job enters the queue
    /// (submitted, or queued again after a lost attempt) to its assignment.
    pub dispatch_latency: Histogram,
    /// Store transaction commit time, seconds.
    pub store_commit_latency: Histogram,
    /// Job output bytes received from agents.
    pub log_bytes: Counter<u64, AtomicU64>,
    /// Open protocol connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Jobs submitted since start.
    pub jobs_submitted: Counter<u64, AtomicU64>,
    /// HTTP requests answered, by method, route template and status.
    pub http_requests: Family<HttpLabel, Counter<u64, AtomicU64>>,
    /// HTTP request duration, seconds, by method, route template and status.
    pub http_request_duration: Family<HttpLabel, Histogram, fn() -> Histogram>,
    /// Queued jobs by priority (set at scrape time; a priority once seen
    /// keeps its series, at 0 when none is queued).
    pub queue_depth: Family<PriorityLabel, Gauge>,
    /// Artifact transfers and storage (the store records into clones).
    pub artifacts: crate::artifacts::ArtifactMetrics,
    /// Cache lookups: hits, fallback hits, misses.
    pub cache: crate::artifacts::cache::CacheMetrics,
    /// Commit statuses and run webhooks sent (the notifier records into clones).
    pub notify: crate::source::notifier::NotifyMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            dispatch_latency: latency_buckets(),
            store_commit_latency: latency_buckets(),
            log_bytes: Counter::default(),
            connections: Family::default(),
            jobs_submitted: Counter::default(),
            http_requests: Family::default(),
            http_request_duration: Family::new_with_constructor(latency_buckets),
            queue_depth: Family::default(),
            artifacts: Default::default(),
            cache: Default::default(),
            notify: Default::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `valkyrie` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let valkyrie = registry.sub_registry_with_prefix("valkyrie");
        valkyrie.register_with_unit(
            "dispatch_latency",
            "Time from a job entering the queue to its assignment to a runner",
            Unit::Seconds,
            self.dispatch_latency.clone(),
        );
        valkyrie.register_with_unit(
            "store_commit_latency",
            "Time to commit one store transaction",
            Unit::Seconds,
            self.store_commit_latency.clone(),
        );
        valkyrie.register_with_unit(
            "logs_received",
            "Job output received from agents",
            Unit::Bytes,
            self.log_bytes.clone(),
        );
        valkyrie.register_with_unit(
            "connections_open",
            "Open protocol connections by transport",
            Unit::Other("connections".into()),
            self.connections.clone(),
        );
        valkyrie.register_with_unit(
            "jobs_submitted",
            "Jobs submitted since the server started",
            Unit::Other("jobs".into()),
            self.jobs_submitted.clone(),
        );
        valkyrie.register_with_unit(
            "http",
            "HTTP requests answered, by method, route template and status",
            Unit::Other("requests".into()),
            self.http_requests.clone(),
        );
        valkyrie.register_with_unit(
            "http_request_duration",
            "HTTP request duration until the response head, by method, route template and status",
            Unit::Seconds,
            self.http_request_duration.clone(),
        );
        valkyrie.register_with_unit(
            "queue_depth",
            "Queued jobs, by priority",
            Unit::Other("jobs".into()),
            self.queue_depth.clone(),
        );
        self.artifacts.register(valkyrie);
        self.cache.register(valkyrie);
        self.notify.register(valkyrie);
    }
}
