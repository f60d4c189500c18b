//! Durable state. The core records every change as a [`Change`]; at the end
//! of each of its turns it hands the batch, together with the messages that
//! must not leave before the changes are durable (a submit's acceptance, an
//! assignment), to the store worker. The worker merges whatever batches are
//! waiting into one transaction (group commit: one fsync for many changes),
//! commits, and only then sends those messages. A client's submit therefore
//! waits for at most the commit in progress plus its own.
//!
//! Stores: [`embedded::EmbeddedStore`] (redb, the default, under the data
//! directory) and the MongoDB store.

pub mod embedded;
pub mod leader;
pub mod mongo;
pub mod seal;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use valkyrie::message::{JobState, OutputStream, RunState};

use crate::audit::AuditRecord;
use crate::core::PipelineDef;
use crate::job::JobRecord;
use crate::metrics::Metrics;

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Every commit is fsynced before anything that depends on it is sent.
    Fsync,
    /// Commits are written but not fsynced (benchmarks, throwaway CI): a
    /// machine crash may lose the last changes; a process crash does not.
    None,
}

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Another server holds the store.
    #[error("{path} is in use by another valkyrie-server (only one server may use a data directory)")]
    Locked {
        /// The store file.
        path: PathBuf,
    },
    /// The store file is damaged.
    #[error("{path} is corrupt and cannot be read: {detail}; restore it from a backup or move it away to start empty")]
    Corrupt {
        /// The store file.
        path: PathBuf,
        /// What the database said.
        detail: String,
    },
    /// The file or database could not be opened or written.
    #[error("{what}: {detail}")]
    Io {
        /// What was being done, naming the file or server.
        what: String,
        /// The cause.
        detail: String,
    },
    /// The store was written with another secrets key.
    #[error("the store was written with another secrets key than {key}: start with the key file it was written with (--secrets-key-file or the data directory's secrets-key)")]
    WrongKey {
        /// The key file in use.
        key: PathBuf,
    },
    /// A sealed field of a stored record does not open.
    #[error(
        "a stored {kind} record {id} holds a sealed value that does not open with the key {key}: {detail}"
    )]
    Sealed {
        /// jobs, runs, …
        kind: &'static str,
        /// Its key.
        id: String,
        /// The key file in use.
        key: PathBuf,
        /// Why.
        detail: seal::OpenSealedError,
    },
    /// A stored record does not decode.
    #[error("this server no longer leads (epoch {epoch}): {detail}")]
    Deposed { epoch: u64, detail: String },
    #[error("a stored {kind} record {id} does not decode: {detail}")]
    Decode {
        /// jobs, runs, …
        kind: &'static str,
        /// Its key.
        id: String,
        /// The cause.
        detail: String,
    },
}

/// A run as stored: its pipeline file (parsed again on load) and the state
/// of each of its jobs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    /// Run id.
    pub id: u64,
    /// Pipeline file name.
    pub file_name: String,
    /// Pipeline text.
    pub yaml: String,
    /// Per pipeline job, in order.
    pub slots: Vec<SlotRow>,
    /// Run state.
    pub state: RunState,
    /// Run message.
    pub message: String,
    /// Creation time.
    pub created_at_ms: u64,
    /// End time.
    pub finished_at_ms: Option<u64>,
    /// Ending early as (cancel or timeout).
    pub ending: Option<RunState>,
    /// Wall-clock deadline (ms since the epoch) of the run timeout.
    pub deadline_ms: Option<u64>,
    /// What started it, for a run from a project's repository.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<crate::source::Trigger>,
}

/// One pipeline job of a stored run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SlotRow {
    /// Waiting on its dependencies.
    Waiting,
    /// A manual job, ready, waiting to be played.
    Manual,
    /// A manual job played, not yet released.
    Played,
    /// Released as a job.
    Released {
        /// The job.
        job: u64,
        /// Its last known state.
        state: JobState,
    },
    /// Skipped.
    Skipped {
        /// Why.
        reason: String,
        /// Because a dependency failed.
        because_of_failure: bool,
    },
}

/// A registered runner as stored (its connection is not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerRow {
    /// Runner id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// OS.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Slots.
    pub slots: u32,
    /// Agent version.
    pub version: String,
    /// Credential issued at registration (accepted again after a restart).
    pub credential: String,
}

/// A webhook delivery already handled (so a redelivery starts nothing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRow {
    /// Order of arrival; the oldest are forgotten first.
    pub seq: u64,
    /// `forge:project:delivery id`.
    pub key: String,
    /// The run it started.
    pub run_id: u64,
}

/// One chunk of job output as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRow {
    /// Job id.
    pub job: u64,
    /// Sequence number within the job (across attempts).
    pub seq: u64,
    /// Stream.
    pub stream: OutputStream,
    /// Bytes.
    pub data: Vec<u8>,
}

/// One artifact a job stored: its record (the contents are a blob named by
/// `sha256` in the artifact store's blob backend, local or S3). Kept in the
/// store, not beside the blobs, so every server of a group knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRow {
    /// The job that stored it.
    pub job_id: u64,
    /// Its name within the job.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Lowercase hex SHA-256 of the contents, which is also the blob's key
    /// (content-addressed: identical contents are one blob).
    pub sha256: String,
    /// When it was stored (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it expires (ms since the Unix epoch).
    pub expires_at_ms: u64,
}

/// One `cache:` entry: the artifact that holds key `key` of `project`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRow {
    /// The project (the scope of keys).
    pub project: String,
    /// The sanitised key.
    pub key: String,
    /// The job whose artifact holds it.
    pub job_id: u64,
    /// That artifact's name.
    pub name: String,
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: String,
    /// When it was saved (ms since the Unix epoch).
    pub created_at_ms: u64,
}

/// Id counters, so ids are never reused across restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Next job id.
    pub next_job: u64,
    /// Next run id.
    pub next_run: u64,
    /// Next pipeline id.
    pub next_pipeline: u64,
    /// Next runner id.
    pub next_runner: u64,
    /// Next audit record id.
    #[serde(default)]
    pub next_audit: u64,
}

/// One change to durable state.
#[derive(Debug, Clone)]
pub enum Change {
    /// Insert or replace a job.
    Job(Box<JobRecord>),
    /// Forget a job and its logs (retention).
    DeleteJob(u64),
    /// Insert or replace a run.
    Run(Box<RunRow>),
    /// Insert or replace a pipeline definition.
    Pipeline(Box<PipelineDef>),
    /// Insert or replace a runner.
    Runner(Box<RunnerRow>),
    /// Forget a runner (`vk runners rm`, or lost past the retention).
    DeleteRunner(u64),
    /// Append a log chunk.
    Log(LogRow),
    /// Id counters.
    Counters(Counters),
    /// Insert an audit record.
    Audit(Box<AuditRecord>),
    /// Forget an audit record (retention).
    DeleteAudit(u64),
    /// The sealed value that proves which secrets key wrote the store
    /// ([`seal`]).
    KeyCheck(String),
    /// Insert or replace a project.
    Project(Box<crate::source::Project>),
    /// Forget a project (by name).
    DeleteProject(String),
    /// Remember a webhook delivery.
    Delivery(Box<DeliveryRow>),
    /// Forget a delivery (the oldest, past the bound).
    DeleteDelivery(u64),
    /// Insert or replace an artifact record.
    Artifact(Box<ArtifactRow>),
    /// Forget an artifact record: (job id, name).
    DeleteArtifact(u64, String),
    /// Insert or replace a cache entry.
    CacheEntry(Box<CacheRow>),
    /// Forget a cache entry: (project, key).
    DeleteCacheEntry(String, String),
}

/// Everything a store holds, as loaded at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Jobs.
    pub jobs: Vec<JobRecord>,
    /// Runs.
    pub runs: Vec<RunRow>,
    /// Pipeline definitions.
    pub pipelines: Vec<PipelineDef>,
    /// Runners.
    pub runners: Vec<RunnerRow>,
    /// Log chunks, in (job, seq) order.
    pub logs: Vec<LogRow>,
    /// Audit records, oldest first.
    pub audit: Vec<AuditRecord>,
    /// Id counters.
    pub counters: Counters,
    /// The secrets key check value, if one was stored ([`seal`]).
    pub key_check: Option<String>,
    /// Projects, by name.
    pub projects: Vec<crate::source::Project>,
    /// Webhook deliveries remembered, oldest first.
    pub deliveries: Vec<DeliveryRow>,
    /// Artifact records, in (job, name) order.
    pub artifacts: Vec<ArtifactRow>,
    /// Cache entries, in (project, key) order.
    pub cache_entries: Vec<CacheRow>,
}

/// A durable store. Methods block; they run on the store worker thread.
pub trait Store: Send + 'static {
    /// Reads everything (at start).
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// Applies `changes` in one transaction, durably per the store's
    /// durability setting.
    fn commit(&mut self, changes: &[Change]) -> Result<(), StoreError>;
    /// Whether the store answers (for `/readyz`).
    fn ping(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}

struct Batch {
    /// The core's batch id; `None` for a commit of [`StoreHandle::commit`].
    core_batch: Option<u64>,
    changes: Vec<Change>,
    /// Told once the batch is durable ([`StoreHandle::commit`]); dropped
    /// unanswered if the commit fails.
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What the store thread reports to the core's driver, in commit order.
#[derive(Debug)]
pub enum Completion {
    /// Every batch up to this id is durable.
    Committed(u64),
    /// A commit failed; nothing of it (nor of any later batch) is durable,
    /// and the thread has stopped.
    Failed(StoreError),
}

/// Exit status of a server that lost the leadership (EX_TEMPFAIL): its
/// supervisor starts it again, as a standby.
pub const DEPOSED_EXIT: i32 = 75;

/// Exit status of a server whose store failed (EX_SOFTWARE).
pub const STORE_FAILED_EXIT: i32 = 70;

/// Ends a server that no longer leads: it cannot know what the new leader
/// did, so it keeps nothing and exits; started again, it is a standby.
pub fn step_down(err: &StoreError) -> ! {
    tracing::error!(%err, "stepping down");
    eprintln!(
        "valkyrie-server: {err}; exiting (status {DEPOSED_EXIT}) so that it can start again as a standby"
    );
    std::process::exit(DEPOSED_EXIT)
}

/// Hands batches to the store worker thread, which commits them in order
/// and reports each commit (or the failure that stopped it) as a
/// [`Completion`]; it never sends a frame nor ends the process.
#[derive(Clone)]
pub struct StoreHandle {
    tx: crossbeam::channel::Sender<Batch>,
    completions: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Completion>>>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreHandle")
    }
}

impl StoreHandle {
    /// Starts the worker thread for `store`. After a failed commit it
    /// commits nothing more: the server cannot keep its promise of
    /// durability, so its driver stops rather than acknowledge work it may
    /// lose.
    pub fn spawn(mut store: Box<dyn Store>, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = crossbeam::channel::bounded::<Batch>(1024);
        let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::Builder::new()
            .name("valkyrie-store".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut changes = first.changes;
                    let mut last = first.core_batch;
                    let mut waiting: Vec<_> = first.done.into_iter().collect();
                    // Group commit: everything already waiting goes in too.
                    while let Ok(more) = rx.try_recv() {
                        changes.extend(more.changes);
                        last = more.core_batch.or(last);
                        waiting.extend(more.done);
                        if changes.len() > 50_000 {
                            break;
                        }
                    }
                    let started = Instant::now();
                    if let Err(err) = store.commit(&changes) {
                        tracing::error!(%err, "store commit failed; committing nothing more");
                        let _ = done_tx.send(Completion::Failed(err));
                        return;
                    }
                    metrics
                        .store_commit_latency
                        .observe(started.elapsed().as_secs_f64());
                    for done in waiting {
                        let _ = done.send(());
                    }
                    if let Some(last) = last {
                        if done_tx.send(Completion::Committed(last)).is_err() {
                            return;
                        }
                    }
                }
            })
            .expect("spawn the store thread");
        Self {
            tx,
            completions: Arc::new(std::sync::Mutex::new(Some(done_rx))),
        }
    }

    /// Queues batch `id` (ids increase by submission).
    pub fn submit(&self, id: u64, changes: Vec<Change>) {
        let batch = Batch {
            core_batch: Some(id),
            changes,
            done: None,
        };
        if self.tx.send(batch).is_err() {
            tracing::error!("store worker is gone");
        }
    }

    /// Queues `changes` without waiting for them (for state beside the
    /// core whose loss in a crash is harmless).
    pub fn submit_unwaited(&self, changes: Vec<Change>) {
        let batch = Batch {
            core_batch: None,
            changes,
            done: None,
        };
        if self.tx.send(batch).is_err() {
            tracing::error!("store worker is gone");
        }
    }

    /// The commit reports, for the one driver that waits for them; `None`
    /// once taken.
    pub fn take_completions(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Completion>> {
        self.completions.lock().ok()?.take()
    }

    /// Queues `changes` and waits until they are durable (for state kept
    /// beside the core: artifact records, cache entries). After a failed
    /// commit the worker stops, so the only error is a worker that is gone.
    pub async fn commit(&self, changes: Vec<Change>) -> Result<(), StoreGone> {
        if changes.is_empty() {
            return Ok(());
        }
        let (done, durable) = tokio::sync::oneshot::channel();
        let batch = Batch {
            core_batch: None,
            changes,
            done: Some(done),
        };
        if self.tx.send(batch).is_err() {
            return Err(StoreGone);
        }
        durable.await.map_err(|_| StoreGone)
    }
}

/// The store worker has stopped: nothing more is committed.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the store worker has stopped; nothing more can be stored")]
pub struct StoreGone;
