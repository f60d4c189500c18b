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
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkyrie::message::ArtifactInfo;

use super::blob::{BlobReader, BlobStore, LocalBlobs};
use super::valid_name;
use crate::store::{ArtifactRow, Change, StoreHandle};

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

/// One artifact as the legacy `jobs/<id>.json` files recorded it (read
/// once, to move them into the store).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct LegacyEntry {
    size: u64,
    sha256: String,
    created_at_ms: u64,
    expires_at_ms: u64,
}

/// The artifact records, by (job id, name).
type Records = BTreeMap<(u64, String), ArtifactRow>;

/// The artifact store: records in the server's [`Store`](crate::store::Store)
/// (kept in memory as well, for reads), contents in a [`BlobStore`]. Cheap
/// to share behind an `Arc`.
#[derive(Debug)]
pub struct ArtifactStore {
    root: PathBuf,
    /// Every record, as committed to `durable`.
    records: Mutex<Records>,
    /// Where records are committed; `None` keeps them in memory only (tests).
    durable: Option<StoreHandle>,
    config: StoreConfig,
    blobs: Arc<dyn BlobStore>,
    /// Held while a sweep runs, and while a commit registers its blob as
    /// pending or references it, so a sweep never removes a blob that a
    /// commit is storing or is about to reference. Record changes are
    /// committed under it too, so the store and `records` change in the
    /// same order.
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

pub use crate::core::now_ms;

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
        valkyrie::private_fs::create_dir_all(&root.join("uploads"))?;
        for entry in std::fs::read_dir(root.join("uploads"))? {
            let _ = std::fs::remove_file(entry?.path());
        }
        metrics.stored_bytes.set(stored_bytes as i64);
        Ok(Self {
            root,
            records: Mutex::new(Records::new()),
            durable: None,
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

    /// Keeps the records in `store`, starting from `rows` (what it
    /// loaded). Without it, records live in memory only.
    pub fn with_records(mut self, store: StoreHandle, rows: Vec<ArtifactRow>) -> Self {
        self.records = Mutex::new(
            rows.into_iter()
                .map(|row| ((row.job_id, row.name.clone()), row))
                .collect(),
        );
        self.durable = Some(store);
        self
    }

    fn records(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().expect("artifact records")
    }

    /// Commits `changes` (none without a store), waiting until durable.
    async fn persist(&self, changes: Vec<Change>) -> Result<(), ArtifactError> {
        match &self.durable {
            Some(store) => store
                .commit(changes)
                .await
                .map_err(|e| ArtifactError::Io(io::Error::other(e))),
            None => Ok(()),
        }
    }

    /// Moves the records of earlier versions (`jobs/<id>.json` under the
    /// store's directory) into the store, once: each file is removed after
    /// its records are durable. A record the store already has wins.
    /// Returns how many records were moved.
    pub async fn import_legacy_records(&self) -> io::Result<usize> {
        let dir = self.root.join("jobs");
        let files = match std::fs::read_dir(&dir) {
            Ok(files) => files,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut rows = Vec::new();
        let mut done = Vec::new();
        for file in files {
            let path = file?.path();
            let Some(job_id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let entries: BTreeMap<String, LegacyEntry> = serde_json::from_slice(&std::fs::read(&path)?)
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} is not an artifact record: {e}", path.display()),
                    )
                })?;
            rows.extend(entries.into_iter().map(|(name, e)| ArtifactRow {
                job_id,
                name,
                size: e.size,
                sha256: e.sha256,
                created_at_ms: e.created_at_ms,
                expires_at_ms: e.expires_at_ms,
            }));
            done.push(path);
        }
        let _guard = self.lock.lock().await;
        let rows: Vec<ArtifactRow> = {
            let records = self.records();
            rows.into_iter()
                .filter(|r| !records.contains_key(&(r.job_id, r.name.clone())))
                .collect()
        };
        let moved = rows.len();
        self.persist(
            rows.iter()
                .cloned()
                .map(|r| Change::Artifact(Box::new(r)))
                .collect(),
        )
        .await
        .map_err(io::Error::other)?;
        self.records()
            .extend(rows.into_iter().map(|r| ((r.job_id, r.name.clone()), r)));
        for path in done {
            std::fs::remove_file(path)?;
        }
        let _ = std::fs::remove_dir(&dir);
        Ok(moved)
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
        let entry = ArtifactRow {
            job_id,
            name: name.to_owned(),
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
        let result = self.store_and_reference(&path, &entry).await;
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
        Ok(info(&entry))
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.pending.lock().expect("artifact store pending blobs")
    }

    /// Moves the verified upload at `part` into the blobs, then records
    /// the artifact (durably, then in memory).
    async fn store_and_reference(&self, part: &Path, entry: &ArtifactRow) -> Result<(), ArtifactError> {
        if self.blobs.put(&entry.sha256, part, entry.size).await? {
            self.metrics.stored_bytes.inc_by(entry.size as i64);
        }
        let _guard = self.lock.lock().await;
        self.persist(vec![Change::Artifact(Box::new(entry.clone()))])
            .await?;
        self.records()
            .insert((entry.job_id, entry.name.clone()), entry.clone());
        Ok(())
    }

    /// The job's artifacts, by name (expired ones left out).
    pub fn list(&self, job_id: u64) -> Result<Vec<ArtifactInfo>, ArtifactError> {
        let now = now_ms();
        Ok(self
            .records()
            .range((job_id, String::new())..)
            .take_while(|((job, _), _)| *job == job_id)
            .filter(|(_, e)| e.expires_at_ms > now)
            .map(|(_, e)| info(e))
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
    pub async fn sweep(&self, now_ms: u64) -> io::Result<(usize, usize)> {
        let _guard = self.lock.lock().await;
        let expired: Vec<(u64, String)> = self
            .records()
            .iter()
            .filter(|(_, e)| e.expires_at_ms <= now_ms)
            .map(|(key, _)| key.clone())
            .collect();
        self.persist(
            expired
                .iter()
                .map(|(job, name)| Change::DeleteArtifact(*job, name.clone()))
                .collect(),
        )
        .await
        .map_err(io::Error::other)?;
        let referenced: HashSet<String> = {
            let mut records = self.records();
            for key in &expired {
                records.remove(key);
            }
            records.values().map(|e| e.sha256.clone()).collect()
        };
        let mut removed = 0;
        for (sha256, size) in self.blobs.list().await? {
            if referenced.contains(&sha256) || self.pending().contains_key(&sha256) {
                continue;
            }
            self.blobs.delete(&sha256).await?;
            self.metrics.stored_bytes.dec_by(size as i64);
            removed += 1;
        }
        Ok((expired.len(), removed))
    }

    /// Bytes held in blobs (each distinct content once).
    pub async fn stored_bytes(&self) -> io::Result<u64> {
        Ok(self.blobs.list().await?.iter().map(|(_, size)| size).sum())
    }
}

fn info(e: &ArtifactRow) -> ArtifactInfo {
    ArtifactInfo {
        name: e.name.clone(),
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
        let (handle, loaded) = crate::store::embedded::open_handle(dir.path()).await;
        let store = Arc::new(
            ArtifactStore::open(dir.path(), StoreConfig::default())
                .unwrap()
                .with_records(handle, loaded.artifacts),
        );
        let data = b"the same bytes in two jobs".repeat(100);
        put(&store, 1, "a.tar", &data, Duration::ZERO).await.unwrap();
        put(&store, 2, "b.tar", &data, Duration::ZERO).await.unwrap();
        assert_eq!(blob_count(dir.path()), 1);
        drop(store);

        // The records come back from the store.
        let (handle, loaded) = crate::store::embedded::open_handle(dir.path()).await;
        assert_eq!(loaded.artifacts.len(), 2);
        let store = Arc::new(
            ArtifactStore::open(dir.path(), StoreConfig::default())
                .unwrap()
                .with_records(handle, loaded.artifacts),
        );
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
    async fn legacy_record_files_are_moved_into_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("artifacts");
        // As an earlier version left it: the blob, and jobs/<id>.json.
        let data = b"from an earlier version";
        let sha = sha(data);
        std::fs::create_dir_all(root.join("blobs").join(&sha[..2])).unwrap();
        std::fs::write(root.join("blobs").join(&sha[..2]).join(&sha), data).unwrap();
        std::fs::create_dir_all(root.join("jobs")).unwrap();
        let record = serde_json::json!({ "artifacts.tar": {
            "size": data.len(), "sha256": sha, "created_at_ms": 1, "expires_at_ms": u64::MAX,
        } });
        std::fs::write(root.join("jobs/9.json"), record.to_string()).unwrap();

        let (handle, loaded) = crate::store::embedded::open_handle(dir.path()).await;
        let store = ArtifactStore::open(&root, StoreConfig::default())
            .unwrap()
            .with_records(handle, loaded.artifacts);
        assert_eq!(store.import_legacy_records().await.unwrap(), 1);
        assert!(!root.join("jobs").exists());
        assert_eq!(store.import_legacy_records().await.unwrap(), 0);
        let (_, read) = store.read_range(9, "artifacts.tar", 0, 100).await.unwrap();
        assert_eq!(&read[..], data);
        drop(store);
        let (_, loaded) = crate::store::embedded::open_handle(dir.path()).await;
        assert_eq!(loaded.artifacts.len(), 1);
        assert_eq!(
            (loaded.artifacts[0].job_id, loaded.artifacts[0].sha256.as_str()),
            (9, sha.as_str())
        );
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
