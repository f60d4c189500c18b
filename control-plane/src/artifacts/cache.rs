//! The cache index: which artifact holds the `cache:` entry of a key, per
//! project.
//!
//! A job saves a cache by uploading it as one of its own artifacts, named
//! `cache.<key>.tar` ([`valkyrie::message::cache::artifact_name`]), through
//! the artifact store's ordinary API; once the store has it, the index
//! records `(project, key) → (job, name, size, sha256)`. The blob store
//! never learns about caches: an entry lives as long as its artifact
//! (the store's default expiry), and an entry whose artifact is gone is
//! dropped at the next lookup. Entries are immutable: a key once saved is
//! never replaced (as GitHub's actions/cache); save under a new key.
//!
//! The entries are kept in the server's store ([`CacheRow`], committed
//! before a save is acknowledged), so every server of a group shares them
//! and they survive a restart; reads are served from memory. Earlier
//! versions kept them in `cache-index.json` in the data directory:
//! [`CacheIndex::import_legacy`] moves that file's entries into the store
//! once.

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};
use serde::Deserialize;
use valkyrie::message::{ArtifactInfo, CacheEntry};

use super::{ArtifactError, ArtifactStore};
use crate::store::{CacheRow, Change, StoreHandle};

/// Entries kept per project; the oldest go first beyond it.
pub const MAX_ENTRIES_PER_PROJECT: usize = 1000;

/// Cache lookups counted on `/metrics`: `valkyrie_cache_hit_lookups_total`,
/// `valkyrie_cache_fallback_hit_lookups_total` and
/// `valkyrie_cache_miss_lookups_total` (the hit ratio is
/// `(hit + fallback_hit) / (hit + fallback_hit + miss)`). Clones share
/// their values.
#[derive(Clone, Debug, Default)]
pub struct CacheMetrics {
    /// Restores of the exact key.
    pub hits: Counter<u64, AtomicU64>,
    /// Restores of a fallback key.
    pub fallback_hits: Counter<u64, AtomicU64>,
    /// Lookups that found nothing to restore.
    pub misses: Counter<u64, AtomicU64>,
}

impl CacheMetrics {
    /// Registers them under `registry` (the `valkyrie` prefix).
    pub fn register(&self, registry: &mut Registry) {
        let lookups = || Unit::Other("lookups".into());
        registry.register_with_unit(
            "cache_hit",
            "Cache lookups that restored the exact key",
            lookups(),
            self.hits.clone(),
        );
        registry.register_with_unit(
            "cache_fallback_hit",
            "Cache lookups that restored a fallback key",
            lookups(),
            self.fallback_hits.clone(),
        );
        registry.register_with_unit(
            "cache_miss",
            "Cache lookups that found nothing to restore",
            lookups(),
            self.misses.clone(),
        );
    }
}

/// One entry: the artifact that holds it (also the legacy file's form).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
struct Entry {
    job_id: u64,
    name: String,
    size: u64,
    sha256: String,
    created_at_ms: u64,
}

type Index = BTreeMap<String, BTreeMap<String, Entry>>;

/// The cache index. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct CacheIndex {
    store: Arc<ArtifactStore>,
    entries: Mutex<Index>,
    /// Where entries are committed; `None` keeps them in memory only (tests).
    durable: Option<StoreHandle>,
    metrics: CacheMetrics,
}

/// Whether a save recorded its entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// The entry is the saved artifact.
    Saved,
    /// Another job had saved that key first; it stays (entries are immutable).
    Exists,
}

impl CacheIndex {
    /// An empty index in memory only, over the artifacts of `store`.
    pub fn new(store: Arc<ArtifactStore>, metrics: CacheMetrics) -> Self {
        Self {
            store,
            entries: Mutex::new(Index::new()),
            durable: None,
            metrics,
        }
    }

    /// Keeps the entries in `durable`, starting from `rows` (what it loaded).
    pub fn with_entries(mut self, durable: StoreHandle, rows: Vec<CacheRow>) -> Self {
        let mut index = Index::new();
        for row in rows {
            index.entry(row.project).or_default().insert(
                row.key,
                Entry {
                    job_id: row.job_id,
                    name: row.name,
                    size: row.size,
                    sha256: row.sha256,
                    created_at_ms: row.created_at_ms,
                },
            );
        }
        self.entries = Mutex::new(index);
        self.durable = Some(durable);
        self
    }

    /// Moves the entries of the file `path` (the `cache-index.json` of
    /// earlier versions) into the store, then removes the file. An entry
    /// the store already has wins. Returns how many were moved.
    pub async fn import_legacy(&self, path: &Path) -> io::Result<usize> {
        let legacy: Index = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a cache index: {e}", path.display()),
                )
            })?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(err) => return Err(err),
        };
        let mut changes = Vec::new();
        {
            let mut entries = self.entries();
            for (project, scope) in legacy {
                let mine = entries.entry(project.clone()).or_default();
                for (key, entry) in scope {
                    if mine.contains_key(&key) {
                        continue;
                    }
                    changes.push(Change::CacheEntry(Box::new(row(&project, &key, &entry))));
                    mine.insert(key, entry);
                }
            }
        }
        let moved = changes.len();
        self.persist(changes).await?;
        std::fs::remove_file(path)?;
        Ok(moved)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Index> {
        self.entries.lock().expect("cache index")
    }

    /// Commits `changes`, waiting until they are durable.
    async fn persist(&self, changes: Vec<Change>) -> io::Result<()> {
        match &self.durable {
            Some(store) => store.commit(changes).await.map_err(io::Error::other),
            None => Ok(()),
        }
    }

    /// The entry to restore for `keys` in `project`: `keys[0]` exactly,
    /// else for each fallback key in order, that key exactly or the newest
    /// entry whose key starts with it. A `restore` lookup is counted as a
    /// hit, a fallback hit or a miss.
    pub fn lookup(&self, project: &str, keys: &[String], restore: bool) -> Result<CacheEntry, ArtifactError> {
        let mut entries = self.entries();
        let mut pruned = Vec::new();
        let mut found = None;
        for (i, wanted) in keys.iter().enumerate() {
            while let Some(scope) = entries.get(project) {
                let candidate = match scope.get(wanted) {
                    Some(entry) => Some((wanted.clone(), entry.clone())),
                    None if i > 0 => scope
                        .iter()
                        .filter(|(key, _)| key.starts_with(wanted.as_str()))
                        .max_by_key(|(_, e)| e.created_at_ms)
                        .map(|(k, e)| (k.clone(), e.clone())),
                    None => None,
                };
                let Some((key, entry)) = candidate else { break };
                match self.store.find(entry.job_id, &entry.name) {
                    Ok(info) if info.sha256 == entry.sha256 => {
                        found = Some((i == 0, key, entry));
                        break;
                    }
                    Ok(_) | Err(ArtifactError::NotFound { .. }) => {
                        // Expired or replaced: forget it and look again.
                        if let Some(scope) = entries.get_mut(project) {
                            scope.remove(&key);
                        }
                        pruned.push(Change::DeleteCacheEntry(project.to_owned(), key));
                    }
                    Err(err) => return Err(err),
                }
            }
            if found.is_some() {
                break;
            }
        }
        drop(entries);
        if let (false, Some(store)) = (pruned.is_empty(), &self.durable) {
            // Not waited for: forgetting an entry whose artifact is gone
            // again after a crash is harmless.
            store.submit_unwaited(pruned);
        }
        if restore {
            match &found {
                Some((true, ..)) => self.metrics.hits.inc(),
                Some((false, ..)) => self.metrics.fallback_hits.inc(),
                None => self.metrics.misses.inc(),
            };
        }
        Ok(match found {
            Some((exact, key, e)) => CacheEntry {
                key,
                exact,
                job_id: e.job_id,
                name: e.name,
                size: e.size,
                sha256: e.sha256,
            },
            None => miss(),
        })
    }

    /// Whether `project` has an entry of exactly `key`.
    pub fn contains(&self, project: &str, key: &str) -> bool {
        self.entries().get(project).is_some_and(|s| s.contains_key(key))
    }

    /// Records artifact `info` of job `job_id` as the entry of `key` in
    /// `project`, unless that key has one already (entries are never
    /// replaced: the first save wins), and waits until it is durable.
    /// Beyond [`MAX_ENTRIES_PER_PROJECT`] the project's oldest go.
    pub async fn record(
        &self,
        project: &str,
        key: &str,
        job_id: u64,
        info: &ArtifactInfo,
    ) -> io::Result<Recorded> {
        let entry = Entry {
            job_id,
            name: info.name.clone(),
            size: info.size,
            sha256: info.sha256.clone(),
            created_at_ms: info.created_at_ms,
        };
        let mut changes = vec![Change::CacheEntry(Box::new(row(project, key, &entry)))];
        {
            let mut entries = self.entries();
            let scope = entries.entry(project.to_owned()).or_default();
            if scope.contains_key(key) {
                return Ok(Recorded::Exists);
            }
            scope.insert(key.to_owned(), entry);
            while scope.len() > MAX_ENTRIES_PER_PROJECT {
                let oldest = scope
                    .iter()
                    .min_by_key(|(_, e)| e.created_at_ms)
                    .map(|(k, _)| k.clone())
                    .expect("not empty");
                scope.remove(&oldest);
                changes.push(Change::DeleteCacheEntry(project.to_owned(), oldest));
            }
        }
        self.persist(changes).await?;
        Ok(Recorded::Saved)
    }
}

/// The stored form of an entry.
fn row(project: &str, key: &str, e: &Entry) -> CacheRow {
    CacheRow {
        project: project.to_owned(),
        key: key.to_owned(),
        job_id: e.job_id,
        name: e.name.clone(),
        size: e.size,
        sha256: e.sha256.clone(),
        created_at_ms: e.created_at_ms,
    }
}

/// The answer to a lookup that found nothing (empty key).
pub(crate) fn miss() -> CacheEntry {
    CacheEntry {
        key: String::new(),
        exact: false,
        job_id: 0,
        name: String::new(),
        size: 0,
        sha256: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::StoreConfig;
    use std::time::Duration;

    async fn put(store: &Arc<ArtifactStore>, job: u64, key: &str, data: &[u8]) -> ArtifactInfo {
        let mut upload = store.begin_upload().await.unwrap();
        upload.write(0, data).await.unwrap();
        let sha = hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref());
        let name = valkyrie::message::cache::artifact_name(key);
        store
            .commit(upload, job, &name, data.len() as u64, &sha, Duration::ZERO)
            .await
            .unwrap()
    }

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn exact_then_fallback_prefix_per_project_and_immutable() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, loaded) = crate::store::embedded::open_handle(dir.path()).await;
        let store = Arc::new(
            ArtifactStore::open(dir.path().join("a"), StoreConfig::default())
                .unwrap()
                .with_records(handle.clone(), loaded.artifacts),
        );
        let metrics = CacheMetrics::default();
        let index =
            CacheIndex::new(store.clone(), metrics.clone()).with_entries(handle, loaded.cache_entries);
        let first = put(&store, 1, "cargo-aaa", b"one").await;
        assert_eq!(
            index.record("web", "cargo-aaa", 1, &first).await.unwrap(),
            Recorded::Saved
        );
        let second = put(&store, 2, "cargo-aaa", b"two").await;
        assert_eq!(
            index.record("web", "cargo-aaa", 2, &second).await.unwrap(),
            Recorded::Exists,
            "never replaced"
        );

        let hit = index.lookup("web", &keys(&["cargo-aaa"]), true).unwrap();
        assert_eq!((hit.exact, hit.job_id, hit.key.as_str()), (true, 1, "cargo-aaa"));
        let fallback = index
            .lookup("web", &keys(&["cargo-bbb", "cargo-"]), true)
            .unwrap();
        assert_eq!((fallback.exact, fallback.key.as_str()), (false, "cargo-aaa"));
        let other_project = index
            .lookup("api", &keys(&["cargo-aaa", "cargo-"]), true)
            .unwrap();
        assert!(other_project.key.is_empty());
        let not_counted = index.lookup("api", &keys(&["x"]), false).unwrap();
        assert!(not_counted.key.is_empty());
        assert_eq!(
            (
                metrics.hits.get(),
                metrics.fallback_hits.get(),
                metrics.misses.get()
            ),
            (1, 1, 1)
        );

        // Reopened from the store: the entries and artifacts are still there.
        drop((index, store));
        let dir2 = dir.path().to_owned();
        // The store worker ends once every handle is gone; its lock goes with it.
        let (handle, loaded) = crate::store::embedded::open_handle(&dir2).await;
        assert_eq!(loaded.cache_entries.len(), 1);
        let store = Arc::new(
            ArtifactStore::open(dir.path().join("a"), StoreConfig::default())
                .unwrap()
                .with_records(handle.clone(), loaded.artifacts),
        );
        let index = CacheIndex::new(store.clone(), CacheMetrics::default())
            .with_entries(handle, loaded.cache_entries);
        assert!(index.contains("web", "cargo-aaa"));
        // An entry whose artifact expired is dropped.
        store
            .sweep(crate::artifacts::now_ms() + 365 * 24 * 3600 * 1000)
            .await
            .unwrap();
        assert!(index
            .lookup("web", &keys(&["cargo-aaa"]), true)
            .unwrap()
            .key
            .is_empty());
        assert!(!index.contains("web", "cargo-aaa"));
    }

    #[tokio::test]
    async fn a_legacy_index_file_is_moved_into_the_store_once() {
        let dir = tempfile::tempdir().unwrap();
        let (handle, loaded) = crate::store::embedded::open_handle(dir.path()).await;
        let store = Arc::new(
            ArtifactStore::open(dir.path().join("a"), StoreConfig::default())
                .unwrap()
                .with_records(handle.clone(), loaded.artifacts),
        );
        let info = put(&store, 3, "k1", b"legacy").await;
        let file = dir.path().join("cache-index.json");
        let legacy = serde_json::json!({ "web": { "k1": {
            "job_id": 3, "name": info.name, "size": info.size,
            "sha256": info.sha256, "created_at_ms": info.created_at_ms,
        } } });
        std::fs::write(&file, legacy.to_string()).unwrap();
        let index = CacheIndex::new(store.clone(), CacheMetrics::default()).with_entries(handle, Vec::new());
        assert_eq!(index.import_legacy(&file).await.unwrap(), 1);
        assert!(!file.exists(), "the file is gone once its entries are stored");
        assert_eq!(index.import_legacy(&file).await.unwrap(), 0);
        let hit = index.lookup("web", &keys(&["k1"]), true).unwrap();
        assert_eq!((hit.job_id, hit.exact), (3, true));
    }
}
