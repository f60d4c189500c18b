//! Where artifact contents live: a [`BlobStore`] keeps blobs by their
//! SHA-256, so identical content is stored once. Two backends: [`LocalBlobs`]
//! in the data directory and [`S3Blobs`](super::s3::S3Blobs) in any
//! S3-compatible object store.

use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};

/// A blob's bytes, read as they are needed (never the whole blob in memory).
pub type BlobReader = Pin<Box<dyn AsyncRead + Send>>;

/// A store of immutable blobs named by the lowercase hex SHA-256 of their
/// content. The artifact store checks every checksum before it calls
/// [`put`](Self::put), and serialises [`delete`](Self::delete) against the
/// blobs it is about to reference.
pub trait BlobStore: Send + Sync + std::fmt::Debug {
    /// Whether blob `sha256` is stored.
    fn contains<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, io::Result<bool>>;

    /// Stores the `size` bytes of the local file `staged` as blob `sha256`,
    /// streaming it; the file is moved or removed either way. Returns
    /// whether the blob is new (false when that content was already stored).
    fn put<'a>(&'a self, sha256: &'a str, staged: &'a Path, size: u64) -> BoxFuture<'a, io::Result<bool>>;

    /// Reads bytes `range` of blob `sha256`.
    fn open<'a>(&'a self, sha256: &'a str, range: Range<u64>) -> BoxFuture<'a, io::Result<BlobReader>>;

    /// Every stored blob: its SHA-256 and size.
    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(String, u64)>>>;

    /// Removes blob `sha256` (nothing if it is absent).
    fn delete<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, io::Result<()>>;

    /// Where the blobs are, for messages (`/var/lib/…/blobs`, `s3://bucket/prefix`).
    fn location(&self) -> String;
}

/// Whether `name` is a blob name: 64 lowercase hex digits.
pub(crate) fn is_sha256(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Blobs as files `<dir>/<aa>/<sha256>`.
#[derive(Debug)]
pub struct LocalBlobs {
    dir: PathBuf,
}

impl LocalBlobs {
    /// The blobs under `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<Self> {
        let dir = dir.into();
        valkyrie::private_fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(&sha256[..2]).join(sha256)
    }

    /// The blobs, read synchronously (the metric's first value at start).
    pub(crate) fn list_blocking(&self) -> io::Result<Vec<(String, u64)>> {
        let mut blobs = Vec::new();
        for dir in std::fs::read_dir(&self.dir)? {
            let dir = dir?.path();
            if !dir.is_dir() {
                continue;
            }
            for blob in std::fs::read_dir(&dir)? {
                let blob = blob?;
                let name = blob.file_name().to_string_lossy().into_owned();
                if is_sha256(&name) {
                    blobs.push((name, blob.metadata()?.len()));
                }
            }
        }
        Ok(blobs)
    }
}

impl BlobStore for LocalBlobs {
    fn contains<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        tokio::fs::try_exists(self.path(sha256)).boxed()
    }

    fn put<'a>(&'a self, sha256: &'a str, staged: &'a Path, _size: u64) -> BoxFuture<'a, io::Result<bool>> {
        async move {
            let blob = self.path(sha256);
            if tokio::fs::try_exists(&blob).await? {
                tokio::fs::remove_file(staged).await?;
                return Ok(false);
            }
            tokio::fs::create_dir_all(blob.parent().expect("blob dir")).await?;
            tokio::fs::rename(staged, &blob).await?;
            Ok(true)
        }
        .boxed()
    }

    fn open<'a>(&'a self, sha256: &'a str, range: Range<u64>) -> BoxFuture<'a, io::Result<BlobReader>> {
        async move {
            let mut file = tokio::fs::File::open(self.path(sha256)).await?;
            if range.start > 0 {
                file.seek(io::SeekFrom::Start(range.start)).await?;
            }
            Ok(Box::pin(file.take(range.end.saturating_sub(range.start))) as BlobReader)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(String, u64)>>> {
        let blobs = LocalBlobs {
            dir: self.dir.clone(),
        };
        async move {
            tokio::task::spawn_blocking(move || blobs.list_blocking())
                .await
                .map_err(io::Error::other)?
        }
        .boxed()
    }

    fn delete<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match tokio::fs::remove_file(self.path(sha256)).await {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            }
        }
        .boxed()
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}
