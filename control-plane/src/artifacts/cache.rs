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
//! The index is a small JSON file (`cache-index.json` in the data
//! directory) replaced atomically on each change, so it survives a restart.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};
use valkyrie::message::{ArtifactInfo, CacheEntry};

use super::{ArtifactError, ArtifactStore};

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

/// One entry: the artifact that holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    path: PathBuf,
    store: Arc<ArtifactStore>,
    entries: Mutex<Index>,
    metrics: CacheMetrics,
}

impl CacheIndex {
    /// Opens the index kept in the file `path` (created on the first
    /// save), over the artifacts of `store`.
    pub fn open(
        path: impl Into<PathBuf>,
        store: Arc<ArtifactStore>,
        metrics: CacheMetrics,
    ) -> io::Result<Self> {
        let path = path.into();
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is not a cache index: {e}", path.display()),
                )
            })?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => Index::new(),
            Err(err) => return Err(err),
        };
        Ok(Self {
            path,
            store,
            entries: Mutex::new(entries),
            metrics,
        })
    }

    /// The entry to restore for `keys` in `project`: `keys[0]` exactly,
    /// else for each fallback key in order, that key exactly or the newest
    /// entry whose key starts with it. A `restore` lookup is counted as a
    /// hit, a fallback hit or a miss.
    pub fn lookup(&self, project: &str, keys: &[String], restore: bool) -> Result<CacheEntry, ArtifactError> {
        let mut entries = self.entries.lock().expect("cache index");
        let mut pruned = false;
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
                        pruned = true;
                    }
                    Err(err) => return Err(err),
                }
            }
            if found.is_some() {
                break;
            }
        }
        if pruned {
            if let Err(err) = self.persist(&entries) {
                tracing::warn!(%err, "cannot write the cache index");
            }
        }
        drop(entries);
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
        let entries = self.entries.lock().expect("cache index");
        entries.get(project).is_some_and(|s| s.contains_key(key))
    }

    /// Records artifact `info` of job `job_id` as the entry of `key` in
    /// `project`, unless that key has one already (entries are never
    /// replaced). Returns whether it was recorded.
    pub fn record(&self, project: &str, key: &str, job_id: u64, info: &ArtifactInfo) -> io::Result<bool> {
        let mut entries = self.entries.lock().expect("cache index");
        let scope = entries.entry(project.to_owned()).or_default();
        if scope.contains_key(key) {
            return Ok(false);
        }
        scope.insert(
            key.to_owned(),
            Entry {
                job_id,
                name: info.name.clone(),
                size: info.size,
                sha256: info.sha256.clone(),
                created_at_ms: info.created_at_ms,
            },
        );
        while scope.len() > MAX_ENTRIES_PER_PROJECT {
            let oldest = scope
                .iter()
                .min_by_key(|(_, e)| e.created_at_ms)
                .map(|(k, _)| k.clone())
                .expect("not empty");
            scope.remove(&oldest);
        }
        self.persist(&entries)?;
        Ok(true)
    }

    /// Replaces the file atomically (temporary file, fsync, rename).
    fn persist(&self, entries: &Index) -> io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec(entries).map_err(io::Error::other)?;
        {
            let mut file = std::fs::File::create(&tmp)?;
            io::Write::write_all(&mut file, &bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
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
        let store = Arc::new(ArtifactStore::open(dir.path().join("a"), StoreConfig::default()).unwrap());
        let metrics = CacheMetrics::default();
        let index = CacheIndex::open(dir.path().join("i.json"), store.clone(), metrics.clone()).unwrap();
        let first = put(&store, 1, "cargo-aaa", b"one").await;
        assert!(index.record("web", "cargo-aaa", 1, &first).unwrap());
        let second = put(&store, 2, "cargo-aaa", b"two").await;
        assert!(
            !index.record("web", "cargo-aaa", 2, &second).unwrap(),
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

        // Reopened: the entries are still there.
        drop(index);
        let index =
            CacheIndex::open(dir.path().join("i.json"), store.clone(), CacheMetrics::default()).unwrap();
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
}
