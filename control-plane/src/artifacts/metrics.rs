//! Artifact metrics: `valkyrie_artifacts_*`.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

/// What the artifact store counts. Clones share their values.
#[derive(Clone, Debug, Default)]
pub struct ArtifactMetrics {
    /// Artifacts stored (committed uploads).
    pub uploads: Counter<u64, AtomicU64>,
    /// Bytes of committed uploads.
    pub uploaded_bytes: Counter<u64, AtomicU64>,
    /// Downloads started (reads from offset 0).
    pub downloads: Counter<u64, AtomicU64>,
    /// Bytes served to downloaders.
    pub downloaded_bytes: Counter<u64, AtomicU64>,
    /// Bytes held in blobs, each distinct content once.
    pub stored_bytes: Gauge<i64, std::sync::atomic::AtomicI64>,
}

impl ArtifactMetrics {
    /// Registers them under `registry` (the `valkyrie` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register_with_unit(
            "artifacts_uploaded",
            "Artifacts stored (committed uploads)",
            Unit::Other("artifacts".into()),
            self.uploads.clone(),
        );
        registry.register_with_unit(
            "artifacts_received",
            "Bytes of committed artifact uploads",
            Unit::Bytes,
            self.uploaded_bytes.clone(),
        );
        registry.register_with_unit(
            "artifacts_downloaded",
            "Artifact downloads started",
            Unit::Other("artifacts".into()),
            self.downloads.clone(),
        );
        registry.register_with_unit(
            "artifacts_sent",
            "Bytes of artifacts served",
            Unit::Bytes,
            self.downloaded_bytes.clone(),
        );
        registry.register_with_unit(
            "artifacts_stored",
            "Bytes held by the artifact store, each distinct content once",
            Unit::Bytes,
            self.stored_bytes.clone(),
        );
    }
}
