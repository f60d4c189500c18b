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
use prometheus_client::registry::Registry;

/// A `transport` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    /// unix, tcp, tls or quic.
    pub transport: String,
}

/// The metrics recorded as things happen.
#[derive(Debug)]
pub struct Metrics {
    /// Submit → assignment, seconds.
    pub dispatch_latency: Histogram,
    /// Store transaction commit time, seconds.
    pub store_commit_latency: Histogram,
    /// Job output bytes received from agents.
    pub log_bytes: Counter<u64, AtomicU64>,
    /// Open protocol connections by transport.
    pub connections: Family<TransportLabel, Gauge>,
    /// Jobs submitted since start.
    pub jobs_submitted: Counter<u64, AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            // 10 µs .. ~42 s
            dispatch_latency: Histogram::new(exponential_buckets(0.000_01, 4.0, 12)),
            store_commit_latency: Histogram::new(exponential_buckets(0.000_01, 4.0, 12)),
            log_bytes: Counter::default(),
            connections: Family::default(),
            jobs_submitted: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric under the `valkyrie` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let valkyrie = registry.sub_registry_with_prefix("valkyrie");
        valkyrie.register_with_unit(
            "dispatch_latency",
            "Time from submission to assignment to a runner",
            prometheus_client::registry::Unit::Seconds,
            self.dispatch_latency.clone(),
        );
        valkyrie.register_with_unit(
            "store_commit_latency",
            "Time to commit one store transaction",
            prometheus_client::registry::Unit::Seconds,
            self.store_commit_latency.clone(),
        );
        valkyrie.register_with_unit(
            "logs_received",
            "Job output received from agents",
            prometheus_client::registry::Unit::Bytes,
            self.log_bytes.clone(),
        );
        valkyrie.register_with_unit(
            "connections_open",
            "Open protocol connections by transport",
            prometheus_client::registry::Unit::Other("connections".into()),
            self.connections.clone(),
        );
        valkyrie.register_with_unit(
            "jobs_submitted",
            "Jobs submitted since the server started",
            prometheus_client::registry::Unit::Other("jobs".into()),
            self.jobs_submitted.clone(),
        );
    }
}
