//! The MongoDB store: `--store mongodb://host:port/database` (or
//! `mongodb+srv://…`), for running the control plane on a database that is
//! already operated and backed up. The database is the URI's path
//! (`valkyrie` if it has none).
//!
//! | collection  | `_id`          | holds                         | indexes                    |
//! |-------------|----------------|-------------------------------|----------------------------|
//! | `pipelines` | pipeline id    | [`PipelineDef`]               |                            |
//! | `runs`      | run id         | [`RunRow`]                    | `state`                    |
//! | `jobs`      | job id         | [`JobRecord`]                 | `state`, `runner`          |
//! | `runners`   | runner id      | [`RunnerRow`]                 |                            |
//! | `logs`      | (generated)    | `job`, `seq`, `stream`, `data`| unique (`job`, `seq`)      |
//! | `audit`     | record id      | [`AuditRecord`]               |                            |
//! | `projects`  | project name   | [`crate::source::Project`] |                      |
//! | `deliveries`| sequence number| [`DeliveryRow`]               |                            |
//! | `artifacts` | `"<job>/<name>"` | [`ArtifactRow`]             |                            |
//! | `cache_entries` | `"<project>/<key>"` | [`CacheRow`]         |                            |
//! | `meta`      | `"counters"`   | [`Counters`]                  |                            |
//! | `meta`      | `"key_check"`  | `value`: the sealed key check |                            |
//!
//! Secret fields (job secrets, pipeline texts, runner credentials) hold
//! only ciphertext when the server wraps this store in a
//! [`SealedStore`](super::seal::SealedStore), as `valkyrie-server` does.
//!
//! There is no `events` collection: a job's events are its state history,
//! which is its record in `jobs` (each transition replaces it, fenced by the
//! attempt number, below) together with its output in `logs`; the live event
//! stream is rebuilt from those on start, as with the embedded store.
//!
//! # Writes
//!
//! A commit is one write command per collection that has changes (`update`
//! with many statements, `insert`, `delete`; unordered), not one round trip
//! per change: the store worker hands over everything that waited, and a
//! thousand job changes cost one `update` command. Changes to the same key
//! within a commit are folded first, the last one winning, as they would
//! inside one transaction.
//!
//! MongoDB has no transaction across these commands without a replica set,
//! so a commit that fails half-way is not rolled back. The order keeps a
//! partial commit harmless: the id counters go first (so an id is never
//! handed out twice), then deletions, pipelines, runners, jobs, logs, and
//! runs last (a run points at its jobs). A failed commit stops the server
//! anyway (see [`StoreHandle`](super::StoreHandle)), and writing the same
//! batch again is idempotent.
//!
//! # Fencing
//!
//! A job is replaced only by a record of the same or a newer attempt: the
//! filter is `{_id: id, attempt: {$lte: attempt}}` with upsert. If a newer
//! attempt is stored, the filter matches nothing, the upsert tries to insert
//! a second document with that `_id`, and the server refuses it with a
//! duplicate-key error: the stale writer loses and its write is skipped (and
//! logged at debug). Two servers pointed at one database therefore cannot
//! move a job back to an older attempt; the attempt number is the same
//! fencing token the protocol uses for reports.
//!
//! With several servers on one database, one leads ([`super::leader`]):
//! every document also carries the epoch of the leader that wrote it, and
//! every replace and delete is conditional on `epoch <= ` the writer's, so
//! a deposed leader's write matches nothing and stops it.
//!
//! # Durability
//!
//! [`Durability::Fsync`] writes with `{w: "majority", j: true, wtimeout:
//! 30000}` (acknowledged once journaled on a majority; a majority that does
//! not answer in 30 s fails the commit), [`Durability::None`] with `{w: 1,
//! j: false}`; a `w` in the URI is overridden by the flag.
//!
//! # Servers
//!
//! Only plain commands (`find`, `insert`, `update`, `delete`,
//! `createIndexes`, `ping`) are used, so any MongoDB since 3.6 will do, and
//! so does `nx-27017`, the wire-protocol server the tests run against. Two
//! of its differences shape the code: it orders numeric `_id`s as text (so
//! rows are sorted here after loading, not by the server), and an upsert
//! does not copy `_id` from the filter (so every replacement names its own).
//! It accepts the write concern (it is a single node).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use mongodb::bson::{self, doc, spec::BinarySubtype, Binary, Bson, Document};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::sync::{Client, Database};
use mongodb::IndexModel;
use serde::de::DeserializeOwned;
use serde::Serialize;
use valkyrie::message::OutputStream;

use super::leader::{Election, Fence, LeaseConfig};
use super::{
    ArtifactRow, CacheRow, Change, Counters, DeliveryRow, Durability, Loaded, LogRow, RunRow, RunnerRow,
    Store, StoreError,
};
use crate::audit::AuditRecord;
use crate::core::PipelineDef;
use crate::job::JobRecord;
use crate::source::Project;
use std::sync::Arc;

const PIPELINES: &str = "pipelines";
const RUNS: &str = "runs";
const JOBS: &str = "jobs";
const RUNNERS: &str = "runners";
const LOGS: &str = "logs";
const META: &str = "meta";
const AUDIT: &str = "audit";
pub(super) const PROJECTS: &str = "projects";
pub(super) const DELIVERIES: &str = "deliveries";
pub(super) const ARTIFACTS: &str = "artifacts";
pub(super) const CACHE_ENTRIES: &str = "cache_entries";
const COUNTERS_ID: &str = "counters";
const KEY_CHECK_ID: &str = "key_check";

/// Database used when the URI names none.
pub const DEFAULT_DATABASE: &str = "valkyrie";

/// How long to look for a server before giving up, unless the URI sets
/// `serverSelectionTimeoutMS`: a wrong URI fails at start, not after 30 s.
const SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a commit waits for a majority to journal it. Without a bound a
/// replica set that lost its majority would hang the store silently; with
/// it, the commit fails and the server stops with the reason.
const MAJORITY_TIMEOUT: Duration = Duration::from_secs(30);

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i64 = 11000;

/// Statements per write command. Servers accept 100,000
/// (`maxWriteBatchSize`); smaller commands keep each reply small.
const MAX_STATEMENTS_PER_COMMAND: usize = 10_000;

/// Bytes of statements per write command. A command must fit in one BSON
/// document (16 MiB, `maxBsonObjectSize`); half of it leaves room for the
/// command's own fields.
const MAX_BYTES_PER_COMMAND: usize = 8 * 1024 * 1024;

/// The MongoDB-backed store.
pub struct MongoStore {
    // Kept so that the connection pool lives as long as the store.
    _client: Client,
    db: Database,
    /// The URI without its password, for messages.
    shown: String,
    write_concern: Document,
    /// The leader's epoch and lease: every write is conditional on them.
    fence: Option<Arc<Fence>>,
}

impl std::fmt::Debug for MongoStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoStore")
            .field("uri", &self.shown)
            .field("database", &self.db.name())
            .finish()
    }
}

impl MongoStore {
    /// Connects to the server named by `uri`, checks that it answers, and
    /// creates the indexes the server's queries use (a no-op if they exist).
    ///
    /// Fails within about five seconds (or the URI's
    /// `serverSelectionTimeoutMS`) if no server answers.
    pub fn connect(uri: &str, durability: Durability) -> Result<Self, StoreError> {
        let shown = redact(uri);
        off_async_runtime(|| {
            let mut options = ClientOptions::parse(uri).run().map_err(|e| StoreError::Io {
                what: format!("invalid MongoDB URI {shown}"),
                detail: e.to_string(),
            })?;
            options
                .server_selection_timeout
                .get_or_insert(SERVER_SELECTION_TIMEOUT);
            options.connect_timeout.get_or_insert(SERVER_SELECTION_TIMEOUT);
            options.app_name.get_or_insert_with(|| "valkyrie-server".into());
            let database = options
                .default_database
                .clone()
                .unwrap_or_else(|| DEFAULT_DATABASE.to_owned());
            let client = Client::with_options(options).map_err(|e| StoreError::Io {
                what: format!("cannot use MongoDB URI {shown}"),
                detail: e.to_string(),
            })?;
            let db = client.database(&database);
            let store = Self {
                _client: client,
                db,
                shown: shown.clone(),
                write_concern: match durability {
                    Durability::Fsync => doc! {
                        "w": "majority",
                        "j": true,
                        "wtimeout": i64::try_from(MAJORITY_TIMEOUT.as_millis()).unwrap_or(i64::MAX),
                    },
                    Durability::None => doc! { "w": 1, "j": false },
                },
                fence: None,
            };
            store.ping_blocking()?;
            store.create_indexes()?;
            Ok(store)
        })
    }

    /// The leader election among the servers sharing this database.
    pub fn election(&self, config: LeaseConfig) -> Election {
        Election::new(self.db.clone(), config)
    }

    /// From now on every write carries `fence`'s epoch and is made only
    /// while its lease holds.
    pub fn set_fence(&mut self, fence: Arc<Fence>) {
        self.fence = Some(fence);
    }

    /// `filter`, restricted to documents no newer leader has claimed.
    fn fenced(&self, mut filter: Document) -> Document {
        if let Some(fence) = &self.fence {
            filter.insert("epoch", doc! { "$lte": id_bson(fence.epoch()) });
        }
        filter
    }

    /// `row`, stamped with the writer's epoch.
    fn stamped(&self, mut row: Document) -> Document {
        if let Some(fence) = &self.fence {
            row.insert("epoch", id_bson(fence.epoch()));
        }
        row
    }

    /// An upserting replace of a row stored under its numeric id.
    fn keyed_replace<T: Serialize>(
        &self,
        kind: &'static str,
        id: u64,
        row: &T,
    ) -> Result<Document, StoreError> {
        let mut doc = to_doc(kind, id, row)?;
        doc.insert("_id", id_bson(id));
        Ok(replace(
            self.fenced(doc! { "_id": id_bson(id) }),
            self.stamped(doc),
        ))
    }

    /// An upserting replace of a row stored under a string id.
    fn string_replace<T: Serialize>(
        &self,
        kind: &'static str,
        id: &str,
        row: &T,
    ) -> Result<Document, StoreError> {
        let mut doc = to_doc(kind, id, row)?;
        doc.insert("_id", id);
        Ok(replace(self.fenced(doc! { "_id": id }), self.stamped(doc)))
    }

    fn ping_blocking(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .run()
            .map(drop)
            .map_err(|e| StoreError::Io {
                what: format!(
                    "cannot reach MongoDB at {} (is it running, and is the URI right?)",
                    self.shown
                ),
                detail: e.to_string(),
            })
    }

    fn create_indexes(&self) -> Result<(), StoreError> {
        let index = |keys: Document, unique: bool| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().unique(unique.then_some(true)).build())
                .build()
        };
        let wanted = [
            (
                JOBS,
                vec![
                    index(doc! { "state": 1 }, false),
                    index(doc! { "runner": 1 }, false),
                ],
            ),
            (RUNS, vec![index(doc! { "state": 1 }, false)]),
            (LOGS, vec![index(doc! { "job": 1, "seq": 1 }, true)]),
        ];
        for (collection, indexes) in wanted {
            self.db
                .collection::<Document>(collection)
                .create_indexes(indexes)
                .run()
                .map_err(|e| self.io(&format!("cannot create the indexes of `{collection}` in"), e))?;
        }
        Ok(())
    }

    fn io(&self, what: &str, err: impl std::fmt::Display) -> StoreError {
        StoreError::Io {
            what: format!("{what} MongoDB at {} (database `{}`)", self.shown, self.db.name()),
            detail: err.to_string(),
        }
    }

    /// Every document of `collection`, in no particular order: callers
    /// sort, because not every wire-protocol server orders numeric `_id`s
    /// numerically (nx-27017 compares them as text).
    fn all(&self, collection: &str) -> Result<Vec<Document>, StoreError> {
        let what = format!("cannot read `{collection}` from");
        self.db
            .collection::<Document>(collection)
            .find(doc! {})
            .run()
            .map_err(|e| self.io(&what, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.io(&what, e))
    }

    /// The rows of `collection`, in id order.
    fn rows<T: DeserializeOwned>(
        &self,
        collection: &str,
        kind: &'static str,
        id: impl Fn(&T) -> u64,
    ) -> Result<Vec<T>, StoreError> {
        let mut rows = self
            .all(collection)?
            .into_iter()
            .map(|doc| decode(kind, doc))
            .collect::<Result<Vec<T>, _>>()?;
        rows.sort_by_key(id);
        Ok(rows)
    }

    fn load_blocking(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded {
            jobs: self.rows(JOBS, "job", |job: &JobRecord| job.id.0)?,
            runs: self.rows(RUNS, "run", |run: &RunRow| run.id)?,
            pipelines: self.rows(PIPELINES, "pipeline", |def: &PipelineDef| def.id)?,
            runners: self.rows(RUNNERS, "runner", |runner: &RunnerRow| runner.id)?,
            audit: self.rows(AUDIT, "audit", |record: &AuditRecord| record.id)?,
            deliveries: self.rows(DELIVERIES, "delivery", |row: &DeliveryRow| row.seq)?,
            ..Loaded::default()
        };
        loaded.projects = self
            .all(PROJECTS)?
            .into_iter()
            .map(|doc| decode("project", doc))
            .collect::<Result<Vec<Project>, _>>()?;
        loaded.projects.sort_by(|a, b| a.name.cmp(&b.name));
        loaded.artifacts = self
            .all(ARTIFACTS)?
            .into_iter()
            .map(|doc| decode("artifact", doc))
            .collect::<Result<Vec<ArtifactRow>, _>>()?;
        loaded
            .artifacts
            .sort_by(|a, b| (a.job_id, &a.name).cmp(&(b.job_id, &b.name)));
        loaded.cache_entries = self
            .all(CACHE_ENTRIES)?
            .into_iter()
            .map(|doc| decode("cache entry", doc))
            .collect::<Result<Vec<CacheRow>, _>>()?;
        loaded
            .cache_entries
            .sort_by(|a, b| (&a.project, &a.key).cmp(&(&b.project, &b.key)));
        loaded.logs = self
            .all(LOGS)?
            .into_iter()
            .map(log_of)
            .collect::<Result<_, _>>()?;
        loaded.logs.sort_by_key(|log| (log.job, log.seq));
        for doc in self.all(META)? {
            match doc.get_str("_id") {
                Ok(COUNTERS_ID) => loaded.counters = decode("meta", doc)?,
                Ok(KEY_CHECK_ID) => {
                    let value = doc.get_str("value").map_err(|e| StoreError::Decode {
                        kind: "meta",
                        id: KEY_CHECK_ID.into(),
                        detail: e.to_string(),
                    })?;
                    loaded.key_check = Some(value.to_owned());
                }
                _ => {}
            }
        }
        Ok(loaded)
    }

    fn commit_blocking(&self, changes: &[Change]) -> Result<(), StoreError> {
        let folded = Folded::of(changes);
        if let Some(counters) = folded.counters {
            let mut row = to_doc("meta", COUNTERS_ID, counters)?;
            // Named in the replacement as well: not every server copies an
            // upserted `_id` from the filter (nx-27017 generates one).
            row.insert("_id", COUNTERS_ID);
            let statement = replace(self.fenced(doc! { "_id": COUNTERS_ID }), self.stamped(row));
            self.write(META, Write::Update, vec![statement])?;
        }
        if let Some(check) = folded.key_check {
            let row = doc! { "_id": KEY_CHECK_ID, "value": check.as_str() };
            let statement = replace(self.fenced(doc! { "_id": KEY_CHECK_ID }), self.stamped(row));
            self.write(META, Write::Update, vec![statement])?;
        }
        if !folded.deleted_jobs.is_empty() {
            let ids: Vec<Bson> = folded.deleted_jobs.iter().map(|id| id_bson(*id)).collect();
            let logs = doc! { "q": { "job": { "$in": ids.clone() } }, "limit": 0 };
            self.write(LOGS, Write::Delete, vec![logs])?;
            let jobs = doc! { "q": self.fenced(doc! { "_id": { "$in": ids } }), "limit": 0 };
            self.write(JOBS, Write::Delete, vec![jobs])?;
        }
        if !folded.deleted_runners.is_empty() {
            let ids: Vec<Bson> = folded.deleted_runners.iter().map(|id| id_bson(*id)).collect();
            let statement = doc! { "q": self.fenced(doc! { "_id": { "$in": ids } }), "limit": 0 };
            self.write(RUNNERS, Write::Delete, vec![statement])?;
        }
        if !folded.deleted_audit.is_empty() {
            let ids: Vec<Bson> = folded.deleted_audit.iter().map(|id| id_bson(*id)).collect();
            let statement = doc! { "q": self.fenced(doc! { "_id": { "$in": ids } }), "limit": 0 };
            self.write(AUDIT, Write::Delete, vec![statement])?;
        }
        if !folded.deleted_projects.is_empty() {
            let names: Vec<Bson> = folded.deleted_projects.iter().map(|n| Bson::from(*n)).collect();
            let statement = doc! { "q": self.fenced(doc! { "_id": { "$in": names } }), "limit": 0 };
            self.write(PROJECTS, Write::Delete, vec![statement])?;
        }
        if !folded.deleted_deliveries.is_empty() {
            let ids: Vec<Bson> = folded.deleted_deliveries.iter().map(|id| id_bson(*id)).collect();
            let statement = doc! { "q": self.fenced(doc! { "_id": { "$in": ids } }), "limit": 0 };
            self.write(DELIVERIES, Write::Delete, vec![statement])?;
        }
        if !folded.deleted_artifacts.is_empty() {
            let ids: Vec<Bson> = folded
                .deleted_artifacts
                .iter()
                .map(|id| Bson::from(id.as_str()))
                .collect();
            let statement = doc! { "q": self.fenced(doc! { "_id": { "$in": ids } }), "limit": 0 };
            self.write(ARTIFACTS, Write::Delete, vec![statement])?;
        }
        if !folded.deleted_cache.is_empty() {
            let ids: Vec<Bson> = folded
                .deleted_cache
                .iter()
                .map(|id| Bson::from(id.as_str()))
                .collect();
            let statement = doc! { "q": self.fenced(doc! { "_id": { "$in": ids } }), "limit": 0 };
            self.write(CACHE_ENTRIES, Write::Delete, vec![statement])?;
        }
        let artifacts = folded
            .artifacts
            .iter()
            .map(|(id, row)| self.string_replace("artifact", id, row))
            .collect::<Result<_, _>>()?;
        self.write(ARTIFACTS, Write::Update, artifacts)?;
        let cache = folded
            .cache
            .iter()
            .map(|(id, row)| self.string_replace("cache entry", id, row))
            .collect::<Result<_, _>>()?;
        self.write(CACHE_ENTRIES, Write::Update, cache)?;
        let projects = folded
            .projects
            .values()
            .map(|project| {
                let mut row = to_doc("project", &project.name, project)?;
                row.insert("_id", project.name.as_str());
                Ok(replace(
                    self.fenced(doc! { "_id": project.name.as_str() }),
                    self.stamped(row),
                ))
            })
            .collect::<Result<_, _>>()?;
        self.write(PROJECTS, Write::Update, projects)?;
        let deliveries = folded
            .deliveries
            .values()
            .map(|row| self.keyed_replace("delivery", row.seq, row))
            .collect::<Result<_, _>>()?;
        self.write(DELIVERIES, Write::Update, deliveries)?;
        let audit = folded
            .audit
            .values()
            .map(|record| self.keyed_replace("audit", record.id, record))
            .collect::<Result<_, _>>()?;
        self.write(AUDIT, Write::Update, audit)?;
        let pipelines = folded
            .pipelines
            .values()
            .map(|def| self.keyed_replace("pipeline", def.id, def))
            .collect::<Result<_, _>>()?;
        self.write(PIPELINES, Write::Update, pipelines)?;
        let runners = folded
            .runners
            .values()
            .map(|row| self.keyed_replace("runner", row.id, row))
            .collect::<Result<_, _>>()?;
        self.write(RUNNERS, Write::Update, runners)?;
        let jobs = folded
            .jobs
            .values()
            .map(|job| {
                let id = job.id.0;
                let mut row = to_doc("job", id, job)?;
                row.insert("_id", id_bson(id));
                // Fencing: see the module doc.
                let filter = doc! { "_id": id_bson(id), "attempt": { "$lte": i64::from(job.attempt) } };
                Ok(replace(self.fenced(filter), self.stamped(row)))
            })
            .collect::<Result<_, _>>()?;
        let stale = self.write(JOBS, Write::Update, jobs)?;
        for index in stale {
            if let Some(job) = folded.jobs.values().nth(index) {
                tracing::debug!(
                    job_id = job.id.0,
                    attempt = job.attempt,
                    "job not stored: a newer attempt is already in MongoDB"
                );
            }
        }
        let logs = folded.logs.iter().map(|log| log_doc(log)).collect();
        let duplicates = self.write(LOGS, Write::Insert, logs)?;
        if !duplicates.is_empty() {
            tracing::debug!(count = duplicates.len(), "log chunks already stored");
        }
        let runs = folded
            .runs
            .values()
            .map(|row| self.keyed_replace("run", row.id, row))
            .collect::<Result<_, _>>()?;
        self.write(RUNS, Write::Update, runs)?;
        // Whatever waits for this commit (acknowledgements, assignments)
        // goes out only if the lease held until the end of it.
        if let Some(fence) = &self.fence {
            fence.check()?;
        }
        Ok(())
    }

    /// Sends `statements` as few write commands as the size limits allow.
    /// Returns the indexes of the statements the server refused as
    /// duplicate keys (stale job attempts, log chunks already stored); any
    /// other refusal is an error.
    fn write(
        &self,
        collection: &str,
        kind: Write,
        statements: Vec<Document>,
    ) -> Result<Vec<usize>, StoreError> {
        let mut duplicates = Vec::new();
        let mut start = 0;
        for chunk in chunks(statements) {
            if let Some(fence) = &self.fence {
                fence.check()?;
            }
            let count = chunk.len();
            // The command's name must be its first field.
            let mut command = Document::new();
            command.insert(kind.command(), collection);
            command.insert(kind.field(), chunk);
            command.insert("ordered", false);
            command.insert("writeConcern", self.write_concern.clone());
            let what = format!("cannot write to `{collection}` in");
            let reply = self
                .db
                .run_command(command)
                .run()
                .map_err(|e| self.io(&what, e))?;
            if let Ok(error) = reply.get_document("writeConcernError") {
                return Err(self.io(&what, format!("write concern not satisfied: {error}")));
            }
            if let Ok(errors) = reply.get_array("writeErrors") {
                for error in errors {
                    let error = error.as_document().cloned().unwrap_or_default();
                    let code = error.get("code").and_then(as_i64);
                    if code != Some(DUPLICATE_KEY) || kind == Write::Delete {
                        return Err(self.io(&what, format!("the server refused a write: {error}")));
                    }
                    // A replace that matches nothing because a newer leader
                    // stamped the document (see `leader`).
                    if let (Some(fence), Write::Update) = (&self.fence, kind) {
                        return Err(StoreError::Deposed {
                            epoch: fence.epoch(),
                            detail: format!("a newer leader owns a document of `{collection}`"),
                        });
                    }
                    if let Some(index) = error.get("index").and_then(as_i64) {
                        duplicates.push(start + usize::try_from(index).unwrap_or(usize::MAX));
                    }
                }
            }
            start += count;
        }
        Ok(duplicates)
    }
}

impl Store for MongoStore {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        off_async_runtime(|| self.load_blocking())
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        off_async_runtime(|| self.commit_blocking(changes))
    }

    fn ping(&mut self) -> Result<(), StoreError> {
        off_async_runtime(|| self.ping_blocking())
    }
}

/// The changes of one commit, the last change of each key winning.
#[derive(Default)]
struct Folded<'a> {
    counters: Option<&'a Counters>,
    key_check: Option<&'a String>,
    audit: BTreeMap<u64, &'a AuditRecord>,
    deleted_audit: BTreeSet<u64>,
    /// Jobs whose record and logs go; applied before the writes below, so a
    /// log appended after the deletion (same commit) survives it.
    deleted_jobs: BTreeSet<u64>,
    pipelines: BTreeMap<u64, &'a PipelineDef>,
    runners: BTreeMap<u64, &'a RunnerRow>,
    /// Runners whose record goes; applied after the writes below (a runner
    /// removed in a commit is not registered again in the same one).
    deleted_runners: BTreeSet<u64>,
    jobs: BTreeMap<u64, &'a JobRecord>,
    logs: Vec<&'a LogRow>,
    runs: BTreeMap<u64, &'a RunRow>,
    projects: BTreeMap<&'a str, &'a Project>,
    /// Applied before the writes (a project added again after its removal
    /// in one commit is kept).
    deleted_projects: BTreeSet<&'a str>,
    deliveries: BTreeMap<u64, &'a DeliveryRow>,
    deleted_deliveries: BTreeSet<u64>,
    /// By `_id` ([`artifact_id`]); deletions applied before the writes.
    artifacts: BTreeMap<String, &'a ArtifactRow>,
    deleted_artifacts: BTreeSet<String>,
    /// By `_id` ([`cache_id`]); deletions applied before the writes.
    cache: BTreeMap<String, &'a CacheRow>,
    deleted_cache: BTreeSet<String>,
}

/// The `_id` of an artifact record (artifact names hold no `/`).
fn artifact_id(job_id: u64, name: &str) -> String {
    format!("{job_id}/{name}")
}

/// The `_id` of a cache entry (keys hold no `/`, so the last one splits it).
fn cache_id(project: &str, key: &str) -> String {
    format!("{project}/{key}")
}

impl<'a> Folded<'a> {
    fn of(changes: &'a [Change]) -> Self {
        let mut folded = Self::default();
        // Position of the last deletion of each job, to drop its earlier logs.
        let mut deleted_at: HashMap<u64, usize> = HashMap::new();
        let mut logs = Vec::new();
        for (position, change) in changes.iter().enumerate() {
            match change {
                Change::Job(job) => {
                    folded.jobs.insert(job.id.0, job);
                }
                Change::DeleteJob(id) => {
                    folded.jobs.remove(id);
                    folded.deleted_jobs.insert(*id);
                    deleted_at.insert(*id, position);
                }
                Change::Run(run) => {
                    folded.runs.insert(run.id, run);
                }
                Change::Pipeline(def) => {
                    folded.pipelines.insert(def.id, def);
                }
                Change::DeleteRunner(id) => {
                    folded.runners.remove(id);
                    folded.deleted_runners.insert(*id);
                }
                Change::Runner(runner) => {
                    folded.deleted_runners.remove(&runner.id);
                    folded.runners.insert(runner.id, runner);
                }
                Change::Log(log) => logs.push((position, log)),
                Change::Counters(counters) => folded.counters = Some(counters),
                Change::KeyCheck(check) => folded.key_check = Some(check),
                Change::Audit(record) => {
                    folded.deleted_audit.remove(&record.id);
                    folded.audit.insert(record.id, record);
                }
                Change::DeleteAudit(id) => {
                    folded.audit.remove(id);
                    folded.deleted_audit.insert(*id);
                }
                Change::Project(project) => {
                    folded.projects.insert(project.name.as_str(), project);
                }
                Change::DeleteProject(name) => {
                    folded.projects.remove(name.as_str());
                    folded.deleted_projects.insert(name.as_str());
                }
                Change::Delivery(row) => {
                    folded.deleted_deliveries.remove(&row.seq);
                    folded.deliveries.insert(row.seq, row);
                }
                Change::DeleteDelivery(seq) => {
                    folded.deliveries.remove(seq);
                    folded.deleted_deliveries.insert(*seq);
                }
                Change::Artifact(row) => {
                    let id = artifact_id(row.job_id, &row.name);
                    folded.deleted_artifacts.remove(&id);
                    folded.artifacts.insert(id, row);
                }
                Change::DeleteArtifact(job, name) => {
                    let id = artifact_id(*job, name);
                    folded.artifacts.remove(&id);
                    folded.deleted_artifacts.insert(id);
                }
                Change::CacheEntry(row) => {
                    let id = cache_id(&row.project, &row.key);
                    folded.deleted_cache.remove(&id);
                    folded.cache.insert(id, row);
                }
                Change::DeleteCacheEntry(project, key) => {
                    let id = cache_id(project, key);
                    folded.cache.remove(&id);
                    folded.deleted_cache.insert(id);
                }
            }
        }
        folded.logs = logs
            .into_iter()
            .filter(|(position, log)| deleted_at.get(&log.job).is_none_or(|d| d < position))
            .map(|(_, log)| log)
            .collect();
        folded
    }
}

/// The three write commands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Insert,
    Update,
    Delete,
}

impl Write {
    fn command(self) -> &'static str {
        match self {
            Write::Insert => "insert",
            Write::Update => "update",
            Write::Delete => "delete",
        }
    }

    fn field(self) -> &'static str {
        match self {
            Write::Insert => "documents",
            Write::Update => "updates",
            Write::Delete => "deletes",
        }
    }
}

/// Splits statements into commands under the count and size limits.
fn chunks(statements: Vec<Document>) -> Vec<Vec<Document>> {
    let mut out: Vec<Vec<Document>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for statement in statements {
        let size = bson::to_vec(&statement).map(|v| v.len()).unwrap_or(0);
        if !current.is_empty()
            && (current.len() == MAX_STATEMENTS_PER_COMMAND || bytes + size > MAX_BYTES_PER_COMMAND)
        {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(statement);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// An upserting replace statement.
fn replace(filter: Document, row: Document) -> Document {
    doc! { "q": filter, "u": row, "upsert": true }
}

fn to_doc<T: Serialize>(kind: &'static str, id: impl ToString, row: &T) -> Result<Document, StoreError> {
    bson::to_document(row).map_err(|e| StoreError::Io {
        what: format!("cannot store {kind} {} in MongoDB", id.to_string()),
        detail: e.to_string(),
    })
}

fn decode<T: DeserializeOwned>(kind: &'static str, mut doc: Document) -> Result<T, StoreError> {
    let id = doc.remove("_id").map(|id| id.to_string()).unwrap_or_default();
    // The writer's epoch (see `leader`) is the store's, not the row's.
    doc.remove("epoch");
    bson::from_document(doc).map_err(|e| StoreError::Decode {
        kind,
        id,
        detail: e.to_string(),
    })
}

/// BSON has no unsigned integers; ids stay far below `i64::MAX`.
fn id_bson(id: u64) -> Bson {
    i64::try_from(id).map_or_else(|_| Bson::Double(id as f64), Bson::Int64)
}

pub(super) fn as_i64(value: &Bson) -> Option<i64> {
    match value {
        Bson::Int32(v) => Some(i64::from(*v)),
        Bson::Int64(v) => Some(*v),
        Bson::Double(v) if v.fract() == 0.0 => Some(*v as i64),
        _ => None,
    }
}

fn log_doc(log: &LogRow) -> Document {
    let stream = bson::to_bson(&log.stream).unwrap_or(Bson::Null);
    doc! {
        "job": id_bson(log.job),
        "seq": id_bson(log.seq),
        "stream": stream,
        "data": Binary { subtype: BinarySubtype::Generic, bytes: log.data.clone() },
    }
}

fn log_of(doc: Document) -> Result<LogRow, StoreError> {
    let bad = |detail: &str| StoreError::Decode {
        kind: "log",
        id: format!("{:?}/{:?}", doc.get("job"), doc.get("seq")),
        detail: detail.to_owned(),
    };
    let number = |field: &str| {
        doc.get(field)
            .and_then(as_i64)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or_else(|| bad(&format!("`{field}` is not a non-negative integer")))
    };
    let job = number("job")?;
    let seq = number("seq")?;
    let stream = doc
        .get("stream")
        .cloned()
        .and_then(|s| bson::from_bson::<OutputStream>(s).ok())
        .ok_or_else(|| bad("`stream` is not stdout, stderr or system"))?;
    let data = match doc.get("data") {
        Some(Bson::Binary(binary)) => binary.bytes.clone(),
        _ => return Err(bad("`data` is not binary")),
    };
    Ok(LogRow {
        job,
        seq,
        stream,
        data,
    })
}

/// The URI with any password replaced, for messages and logs.
fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{}", &rest[at + 1..])
        }
        None => uri.to_owned(),
    }
}

/// The sync driver blocks on its own Tokio runtime, which panics inside
/// another runtime's context; `valkyrie-server` opens and loads its store
/// from `async fn main`. There, the call runs on a short-lived thread of
/// its own. (The store worker thread is not in a runtime: no extra thread.)
fn off_async_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if tokio::runtime::Handle::try_current().is_err() {
        return f();
    }
    std::thread::scope(|scope| match scope.spawn(f).join() {
        Ok(result) => result,
        Err(panic) => std::panic::resume_unwind(panic),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::JobId;
    use valkyrie::message::JobSpec;

    #[test]
    fn a_password_never_appears_in_messages() {
        assert_eq!(
            redact("mongodb://ci:s3cret@db.example:27017/valkyrie?w=1"),
            "mongodb://ci:***@db.example:27017/valkyrie?w=1"
        );
        assert_eq!(redact("mongodb://127.0.0.1:27017"), "mongodb://127.0.0.1:27017");
        assert_eq!(
            redact("mongodb+srv://ci@cluster.example/x"),
            "mongodb+srv://ci:***@cluster.example/x"
        );
    }

    #[test]
    fn the_last_change_of_a_key_wins_and_a_deletion_drops_earlier_logs() {
        let job = |attempt| {
            let mut job = JobRecord::new(JobId(1), JobSpec::shell("j", "true"), 0);
            job.attempt = attempt;
            Change::Job(Box::new(job))
        };
        let log = |seq| {
            Change::Log(LogRow {
                job: 1,
                seq,
                stream: OutputStream::Stdout,
                data: vec![],
            })
        };
        let changes = [job(1), log(0), job(2), Change::DeleteJob(1), log(1)];
        let folded = Folded::of(&changes);
        assert!(folded.jobs.is_empty());
        assert_eq!(folded.deleted_jobs, BTreeSet::from([1]));
        assert_eq!(folded.logs.iter().map(|l| l.seq).collect::<Vec<_>>(), [1]);

        let changes = [Change::DeleteJob(1), job(1), job(3)];
        let folded = Folded::of(&changes);
        assert_eq!(folded.jobs[&1].attempt, 3);
    }

    #[test]
    fn commands_are_split_by_count_and_size() {
        let small: Vec<Document> = (0..25_000).map(|i| doc! { "i": i }).collect();
        let sizes: Vec<usize> = chunks(small).iter().map(Vec::len).collect();
        assert_eq!(sizes, [10_000, 10_000, 5_000]);
        let big = |n: usize| doc! { "b": Binary { subtype: BinarySubtype::Generic, bytes: vec![0; n] } };
        let sizes: Vec<usize> = chunks(vec![big(5 << 20), big(5 << 20), big(1 << 20)])
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [1, 2]);
    }
}
