//! The embedded store: one redb file, `valkyrie.redb` (mode 0600), in the
//! data directory. Nothing to install. redb holds an exclusive lock on the file,
//! so a second server on the same directory is refused; every commit is one
//! redb write transaction.

use std::path::{Path, PathBuf};

use foldhash::{HashMap, HashSet};
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};
use valkyrie::message::{JobSpec, OutputStream};

use crate::job::{is_spec_placeholder, without_specs};

use super::{Change, Counters, Durability, Loaded, LogRow, Store, StoreError};

/// Job id → the job's record, without its spec (or with it, as written
/// before specs had a table of their own).
const JOBS: TableDefinition<u64, &[u8]> = TableDefinition::new("jobs");
/// Job id → the job's spec: written once, when the job is first stored,
/// while its record is rewritten at each change of the job.
const JOB_SPECS: TableDefinition<u64, &[u8]> = TableDefinition::new("job_specs");
const RUNS: TableDefinition<u64, &[u8]> = TableDefinition::new("runs");
const PIPELINES: TableDefinition<u64, &[u8]> = TableDefinition::new("pipelines");
const RUNNERS: TableDefinition<u64, &[u8]> = TableDefinition::new("runners");
/// (job, seq) → stream byte followed by the data.
const LOGS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// Project name → project.
const PROJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("projects");
/// Delivery sequence number → delivery.
const DELIVERIES: TableDefinition<u64, &[u8]> = TableDefinition::new("deliveries");
/// (job id, artifact name) → artifact record.
const ARTIFACTS: TableDefinition<(u64, &str), &[u8]> = TableDefinition::new("artifacts");
/// (project, key) → cache entry.
const CACHE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("cache");

/// The redb-backed store.
pub struct EmbeddedStore {
    db: Database,
    path: PathBuf,
    durability: Durability,
    /// The jobs whose spec is in [`JOB_SPECS`].
    specs: HashSet<u64>,
}

impl EmbeddedStore {
    /// The store file inside a data directory.
    pub fn file_in(data_dir: &Path) -> PathBuf {
        data_dir.join("valkyrie.redb")
    }

    /// Opens (or creates) the store in `data_dir`.
    pub fn open(data_dir: &Path, durability: Durability) -> Result<Self, StoreError> {
        let path = Self::file_in(data_dir);
        // Private to the server's user, whatever the umask; an older,
        // wider file is narrowed.
        valkyrie::private_fs::ensure_private_file(&path).map_err(|e| StoreError::Io {
            what: format!("cannot open {}", path.display()),
            detail: e.to_string(),
        })?;
        let db = Database::create(&path).map_err(|err| match err {
            DatabaseError::DatabaseAlreadyOpen => StoreError::Locked { path: path.clone() },
            DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => StoreError::Corrupt {
                path: path.clone(),
                detail,
            },
            DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::Io {
                what: format!("cannot open {}", path.display()),
                detail: io.to_string(),
            },
            other => StoreError::Corrupt {
                path: path.clone(),
                detail: other.to_string(),
            },
        })?;
        let mut store = Self {
            db,
            path,
            durability,
            specs: HashSet::default(),
        };
        // Create the tables so that reads of a fresh store find them.
        store.commit(&[])?;
        Ok(store)
    }

    fn io(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        let detail = err.to_string();
        if detail.contains("orrupt") {
            return StoreError::Corrupt {
                path: self.path.clone(),
                detail,
            };
        }
        StoreError::Io {
            what: format!("{what} {}", self.path.display()),
            detail,
        }
    }
}

/// `value`'s stored form, written into `buf` (one buffer serves a whole
/// commit's rows).
fn encode<'b, T: serde::Serialize>(buf: &'b mut Vec<u8>, value: &T) -> &'b [u8] {
    buf.clear();
    serde_json::to_writer(&mut *buf, value).expect("store rows serialize");
    buf
}

fn decode<T: serde::de::DeserializeOwned>(
    kind: &'static str,
    id: impl ToString,
    bytes: &[u8],
) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode {
        kind,
        id: id.to_string(),
        detail: e.to_string(),
    })
}

fn stream_byte(stream: OutputStream) -> u8 {
    stream as u8
}

fn stream_of(byte: u8) -> OutputStream {
    match byte {
        0 => OutputStream::Stdout,
        1 => OutputStream::Stderr,
        _ => OutputStream::System,
    }
}

impl Store for EmbeddedStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.io("cannot read", e))?;
        let mut loaded = Loaded::default();
        macro_rules! rows {
            ($table:expr, $kind:literal, $out:expr) => {{
                let table = txn
                    .open_table($table)
                    .map_err(|e| self.io("cannot read", e))?;
                for entry in table.iter().map_err(|e| self.io("cannot read", e))? {
                    let (key, value) = entry.map_err(|e| self.io("cannot read", e))?;
                    $out.push(decode($kind, key.value(), value.value())?);
                }
            }};
        }
        rows!(JOBS, "job", loaded.jobs);
        let mut specs: HashMap<u64, JobSpec> = HashMap::default();
        {
            let table = txn.open_table(JOB_SPECS).map_err(|e| self.io("cannot read", e))?;
            for entry in table.iter().map_err(|e| self.io("cannot read", e))? {
                let (key, value) = entry.map_err(|e| self.io("cannot read", e))?;
                specs.insert(key.value(), decode("job spec", key.value(), value.value())?);
            }
        }
        self.specs = specs.keys().copied().collect();
        for job in &mut loaded.jobs {
            match specs.remove(&job.id.0) {
                Some(spec) => job.spec = spec.into(),
                None if is_spec_placeholder(&job.spec) => {
                    return Err(StoreError::Decode {
                        kind: "job",
                        id: job.id.0.to_string(),
                        detail: "its spec is missing".into(),
                    })
                }
                // Written whole, before specs were kept apart.
                None => {}
            }
        }
        rows!(RUNS, "run", loaded.runs);
        rows!(PIPELINES, "pipeline", loaded.pipelines);
        rows!(RUNNERS, "runner", loaded.runners);
        rows!(AUDIT, "audit", loaded.audit);
        rows!(PROJECTS, "project", loaded.projects);
        rows!(DELIVERIES, "delivery", loaded.deliveries);
        let artifacts = txn.open_table(ARTIFACTS).map_err(|e| self.io("cannot read", e))?;
        for entry in artifacts.iter().map_err(|e| self.io("cannot read", e))? {
            let (key, value) = entry.map_err(|e| self.io("cannot read", e))?;
            let (job, name) = key.value();
            loaded
                .artifacts
                .push(decode("artifact", format!("{job}/{name}"), value.value())?);
        }
        let cache = txn.open_table(CACHE).map_err(|e| self.io("cannot read", e))?;
        for entry in cache.iter().map_err(|e| self.io("cannot read", e))? {
            let (key, value) = entry.map_err(|e| self.io("cannot read", e))?;
            let (project, key) = key.value();
            loaded
                .cache_entries
                .push(decode("cache entry", format!("{project}/{key}"), value.value())?);
        }
        let logs = txn.open_table(LOGS).map_err(|e| self.io("cannot read", e))?;
        for entry in logs.iter().map_err(|e| self.io("cannot read", e))? {
            let (key, value) = entry.map_err(|e| self.io("cannot read", e))?;
            let (job, seq) = key.value();
            let bytes = value.value();
            let (stream, data) = bytes.split_first().unwrap_or((&2, &[]));
            loaded.logs.push(LogRow {
                job,
                seq,
                stream: stream_of(*stream),
                data: data.to_vec(),
            });
        }
        let meta = txn.open_table(META).map_err(|e| self.io("cannot read", e))?;
        if let Some(counters) = meta.get("counters").map_err(|e| self.io("cannot read", e))? {
            loaded.counters = decode::<Counters>("meta", "counters", counters.value())?;
        }
        if let Some(check) = meta.get("key_check").map_err(|e| self.io("cannot read", e))? {
            loaded.key_check = Some(decode::<String>("meta", "key_check", check.value())?);
        }
        Ok(loaded)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        let mut added_specs = Vec::new();
        let mut removed_specs = Vec::new();
        let mut txn = self.db.begin_write().map_err(|e| self.io("cannot write", e))?;
        txn.set_durability(match self.durability {
            Durability::Fsync => redb::Durability::Immediate,
            Durability::None => redb::Durability::Eventual,
        });
        {
            let w = |e| self.io("cannot write", e);
            let mut jobs = txn.open_table(JOBS).map_err(w)?;
            let mut job_specs = txn.open_table(JOB_SPECS).map_err(w)?;
            let mut runs = txn.open_table(RUNS).map_err(w)?;
            let mut pipelines = txn.open_table(PIPELINES).map_err(w)?;
            let mut runners = txn.open_table(RUNNERS).map_err(w)?;
            let mut logs = txn.open_table(LOGS).map_err(w)?;
            let mut meta = txn.open_table(META).map_err(w)?;
            let mut audit = txn.open_table(AUDIT).map_err(w)?;
            let mut projects = txn.open_table(PROJECTS).map_err(w)?;
            let mut deliveries = txn.open_table(DELIVERIES).map_err(w)?;
            let mut artifacts = txn.open_table(ARTIFACTS).map_err(w)?;
            let mut cache = txn.open_table(CACHE).map_err(w)?;
            let w = |e: redb::StorageError| self.io("cannot write", e);
            let mut buf = Vec::with_capacity(1024);
            for change in changes {
                match change {
                    Change::Job(job) => {
                        let id = job.id.0;
                        if !self.specs.contains(&id) {
                            job_specs
                                .insert(id, encode(&mut buf, job.spec.as_ref()))
                                .map_err(w)?;
                            added_specs.push(id);
                        }
                        jobs.insert(id, without_specs(|| encode(&mut buf, job.as_ref())))
                            .map_err(w)?;
                    }
                    Change::DeleteJob(id) => {
                        jobs.remove(id).map_err(w)?;
                        job_specs.remove(id).map_err(w)?;
                        removed_specs.push(*id);
                        logs.extract_from_if((*id, 0)..=(*id, u64::MAX), |_, _| true)
                            .map_err(w)?
                            .for_each(drop);
                    }
                    Change::Run(run) => {
                        runs.insert(run.id, encode(&mut buf, run.as_ref())).map_err(w)?;
                    }
                    Change::Pipeline(def) => {
                        pipelines
                            .insert(def.id, encode(&mut buf, def.as_ref()))
                            .map_err(w)?;
                    }
                    Change::Runner(runner) => {
                        runners
                            .insert(runner.id, encode(&mut buf, runner.as_ref()))
                            .map_err(w)?;
                    }
                    Change::DeleteRunner(id) => {
                        runners.remove(id).map_err(w)?;
                    }
                    Change::Log(log) => {
                        buf.clear();
                        buf.push(stream_byte(log.stream));
                        buf.extend_from_slice(&log.data);
                        logs.insert((log.job, log.seq), buf.as_slice()).map_err(w)?;
                    }
                    Change::Counters(counters) => {
                        meta.insert("counters", encode(&mut buf, counters)).map_err(w)?;
                    }
                    Change::Audit(record) => {
                        audit
                            .insert(record.id, encode(&mut buf, record.as_ref()))
                            .map_err(w)?;
                    }
                    Change::DeleteAudit(id) => {
                        audit.remove(id).map_err(w)?;
                    }
                    Change::KeyCheck(check) => {
                        meta.insert("key_check", encode(&mut buf, check)).map_err(w)?;
                    }
                    Change::Project(project) => {
                        projects
                            .insert(project.name.as_str(), encode(&mut buf, project.as_ref()))
                            .map_err(w)?;
                    }
                    Change::DeleteProject(name) => {
                        projects.remove(name.as_str()).map_err(w)?;
                    }
                    Change::Delivery(row) => {
                        deliveries
                            .insert(row.seq, encode(&mut buf, row.as_ref()))
                            .map_err(w)?;
                    }
                    Change::DeleteDelivery(seq) => {
                        deliveries.remove(seq).map_err(w)?;
                    }
                    Change::Artifact(row) => {
                        artifacts
                            .insert((row.job_id, row.name.as_str()), encode(&mut buf, row.as_ref()))
                            .map_err(w)?;
                    }
                    Change::DeleteArtifact(job, name) => {
                        artifacts.remove((*job, name.as_str())).map_err(w)?;
                    }
                    Change::CacheEntry(row) => {
                        cache
                            .insert(
                                (row.project.as_str(), row.key.as_str()),
                                encode(&mut buf, row.as_ref()),
                            )
                            .map_err(w)?;
                    }
                    Change::DeleteCacheEntry(project, key) => {
                        cache.remove((project.as_str(), key.as_str())).map_err(w)?;
                    }
                }
            }
        }
        txn.commit().map_err(|e| self.io("cannot commit to", e))?;
        self.specs.extend(added_specs);
        for id in removed_specs {
            self.specs.remove(&id);
        }
        Ok(())
    }
}

/// For tests beside the store: a store handle over an embedded store in
/// `dir` and what it loaded, retried (within 10 s) while the worker of an
/// earlier handle on `dir` still holds its lock.
#[cfg(test)]
pub(crate) async fn open_handle(dir: &Path) -> (super::StoreHandle, super::Loaded) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match EmbeddedStore::open(dir, Durability::None) {
            Ok(mut store) => {
                let loaded = store.load().unwrap();
                return (
                    super::StoreHandle::spawn(Box::new(store), Default::default()),
                    loaded,
                );
            }
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(err) => panic!("{err}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::JobRecord;
    use crate::scheduler::JobId;
    use valkyrie::message::JobSpec;

    #[test]
    fn what_is_committed_is_loaded_back() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
            let job = JobRecord::new(JobId(7), JobSpec::shell("j", "echo hi"), 1);
            let log = LogRow {
                job: 7,
                seq: 0,
                stream: OutputStream::Stderr,
                data: b"hi\n".to_vec(),
            };
            let counters = Counters {
                next_job: 8,
                next_run: 1,
                next_pipeline: 1,
                next_runner: 2,
                next_audit: 1,
            };
            store
                .commit(&[
                    Change::Job(Box::new(job)),
                    Change::Log(log),
                    Change::Counters(counters),
                ])
                .unwrap();
        }
        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.jobs.len(), 1);
        assert_eq!(loaded.jobs[0].id, JobId(7));
        assert_eq!(loaded.jobs[0].spec.name, "j");
        assert_eq!(loaded.logs[0].data, b"hi\n");
        assert_eq!(loaded.logs[0].stream, OutputStream::Stderr);
        assert_eq!(loaded.counters.next_job, 8);
        store.commit(&[Change::DeleteJob(7)]).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded.jobs.is_empty() && loaded.logs.is_empty());
    }

    #[test]
    fn artifact_records_and_cache_entries_are_loaded_back_and_deleted() {
        use crate::store::{ArtifactRow, CacheRow};
        let dir = tempfile::tempdir().unwrap();
        let artifact = |job_id, name: &str| ArtifactRow {
            job_id,
            name: name.into(),
            size: 3,
            sha256: "ab".repeat(32),
            created_at_ms: 1,
            expires_at_ms: 2,
        };
        let entry = CacheRow {
            project: "web".into(),
            key: "cargo-1".into(),
            job_id: 4,
            name: "cache.cargo-1.tar".into(),
            size: 3,
            sha256: "ab".repeat(32),
            created_at_ms: 1,
        };
        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        store
            .commit(&[
                Change::Artifact(Box::new(artifact(4, "b"))),
                Change::Artifact(Box::new(artifact(4, "a"))),
                Change::Artifact(Box::new(artifact(12, "a"))),
                Change::CacheEntry(Box::new(entry.clone())),
            ])
            .unwrap();
        let loaded = store.load().unwrap();
        let keys: Vec<(u64, &str)> = loaded
            .artifacts
            .iter()
            .map(|a| (a.job_id, a.name.as_str()))
            .collect();
        assert_eq!(keys, [(4, "a"), (4, "b"), (12, "a")]);
        assert_eq!(loaded.cache_entries, [entry]);
        store
            .commit(&[
                Change::DeleteArtifact(4, "a".into()),
                Change::DeleteCacheEntry("web".into(), "cargo-1".into()),
            ])
            .unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.artifacts.len(), 2);
        assert!(loaded.cache_entries.is_empty());
    }

    #[test]
    fn a_second_store_on_the_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        let err = EmbeddedStore::open(dir.path(), Durability::Fsync)
            .err()
            .expect("locked");
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("valkyrie.redb is in use by another valkyrie-server"),
            "{err}"
        );
    }

    /// The raw rows of a table keyed by job id.
    fn raw_rows(store: &EmbeddedStore, table: TableDefinition<u64, &[u8]>) -> Vec<(u64, serde_json::Value)> {
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(table).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| {
                let (key, value) = entry.unwrap();
                (key.value(), serde_json::from_slice(value.value()).unwrap())
            })
            .collect()
    }

    #[test]
    fn a_jobs_spec_is_written_once_and_its_record_without_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        let mut job = JobRecord::new(JobId(7), JobSpec::shell("j", "echo hi"), 1);
        store.commit(&[Change::Job(Box::new(job.clone()))]).unwrap();
        job.attempt = 1;
        store.commit(&[Change::Job(Box::new(job.clone()))]).unwrap();
        let specs = raw_rows(&store, JOB_SPECS);
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].1["name"], "j");
        let records = raw_rows(&store, JOBS);
        assert_eq!(records[0].1["attempt"], 1);
        assert!(records[0].1.get("spec").is_none(), "{}", records[0].1);
        drop(store);

        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.jobs[0].spec.name, "j");
        assert_eq!(loaded.jobs[0].attempt, 1);
        // Written again after a restart: still one spec row.
        store.commit(&[Change::Job(Box::new(job))]).unwrap();
        assert_eq!(raw_rows(&store, JOB_SPECS).len(), 1);
        store.commit(&[Change::DeleteJob(7)]).unwrap();
        assert!(raw_rows(&store, JOB_SPECS).is_empty());
    }

    #[test]
    fn a_record_written_whole_before_specs_were_apart_is_loaded_and_rewritten_apart() {
        let dir = tempfile::tempdir().unwrap();
        let job = JobRecord::new(JobId(3), JobSpec::shell("old", "true"), 1);
        {
            let store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
            let txn = store.db.begin_write().unwrap();
            txn.open_table(JOBS)
                .unwrap()
                .insert(3, serde_json::to_vec(&job).unwrap().as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.jobs[0].spec.name, "old");
        store.commit(&[Change::Job(Box::new(job))]).unwrap();
        assert_eq!(raw_rows(&store, JOB_SPECS)[0].1["name"], "old");
        assert!(raw_rows(&store, JOBS)[0].1.get("spec").is_none());
        assert_eq!(store.load().unwrap().jobs[0].spec.name, "old");
    }

    #[test]
    fn a_record_whose_spec_is_missing_is_a_clear_error_naming_the_job() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = EmbeddedStore::open(dir.path(), Durability::Fsync).unwrap();
        let job = JobRecord::new(JobId(9), JobSpec::shell("j", "true"), 1);
        store.commit(&[Change::Job(Box::new(job))]).unwrap();
        let txn = store.db.begin_write().unwrap();
        txn.open_table(JOB_SPECS).unwrap().remove(9).unwrap();
        txn.commit().unwrap();
        let Err(err) = store.load() else {
            panic!("a record without its spec loaded");
        };
        let text = err.to_string();
        assert!(text.contains('9') && text.contains("spec is missing"), "{text}");
    }

    #[test]
    fn a_corrupt_store_is_a_clear_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(EmbeddedStore::file_in(dir.path()), vec![0x5a; 64 * 1024]).unwrap();
        let err = EmbeddedStore::open(dir.path(), Durability::Fsync)
            .err()
            .expect("corrupt");
        let text = err.to_string();
        assert!(text.contains("valkyrie.redb"), "{text}");
        assert!(
            matches!(err, StoreError::Corrupt { .. } | StoreError::Io { .. }),
            "{text}"
        );
    }

    #[test]
    fn a_read_only_directory_is_a_clear_error() {
        // /proc refuses new files even to root, unlike a chmod-ed directory.
        let err = EmbeddedStore::open(Path::new("/proc"), Durability::Fsync)
            .err()
            .expect("read-only");
        let text = err.to_string();
        assert!(text.contains("cannot open /proc/valkyrie.redb"), "{text}");
    }
}
