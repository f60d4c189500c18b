//! Artifacts: what a job uploads for later jobs and for people.
//!
//! [`ArtifactStore`] keeps their contents in a [`BlobStore`],
//! content-addressed: each distinct content is one blob named by its
//! SHA-256, however many jobs stored it. The blobs are files
//! `blobs/<aa>/<sha256>` in the data directory ([`LocalBlobs`], the
//! default) or objects in an S3-compatible store ([`S3Blobs`],
//! `--artifacts s3://bucket/prefix`). What each job stored (name, size,
//! SHA-256, expiry) is a record in the server's store
//! ([`ArtifactRow`](crate::store::ArtifactRow)), so artifacts survive a
//! restart and every server of a group sharing a MongoDB store knows them.
//! An upload is written to
//! `uploads/` while its SHA-256 is computed, and becomes a blob only once
//! its size and checksum match what the agent announced; a failed upload
//! (bad checksum, over the size limit, full disk) leaves every stored
//! artifact as it was.
//!
//! The transfers themselves ([`session`]) never go through the core: an
//! agent session writes chunks straight to disk, and every reader streams
//! from the blob, so neither side holds a whole artifact in memory. An
//! upload is staged in the data directory (`uploads/`) even with S3, and
//! goes up as a multipart upload once verified.

pub mod blob;
pub mod cache;
mod local;
mod metrics;
pub(crate) mod release;
pub mod s3;
pub mod session;

pub use blob::{BlobReader, BlobStore, LocalBlobs};
pub use local::{now_ms, ArtifactError, ArtifactStore, StoreConfig, Upload};
pub use metrics::ArtifactMetrics;
pub use s3::S3Blobs;

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
