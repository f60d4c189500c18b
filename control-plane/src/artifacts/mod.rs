//! Artifacts: what a job uploads for later jobs and for people.
//!
//! [`ArtifactStore`] keeps them in the data directory, content-addressed:
//! each distinct content is one file `blobs/<aa>/<sha256>`, however many
//! jobs stored it. What each job stored (name, size, SHA-256, expiry) is a
//! small JSON file `jobs/<job id>.json` beside the blobs, replaced
//! atomically, so artifacts survive a restart. An upload is written to
//! `uploads/` while its SHA-256 is computed, and becomes a blob only once
//! its size and checksum match what the agent announced; a failed upload
//! (bad checksum, over the size limit, full disk) leaves every stored
//! artifact as it was.
//!
//! The transfers themselves ([`session`]) never go through the core: an
//! agent session writes chunks straight to disk, and every reader streams
//! from the blob file, so neither side holds a whole artifact in memory.

pub mod cache;
mod local;
mod metrics;
pub(crate) mod release;
pub mod session;

pub use local::{now_ms, ArtifactError, ArtifactStore, StoreConfig, Upload};
pub use metrics::ArtifactMetrics;

/// The name under which a job's `artifacts:` archive is stored.
pub const ARCHIVE_NAME: &str = "artifacts.tar";

/// The longest artifact name.
pub const MAX_NAME_BYTES: usize = 255;

/// Whether `name` may name an artifact: 1 to 255 bytes of letters, digits,
/// `.`, `_` and `-`, not starting with a dot (it becomes a file name on
/// download).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}
