//! The core: one task that owns the jobs, the runner registry and the
//! scheduler. Sessions send it [`Command`]s over a channel and it answers
//! straight onto their sessions ([`Responder`]), so the dispatch path takes
//! no lock and never waits on a slow peer.
//!
//! Each turn of the loop handles every command already waiting (up to a
//! batch), then asks the scheduler once for a plan and applies it: many
//! submissions cost one scheduling pass. A 100 ms tick enforces leases,
//! server-side timeouts, and lost runners.
//!
//! Durability: the changes of a turn go to the store thread as one batch;
//! what must wait for them (an acceptance, an assignment) waits in the core
//! until the store reports the batch committed ([`Completion`]), and is
//! then sent in order. A failed commit stops the core without sending any
//! of it; the process's owner decides what follows
//! ([`CoreHandle::store_failure`]).

mod audit;
mod error;
mod events;
mod notify;
mod persist;
mod pipelines;
mod projects;
mod removal;
mod runners;
mod runs;
mod snapshot;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use foldhash::{HashMap, HashMapExt};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, info, warn};
use valkyrie::message::{
    Assign, CancelAssignment, EventBody, JobAccepted, JobDetails, JobList, JobSpec, JobState, Message,
    OutputStream, RegisterRunner, RunAccepted, RunDetails, RunList, RunState, RunnerList, RunnerRegistered,
    RunningAttempt,
};
use valkyrie::transport::RingBatch;
use valkyrie::{ErrorCode, SessionSender};

use crate::audit::{Actor, AuditAction, AuditRecord};
use crate::auth::Tokens;
use crate::job::{Disposition, JobRecord, TransitionError};
use crate::metrics::Metrics;
use crate::responder::{EventSink, Responder};
use crate::run::Run;
use crate::scheduler::{JobId, QueuedJob, RunnerId, Scheduler, SchedulerConfig};
use crate::store::{Change, Completion, Loaded, LogRow, RunnerRow, StoreError, StoreHandle};
pub use error::CoreError;
pub use events::Subscribers;
use persist::AfterCommit;
pub use pipelines::{
    PipelineDef, ValidatePipelineError, ValidatedPipeline, CONCURRENT_VALIDATIONS, VALIDATE_TIMEOUT,
};
pub use projects::{NotStarted, ProjectCommand, ScheduleRefused, Started, MAX_DELIVERIES};
pub use runners::{Heard, Link, RunnerRecord};
pub use runs::RunCommand;
pub use snapshot::CoreSnapshot;

/// Tunables of the core.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// How long an agent has to acknowledge an assignment. Default 5 s.
    pub assign_lease: Duration,
    /// A runner silent (or disconnected) this long is lost. Default 10 s.
    pub runner_lost_after: Duration,
    /// Grace the agent gives a job between SIGTERM and SIGKILL. Default 10 s.
    pub kill_grace: Duration,
    /// Stored log bytes per job, for replay. Default 64 MiB.
    pub log_retention_bytes: usize,
    /// Finished jobs kept (with their logs). Default 100,000.
    pub finished_job_retention: usize,
    /// Finished jobs (and their logs) older than this are deleted. Default 30 days.
    pub retention: Duration,
    /// Failed hand-offs in a row (assignment refused, lease expired, runner
    /// gone before acknowledging) after which a job ends `lost`. Default 10.
    pub handoff_limit: u32,
    /// Runners lost or stopped for longer than this are removed. Default 7 days.
    pub runner_retention: Duration,
    /// Where runs of projects that report their state (commit statuses,
    /// webhooks) are announced when they start and end, once durable.
    /// Default none.
    pub run_notices: Option<crate::source::notifier::RunNotices>,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            assign_lease: Duration::from_secs(5),
            runner_lost_after: Duration::from_secs(10),
            kill_grace: Duration::from_secs(10),
            log_retention_bytes: 64 << 20,
            finished_job_retention: 100_000,
            retention: Duration::from_secs(30 * 24 * 3600),
            handoff_limit: 10,
            runner_retention: Duration::from_secs(7 * 24 * 3600),
            run_notices: None,
        }
    }
}

/// A request to the core.
#[derive(Debug)]
pub enum Command {
    /// Queue a job; answered with JobAccepted.
    Submit(JobSpec, Responder),
    /// Cancel a job; answered with Ack.
    Cancel(u64, Responder),
    /// One job; answered with JobDetails.
    GetJob(u64, Responder),
    /// Newest jobs; answered with JobList.
    ListJobs(u32, Responder),
    /// Runners; answered with RunnerList.
    ListRunners(Responder),
    /// Start a run of a pipeline file (validated by the session, off the
    /// core); answered with RunAccepted.
    SubmitPipeline {
        /// The validated file.
        pipeline: Box<ValidatedPipeline>,
        /// Variables for every job (checked by the session).
        variables: Vec<(String, String)>,
        /// Where the answer goes.
        reply: Responder,
    },
    /// One run; answered with RunDetails.
    GetRun(u64, Responder),
    /// Newest runs; answered with RunList.
    ListRuns(u32, Responder),
    /// Cancel a run; answered with Ack.
    CancelRun(u64, Responder),
    /// Start a subscription.
    Subscribe {
        /// One job or all.
        job: Option<u64>,
        /// Include logs.
        logs: bool,
        /// Replay history first.
        replay: bool,
        /// Where events go.
        sink: EventSink,
        /// Internal: continue a replay from this log sequence number (the
        /// core's own follow-up after sending a long history).
        resume_from: Option<u64>,
    },
    /// An agent registers on a session.
    Register {
        /// What it said.
        msg: RegisterRunner,
        /// Its session.
        sender: SessionSender,
        /// The session's number.
        session: u64,
        /// Marked by the session on every message it reads.
        heard: Heard,
        /// The RegisterRunner's correlation id: RunnerRegistered echoes it.
        correlation: u64,
        /// The token of the session's Hello: the runner's own credential
        /// lets a reconnecting agent replace its old connection.
        token: String,
        /// Gets the runner id once registered, or the refusal (code and
        /// reason for RequestFailed).
        done: oneshot::Sender<Result<RunnerId, CoreError>>,
    },
    /// A frame from a registered agent.
    FromRunner {
        /// Runner.
        runner: RunnerId,
        /// Session it came on.
        session: u64,
        /// Correlation id (replies go there).
        correlation: u64,
        /// The message.
        message: Message,
    },
    /// Store a pipeline definition (validated off the core).
    CreatePipeline {
        /// The validated file.
        pipeline: Box<ValidatedPipeline>,
        /// The stored definition.
        reply: oneshot::Sender<PipelineDef>,
    },
    /// Stored pipeline definitions, newest first, without their YAML: at
    /// most `limit`, with ids below `before` if given.
    ListPipelines {
        /// Only ids below this.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
        /// The page.
        reply: oneshot::Sender<Vec<PipelineDef>>,
    },
    /// Runs, newest first: at most `limit`, with ids below `before` if given.
    ListRunsPage {
        /// Only ids below this.
        before: Option<u64>,
        /// At most this many.
        limit: usize,
        /// The page.
        reply: oneshot::Sender<Vec<valkyrie::message::RunInfo>>,
    },
    /// One stored pipeline definition.
    GetPipeline(u64, oneshot::Sender<Option<PipelineDef>>),
    /// Start a run of a stored pipeline, from its plan (validated off the
    /// core from the stored text); answers the run id.
    TriggerPipeline {
        /// The stored pipeline's id.
        id: u64,
        /// Its validated plan.
        pipeline: Box<ValidatedPipeline>,
        /// Variables for every job (checked by the caller).
        variables: Vec<(String, String)>,
        /// The run id, or why not.
        reply: oneshot::Sender<Result<u64, CoreError>>,
    },
    /// Ask a runner to drain.
    DrainRunner(u64, oneshot::Sender<Result<(), CoreError>>),
    /// Remove runner `name`'s record; answered with Ack or RequestFailed.
    RemoveRunner {
        /// The runner.
        name: String,
        /// Drain a connected runner and remove it once it disconnects.
        force: bool,
        /// Where the answer goes.
        reply: Responder,
    },
    /// A summary of the state, for health checks and metrics.
    Snapshot(oneshot::Sender<CoreSnapshot>),
    /// Whether `runner` holds attempt `attempt` of job `job` (artifact
    /// uploads are accepted only from there): the job's project if so.
    HoldsAttempt {
        /// The runner.
        runner: RunnerId,
        /// Job id.
        job: u64,
        /// Attempt.
        attempt: u32,
        /// The answer: the job's project when the runner holds the attempt.
        reply: oneshot::Sender<Option<String>>,
    },
    /// `command`, done on behalf of `actor` (what it changes is recorded
    /// in the audit log under that actor).
    As {
        /// Who asks.
        actor: Actor,
        /// What.
        command: Box<Command>,
    },
    /// A page of the audit log, newest first; answered with AuditList.
    ListAudit {
        /// At most this many (0: the default page; capped).
        limit: u32,
        /// Only records with an id below this (0: from the newest).
        before: u64,
        /// Where the answer goes.
        reply: Responder,
    },
    /// Audit records made outside the server (JWTs minted with
    /// `valkyrie-server token`); answered with Ack once stored.
    ImportAudit {
        /// (who, what, target, detail, when in ms since the epoch).
        records: Vec<(Actor, AuditAction, String, String, u64)>,
        /// Where the answer goes.
        reply: Responder,
    },
    /// Projects and the runs their repositories start.
    Project(ProjectCommand),
    /// Play a manual job, rerun a run.
    Run(RunCommand),
    /// A runner's session ended.
    RunnerDisconnected {
        /// Runner.
        runner: RunnerId,
        /// The session that ended.
        session: u64,
    },
}

/// Sends commands to the core.
#[derive(Clone, Debug)]
pub struct CoreHandle {
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
    validations: pipelines::Validations,
    artifacts: Option<Arc<crate::artifacts::ArtifactStore>>,
    cache: Option<Arc<crate::artifacts::cache::CacheIndex>>,
    mirrors: Arc<crate::source::mirror::Mirrors>,
    failure: watch::Receiver<Option<Arc<StoreError>>>,
}

impl CoreHandle {
    /// Waits until the core stops because its store failed (a commit
    /// error, or another server took the leadership); returns why. Pending
    /// forever while the store works.
    pub async fn store_failure(&self) -> Arc<StoreError> {
        let mut failure = self.failure.clone();
        let found = failure.wait_for(Option::is_some).await.map(|err| err.clone());
        match found {
            Ok(Some(err)) => err,
            _ => std::future::pending().await,
        }
    }

    /// The bare mirrors of projects' repositories, where pipeline files
    /// are read at a commit.
    pub fn mirrors(&self) -> &Arc<crate::source::mirror::Mirrors> {
        &self.mirrors
    }

    /// Keeps the projects' mirrors in `mirrors`. Default: a directory in
    /// the system's temporary directory (`valkyrie-server` keeps them in
    /// `<data dir>/mirrors`).
    pub fn with_mirrors(mut self, mirrors: Arc<crate::source::mirror::Mirrors>) -> Self {
        self.mirrors = mirrors;
        self
    }

    /// The metrics the core records into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The artifact store the sessions and the REST API serve, if any.
    pub fn artifacts(&self) -> Option<&Arc<crate::artifacts::ArtifactStore>> {
        self.artifacts.as_ref()
    }

    /// Serves artifacts from `store`. Default: none (artifact requests are
    /// refused).
    pub fn with_artifacts(mut self, store: Arc<crate::artifacts::ArtifactStore>) -> Self {
        self.artifacts = Some(store);
        self
    }

    /// The cache index (`cache:` entries) beside the artifact store, if any.
    pub fn cache(&self) -> Option<&Arc<crate::artifacts::cache::CacheIndex>> {
        self.cache.as_ref()
    }

    /// Keeps `cache:` entries in `index`. Default: none (cache lookups
    /// find nothing and cache uploads are stored as plain artifacts).
    pub fn with_cache(mut self, index: Arc<crate::artifacts::cache::CacheIndex>) -> Self {
        self.cache = Some(index);
        self
    }

    /// A summary of the core's state; `None` if the core has stopped.
    pub async fn snapshot(&self) -> Option<CoreSnapshot> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Command::Snapshot(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Whether `runner` holds attempt `attempt` of job `job`; false if the
    /// core has stopped.
    pub async fn holds_attempt(&self, runner: RunnerId, job: u64, attempt: u32) -> bool {
        self.attempt_project(runner, job, attempt).await.is_some()
    }

    /// The project of job `job` if `runner` holds its attempt `attempt`;
    /// `None` otherwise or if the core has stopped.
    pub async fn attempt_project(&self, runner: RunnerId, job: u64, attempt: u32) -> Option<String> {
        let (reply, rx) = oneshot::channel();
        let asked = self
            .send(Command::HoldsAttempt {
                runner,
                job,
                attempt,
                reply,
            })
            .await;
        if !asked {
            return None;
        }
        rx.await.ok().flatten()
    }

    /// Sends a command, waiting while the core's queue is full.
    pub async fn send(&self, command: Command) -> bool {
        match self.tx.try_reserve() {
            Ok(permit) => {
                permit.send(command);
                true
            }
            Err(mpsc::error::TrySendError::Closed(())) => false,
            // Waiting for room is boxed: its state would otherwise be part
            // of every session's task, idle or not.
            Err(mpsc::error::TrySendError::Full(())) => Box::pin(self.tx.send(command)).await.is_ok(),
        }
    }

    /// Room for one command now; `None` when the core's queue is full or
    /// the core has stopped. For callers that must never wait (a
    /// session's inbound hook, which runs in its connection's task).
    pub fn try_reserve(&self) -> Option<mpsc::Permit<'_, Command>> {
        self.tx.try_reserve().ok()
    }

    /// Sends a command answered on a oneshot and awaits its answer; `None`
    /// if the core has stopped.
    pub async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        if !self.send(command(tx)).await {
            return None;
        }
        rx.await.ok()
    }
}

/// The time of an input to the core, both clocks: the driver reads the OS
/// clock once per input and the core reads only this, so tests can drive
/// the core on a virtual clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time: leases, timeouts, liveness.
    pub at: Instant,
    /// Milliseconds since the Unix epoch: times stored and shown to people.
    pub wall_ms: u64,
}

impl Now {
    /// The OS clock's now.
    pub fn system() -> Self {
        Self {
            at: Instant::now(),
            wall_ms: now_ms(),
        }
    }
}

/// The OS clock as milliseconds since the Unix epoch: what drivers read
/// (the core itself reads only [`Now`]).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

struct StoredLog {
    stream: OutputStream,
    seq: u64,
    data: Bytes,
}

#[derive(Default)]
struct JobLogs {
    chunks: Vec<StoredLog>,
    bytes: usize,
    next_seq: u64,
    /// Next chunk sequence number expected from the current attempt.
    next_agent_seq: u64,
    /// Chunks received from the current attempt.
    agent_chunks: u64,
}

/// A result that arrived before all of its attempt's log chunks.
struct PendingResult {
    runner: RunnerId,
    result: valkyrie::message::JobResult,
    /// Record it anyway after this, missing chunks or not.
    deadline: Instant,
    /// The agent's request, acknowledged once the result is durable.
    ack: Option<Responder>,
}

/// What woke the core's driver (a command is kept beside it, not in it:
/// commands are large, and this is built on every turn).
enum Turn {
    Commands,
    Store(Completion),
    Tick,
}

/// The state the core owns.
pub struct Core {
    config: CoreConfig,
    metrics: Arc<Metrics>,
    tokens: Arc<Tokens>,
    scheduler: Scheduler,
    jobs: BTreeMap<JobId, JobRecord>,
    logs: HashMap<JobId, JobLogs>,
    runners: HashMap<RunnerId, RunnerRecord>,
    runner_names: HashMap<String, RunnerId>,
    subscribers: Subscribers,
    next_job: u64,
    next_runner: u64,
    finished: std::collections::VecDeque<JobId>,
    pending_results: HashMap<JobId, PendingResult>,
    runs: BTreeMap<u64, Run>,
    pipelines: BTreeMap<u64, PipelineDef>,
    next_pipeline: u64,
    /// Which run (and which of its jobs) a job belongs to.
    job_runs: HashMap<JobId, (u64, usize)>,
    next_run: u64,
    started: Instant,
    /// The time of the input being handled ([`Now`]).
    now: Now,
    /// Durable state; `None` keeps everything in memory only.
    store: Option<StoreHandle>,
    /// Changes of this turn, committed at its end.
    changes: Vec<Change>,
    /// What waits for this turn's changes to be durable.
    after: Vec<AfterCommit>,
    /// Batches handed to the store and not yet reported committed, each
    /// with what waits for it, oldest first.
    awaiting: std::collections::VecDeque<(u64, Vec<AfterCommit>)>,
    /// The id of the last batch handed to the store.
    last_batch: u64,
    /// The id of the last batch the store reported committed.
    committed_batch: u64,
    dirty_jobs: std::collections::BTreeSet<JobId>,
    dirty_runs: std::collections::BTreeSet<u64>,
    counters_dirty: bool,
    /// When each queued job entered the queue, for the dispatch latency.
    queued_since: HashMap<JobId, Instant>,
    /// Unfinished runs with a timeout, checked on each tick.
    timed_runs: std::collections::BTreeSet<u64>,
    /// Jobs whose hand-off failed, queued again once the instant passes
    /// (so a runner that refuses is not offered the job in a hot loop).
    held: Vec<(Instant, JobId)>,
    /// Runs being advanced now, and those asked to advance again meanwhile:
    /// a fail-fast cancel of a queued job finishes it at once, which
    /// advances its run again; that call is folded into the running one
    /// instead of nesting once per cancelled job.
    advancing_runs: HashMap<u64, bool>,
    /// The core's own queue, for work it hands itself later (weak, so the
    /// core still ends when every handle is gone).
    self_tx: mpsc::WeakSender<Command>,
    /// Audit records kept, in id order (and so, but for imported ones,
    /// oldest first).
    audit_log: std::collections::VecDeque<AuditRecord>,
    /// (at_ms, id) of the records made earlier than one before them in
    /// `audit_log` (tokens minted while the server was busy or down, and
    /// imported later): expiry from the front alone would keep them past
    /// their age.
    audit_stragglers: std::collections::BTreeSet<(u64, u64)>,
    next_audit: u64,
    /// Who the command being handled is for ([`Command::As`]).
    actor: Option<Actor>,
    /// Projects and the webhook deliveries seen.
    projects: projects::ProjectState,
    /// No runner can be lost before this instant ([`Core::lost_runners`]).
    lost_check_at: Instant,
    /// No lease or server-side deadline can run out before this instant
    /// ([`Core::due_jobs`]).
    deadline_check_at: Instant,
    /// No runner is old enough to be removed before this instant
    /// ([`Core::remove_old_runners`]).
    removal_check_at: Instant,
}

/// What the server waits past an agent's own kill grace (and a job's
/// timeout) before it ends a job the agent never reported.
const KILL_MARGIN: Duration = Duration::from_secs(5);

/// The longest the core goes without looking for due deadlines or old
/// runners, however far off the earliest is (a configured duration may be
/// too long to add to an `Instant`).
const LOOK_AT_LEAST_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Starts the core task with its state in memory only; returns its handle.
pub fn spawn(config: CoreConfig, tokens: Arc<Tokens>, metrics: Arc<Metrics>) -> CoreHandle {
    spawn_inner(config, tokens, metrics, None)
}

/// Starts the core task on a store: the state in `loaded` is recovered
/// first, and every change is committed to `store` before what depends on
/// it (an acceptance, an assignment) is sent.
pub fn spawn_with_store(
    config: CoreConfig,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    store: StoreHandle,
    loaded: Loaded,
) -> CoreHandle {
    spawn_inner(config, tokens, metrics, Some((store, loaded)))
}

fn spawn_inner(
    config: CoreConfig,
    tokens: Arc<Tokens>,
    metrics: Arc<Metrics>,
    store: Option<(StoreHandle, Loaded)>,
) -> CoreHandle {
    let (tx, rx) = mpsc::channel(65_536);
    let (store, loaded) = match store {
        Some((store, loaded)) => (Some(store), Some(loaded)),
        None => (None, None),
    };
    let mut core = Core::new(
        config,
        tokens,
        metrics.clone(),
        store,
        tx.downgrade(),
        Now::system(),
    );
    if let Some(loaded) = loaded {
        core.recover(loaded);
        core.flush();
    }
    let completions = core.store.as_ref().and_then(StoreHandle::take_completions);
    let (failed, failure) = watch::channel(None);
    tokio::spawn(core.run(rx, completions, failed));
    CoreHandle {
        tx,
        failure,
        metrics,
        validations: Default::default(),
        artifacts: None,
        cache: None,
        mirrors: Arc::new(crate::source::mirror::Mirrors::new(
            std::env::temp_dir().join(format!("valkyrie-mirrors-{}", std::process::id())),
        )),
    }
}

impl Core {
    /// A core with nothing in it, at `now`; `self_tx` reaches its own
    /// command queue (work it finishes off its own task comes back there).
    fn new(
        config: CoreConfig,
        tokens: Arc<Tokens>,
        metrics: Arc<Metrics>,
        store: Option<StoreHandle>,
        self_tx: mpsc::WeakSender<Command>,
        now: Now,
    ) -> Self {
        Self {
            config,
            metrics,
            tokens,
            scheduler: Scheduler::new(SchedulerConfig::default()),
            jobs: BTreeMap::new(),
            logs: HashMap::new(),
            runners: HashMap::new(),
            runner_names: HashMap::new(),
            subscribers: Subscribers::default(),
            next_job: 1,
            next_runner: 1,
            finished: Default::default(),
            pending_results: HashMap::new(),
            runs: BTreeMap::new(),
            pipelines: BTreeMap::new(),
            next_pipeline: 1,
            job_runs: HashMap::new(),
            next_run: 1,
            started: now.at,
            now,
            store,
            changes: Vec::new(),
            after: Vec::new(),
            awaiting: std::collections::VecDeque::new(),
            last_batch: 0,
            committed_batch: 0,
            dirty_jobs: Default::default(),
            dirty_runs: Default::default(),
            counters_dirty: false,
            timed_runs: Default::default(),
            held: Vec::new(),
            queued_since: HashMap::new(),
            advancing_runs: Default::default(),
            self_tx,
            audit_log: Default::default(),
            audit_stragglers: Default::default(),
            next_audit: 1,
            actor: None,
            projects: Default::default(),
            lost_check_at: now.at,
            deadline_check_at: now.at,
            removal_check_at: now.at,
        }
    }

    /// Runners silent or disconnected for too long. Looked for only once
    /// the first of them can be lost: no runner is heard less recently
    /// than it was at the last look, and one connecting or disconnecting
    /// since then can be lost no sooner than `runner_lost_after` after it,
    /// so the earliest of those instants bounds them all. A look at every
    /// 100 ms tick, reading each runner's clock, was about a tenth of the
    /// server's time with 10,000 runners heartbeating.
    fn lost_runners(&mut self, now: Instant) -> Vec<RunnerId> {
        if now < self.lost_check_at {
            return Vec::new();
        }
        let lost_after = self.config.runner_lost_after;
        let mut next = now + lost_after;
        let mut lost = Vec::new();
        for r in self.runners.values() {
            let since = match r.link() {
                Link::Connected { .. } => r.last_seen(),
                Link::Disconnected(since) => *since,
                Link::Lost => continue,
            };
            if now.saturating_duration_since(since) >= lost_after {
                lost.push(r.id);
            } else {
                next = next.min(since + lost_after);
            }
        }
        self.lost_check_at = next;
        lost
    }

    /// Jobs whose lease ran out (with their runner), and jobs past their
    /// server-side deadline (a timeout or a cancel the agent did not
    /// confirm). Only jobs on runners can have either, and they are looked
    /// for only once the first can be due: the earliest deadline seen at
    /// the last look, or one set since, which is at least
    /// [`Core::shortest_deadline`] after it is set (and at least once a
    /// day). A look at every 100 ms tick, through every runner, was about
    /// 2 % of the server's time with 10,000 idle runners heartbeating.
    fn due_jobs(&mut self, now: Instant) -> (Vec<(JobId, Option<RunnerId>)>, Vec<JobId>) {
        let (mut expired, mut overdue) = (Vec::new(), Vec::new());
        if now < self.deadline_check_at {
            return (expired, overdue);
        }
        let mut next = now + self.shortest_deadline().min(LOOK_AT_LEAST_EVERY);
        let active = self
            .runners
            .values()
            .flat_map(|r| r.jobs.iter())
            .filter_map(|id| self.jobs.get(id));
        for job in active {
            let (lease, kill) = match job.state() {
                JobState::Assigned => (job.lease_deadline, job.kill_deadline),
                JobState::Running => (None, job.kill_deadline),
                _ => (None, None),
            };
            if lease.is_some_and(|d| now >= d) {
                expired.push((job.id, job.runner));
            } else if kill.is_some_and(|d| now >= d) {
                overdue.push(job.id);
            } else {
                for d in lease.into_iter().chain(kill) {
                    next = next.min(d);
                }
            }
        }
        self.deadline_check_at = next;
        (expired, overdue)
    }

    /// The nearest a lease or a server-side deadline is ever set from the
    /// moment it is set: an assignment's lease, or a cancel's kill grace
    /// and margin (a timeout's deadline adds the job's timeout to that, and
    /// recovery more still).
    fn shortest_deadline(&self) -> Duration {
        self.config.assign_lease.min(self.config.kill_grace + KILL_MARGIN)
    }

    /// The driver: owns the clock and the store's commit reports, feeds
    /// the core its inputs, and ends it when the store fails (telling
    /// `failed`, whose owner decides what becomes of the process).
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        mut completions: Option<mpsc::UnboundedReceiver<Completion>>,
        failed: watch::Sender<Option<Arc<StoreError>>>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut first = None;
        loop {
            let turn = tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => {
                        first = Some(command);
                        Turn::Commands
                    }
                    None => return,
                },
                Some(done) = async { completions.as_mut()?.recv().await } => Turn::Store(done),
                _ = tick.tick() => Turn::Tick,
            };
            // Every message of the turn is queued before any connection's
            // driver is woken: each writes its share in one go.
            let _rings = RingBatch::hold();
            match turn {
                Turn::Commands => {
                    let now = Now::system();
                    if let Some(command) = first.take() {
                        self.handle(command, now);
                    }
                    // Drain what is already waiting, then schedule once.
                    for _ in 0..4096 {
                        match rx.try_recv() {
                            Ok(command) => self.handle(command, now),
                            Err(_) => break,
                        }
                    }
                }
                Turn::Store(Completion::Committed(batch)) => self.committed(batch, Now::system()),
                Turn::Store(Completion::Failed(err)) => {
                    // Nothing waiting for this batch or a later one is
                    // acknowledged or sent.
                    tracing::error!(%err, "the store failed; the core stops");
                    let _ = failed.send(Some(Arc::new(err)));
                    return;
                }
                Turn::Tick => self.on_tick(Now::system()),
            }
            self.dispatch();
            self.flush();
        }
    }

    fn handle(&mut self, command: Command, now: Now) {
        self.now = now;
        match command {
            Command::Submit(spec, reply) => self.submit(spec, reply),
            Command::Cancel(job, reply) => {
                self.audit(AuditAction::CancelJob, format!("job {job}"), String::new());
                self.cancel(JobId(job), reply)
            }
            Command::GetJob(job, reply) => match self.jobs.get(&JobId(job)) {
                Some(record) => reply.reply(JobDetails {
                    job: self.job_info(record),
                    steps: record.step_infos(),
                }),
                None => reply.fail(ErrorCode::NOT_FOUND, format!("no job {job}")),
            },
            Command::ListJobs(limit, reply) => {
                let limit = if limit == 0 { 100 } else { limit as usize };
                let jobs = self
                    .jobs
                    .values()
                    .rev()
                    .take(limit)
                    .map(|j| self.job_info(j))
                    .collect();
                reply.reply(JobList { jobs });
            }
            Command::ListRunners(reply) => {
                let now = self.now.at;
                let mut runners: Vec<_> = self.runners.values().map(|r| r.info(now)).collect();
                runners.sort_by_key(|r| r.runner_id);
                reply.reply(RunnerList { runners });
            }
            Command::CreatePipeline { pipeline, reply } => {
                let _ = reply.send(self.create_pipeline(*pipeline));
            }
            Command::ListPipelines { before, limit, reply } => {
                let page = self
                    .pipelines
                    .range(..before.unwrap_or(u64::MAX))
                    .rev()
                    .take(limit)
                    .map(|(_, def)| def.without_yaml())
                    .collect();
                let _ = reply.send(page);
            }
            Command::ListRunsPage { before, limit, reply } => {
                let page = self
                    .runs
                    .range(..before.unwrap_or(u64::MAX))
                    .rev()
                    .take(limit)
                    .map(|(_, run)| self.run_info(run))
                    .collect();
                let _ = reply.send(page);
            }
            Command::GetPipeline(id, reply) => {
                let _ = reply.send(self.pipelines.get(&id).cloned());
            }
            Command::TriggerPipeline {
                id,
                pipeline,
                variables,
                reply,
            } => {
                let _ = reply.send(self.trigger_pipeline(id, *pipeline, variables));
            }
            Command::DrainRunner(id, reply) => {
                let name = self
                    .runners
                    .get(&RunnerId(id))
                    .map(|r| r.name.clone())
                    .unwrap_or_default();
                self.audit(AuditAction::DrainRunner, format!("runner {id}"), name);
                let _ = reply.send(self.drain_runner(id));
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::HoldsAttempt {
                runner,
                job,
                attempt,
                reply,
            } => {
                let project = self
                    .jobs
                    .get(&JobId(job))
                    .filter(|j| j.check_attempt(runner, attempt).is_ok())
                    .map(|j| j.spec.project.clone());
                let _ = reply.send(project);
            }
            Command::RemoveRunner { name, force, reply } => self.remove_runner_by_name(&name, force, reply),
            Command::SubmitPipeline {
                pipeline,
                variables,
                reply,
            } => self.submit_pipeline(*pipeline, variables, reply),
            Command::GetRun(id, reply) => match self.runs.get(&id) {
                Some(run) => reply.reply(RunDetails {
                    run: self.run_info(run),
                }),
                None => reply.fail(ErrorCode::NOT_FOUND, format!("no run {id}")),
            },
            Command::ListRuns(limit, reply) => {
                let limit = if limit == 0 { 50 } else { limit as usize };
                let runs = self
                    .runs
                    .values()
                    .rev()
                    .take(limit)
                    .map(|r| self.run_info(r))
                    .collect();
                reply.reply(RunList { runs });
            }
            Command::CancelRun(id, reply) => {
                self.audit(AuditAction::CancelRun, format!("run {id}"), String::new());
                self.end_run(id, RunState::Cancelled, "cancelled by user", reply)
            }
            Command::Subscribe {
                job,
                logs,
                replay,
                sink,
                resume_from,
            } => self.subscribe(job.map(JobId), logs, replay, sink, resume_from),
            Command::Register {
                msg,
                sender,
                session,
                heard,
                correlation,
                token,
                done,
            } => {
                let link = (sender, session, heard);
                let _ = done.send(self.register(msg, link, correlation, &token));
            }
            Command::FromRunner {
                runner,
                session,
                correlation,
                message,
            } => self.on_runner_message(runner, session, correlation, message),
            Command::As { actor, command } => {
                self.actor = Some(actor);
                self.handle(*command, now);
                self.actor = None;
            }
            Command::ListAudit { limit, before, reply } => self.list_audit(limit, before, reply),
            Command::Project(command) => self.handle_project(command),
            Command::Run(command) => self.handle_run(command),
            Command::ImportAudit { records, reply } => {
                for (actor, action, target, detail, at_ms) in records {
                    self.audit_as(actor, action, target, detail, at_ms);
                }
                self.after_commit(AfterCommit::Reply(reply, valkyrie::message::Ack {}.into()));
            }
            Command::RunnerDisconnected { runner, session } => {
                if let Some(r) = self.runners.get_mut(&runner) {
                    if r.is_session(session) {
                        info!(runner = %r.name, "runner disconnected");
                        r.disconnect(self.now.at);
                        self.scheduler.set_availability(runner, r.availability());
                        if r.remove_when_gone && r.jobs.is_empty() {
                            let name = r.name.clone();
                            self.remove_runner(runner, "it disconnected after `vk runners rm --force`");
                            info!(runner = %name, "runner removed");
                        }
                    }
                }
            }
        }
    }

    // ---- jobs ----

    fn submit(&mut self, spec: JobSpec, reply: Responder) {
        if let Err(problem) = validate(&spec) {
            return reply.refuse(problem);
        }
        let detail = crate::masking::mask(&spec.name, &spec_secret_values(&spec));
        let id = self.create_job(spec);
        self.audit(AuditAction::SubmitJob, format!("job {}", id.0), detail);
        // spec: a submit is acknowledged only once it is durable.
        self.after_commit(AfterCommit::Reply(reply, JobAccepted { job_id: id.0 }.into()));
    }

    fn create_job(&mut self, spec: JobSpec) -> JobId {
        let id = JobId(self.next_job);
        self.next_job += 1;
        let record = JobRecord::new(id, spec, self.now.wall_ms);
        self.metrics.jobs_submitted.inc();
        self.enqueue(&record);
        debug!(job_id = id.0, name = %record.spec.name, "job queued");
        self.jobs.insert(id, record);
        self.counters_dirty = true;
        self.publish_state(id);
        id
    }

    // ---- runs ----

    fn submit_pipeline(
        &mut self,
        pipeline: ValidatedPipeline,
        variables: Vec<(String, String)>,
        reply: Responder,
    ) {
        let detail = crate::masking::mask(
            &format!(
                "pipeline `{}` ({})",
                pipeline.pipeline().name,
                pipeline.file_name()
            ),
            &crate::masking::secret_values(pipeline.pipeline()),
        );
        let id = match self.start_run(pipeline, crate::source::Trigger::plain("run", variables)) {
            Ok(id) => id,
            Err(why) => return reply.refuse(why),
        };
        self.audit(AuditAction::SubmitPipeline, format!("run {id}"), detail);
        self.after_commit(AfterCommit::Reply(reply, RunAccepted { run_id: id }.into()));
        self.advance_run(id);
    }

    /// Releases the jobs of run `id` that are ready, and ends the run when
    /// nothing is left.
    fn advance_run(&mut self, id: u64) {
        if let Some(again) = self.advancing_runs.get_mut(&id) {
            *again = true;
            return;
        }
        self.advancing_runs.insert(id, false);
        loop {
            self.advance_run_once(id);
            if self.advancing_runs.get(&id) != Some(&true) {
                break;
            }
            self.advancing_runs.insert(id, false);
        }
        self.advancing_runs.remove(&id);
    }

    fn advance_run_once(&mut self, id: u64) {
        let Some(run) = self.runs.get_mut(&id) else { return };
        self.dirty_runs.insert(id);
        if run.deadline.is_some() && !run.state().is_terminal() {
            self.timed_runs.insert(id);
        }
        let ready = run.advance();
        let specs: Vec<(usize, JobSpec)> = ready
            .iter()
            .map(|&i| (i, crate::artifacts::release::spec_with_downloads(run, i)))
            .collect();
        for (index, mut spec) in specs {
            self.add_checkout_token(id, &mut spec);
            let job = self.create_job(spec);
            self.job_runs.insert(job, (id, index));
            if let Some(run) = self.runs.get_mut(&id) {
                run.released(index, job);
            }
        }
        // Fail-fast: cancel what a failure stops (once per job).
        let stopped = self
            .runs
            .get(&id)
            .map(Run::fail_fast_cancellations)
            .unwrap_or_default();
        for job in stopped {
            if self.jobs.get(&job).is_some_and(|j| !j.cancel_requested) {
                debug!(run_id = id, job_id = job.0, "fail-fast cancels the job");
                self.cancel(job, Responder::detached());
            }
        }
        if let Some(run) = self.runs.get_mut(&id) {
            if run.finish_if_done(self.now.wall_ms) {
                info!(run_id = id, state = run.state().as_str(), "run finished");
                self.notify_run(id);
            }
        }
    }

    fn end_run(&mut self, id: u64, state: RunState, why: &str, reply: Responder) {
        let Some(run) = self.runs.get_mut(&id) else {
            reply.fail(ErrorCode::NOT_FOUND, format!("no run {id}"));
            return;
        };
        if run.state().is_terminal() {
            reply.fail(
                ErrorCode::CONFLICT,
                format!("run {id} already {}", run.state().as_str()),
            );
            return;
        }
        for job in run.end_early(state, why) {
            self.cancel(job, Responder::detached());
        }
        self.advance_run(id);
        reply.ack();
    }

    fn run_info(&self, run: &Run) -> valkyrie::message::RunInfo {
        run.info(|id| self.jobs.get(&id).map(|j| (j, self.job_info(j).reason)))
    }

    fn enqueue(&mut self, record: &JobRecord) {
        // A container job also needs the Docker executor's tag.
        let required = self.scheduler.tag_set(record.spec.required_tags());
        let queued = QueuedJob {
            id: record.id,
            priority: record.spec.priority,
            project: record.spec.project.clone(),
            required,
            enqueued_at_ms: self.clock_ms(),
        };
        if let Err(err) = self.scheduler.enqueue(queued) {
            warn!(%err, "job already known to the scheduler");
        } else {
            self.queued_since.insert(record.id, self.now.at);
        }
    }

    /// The scheduler's clock: milliseconds since the core started.
    fn clock_ms(&self) -> u64 {
        self.now.at.saturating_duration_since(self.started).as_millis() as u64
    }

    fn cancel(&mut self, id: JobId, reply: Responder) {
        let Some(job) = self.jobs.get_mut(&id) else {
            reply.fail(ErrorCode::NOT_FOUND, format!("no job {}", id.0));
            return;
        };
        match job.state() {
            JobState::Queued => {
                self.scheduler.remove_job(id);
                self.queued_since.remove(&id);
                let _ = job.force_final(
                    JobState::Cancelled,
                    "cancelled while queued".into(),
                    self.now.wall_ms,
                );
                self.finished_job(id);
            }
            JobState::Assigned | JobState::Running => {
                job.cancel_requested = true;
                self.dirty_jobs.insert(id);
                job.kill_deadline = Some(self.now.at + self.config.kill_grace + KILL_MARGIN);
                let attempt = job.attempt;
                let runner = job.runner;
                if let Some(sender) = runner.and_then(|r| self.runners.get(&r)).and_then(|r| r.sender()) {
                    let cancel = CancelAssignment {
                        job_id: id.0,
                        attempt,
                        reason: "cancelled by user".into(),
                    };
                    if let Err(err) = sender.push(0, cancel) {
                        warn!(%err, job_id = id.0, "could not send cancel; the server-side deadline will end it");
                    }
                }
            }
            state => {
                reply.fail(
                    ErrorCode::CONFLICT,
                    format!("job {} already {}", id.0, state.as_str()),
                );
                return;
            }
        }
        reply.ack();
    }

    fn job_info(&self, job: &JobRecord) -> valkyrie::message::JobInfo {
        let reason = if job.state() == JobState::Queued {
            self.scheduler
                .pending_reason(job.id, self.clock_ms())
                .map(|r| r.to_string())
                .unwrap_or_else(|| job.message.clone())
        } else {
            job.message.clone()
        };
        job.info(reason)
    }

    /// A job changed: store it and its run, update the run, tell
    /// subscribers.
    fn publish_state(&mut self, id: JobId) {
        self.dirty_jobs.insert(id);
        if let Some(run) = self.announce_state(id) {
            self.dirty_runs.insert(run);
        }
    }

    /// A job changed in a way that is stored with its next change, not on
    /// its own (nor is its run's record): update its run and tell
    /// subscribers. Returns the run it belongs to.
    fn announce_state(&mut self, id: JobId) -> Option<u64> {
        let mut changed_run = None;
        if let (Some(&(run, index)), Some(job)) = (self.job_runs.get(&id), self.jobs.get(&id)) {
            if let Some(run_state) = self.runs.get_mut(&run) {
                run_state.job_changed(index, job.state());
                changed_run = Some(run);
            }
        }
        // Sent once per turn, with the state the job has then.
        self.subscribers.state_changed(id);
        changed_run
    }

    /// A job reached a final state: free its slot, tell subscribers, and
    /// forget the oldest finished jobs beyond the retention.
    fn finished_job(&mut self, id: JobId) {
        self.scheduler.job_finished(id);
        // A job can end while queued (cancelled, timed out): not dispatched.
        self.queued_since.remove(&id);
        if let Some(runner) = self.jobs.get(&id).and_then(|j| j.runner) {
            if let Some(r) = self.runners.get_mut(&runner) {
                r.jobs.remove(&id);
            }
        }
        self.publish_state(id);
        if let Some(&(run, _)) = self.job_runs.get(&id) {
            self.advance_run(run);
        }
        self.finished.push_back(id);
        self.expire_finished(self.now.wall_ms);
    }

    /// Deletes the oldest finished jobs and their logs beyond the retention
    /// count or age. Jobs finish in order, so only the front is looked at.
    fn expire_finished(&mut self, now_ms: u64) {
        let cutoff = now_ms.saturating_sub(self.config.retention.as_millis() as u64);
        while let Some(&front) = self.finished.front() {
            let too_many = self.finished.len() > self.config.finished_job_retention;
            let too_old = self
                .jobs
                .get(&front)
                .and_then(|j| j.finished_at_ms)
                .is_none_or(|t| t < cutoff);
            if !too_many && !too_old {
                break;
            }
            if let Some(old) = self.finished.pop_front() {
                let jobs = &self.jobs;
                self.subscribers
                    .publish_changed_job(old, |j| jobs.get(&j).map(state_event));
                self.jobs.remove(&old);
                self.dirty_jobs.insert(old);
                self.logs.remove(&old);
                self.job_runs.remove(&old);
            }
        }
    }

    /// The current attempt is over without a final state: back to the queue.
    fn retry(&mut self, id: JobId, previous_runner: Option<RunnerId>) {
        self.scheduler.job_finished(id);
        if let Some(r) = previous_runner.and_then(|r| self.runners.get_mut(&r)) {
            r.jobs.remove(&id);
        }
        if let Some(logs) = self.logs.get_mut(&id) {
            logs.next_agent_seq = 0;
            logs.agent_chunks = 0;
        }
        if let Some(job) = self.jobs.get(&id) {
            let job = job.clone();
            self.enqueue(&job);
        }
        self.publish_state(id);
    }

    fn apply_disposition(&mut self, id: JobId, runner: Option<RunnerId>, disposition: Disposition) {
        match disposition {
            Disposition::Retry => self.retry(id, runner),
            Disposition::HandBack { failures } => self.hand_back(id, runner, failures),
            Disposition::Final(_) => self.finished_job(id),
        }
    }

    /// A hand-off failed: the job goes back to the queue after a delay that
    /// doubles with each failure in a row (100 ms, 200 ms, … at most 5 s),
    /// so a runner that refuses is not offered it again in a hot loop.
    fn hand_back(&mut self, id: JobId, previous_runner: Option<RunnerId>, failures: u32) {
        const FIRST_DELAY: Duration = Duration::from_millis(100);
        const MAX_DELAY: Duration = Duration::from_secs(5);
        self.scheduler.job_finished(id);
        if let Some(r) = previous_runner.and_then(|r| self.runners.get_mut(&r)) {
            r.jobs.remove(&id);
        }
        if let Some(logs) = self.logs.get_mut(&id) {
            logs.next_agent_seq = 0;
            logs.agent_chunks = 0;
        }
        let delay = FIRST_DELAY
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(MAX_DELAY);
        self.held.push((self.now.at + delay, id));
        self.publish_state(id);
    }

    /// Queues the held jobs whose delay has passed (and that are still
    /// queued: one may have been cancelled meanwhile).
    fn release_held(&mut self, now: Instant) {
        if self.held.is_empty() {
            return;
        }
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(at, _)| *at <= now);
        self.held = later;
        for (_, id) in due {
            if let Some(job) = self.jobs.get(&id).filter(|j| j.state() == JobState::Queued) {
                let job = job.clone();
                self.enqueue(&job);
            }
        }
    }

    /// Starts a subscription. With `replay`, a job's stored history goes
    /// first, in history order (a final state after the output). A long
    /// history is sent from a task that waits for the subscriber (the core
    /// never does), after which the core is asked to continue from the next
    /// log sequence number; once what is left fits the subscriber's queue,
    /// the rest is queued and live events follow with no gap or duplicate.
    fn subscribe(
        &mut self,
        job: Option<JobId>,
        logs: bool,
        replay: bool,
        sink: EventSink,
        resume_from: Option<u64>,
    ) {
        /// Log chunks queued at once without waiting for the subscriber.
        const QUEUED_REPLAY_CHUNKS: usize = 128;
        let respond = sink.responder();
        if let Some(id) = job {
            let Some(record) = self.jobs.get(&id) else {
                respond.fail(ErrorCode::NOT_FOUND, format!("no job {}", id.0));
                return;
            };
            if replay {
                let state = EventBody::State {
                    state: record.state(),
                    attempt: record.attempt,
                    runner: record.runner_name.clone(),
                    exit_code: record.exit_code,
                    message: self.job_info(record).reason,
                };
                let terminal = record.state().is_terminal();
                let from = resume_from.unwrap_or(0);
                let chunks: Vec<EventBody> = match self.logs.get(&id).filter(|_| logs) {
                    Some(stored) => stored
                        .chunks
                        .iter()
                        .filter(|c| c.seq >= from)
                        .map(|c| EventBody::Log {
                            stream: c.stream,
                            seq: c.seq,
                            data: c.data.clone(),
                        })
                        .collect(),
                    None => Vec::new(),
                };
                let mut events = Vec::new();
                if !terminal && resume_from.is_none() {
                    events.push(state.clone());
                }
                if terminal || chunks.len() > QUEUED_REPLAY_CHUNKS {
                    let next = match chunks.last() {
                        Some(EventBody::Log { seq, .. }) => seq + 1,
                        _ => from,
                    };
                    events.extend(chunks);
                    if terminal {
                        // No live event can follow a final state.
                        events.push(state);
                        events.push(EventBody::ReplayDone);
                    }
                    let core = self.self_tx.clone();
                    tokio::spawn(async move {
                        for body in events {
                            let event = valkyrie::message::Event { job_id: id.0, body };
                            if sink.send(event).await.is_err() {
                                return;
                            }
                        }
                        if !terminal {
                            if let Some(core) = core.upgrade() {
                                let again = Command::Subscribe {
                                    job: Some(id.0),
                                    logs,
                                    replay,
                                    sink,
                                    resume_from: Some(next),
                                };
                                let _ = core.send(again).await;
                            }
                        }
                    });
                    return;
                }
                events.extend(chunks);
                events.push(EventBody::ReplayDone);
                for body in events {
                    let event = valkyrie::message::Event { job_id: id.0, body };
                    if sink.try_send(event).is_err() {
                        respond.fail(
                            ErrorCode::CONFLICT,
                            "the subscriber's queue is full; subscribe again once it has caught up",
                        );
                        return;
                    }
                }
            }
        }
        if job.is_none() && replay {
            // The history of every job is the current state of the
            // unfinished ones (finished ones are read with ListJobs).
            let unfinished = self
                .jobs
                .values()
                .filter(|j| !j.state().is_terminal())
                .map(|j| j.id)
                .collect();
            let jobs = &self.jobs;
            self.subscribers
                .add_replaying(sink, logs, unfinished, |j| jobs.get(&j).map(state_event));
            return;
        }
        self.subscribers.add(sink, job, logs);
    }

    // ---- runners ----

    fn register(
        &mut self,
        msg: RegisterRunner,
        (sender, session, heard): (SessionSender, u64, Heard),
        correlation: u64,
        token: &str,
    ) -> Result<RunnerId, CoreError> {
        if msg.slots == 0 {
            return Err(CoreError::Invalid(
                "slots must be at least 1 (the number of jobs this runner runs at once)".into(),
            ));
        }
        if msg.name.is_empty() {
            return Err(CoreError::Invalid("runner name must not be empty".into()));
        }
        // A name belongs to one connected agent at a time. The runner's own
        // credential proves the same agent reconnecting (its old connection
        // is dead but not yet noticed): the new connection replaces it.
        // Anyone else is refused instead of silently taking the record over.
        if let Some(existing) = self
            .runner_names
            .get(&msg.name)
            .and_then(|id| self.runners.get(id))
        {
            if let Link::Connected { sender: old, .. } = existing.link() {
                if !crate::auth::same_token(token, &existing.credential) {
                    return Err(CoreError::Conflict(format!(
                        "runner name `{}` is in use by a connected agent (runner {}); give this agent \
                         another name (--name), or stop the other agent first",
                        msg.name, existing.id.0
                    )));
                }
                let old = old.clone();
                tokio::spawn(async move {
                    old.close(ErrorCode::NORMAL, "replaced by a newer connection of this runner")
                        .await
                });
            }
        }
        let now = self.now.at;
        let id = match self.runner_names.get(&msg.name) {
            Some(id) => *id,
            None => {
                let id = RunnerId(self.next_runner);
                self.next_runner += 1;
                self.runner_names.insert(msg.name.clone(), id);
                id
            }
        };
        let (credential, detail) = match self.runners.get(&id) {
            Some(existing) => (existing.credential.clone(), "registered again"),
            None => (self.tokens.issue_runner_credential(), "credential issued"),
        };
        self.audit_as(
            Actor::runner(msg.name.clone()),
            AuditAction::RegisterRunner,
            format!("runner {}", id.0),
            detail.to_owned(),
            self.now.wall_ms,
        );
        let previous_jobs = self.runners.get(&id).map(|r| r.jobs.clone()).unwrap_or_default();
        let row = RunnerRow {
            id: id.0,
            name: msg.name.clone(),
            tags: msg.tags.clone(),
            os: msg.os.clone(),
            arch: msg.arch.clone(),
            slots: msg.slots,
            version: msg.version.clone(),
            credential: credential.clone(),
        };
        let link = Link::Connected {
            session,
            sender: sender.clone(),
            heard,
        };
        let record = RunnerRecord::new(row.clone(), link, now);
        let availability = record.availability();
        self.runners.insert(id, record);
        self.record(Change::Runner(Box::new(row)));
        self.counters_dirty = true;
        let tags = self.scheduler.tag_set(&msg.tags);
        self.scheduler.upsert_runner(id, tags, msg.slots);
        self.scheduler.set_availability(id, availability);

        // Re-attach the attempts the agent still runs; everything else the
        // server had on this runner was lost with the old connection.
        let mut stale = Vec::new();
        let mut kept = std::collections::BTreeSet::new();
        for RunningAttempt { job_id, attempt } in msg.running {
            let jid = JobId(job_id);
            match self.jobs.get(&jid) {
                Some(job) if job.check_attempt(id, attempt).is_ok() => {
                    // After a restart the scheduler does not know this
                    // attempt yet: it holds one of the runner's slots.
                    self.scheduler.restore_running(jid, &job.spec.project, id);
                    kept.insert(jid);
                    // Cancelled while the agent was away: the cancel it
                    // missed is sent again.
                    if job.cancel_requested {
                        let cancel = CancelAssignment {
                            job_id,
                            attempt,
                            reason: "cancelled by user".into(),
                        };
                        if let Err(err) = sender.push(0, cancel) {
                            debug!(%err, job_id, "could not send the cancel again");
                        }
                    }
                }
                _ => stale.push(RunningAttempt { job_id, attempt }),
            }
            // The agent runs it, so it took the assignment, even if its
            // AssignAck never arrived or was not stored before a crash:
            // left assigned, the lease would expire and the job run twice.
            if let Some(job) = self
                .jobs
                .get_mut(&jid)
                .filter(|j| j.state() == JobState::Assigned)
            {
                if job.acknowledge(id, attempt, self.now.wall_ms).is_ok() {
                    self.publish_state(jid);
                }
            }
        }
        if let Some(r) = self.runners.get_mut(&id) {
            r.jobs = kept.clone();
        }
        for jid in previous_jobs.difference(&kept) {
            self.lose(*jid, Some(id), "its runner reconnected without it");
        }
        info!(runner = %msg.name, runner_id = id.0, slots = msg.slots, reattached = kept.len(), "runner registered");
        // spec: the reply echoes the request's correlation id (REPLY flag).
        let _ = sender.push(
            correlation,
            RunnerRegistered {
                runner_id: id.0,
                credential,
                stale,
            },
        );
        Ok(id)
    }

    fn lose(&mut self, id: JobId, runner: Option<RunnerId>, why: &str) {
        let Some(job) = self.jobs.get_mut(&id) else { return };
        let result = job.lose_attempt(why.to_owned(), self.config.handoff_limit, self.now.wall_ms);
        if let Ok(disposition) = result {
            warn!(job_id = id.0, why, "job attempt lost");
            self.apply_disposition(id, runner, disposition);
        }
    }

    fn on_runner_message(&mut self, runner: RunnerId, session: u64, correlation: u64, message: Message) {
        let Some(record) = self.runners.get_mut(&runner) else {
            return;
        };
        if !record.is_session(session) {
            // A frame from a connection that was replaced; nothing it says counts.
            return;
        }
        let sender = record.sender().cloned();
        let reply = |msg_ok: Result<(), TransitionError>| {
            if let Some(sender) = &sender {
                let responder = Responder::new(sender.clone(), correlation);
                match msg_ok {
                    Ok(()) => responder.ack(),
                    Err(err @ TransitionError::StaleAttempt { .. }) => {
                        warn!(%err, "stale report refused");
                        responder.fail(ErrorCode::STALE_ATTEMPT, err.to_string())
                    }
                    // A late report of an attempt that ended (its hand-off
                    // failed, or the job finished): expected, not alarming.
                    Err(err @ TransitionError::AttemptOver { .. }) => {
                        debug!(%err, "report of an ended attempt refused");
                        responder.fail(ErrorCode::STALE_ATTEMPT, err.to_string())
                    }
                    Err(err) => responder.fail(ErrorCode::CONFLICT, err.to_string()),
                }
            }
        };
        let now = self.now.wall_ms;
        match message {
            Message::Heartbeat(_) => {}
            Message::Drain(d) => {
                info!(runner = %record.name, reason = %d.reason, "runner draining");
                record.drain();
                self.scheduler.set_availability(runner, record.availability());
            }
            Message::AssignAck(ack) => {
                let id = JobId(ack.job_id);
                let result = match self.jobs.get_mut(&id) {
                    None => Err(TransitionError::StaleAttempt {
                        job: id,
                        got: ack.attempt,
                        current: 0,
                    }),
                    Some(job) if ack.accepted => {
                        let r = job.acknowledge(runner, ack.attempt, now);
                        if r.is_ok() && job.spec.timeout_ms > 0 {
                            job.kill_deadline = Some(
                                self.now.at
                                    + Duration::from_millis(job.spec.timeout_ms)
                                    + self.config.kill_grace
                                    + KILL_MARGIN,
                            );
                        }
                        r
                    }
                    // A refusal is handled below, once the borrow ends.
                    Some(job) => job.check_attempt(runner, ack.attempt),
                };
                let assigned = self
                    .jobs
                    .get(&id)
                    .is_some_and(|j| j.state() == JobState::Assigned);
                if result.is_ok() && !ack.accepted && assigned {
                    // Not the job's fault: it goes back to the queue.
                    let name = self.runners.get(&runner).map_or("?", |r| r.name.as_str());
                    let why = format!("runner `{name}` refused it: {}", ack.reason);
                    self.lose(id, Some(runner), &why);
                } else if result.is_ok() && ack.accepted {
                    // Stored with the job's next change (its end, for most
                    // jobs), as step reports are, not in a write of its
                    // own, and so is its run's record: a durable store
                    // would otherwise spend a third of a short job's
                    // writes on it. A restart before then finds the
                    // attempt assigned, and the agent's re-report makes it
                    // running again (spec §10).
                    self.announce_state(id);
                } else if result.is_ok() {
                    self.publish_state(id);
                }
                if ack.accepted && result.is_err() {
                    // The agent took an attempt the server no longer counts
                    // (its lease ran out, or it was handed back): stop it,
                    // so that it does not hold a slot for nothing.
                    if let Some(sender) = &sender {
                        let cancel = CancelAssignment {
                            job_id: ack.job_id,
                            attempt: ack.attempt,
                            reason: "this attempt is no longer current (its lease ran out)".into(),
                        };
                        if let Err(err) = sender.push(0, cancel) {
                            debug!(%err, job_id = id.0, "could not cancel an ended attempt");
                        }
                    }
                }
                reply(result);
            }
            Message::JobStarted(started) => {
                let id = JobId(started.job_id);
                let result = match self.jobs.get(&id) {
                    Some(job) => job.check_attempt(runner, started.attempt),
                    None => Err(TransitionError::StaleAttempt {
                        job: id,
                        got: started.attempt,
                        current: 0,
                    }),
                };
                reply(result);
            }
            Message::LogChunk(chunk) => {
                let id = JobId(chunk.job_id);
                let current = self.jobs.get(&id).map(|j| j.check_attempt(runner, chunk.attempt));
                match current {
                    Some(Ok(())) => self.store_log(id, chunk.seq, chunk.stream, chunk.data),
                    Some(Err(err)) => debug!(%err, "stale log chunk dropped"),
                    None => {}
                }
            }
            Message::StepResult(step) => {
                let id = JobId(step.job_id);
                let result = match self.jobs.get_mut(&id) {
                    // Kept in memory and stored with the job's next change
                    // (at the latest its end): a store write per step would
                    // cost an fsync each on a durable store.
                    Some(job) => job.check_attempt(runner, step.attempt).map(|()| {
                        job.step_finished(
                            step.attempt,
                            step.step,
                            step.outcome,
                            step.exit_code,
                            step.duration_ms,
                        );
                    }),
                    None => Err(TransitionError::StaleAttempt {
                        job: id,
                        got: step.attempt,
                        current: 0,
                    }),
                };
                reply(result);
            }
            Message::JobResult(result) => {
                let id = JobId(result.job_id);
                let check = match self.jobs.get(&id) {
                    Some(job) => job.check_attempt(runner, result.attempt),
                    None => Err(TransitionError::StaleAttempt {
                        job: id,
                        got: result.attempt,
                        current: 0,
                    }),
                };
                if check.is_ok() {
                    // The steps whose StepResult was not sent are known
                    // from here alone; a repeated report changes nothing.
                    if let Some(job) = self.jobs.get_mut(&id) {
                        for step in &result.steps {
                            job.step_finished(
                                result.attempt,
                                step.step,
                                step.outcome,
                                step.exit_code,
                                step.duration_ms,
                            );
                        }
                    }
                    // The agent forgets a result once it is acknowledged, so
                    // the acknowledgement waits until the result is durable:
                    // acknowledged earlier, a crash would lose the result and
                    // the finished job would run again.
                    let ack = sender.clone().map(|s| Responder::new(s, correlation));
                    let received = self.logs.get(&id).map_or(0, |l| l.agent_chunks);
                    if received < result.log_chunks {
                        // Log chunks travel on the bulk lane and may still be
                        // behind this result: record it once they are in.
                        let deadline = self.now.at + Duration::from_secs(5);
                        self.pending_results.insert(
                            id,
                            PendingResult {
                                runner,
                                result,
                                deadline,
                                ack,
                            },
                        );
                    } else {
                        self.record_pending(PendingResult {
                            runner,
                            result,
                            deadline: self.now.at,
                            ack,
                        });
                    }
                } else {
                    reply(check);
                }
            }
            other => {
                if let Some(sender) = &sender {
                    Responder::new(sender.clone(), correlation).fail(
                        ErrorCode::PERMISSION_DENIED,
                        format!("agents may not send {}", other.kind()),
                    );
                }
            }
        }
    }

    /// Records a result and acknowledges it to its agent once durable.
    fn record_pending(&mut self, pending: PendingResult) {
        self.record_result(pending.runner, pending.result);
        if let Some(ack) = pending.ack {
            self.after_commit(AfterCommit::Reply(ack, valkyrie::message::Ack {}.into()));
        }
    }

    fn record_result(&mut self, runner: RunnerId, result: valkyrie::message::JobResult) {
        let id = JobId(result.job_id);
        let now = self.now.wall_ms;
        let Some(job) = self.jobs.get_mut(&id) else { return };
        // A result for an attempt still leased counts as its ack too.
        if job.state() == JobState::Assigned {
            let _ = job.acknowledge(runner, result.attempt, now);
        }
        match job.complete(
            runner,
            result.attempt,
            result.outcome,
            result.exit_code,
            result.message,
            now,
        ) {
            Ok(disposition) => {
                debug!(job_id = id.0, outcome = ?result.outcome, "job attempt finished");
                self.apply_disposition(id, Some(runner), disposition);
            }
            Err(err) => warn!(%err, "job result refused"),
        }
    }

    fn store_log(&mut self, id: JobId, agent_seq: u64, stream: OutputStream, data: Bytes) {
        let logs = self.logs.entry(id).or_default();
        // A re-attached agent replays its attempt's journal from the start
        // (it cannot know what reached us before it died): what we hold
        // already is dropped, so no line is stored twice.
        if logs.agent_chunks > 0 && agent_seq < logs.next_agent_seq {
            debug!(job_id = id.0, agent_seq, "log chunk already stored; dropped");
            return;
        }
        if agent_seq == 0 && logs.agent_chunks == 0 && logs.next_seq > 0 {
            // The first output of a retried attempt: a header line keeps
            // `vk logs` from running the attempts together.
            if let Some(job) = self.jobs.get(&id).filter(|job| job.attempt > 1) {
                let header = format!(
                    "── attempt {} on {} ──\n",
                    job.attempt,
                    job.runner_name.as_deref().unwrap_or("?")
                );
                self.append_log(id, OutputStream::System, Bytes::from(header));
            }
        }
        self.metrics.log_bytes.inc_by(data.len() as u64);
        let logs = self.logs.entry(id).or_default();
        logs.agent_chunks += 1;
        if agent_seq != logs.next_agent_seq {
            warn!(
                job_id = id.0,
                expected = logs.next_agent_seq,
                got = agent_seq,
                "log chunk out of sequence"
            );
        }
        if agent_seq > logs.next_agent_seq {
            // Chunks are missing: lost in transit, or published by a leader
            // that died before storing them (this server took over, or
            // restarted, and expects the attempt's first chunk). Their
            // sequence numbers stay unused, so this chunk is numbered above
            // any its predecessor may have shown a follower, who would
            // otherwise skip it as already shown.
            logs.next_seq += agent_seq - logs.next_agent_seq;
        }
        logs.next_agent_seq = agent_seq + 1;
        self.append_log(id, stream, data);
        let chunks = self.logs.get(&id).map_or(0, |l| l.agent_chunks);
        if self
            .pending_results
            .get(&id)
            .is_some_and(|p| chunks >= p.result.log_chunks)
        {
            if let Some(pending) = self.pending_results.remove(&id) {
                self.record_pending(pending);
            }
        }
    }

    /// Stores (within the retention limit), persists and publishes one chunk
    /// of a job's output under the job's next sequence number.
    fn append_log(&mut self, id: JobId, stream: OutputStream, data: Bytes) {
        let logs = self.logs.entry(id).or_default();
        let seq = logs.next_seq;
        logs.next_seq += 1;
        if logs.bytes + data.len() <= self.config.log_retention_bytes {
            logs.bytes += data.len();
            if self.store.is_some() {
                self.changes.push(Change::Log(LogRow {
                    job: id.0,
                    seq,
                    stream,
                    data: data.to_vec(),
                }));
            }
            logs.chunks.push(StoredLog {
                stream,
                seq,
                data: data.clone(),
            });
        }
        if !self.subscribers.is_empty() {
            let jobs = &self.jobs;
            self.subscribers
                .publish(id, &EventBody::Log { stream, seq, data }, |j| {
                    jobs.get(&j).map(state_event)
                });
        }
    }

    // ---- time ----

    fn on_tick(&mut self, now: Now) {
        self.now = now;
        let now = now.at;
        let jobs = &self.jobs;
        self.subscribers.flush_markers(|j| jobs.get(&j).map(state_event));
        self.release_held(now);
        self.expire_finished(self.now.wall_ms);
        self.expire_audit(self.now.wall_ms);
        let runs = &self.runs;
        self.timed_runs
            .retain(|id| runs.get(id).is_some_and(|r| !r.state().is_terminal()));
        let timed_out: Vec<u64> = self
            .timed_runs
            .iter()
            .filter_map(|id| self.runs.get(id))
            .filter(|r| r.deadline.is_some_and(|d| now >= d))
            .map(|r| r.id)
            .collect();
        for id in timed_out {
            warn!(run_id = id, "run timed out");
            self.end_run(id, RunState::TimedOut, "run timed out", Responder::detached());
        }
        let late: Vec<JobId> = self
            .pending_results
            .iter()
            .filter(|(_, p)| now >= p.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(pending) = self.pending_results.remove(&id) {
                warn!(
                    job_id = id.0,
                    "recording a result whose log chunks did not all arrive"
                );
                self.record_pending(pending);
            }
        }
        // Leases that ran out and server-side deadlines.
        let (expired, overdue) = self.due_jobs(now);
        for (id, runner) in expired {
            self.lose(
                id,
                runner,
                "the runner did not acknowledge the assignment in time",
            );
        }
        for id in overdue {
            let Some(job) = self.jobs.get_mut(&id) else {
                continue;
            };
            let (state, why) = if job.cancel_requested {
                (
                    JobState::Cancelled,
                    "cancelled; the agent did not confirm in time",
                )
            } else {
                (
                    JobState::TimedOut,
                    "timed out (enforced by the server: the agent did not report in time)",
                )
            };
            let attempt = job.attempt;
            let runner = job.runner;
            let _ = job.force_final(state, why.into(), self.now.wall_ms);
            if let Some(sender) = runner.and_then(|r| self.runners.get(&r)).and_then(|r| r.sender()) {
                let _ = sender.push(
                    0,
                    CancelAssignment {
                        job_id: id.0,
                        attempt,
                        reason: why.into(),
                    },
                );
            }
            self.finished_job(id);
        }
        self.remove_old_runners(now);
        let lost = self.lost_runners(now);
        for id in lost {
            let Some(r) = self.runners.get_mut(&id) else {
                continue;
            };
            warn!(runner = %r.name, "runner lost");
            if let Some(sender) = r.sender() {
                let sender = sender.clone();
                tokio::spawn(async move {
                    sender
                        .close(ErrorCode::IDLE_TIMEOUT, "runner silent too long")
                        .await
                });
            }
            r.lose();
            let jobs = std::mem::take(&mut r.jobs);
            self.scheduler.set_availability(id, r.availability());
            for job in jobs {
                self.lose(job, Some(id), "its runner was lost");
            }
        }
    }

    fn dispatch(&mut self) {
        if self.scheduler.queue_len() == 0 {
            return;
        }
        let plan = self.scheduler.schedule(self.clock_ms());
        let lease = self.config.assign_lease;
        for assignment in plan {
            let (job_id, runner_id) = (assignment.job, assignment.runner);
            let Some(runner) = self.runners.get_mut(&runner_id) else {
                continue;
            };
            let Some(job) = self.jobs.get_mut(&job_id) else {
                continue;
            };
            let attempt = match job.assign(runner_id, &runner.name, self.now.at + lease) {
                Ok(attempt) => attempt,
                Err(err) => {
                    warn!(%err, "scheduler planned an illegal assignment");
                    self.scheduler.job_finished(job_id);
                    continue;
                }
            };
            runner.jobs.insert(job_id);
            // Measured with a monotonic clock at full resolution: in ms since
            // the epoch, as it was, a dispatch in the same turn as its
            // submission always measured 0. The core's one read of the OS
            // clock: a metric of real time, which decides nothing (the
            // input's `now` is the same for the whole turn).
            if let Some(since) = self.queued_since.remove(&job_id) {
                self.metrics
                    .dispatch_latency
                    .observe(since.elapsed().as_secs_f64());
            }
            let assign = Assign {
                job_id: job_id.0,
                attempt,
                lease_ms: lease.as_millis() as u32,
                spec: (*job.spec).clone(),
            };
            // Sent once the assignment is durable, so that a restart can
            // never hand the same attempt out twice. Pushed: the core never
            // waits for one runner, and an assignment is never dropped for
            // want of room (an agent that stops reading is disconnected, and
            // the lease runs out).
            if let Some(sender) = runner.sender().cloned() {
                self.after_commit(AfterCommit::Assign(sender, assign));
            }
            self.publish_state(job_id);
        }
    }
}

/// A job's current state as an event.
fn state_event(job: &JobRecord) -> EventBody {
    EventBody::State {
        state: job.state(),
        attempt: job.attempt,
        runner: job.runner_name.clone(),
        exit_code: job.exit_code,
        message: job.message.clone(),
    }
}

/// Checks a submitted job before it is queued.
/// The secret values of a job, for masking what is recorded about it.
fn spec_secret_values(spec: &JobSpec) -> Vec<String> {
    spec.secrets.iter().map(|(_, value)| value.clone()).collect()
}

fn validate(spec: &JobSpec) -> Result<(), CoreError> {
    /// Longer timeouts are surely mistakes (and would not fit every store).
    const MAX_TIMEOUT_MS: u64 = 30 * 24 * 3600 * 1000;
    if spec.timeout_ms > MAX_TIMEOUT_MS {
        return Err(CoreError::Invalid(format!(
            "job `{}` has a timeout of {} ms; the maximum is 30 days",
            spec.name, spec.timeout_ms
        )));
    }
    if spec.steps.is_empty() {
        return Err(CoreError::Invalid(format!(
            "job `{}` has no steps: add at least one step",
            spec.name
        )));
    }
    if spec.name.is_empty() {
        return Err(CoreError::Invalid("job name must not be empty".into()));
    }
    Ok(())
}
