//! The S3 backend of the blob store: any S3-compatible object store,
//! reached with the `object_store` crate. Blobs are objects
//! `<prefix>/blobs/<aa>/<sha256>`; large ones go up as multipart uploads
//! of [`PART_BYTES`] parts, and reads are ranged GETs streamed as they
//! arrive, so no blob is ever held in memory whole.

use std::io;
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};
use tokio::io::AsyncWriteExt;

use super::blob::{is_sha256, BlobReader, BlobStore};

/// The size of one part of a multipart upload (S3 wants at least 5 MiB
/// for every part but the last); blobs smaller than this go up in one PUT.
pub const PART_BYTES: usize = 8 << 20;

/// Parts of one upload in flight at once: with [`PART_BYTES`], what one
/// upload holds in memory is at most about `(PART_UPLOADS + 1) * PART_BYTES`.
const PART_UPLOADS: usize = 2;

/// Blobs in an S3 bucket, under a prefix.
#[derive(Debug)]
pub struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

/// An `object_store` error as an I/O error (NotFound kept as such).
fn io_error(err: object_store::Error) -> io::Error {
    match err {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, err),
        other => io::Error::other(other),
    }
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (without
/// slashes at either end; empty for the bucket's root).
pub fn parse_url(url: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| format!("`{url}` is not an s3:// URL (expected s3://bucket/prefix)"))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(format!("`{url}` names no bucket (expected s3://bucket/prefix)"));
    }
    Ok((bucket.to_owned(), prefix.trim_matches('/').to_owned()))
}

impl S3Blobs {
    /// The blobs under `s3://bucket/prefix`. Endpoint, region and
    /// credentials come from the usual AWS variables (`AWS_ENDPOINT_URL`,
    /// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`; `AWS_ALLOW_HTTP=true` for a plain-http endpoint).
    /// Nothing is contacted yet.
    pub fn from_env(url: &str) -> io::Result<Self> {
        let (bucket, _) = parse_url(url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // TLS for the HTTP client: ring, as everywhere else in Valkyrie
        // (an error means a provider is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let store = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::new(Arc::new(store), url)
    }

    /// The blobs under `s3://bucket/prefix`, through `store` (a client of
    /// that bucket).
    pub fn new(store: Arc<dyn ObjectStore>, url: &str) -> io::Result<Self> {
        let (bucket, prefix) = parse_url(url).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Self {
            store,
            bucket,
            prefix,
        })
    }

    fn blobs_dir(&self) -> ObjectPath {
        ObjectPath::from(self.prefix.as_str()).join("blobs")
    }

    fn key(&self, sha256: &str) -> ObjectPath {
        self.blobs_dir().join(&sha256[..2]).join(sha256)
    }

    async fn upload(&self, sha256: &str, staged: &Path) -> io::Result<()> {
        let mut file = tokio::fs::File::open(staged).await?;
        let mut writer = BufWriter::with_capacity(self.store.clone(), self.key(sha256), PART_BYTES)
            .with_max_concurrency(PART_UPLOADS);
        let copied = async {
            tokio::io::copy(&mut file, &mut writer).await?;
            writer.shutdown().await
        }
        .await;
        if let Err(err) = copied {
            // A multipart upload left open would be billed and never seen.
            let _ = writer.abort().await;
            return Err(err);
        }
        Ok(())
    }
}

impl BlobStore for S3Blobs {
    fn contains<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, io::Result<bool>> {
        async move {
            match self.store.head(&self.key(sha256)).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(err) => Err(io_error(err)),
            }
        }
        .boxed()
    }

    fn put<'a>(&'a self, sha256: &'a str, staged: &'a Path, _size: u64) -> BoxFuture<'a, io::Result<bool>> {
        async move {
            let stored = match self.contains(sha256).await {
                Ok(true) => Ok(false),
                Ok(false) => self.upload(sha256, staged).await.map(|()| true),
                Err(err) => Err(err),
            };
            let _ = tokio::fs::remove_file(staged).await;
            stored
        }
        .boxed()
    }

    fn open<'a>(&'a self, sha256: &'a str, range: Range<u64>) -> BoxFuture<'a, io::Result<BlobReader>> {
        async move {
            if range.is_empty() {
                // S3 refuses an empty range.
                return Ok(Box::pin(tokio::io::empty()) as BlobReader);
            }
            let options = GetOptions {
                range: Some(GetRange::Bounded(range)),
                ..GetOptions::default()
            };
            let got = self
                .store
                .get_opts(&self.key(sha256), options)
                .await
                .map_err(io_error)?;
            let stream = got.into_stream().map_err(io_error);
            Ok(Box::pin(tokio_util::io::StreamReader::new(stream)) as BlobReader)
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, io::Result<Vec<(String, u64)>>> {
        async move {
            let mut listed = self.store.list(Some(&self.blobs_dir()));
            let mut blobs = Vec::new();
            while let Some(meta) = listed.try_next().await.map_err(io_error)? {
                if let Some(name) = meta.location.filename().filter(|n| is_sha256(n)) {
                    blobs.push((name.to_owned(), meta.size));
                }
            }
            Ok(blobs)
        }
        .boxed()
    }

    fn delete<'a>(&'a self, sha256: &'a str) -> BoxFuture<'a, io::Result<()>> {
        async move {
            match self.store.delete(&self.key(sha256)).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(err) => Err(io_error(err)),
            }
        }
        .boxed()
    }

    fn location(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_url;

    #[test]
    fn urls_give_a_bucket_and_a_prefix() {
        assert_eq!(parse_url("s3://b").unwrap(), ("b".into(), "".into()));
        assert_eq!(parse_url("s3://b/").unwrap(), ("b".into(), "".into()));
        assert_eq!(
            parse_url("s3://b/ci/art/").unwrap(),
            ("b".into(), "ci/art".into())
        );
        assert!(parse_url("s3:///x").unwrap_err().contains("names no bucket"));
        assert!(parse_url("http://b/x").unwrap_err().contains("not an s3:// URL"));
    }
}
