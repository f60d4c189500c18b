//! The artifact store: what each job stored, in the data directory, and
//! the contents in a [`BlobStore`] (the data directory or S3).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ring::digest::{Context, SHA256};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkyrie::message::ArtifactInfo;

use super::blob::{BlobReader, BlobStore, LocalBlobs};
use super::valid_name;

/// Settings of an [`ArtifactStore`].
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The largest artifact accepted, in bytes. Default 1 GiB.
    pub max_artifact_bytes: u64,
    /// How long artifacts are kept when the job says nothing. Default 30 days.
    pub default_expiry: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_artifact_bytes: 1 << 30,
            default_expiry: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArtifactError {
    /// The job has no artifact of that name.
    #[error("job {job_id} has no artifact `{name}`")]
    NotFound {
        /// Job id.
        job_id: u64,
        /// Artifact name.
        name: String,
    },
    /// The artifact is over the size limit.
    #[error("the artifact is over the limit of {limit} bytes (server flag --max-artifact-bytes)")]
    TooLarge {
        /// The limit.
        limit: u64,
    },
    /// What arrived does not match what the sender announced.
    #[error("the upload does not match: {0}; nothing was stored")]
    Mismatch(String),
    /// A bad name or offset.
    #[error("{0}")]
    Invalid(String),
    /// The uploader does not run that attempt.
    #[error(
        "attempt {attempt} of job {job_id} is not running on this runner; only it may upload its artifacts"
    )]
    NotHolder {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
    },
    /// The disk is full.
    #[error("the artifact store is full ({0}); the upload was dropped, stored artifacts are unharmed")]
    Full(io::Error),
    /// Another I/O error.
    #[error("the artifact store failed: {0}")]
    Io(io::Error),
}

impl From<io::Error> for ArtifactError {
    fn from(err: io::Error) -> Self {
        // ENOSPC, EDQUOT: the disk or the quota is full.
        if matches!(err.raw_os_error(), Some(28) | Some(122)) {
            ArtifactError::Full(err)
        } else {
            ArtifactError::Io(err)
        }
    }
}

impl ArtifactError {
    /// The protocol's error code for it.
    pub fn code(&self) -> valkyrie::ErrorCode {
        use valkyrie::ErrorCode;
        match self {
            Self::NotFound { .. } => ErrorCode::NOT_FOUND,
            Self::TooLarge { .. } | Self::Mismatch(_) | Self::Invalid(_) => ErrorCode::INVALID_REQUEST,
            Self::NotHolder { .. } => ErrorCode::STALE_ATTEMPT,
            Self::Full(_) | Self::Io(_) => ErrorCode::INTERNAL,
        }
    }
}

/// One artifact as `jobs/<id>.json` records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    sha256: String,
    created_at_ms: u64,
    expires_at_ms: u64,
}

/// The artifact store: job records in a directory, contents in a
/// [`BlobStore`]. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    config: StoreConfig,
    blobs: Arc<dyn BlobStore>,
    /// Held while a sweep runs, and while a commit registers its blob as
    /// pending or references it, so a sweep never removes a blob that a
    /// commit is storing or is about to reference.
    lock: tokio::sync::Mutex<()>,
    /// Blobs being stored by commits, by SHA-256, with their count.
    pending: Mutex<HashMap<String, usize>>,
    next_upload: AtomicU64,
    metrics: super::ArtifactMetrics,
}

/// An upload in progress: a file under `uploads/` and the running SHA-256.
pub struct Upload {
    path: PathBuf,
    file: tokio::fs::File,
    hasher: Context,
    len: u64,
    limit: u64,
}

impl std::fmt::Debug for Upload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upload")
            .field("path", &self.path)
            .field("len", &self.len)
            .finish()
    }
}

impl Upload {
    /// Bytes received so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was received yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends `data`, which must start at `offset` (the bytes received so far).
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), ArtifactError> {
        if offset != self.len {
            return Err(ArtifactError::Invalid(format!(
                "chunk at offset {offset}, but {} bytes were received so far",
                self.len
            )));
        }
        if self.len + data.len() as u64 > self.limit {
            return Err(ArtifactError::TooLarge { limit: self.limit });
        }
        self.file.write_all(data).await?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Removes the partial file (an abandoned upload).
    pub async fn discard(self) {
        drop(self.file);
        let _ = tokio::fs::remove_file(&self.path).await;
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Lowercase hex of a digest.
pub(crate) fn hex_digest(digest: ring::digest::Digest) -> String {
    hex::encode(digest.as_ref())
}

impl ArtifactStore {
    /// Opens (creating) the store under `root`, blobs included. Leftover
    /// partial uploads of an earlier process are removed.
    pub fn open(root: impl Into<PathBuf>, config: StoreConfig) -> io::Result<Self> {
        Self::open_with_metrics(root, config, Default::default())
    }

    /// [`open`](Self::open), recording into `metrics`.
    pub fn open_with_metrics(
        root: impl Into<PathBuf>,
        config: StoreConfig,
        metrics: super::ArtifactMetrics,
    ) -> io::Result<Self> {
        let root = root.into();
        let blobs = LocalBlobs::open(root.join("blobs"))?;
        let stored: u64 = blobs.list_blocking()?.iter().map(|(_, size)| size).sum();
        Self::with_blobs(root, Arc::new(blobs), stored, config, metrics)
    }

    /// Opens (creating) the store's records and uploads under `root`, with
    /// the contents in `blobs` (listed once for the stored-bytes metric).
    pub async fn open_with_blobs(
        root: impl Into<PathBuf>,
        blobs: Arc<dyn BlobStore>,
        config: StoreConfig,
        metrics: super::ArtifactMetrics,
    ) -> io::Result<Self> {
        let stored = blobs.list().await?.iter().map(|(_, size)| size).sum();
        Self::with_blobs(root.into(), blobs, stored, config, metrics)
    }

    fn with_blobs(
        root: PathBuf,
        blobs: Arc<dyn BlobStore>,
        stored_bytes: u64,
        config: StoreConfig,
        metrics: super::ArtifactMetrics,
    ) -> io::Result<Self> {
        for dir in ["uploads", "jobs"] {
            valkyrie::private_fs::create_dir_all(&root.join(dir))?;
        }
        for entry in std::fs::read_dir(root.join("uploads"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        metrics.stored_bytes.set(stored_bytes as i64);
        Ok(Self {
            root,
            config,
            blobs,
            lock: tokio::sync::Mutex::new(()),
            pending: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
            metrics,
        })
    }

    /// Its settings.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    /// Where the contents are kept (a directory or `s3://bucket/prefix`).
    pub fn blob_location(&self) -> String {
        self.blobs.location()
    }

    fn job_path(&self, job_id: u64) -> PathBuf {
        self.root.join("jobs").join(format!("{job_id}.json"))
    }

    /// Starts an upload.
    pub async fn begin_upload(&self) -> Result<Upload, ArtifactError> {
        let n = self.next_upload.fetch_add(1, Ordering::Relaxed);
        let path = self
            .root
            .join("uploads")
            .join(format!("{}-{n}.part", std::process::id()));
        let file = tokio::fs::File::create(&path).await?;
        Ok(Upload {
            path,
            file,
            hasher: Context::new(&SHA256),
            len: 0,
            limit: self.config.max_artifact_bytes,
        })
    }

    /// Stores a finished upload as artifact `name` of job `job_id`, after
    /// checking its size and SHA-256. `expire_in` of zero means the
    /// store's default. Replaces an artifact of the same name.
    pub async fn commit(
        self: &Arc<Self>,
        mut upload: Upload,
        job_id: u64,
        name: &str,
        size: u64,
        sha256: &str,
        expire_in: Duration,
    ) -> Result<ArtifactInfo, ArtifactError> {
        if !valid_name(name) {
            upload.discard().await;
            return Err(ArtifactError::Invalid(format!(
                "`{name}` is not a valid artifact name (1 to 255 letters, digits, `.`, `_`, `-`)"
            )));
        }
        let flushed = async {
            upload.file.flush().await?;
            upload.file.sync_all().await
        }
        .await;
        if let Err(err) = flushed {
            upload.discard().await;
            return Err(err.into());
        }
        let actual = hex_digest(upload.hasher.clone().finish());
        if upload.len != size || actual != sha256 {
            let why = format!(
                "announced {size} bytes with SHA-256 {sha256}, received {} bytes with SHA-256 {actual}",
                upload.len
            );
            upload.discard().await;
            return Err(ArtifactError::Mismatch(why));
        }
        let expire_in = if expire_in.is_zero() {
            self.config.default_expiry
        } else {
            expire_in
        };
        let now = now_ms();
        let entry = Entry {
            size,
            sha256: actual,
            created_at_ms: now,
            expires_at_ms: now.saturating_add(expire_in.as_millis() as u64),
        };
        let Upload { path, file, .. } = upload;
        drop(file);

        // Pending from before the blob is stored until it is referenced:
        // a sweep in between leaves it alone.
        {
            let _guard = self.lock.lock().await;
            *self.pending().entry(entry.sha256.clone()).or_default() += 1;
        }
        let result = self.store_and_reference(&path, job_id, name, &entry).await;
        {
            let mut pending = self.pending();
            if let Some(count) = pending.get_mut(&entry.sha256) {
                *count -= 1;
                if *count == 0 {
                    pending.remove(&entry.sha256);
                }
            }
        }
        if result.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
        }
        result?;
        self.metrics.uploads.inc();
        self.metrics.uploaded_bytes.inc_by(size);
        Ok(info(name, &entry))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.pending.lock().expect("artifact store pending blobs")
    }

    /// Moves the verified upload at `part` into the blobs, then records
    /// the artifact in the job's record.
    async fn store_and_reference(
        self: &Arc<Self>,
        part: &Path,
        job_id: u64,
        name: &str,
        entry: &Entry,
    ) -> Result<(), ArtifactError> {
        if self.blobs.put(&entry.sha256, part, entry.size).await? {
            self.metrics.stored_bytes.inc_by(entry.size as i64);
        }
        let _guard = self.lock.lock().await;
        let store = self.clone();
        let (name, entry) = (name.to_owned(), entry.clone());
        tokio::task::spawn_blocking(move || {
            let mut entries = store.read_job(job_id)?;
            entries.insert(name, entry);
            store.write_job(job_id, &entries)
        })
        .await
        .map_err(|e| ArtifactError::Io(io::Error::other(e)))??;
        Ok(())
    }

    fn read_job(&self, job_id: u64) -> io::Result<BTreeMap<String, Entry>> {
        match std::fs::read(self.job_path(job_id)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(io::Error::other),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(err) => Err(err),
        }
    }

    /// Replaces the job's record atomically (temporary file, fsync, rename).
    fn write_job(&self, job_id: u64, entries: &BTreeMap<String, Entry>) -> io::Result<()> {
        let path = self.job_path(job_id);
        if entries.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
                _ => Ok(()),
            };
        }
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(entries).map_err(io::Error::other)?;
        {
            let mut file = std::fs::File::create(&tmp)?;
            io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &path)
    }

    /// The job's artifacts, by name (expired ones left out).
    pub fn list(&self, job_id: u64) -> Result<Vec<ArtifactInfo>, ArtifactError> {
        let now = now_ms();
        Ok(self
            .read_job(job_id)?
            .iter()
            .filter(|(_, e)| e.expires_at_ms > now)
            .map(|(name, e)| info(name, e))
            .collect())
    }

    /// One artifact's record.
    pub fn find(&self, job_id: u64, name: &str) -> Result<ArtifactInfo, ArtifactError> {
        self.list(job_id)?
            .into_iter()
            .find(|a| a.name == name)
            .ok_or_else(|| ArtifactError::NotFound {
                job_id,
                name: name.to_owned(),
            })
    }

    /// Opens an artifact for reading from `offset` to its end.
    pub async fn open_at(
        &self,
        job_id: u64,
        name: &str,
        offset: u64,
    ) -> Result<(ArtifactInfo, BlobReader), ArtifactError> {
        let info = self.find(job_id, name)?;
        let reader = self.open_range(&info, offset, info.size).await?;
        if offset == 0 {
            self.metrics.downloads.inc();
        }
        Ok((info, reader))
    }

    async fn open_range(
        &self,
        info: &ArtifactInfo,
        offset: u64,
        end: u64,
    ) -> Result<BlobReader, ArtifactError> {
        if offset > info.size {
            return Err(ArtifactError::Invalid(format!(
                "offset {offset} is past the end of `{}` ({} bytes)",
                info.name, info.size
            )));
        }
        Ok(self.blobs.open(&info.sha256, offset..end).await?)
    }

    /// Up to `max_bytes` of an artifact from `offset`.
    pub async fn read_range(
        &self,
        job_id: u64,
        name: &str,
        offset: u64,
        max_bytes: usize,
    ) -> Result<(ArtifactInfo, Bytes), ArtifactError> {
        let info = self.find(job_id, name)?;
        let want = info.size.saturating_sub(offset).min(max_bytes as u64) as usize;
        let mut reader = self.open_range(&info, offset, offset + want as u64).await?;
        if offset == 0 {
            self.metrics.downloads.inc();
        }
        let mut buf = BytesMut::zeroed(want);
        reader.read_exact(&mut buf).await?;
        self.metrics.downloaded_bytes.inc_by(want as u64);
        Ok((info, buf.freeze()))
    }

    /// Removes expired artifacts, then every blob no job references.
    /// Returns (artifacts removed, blobs removed).
    pub async fn sweep(self: &Arc<Self>, now_ms: u64) -> io::Result<(usize, usize)> {
        let _guard = self.lock.lock().await;
        let store = self.clone();
        let (expired, referenced) = tokio::task::spawn_blocking(move || store.expire_records(now_ms))
            .await
            .map_err(io::Error::other)??;
        let mut removed = 0;
        for (sha256, size) in self.blobs.list().await? {
            if referenced.contains(&sha256) || self.pending().contains_key(&sha256) {
                continue;
            }
            self.blobs.delete(&sha256).await?;
            self.metrics.stored_bytes.dec_by(size as i64);
            removed += 1;
        }
        Ok((expired, removed))
    }

    /// Drops expired artifacts from the job records. Returns how many, and
    /// the SHA-256 of every artifact still recorded.
    fn expire_records(&self, now_ms: u64) -> io::Result<(usize, HashSet<String>)> {
        let mut expired = 0;
        let mut referenced = HashSet::new();
        for entry in std::fs::read_dir(self.root.join("jobs"))? {
            let path = entry?.path();
            let Some(job_id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let mut entries = self.read_job(job_id)?;
            let before = entries.len();
            entries.retain(|_, e| e.expires_at_ms > now_ms);
            if entries.len() != before {
                expired += before - entries.len();
                self.write_job(job_id, &entries)?;
            }
            referenced.extend(entries.into_values().map(|e| e.sha256));
        }
        Ok((expired, referenced))
    }

    /// Bytes held in blobs (each distinct content once).
    pub async fn stored_bytes(&self) -> io::Result<u64> {
        Ok(self.blobs.list().await?.iter().map(|(_, size)| size).sum())
    }
}

fn info(name: &str, e: &Entry) -> ArtifactInfo {
    ArtifactInfo {
        name: name.to_owned(),
        size: e.size,
        sha256: e.sha256.clone(),
        created_at_ms: e.created_at_ms,
        expires_at_ms: e.expires_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex_digest(ring::digest::digest(&SHA256, data))
    }

    async fn put(
        store: &Arc<ArtifactStore>,
        job: u64,
        name: &str,
        data: &[u8],
        expire: Duration,
    ) -> Result<ArtifactInfo, ArtifactError> {
        let mut upload = store.begin_upload().await.unwrap();
        for (i, chunk) in data.chunks(7).enumerate() {
            upload.write((i * 7) as u64, chunk).await?;
        }
        store
            .commit(upload, job, name, data.len() as u64, &sha(data), expire)
            .await
    }

    fn blob_count(root: &Path) -> usize {
        walk(&root.join("blobs"))
    }

    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 })
            .sum()
    }

    #[tokio::test]
    async fn identical_content_is_stored_once_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ArtifactStore::open(dir.path(), StoreConfig::default()).unwrap());
        let data = b"the same bytes in two jobs".repeat(100);
        put(&store, 1, "a.tar", &data, Duration::ZERO).await.unwrap();
        put(&store, 2, "b.tar", &data, Duration::ZERO).await.unwrap();
        assert_eq!(blob_count(dir.path()), 1);
        drop(store);

        let store = Arc::new(ArtifactStore::open(dir.path(), StoreConfig::default()).unwrap());
        let listed = store.list(2).unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].name, "b.tar");
        assert_eq!(listed[0].size, data.len() as u64);
        assert_eq!(listed[0].sha256, sha(&data));
        let (_, head) = store.read_range(1, "a.tar", 0, 10).await.unwrap();
        assert_eq!(&head[..], &data[..10]);
        let (_, tail) = store
            .read_range(1, "a.tar", data.len() as u64 - 3, 100)
            .await
            .unwrap();
        assert_eq!(&tail[..], &data[data.len() - 3..]);
    }

    #[tokio::test]
    async fn a_wrong_checksum_or_size_stores_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ArtifactStore::open(dir.path(), StoreConfig::default()).unwrap());
        let mut upload = store.begin_upload().await.unwrap();
        upload.write(0, b"hello").await.unwrap();
        let err = store
            .commit(upload, 1, "x", 5, &sha(b"hellO"), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(matches!(err, ArtifactError::Mismatch(_)), "{err}");
        assert!(store.list(1).unwrap().is_empty());
        assert_eq!(blob_count(dir.path()), 0);
        assert_eq!(walk(&dir.path().join("uploads")), 0);
    }

    #[tokio::test]
    async fn an_upload_over_the_limit_is_refused_with_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_artifact_bytes: 10,
            ..StoreConfig::default()
        };
        let store = Arc::new(ArtifactStore::open(dir.path(), config).unwrap());
        let err = put(&store, 1, "big", &[0u8; 11], Duration::ZERO)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("over the limit of 10 bytes"), "{err}");
    }

    #[tokio::test]
    async fn chunks_out_of_order_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ArtifactStore::open(dir.path(), StoreConfig::default()).unwrap());
        let mut upload = store.begin_upload().await.unwrap();
        upload.write(0, b"abc").await.unwrap();
        let err = upload.write(5, b"def").await.unwrap_err();
        assert!(err.to_string().contains("3 bytes were received"), "{err}");
    }

    #[tokio::test]
    async fn expired_artifacts_and_unreferenced_blobs_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(ArtifactStore::open(dir.path(), StoreConfig::default()).unwrap());
        put(&store, 1, "short", b"short-lived", Duration::from_millis(1))
            .await
            .unwrap();
        put(&store, 2, "long", b"kept", Duration::from_secs(3600))
            .await
            .unwrap();
        put(&store, 3, "shared", b"kept", Duration::from_millis(1))
            .await
            .unwrap();
        let (artifacts, blobs) = store.sweep(now_ms() + 1000).await.unwrap();
        assert_eq!((artifacts, blobs), (2, 1));
        assert!(store.list(1).unwrap().is_empty());
        assert_eq!(store.list(2).unwrap().len(), 1);
        let (_, data) = store.read_range(2, "long", 0, 100).await.unwrap();
        assert_eq!(&data[..], b"kept");
        assert_eq!(blob_count(dir.path()), 1);
    }

    #[test]
    fn names_are_plain_file_names() {
        assert!(valid_name("artifacts.tar"));
        for bad in ["", ".hidden", "a/b", "..", "a b", &"x".repeat(256)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
