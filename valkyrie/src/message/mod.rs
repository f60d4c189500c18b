//! The message catalogue: one struct per frame kind, and [`Message`], the
//! enum of them all. Field order in each struct is the wire order.

mod artifacts;
pub mod cache;
mod container;
mod field;
mod project;
mod trigger;
mod types;
pub(crate) mod wire;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

pub use artifacts::{ArtifactInfo, ArtifactWhen, ArtifactsSpec};
pub use cache::{CachePolicy, CacheSpec};
pub use container::{ContainerSpec, PullPolicy, ServiceSpec, DOCKER_EXECUTOR_TAG, EXECUTOR_TAG_PREFIX};
pub use field::WireField;
pub use project::{ProjectInfo, ScheduleInfo};
pub use trigger::{CheckoutSpec, TriggerSpec};
pub use types::*;
use wire::{Reader, Writer};

use crate::error::DecodeError;
use crate::frame::{ErrorCode, FrameKind, Lane};

/// What a [`Message`] variant holds: the struct, or for a `boxed` one (a
/// struct far larger than the rest) a box of it.
macro_rules! held {
    (boxed $name:ident) => { Box<$name> };
    ($name:ident) => { $name };
}

/// Wraps a struct as its [`Message`] variant holds it (see [`held`]).
macro_rules! hold {
    (boxed $e:expr) => {
        Box::new($e)
    };
    ($e:expr) => {
        $e
    };
}

/// Defines the message structs and the [`Message`] enum from one table.
///
/// A message marked `boxed` sits in the enum behind a box. Without that,
/// every `Message` would be as large as the largest (256 bytes, an
/// Assign), and each move of one (from the decoder through the
/// connection's event queue into a session, a channel or the core) copied
/// that much. Only messages far above the rest are boxed.
macro_rules! messages {
    ($(
        $(#[$doc:meta])*
        $name:ident = $kind:ident on $lane:ident $($boxed:ident)? {
            $($(#[$fdoc:meta])* $field:ident: $ty:ty),* $(,)?
        }
    )*) => {
        $(
            $(#[$doc])*
            #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
            pub struct $name { $($(#[$fdoc])* pub $field: $ty),* }

            impl $name {
                /// The frame kind of this message.
                pub const KIND: FrameKind = FrameKind::$kind;
                /// The lane this message travels on.
                pub const LANE: Lane = Lane::$lane;

                #[allow(unused_variables, unused_mut)]
                fn decode_fields(r: &mut Reader) -> Result<Self, DecodeError> {
                    Ok(Self { $($field: <$ty as WireField>::read(r, stringify!($field))?),* })
                }

                #[allow(unused_variables)]
                fn encode_fields(&self, w: &mut Writer) {
                    $(WireField::write(&self.$field, w);)*
                }
            }

            impl From<$name> for Message {
                fn from(m: $name) -> Message {
                    Message::$name(hold!($($boxed)? m))
                }
            }
        )*

        /// Any message of protocol version 1.
        #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(tag = "type", content = "fields")]
        pub enum Message {
            $($(#[$doc])* $name(held!($($boxed)? $name)),)*
        }

        impl Message {
            /// The frame kind of this message.
            pub fn kind(&self) -> FrameKind {
                match self { $(Self::$name(_) => FrameKind::$kind,)* }
            }

            /// The lane this message travels on.
            pub fn lane(&self) -> Lane {
                match self { $(Self::$name(_) => Lane::$lane,)* }
            }

            /// Appends the payload (not the header) to `buf`.
            pub fn encode_payload(&self, buf: &mut BytesMut) {
                let mut w = Writer::new(buf);
                match self { $(Self::$name(m) => m.encode_fields(&mut w),)* }
            }

            /// Decodes a payload of the given kind. Strict: unknown kinds,
            /// malformed fields and trailing bytes are errors.
            pub fn decode_payload(kind: FrameKind, payload: Bytes) -> Result<Self, DecodeError> {
                let mut r = Reader::new(kind, payload);
                let message = match kind {
                    $(FrameKind::$kind => Self::$name(hold!($($boxed)? $name::decode_fields(&mut r)?)),)*
                    other => return Err(DecodeError::UnknownKind(other)),
                };
                r.finish()?;
                Ok(message)
            }

            /// The lane a frame of this kind belongs on, if the kind is known.
            pub fn lane_of(kind: FrameKind) -> Option<Lane> {
                match kind {
                    $(FrameKind::$kind => Some(Lane::$lane),)*
                    _ => None,
                }
            }
        }
    };
}

messages! {
    // ---- connection ----

    /// Client or agent → server, first frame of a connection.
    Hello = HELLO on Control {
        /// Lowest protocol version the sender speaks.
        min_version: u8,
        /// Highest protocol version the sender speaks.
        max_version: u8,
        /// What the sender is.
        role: Role,
        /// API token (clients), registration token or runner credential (agents).
        token: String,
        /// Largest payload the sender accepts.
        max_frame_bytes: u32,
        /// How often the sender will ping when idle, in milliseconds.
        heartbeat_interval_ms: u32,
        /// Free-form software name and version, for logs.
        agent: String,
    }

    /// Server → client or agent: the handshake succeeded.
    Welcome = WELCOME on Control {
        /// The version both sides now speak.
        version: u8,
        /// Largest payload the server accepts.
        max_frame_bytes: u32,
        /// How often the server will ping when idle, in milliseconds.
        heartbeat_interval_ms: u32,
        /// Server id, for logs.
        server_id: String,
    }

    /// Either side: are you there?
    Ping = PING on Control {
        /// Echoed in the Pong.
        nonce: u64,
    }

    /// Either side: answer to a Ping.
    Pong = PONG on Control {
        /// The Ping's nonce.
        nonce: u64,
    }

    /// Either side: the last frame of a connection.
    Close = CLOSE on Control {
        /// Why.
        code: ErrorCode,
        /// Why, for people.
        reason: String,
    }

    /// Server → client or agent: a request succeeded and returns nothing.
    Ack = ACK on Control {}

    /// Server → client or agent: a request failed; the connection stays open.
    RequestFailed = REQUEST_FAILED on Control {
        /// Error code.
        code: ErrorCode,
        /// What went wrong and what to do, for people.
        message: String,
    }

    /// Server → client or agent, in place of Welcome: this server is a
    /// standby of a group (spec §6.4); the leader is reached at `uris`.
    /// Like Close, it is the server's last frame on the connection.
    Redirect = REDIRECT on Control {
        /// The leader's server id (empty when no leader is known yet).
        leader: String,
        /// The leader's epoch (0 when no leader is known yet).
        epoch: u64,
        /// The leader's advertised URIs; empty when no leader is known yet.
        uris: Vec<String>,
    }

    // ---- runners ----

    /// Agent → server: register (or re-register after a reconnect).
    RegisterRunner = REGISTER_RUNNER on Control boxed {
        /// Runner name, unique per server.
        name: String,
        /// Tags jobs can require.
        tags: Vec<String>,
        /// Operating system.
        os: String,
        /// CPU architecture.
        arch: String,
        /// Maximum concurrent jobs.
        slots: u32,
        /// Agent version.
        version: String,
        /// Attempts the agent still holds, re-reported after a reconnect as
        /// (job_id, attempt) pairs: those it is running, and those that
        /// finished but whose `JobResult` the server has not yet acknowledged
        /// (the agent sends those results again right after registering).
        /// The server re-attaches the attempts that match its records (the
        /// others come back in `RunnerRegistered::stale`) and counts a
        /// re-reported attempt as acknowledged: an assigned job becomes
        /// running, even if its `AssignAck` was lost.
        running: Vec<RunningAttempt>,
    }

    /// Server → agent: registration result.
    RunnerRegistered = RUNNER_REGISTERED on Control {
        /// The runner's id.
        runner_id: u64,
        /// Credential the agent presents on later connections instead of the
        /// registration token.
        credential: String,
        /// Re-reported attempts the server no longer wants: the agent stops them.
        stale: Vec<RunningAttempt>,
    }

    /// Agent → server: alive, with its load.
    Heartbeat = HEARTBEAT on Control {
        /// Attempts running now.
        running: u32,
    }

    /// Either side: stop taking new jobs. From the server it asks the agent to
    /// drain; from the agent it announces that it drains.
    Drain = DRAIN on Control {
        /// Why.
        reason: String,
    }

    // ---- jobs, client side ----

    /// Client → server: run this job.
    SubmitJob = SUBMIT_JOB on Control boxed {
        /// The job.
        spec: JobSpec,
    }

    /// Server → client: the job is accepted and queued.
    JobAccepted = JOB_ACCEPTED on Control {
        /// Its id.
        job_id: u64,
    }

    /// Client → server: cancel a job. Answered by Ack or RequestFailed.
    CancelJob = CANCEL_JOB on Control {
        /// Which.
        job_id: u64,
    }

    /// Client → server: send me events. Events arrive as Event frames carrying
    /// this request's correlation id.
    Subscribe = SUBSCRIBE on Control {
        /// One job, or every job when absent.
        job_id: Option<u64>,
        /// Include log chunks.
        logs: bool,
        /// Replay the stored history (state and logs) before live events.
        replay: bool,
    }

    /// Server → client: one event of a subscription.
    Event = EVENT on Bulk {
        /// The job it concerns.
        job_id: u64,
        /// What happened.
        body: EventBody,
    }

    /// Client → server: list jobs, newest first.
    ListJobs = LIST_JOBS on Control {
        /// At most this many.
        limit: u32,
    }

    /// Server → client: jobs.
    JobList = JOB_LIST on Control {
        /// The jobs.
        jobs: Vec<JobInfo>,
    }

    /// Client → server: list runners.
    ListRunners = LIST_RUNNERS on Control {}

    /// Server → client: runners.
    RunnerList = RUNNER_LIST on Control {
        /// The runners.
        runners: Vec<RunnerInfo>,
    }

    /// Client → server: one job's details.
    GetJob = GET_JOB on Control {
        /// Which.
        job_id: u64,
    }

    /// Client → server: remove the record of runner `name` (answered with
    /// Ack). A connected runner is refused, unless `force`: then it is
    /// drained and removed once it disconnects.
    RemoveRunner = REMOVE_RUNNER on Control {
        /// The runner's name.
        name: String,
        /// Drain a connected runner and remove it when it is gone.
        force: bool,
    }

    /// Server → client: one job's details.
    JobDetails = JOB_INFO on Control boxed {
        /// The job.
        job: JobInfo,
        /// The steps of its current attempt, in order.
        steps: Vec<StepInfo>,
    }

    // ---- dispatch ----

    /// Server → agent: run this attempt. A lease: the agent must answer with
    /// AssignAck within `lease_ms` or the job is queued again.
    Assign = ASSIGN on Dispatch boxed {
        /// Job id.
        job_id: u64,
        /// Attempt number: the fencing token for every report about it.
        attempt: u32,
        /// Lease length in milliseconds.
        lease_ms: u32,
        /// What to run.
        spec: JobSpec,
    }

    /// Agent → server: took (or refused) an assignment.
    AssignAck = ASSIGN_ACK on Dispatch {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// Whether the agent runs it.
        accepted: bool,
        /// Why not, when refused.
        reason: String,
    }

    /// Agent → server: the attempt started its first step.
    JobStarted = JOB_STARTED on Dispatch {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
    }

    /// Agent → server: output of an attempt.
    LogChunk = LOG_CHUNK on Bulk {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// Chunk sequence number within the attempt, from 0, no gaps.
        seq: u64,
        /// Stream.
        stream: OutputStream,
        /// The bytes.
        data: Bytes,
    }

    /// Agent → server: one step finished.
    StepResult = STEP_RESULT on Dispatch {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// Step index, from 0.
        step: u32,
        /// How it ended.
        outcome: StepOutcome,
        /// Exit code, when the process exited.
        exit_code: Option<i32>,
        /// Run time in milliseconds.
        duration_ms: u64,
    }

    /// Agent → server: the attempt finished.
    JobResult = JOB_RESULT on Dispatch {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// How it ended.
        outcome: JobOutcome,
        /// Exit code of the failing or last step.
        exit_code: Option<i32>,
        /// Run time in milliseconds.
        duration_ms: u64,
        /// Details for people (e.g. "step `test` exited with 2").
        message: String,
        /// How many LogChunk frames the attempt sent; the server records the
        /// result once it has them all (they travel on another lane).
        log_chunks: u64,
        /// Every step's report, in step order, skipped ones included: the
        /// steps whose StepResult was not sent (the last one, at least)
        /// are known from here alone.
        steps: Vec<StepSummary>,
    }

    /// Server → agent: stop an attempt (cancel, server-side timeout, stale).
    CancelAssignment = CANCEL_ASSIGNMENT on Control {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// Why.
        reason: String,
    }

    // ---- pipelines ----

    /// Client → server: run this pipeline file. The server validates it with
    /// the same validator as the CLI; errors come back in RequestFailed.
    SubmitPipeline = SUBMIT_PIPELINE on Control {
        /// File name, for error positions.
        file_name: String,
        /// The YAML text.
        yaml: String,
        /// Variables for every job of the run (`vk run --var K=V`): names
        /// of letters, digits and `_`, not starting with a digit nor
        /// `VALKYRIE_`.
        variables: Vec<(String, String)>,
    }

    /// Server → client: the run was created.
    RunAccepted = RUN_ACCEPTED on Control {
        /// Its id.
        run_id: u64,
    }

    /// Client → server: one run's details.
    GetRun = GET_RUN on Control {
        /// Which.
        run_id: u64,
    }

    /// Server → client: one run's details.
    RunDetails = RUN_DETAILS on Control boxed {
        /// The run.
        run: RunInfo,
    }

    /// Client → server: list runs, newest first.
    ListRuns = LIST_RUNS on Control {
        /// At most this many.
        limit: u32,
    }

    /// Server → client: runs.
    RunList = RUN_LIST on Control {
        /// The runs.
        runs: Vec<RunInfo>,
    }

    /// Client → server: cancel every unfinished job of a run. Answered by Ack.
    CancelRun = CANCEL_RUN on Control {
        /// Which.
        run_id: u64,
    }

    /// Client → server: start a manual job (`when: manual`) of a run.
    /// Answered by Ack.
    PlayJob = PLAY_JOB on Control {
        /// The run.
        run_id: u64,
        /// The job's name in the run (as listed).
        job: String,
    }

    /// Client → server: a new run of a finished run's pipeline, commit and
    /// variables. Answered by RunAccepted.
    RerunRun = RERUN_RUN on Control {
        /// The run.
        run_id: u64,
        /// Only the jobs that failed or were cancelled, and those that wait
        /// for them; the others keep their results.
        failed_only: bool,
    }

    // ---- audit ----

    /// Client → server: a page of the audit log, newest first.
    ListAudit = LIST_AUDIT on Control {
        /// At most this many; 0 means the server's default (100); the
        /// server answers at most 1,000.
        limit: u32,
        /// Only records whose id is below this; 0 means from the newest.
        before: u64,
    }

    /// Server → client: audit records, newest first.
    AuditList = AUDIT_LIST on Control {
        /// The records.
        entries: Vec<AuditEntry>,
    }

    // ---- artifacts ----

    /// Agent → server: the bytes of an upload at `offset` (a request,
    /// answered with Ack once written). Offset 0 starts the upload afresh;
    /// any other offset must be the number of bytes received so far.
    ArtifactChunk = ARTIFACT_CHUNK on Bulk {
        /// Job id.
        job_id: u64,
        /// Attempt: only the current attempt may upload.
        attempt: u32,
        /// Artifact name within the job.
        name: String,
        /// Where `data` starts.
        offset: u64,
        /// The bytes.
        data: Bytes,
    }

    /// Agent → server: the upload is complete. The server checks the size
    /// and SHA-256 of what it received, stores it and answers Ack, or
    /// RequestFailed saying why (and forgets the upload).
    ArtifactCommit = ARTIFACT_COMMIT on Bulk {
        /// Job id.
        job_id: u64,
        /// Attempt.
        attempt: u32,
        /// Artifact name.
        name: String,
        /// Total size in bytes.
        size: u64,
        /// SHA-256 of the whole artifact, lowercase hex.
        sha256: String,
        /// How long to keep it, in milliseconds; 0 for the server's default.
        expire_in_ms: u64,
    }

    /// Agent or client → server: up to `max_bytes` of a stored artifact
    /// from `offset`; answered with ArtifactData or RequestFailed.
    ArtifactFetch = ARTIFACT_FETCH on Bulk {
        /// Job id.
        job_id: u64,
        /// Artifact name.
        name: String,
        /// First byte wanted.
        offset: u64,
        /// At most this many bytes (the server may send fewer).
        max_bytes: u32,
    }

    /// Server → agent or client: a range of an artifact.
    ArtifactData = ARTIFACT_DATA on Bulk {
        /// The artifact's total size.
        size: u64,
        /// Its SHA-256, lowercase hex, to check once all bytes are in.
        sha256: String,
        /// Where `data` starts.
        offset: u64,
        /// The bytes; empty at or past the end.
        data: Bytes,
    }

    /// Client or agent → server: a job's artifacts.
    ListArtifacts = LIST_ARTIFACTS on Control {
        /// Job id.
        job_id: u64,
    }

    /// Server → client or agent: a job's artifacts.
    ArtifactList = ARTIFACT_LIST on Control {
        /// The artifacts, by name.
        artifacts: Vec<ArtifactInfo>,
    }

    /// Agent → server: which cache entry of the job's project to restore
    /// (or, with `restore` false, whether `keys[0]` is already saved).
    /// Answered with CacheEntry, or RequestFailed when the runner does not
    /// hold the attempt.
    CacheLookup = CACHE_LOOKUP on Control {
        /// Job id.
        job_id: u64,
        /// Attempt: only the runner holding it may ask.
        attempt: u32,
        /// The exact key first, then the fallback keys in order (each a
        /// prefix: the newest entry whose key starts with it matches).
        keys: Vec<String>,
        /// Whether the agent restores what is found (counted as a hit or a
        /// miss on `/metrics`); false for a save-only check.
        restore: bool,
    }

    /// Server → agent: the cache entry found for a CacheLookup; `key`
    /// empty when none was.
    CacheEntry = CACHE_ENTRY on Control {
        /// The key of the entry found; empty for a miss.
        key: String,
        /// Whether it is the exact key (`keys[0]`), not a fallback.
        exact: bool,
        /// The job whose artifact holds it.
        job_id: u64,
        /// The artifact's name within that job.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// Its SHA-256, lowercase hex.
        sha256: String,
    }

    // ---- groups of servers ----

    /// Client → server: the control planes of this server's group.
    ListServers = LIST_SERVERS on Control {}

    /// Server → client: every control plane of the group (one, the
    /// answering server, with the embedded store), leader first.
    ServerList = SERVER_LIST on Control {
        /// The servers.
        servers: Vec<ServerInfo>,
    }

    // ---- projects and schedules ----

    /// Client → server: create a project. Answered by ProjectList with the
    /// project, or RequestFailed (CONFLICT when the name is taken,
    /// INVALID_REQUEST when a field is not valid).
    PutProject = PUT_PROJECT on Control boxed {
        /// Unique name: letters, digits, `-`, `_`, `.`.
        name: String,
        /// Clone URL, without credentials.
        repo: String,
        /// Default branch; empty means `main`.
        branch: String,
        /// Pipeline file path in the repository; empty means `.valkyrie.yml`.
        file: String,
        /// The webhook secret (GitHub's HMAC key, GitLab's token); may be empty.
        webhook_secret: String,
        /// An HTTPS token for a private repository; may be empty.
        token: String,
    }

    /// Client → server: every project, or the one named. Answered by
    /// ProjectList (NOT_FOUND when the named project does not exist).
    ListProjects = LIST_PROJECTS on Control {
        /// A project's name; empty for every project.
        name: String,
    }

    /// Server → client: projects, by name.
    ProjectList = PROJECT_LIST on Control {
        /// The projects.
        projects: Vec<ProjectInfo>,
    }

    /// Client → server: remove a project (its runs stay; its schedules
    /// go). Answered by Ack, or RequestFailed NOT_FOUND.
    RemoveProject = REMOVE_PROJECT on Control {
        /// The project.
        name: String,
    }

    /// Client → server: add a cron schedule to a project. Answered by
    /// ScheduleList with the schedule, or RequestFailed (NOT_FOUND,
    /// INVALID_REQUEST when the cron expression or a variable is not valid).
    AddSchedule = ADD_SCHEDULE on Control {
        /// The project.
        project: String,
        /// Cron expression, in UTC: 5 fields, or 6 with seconds first.
        cron: String,
        /// The branch to run; empty means the project's branch.
        branch: String,
        /// Variables every job of its runs gets.
        variables: Vec<(String, String)>,
    }

    /// Client → server: the schedules of a project, or of every project.
    /// Answered by ScheduleList.
    ListSchedules = LIST_SCHEDULES on Control {
        /// A project's name; empty for every project.
        project: String,
    }

    /// Server → client: schedules, by id.
    ScheduleList = SCHEDULE_LIST on Control {
        /// The schedules.
        schedules: Vec<ScheduleInfo>,
    }

    /// Client → server: remove a schedule. Answered by Ack, or
    /// RequestFailed NOT_FOUND.
    RemoveSchedule = REMOVE_SCHEDULE on Control {
        /// The schedule.
        id: u64,
    }
}

/// How one step of an attempt ended: a StepResult without the attempt,
/// as JobResult carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSummary {
    /// Step index, from 0.
    pub step: u32,
    /// How it ended.
    pub outcome: StepOutcome,
    /// Exit code, when the step's process exited.
    pub exit_code: Option<i32>,
    /// Run time in milliseconds.
    pub duration_ms: u64,
}

impl WireField for StepSummary {
    const MIN_BYTES: usize = 14;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        Ok(Self {
            step: r.u32(field)?,
            outcome: StepOutcome::read(r, field)?,
            exit_code: Option::<i32>::read(r, field)?,
            duration_ms: r.u64(field)?,
        })
    }
    fn write(&self, w: &mut Writer) {
        w.u32(self.step);
        self.outcome.write(w);
        self.exit_code.write(w);
        w.u64(self.duration_ms);
    }
}

impl JobResult {
    /// An attempt that failed before its steps ran, or without their
    /// reports (the agent could not start or follow them), having sent
    /// `log_chunks` LogChunks.
    pub fn failed(job_id: u64, attempt: u32, message: String, log_chunks: u64) -> Self {
        Self {
            job_id,
            attempt,
            outcome: JobOutcome::Failed,
            exit_code: None,
            duration_ms: 0,
            message,
            log_chunks,
            steps: Vec::new(),
        }
    }
}

impl StepResult {
    /// The report of one step, as JobResult carries it.
    pub fn summary(&self) -> StepSummary {
        StepSummary {
            step: self.step,
            outcome: self.outcome,
            exit_code: self.exit_code,
            duration_ms: self.duration_ms,
        }
    }
}

/// A (job, attempt) pair an agent is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunningAttempt {
    /// Job id.
    pub job_id: u64,
    /// Attempt.
    pub attempt: u32,
}

impl WireField for RunningAttempt {
    const MIN_BYTES: usize = 12;
    fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
        Ok(Self {
            job_id: r.u64(field)?,
            attempt: r.u32(field)?,
        })
    }
    fn write(&self, w: &mut Writer) {
        w.u64(self.job_id);
        w.u32(self.attempt);
    }
}

impl Message {
    /// What to send instead of a message whose payload is over the peer's
    /// `max_payload_bytes` (spec §3.2), or `None` when nothing can stand in
    /// for it. A listing (JobList, RunnerList, RunList) keeps as many of its
    /// items, from the front, as fit: the server truncates listings. An
    /// Event becomes a `skipped` marker counting the one event dropped, so
    /// a subscriber always knows it missed something.
    pub fn fitted(&self, max_payload_bytes: usize) -> Option<Message> {
        match self {
            Message::JobList(m) => Some(
                JobList {
                    jobs: fit_items(&m.jobs, max_payload_bytes),
                }
                .into(),
            ),
            Message::RunnerList(m) => Some(
                RunnerList {
                    runners: fit_items(&m.runners, max_payload_bytes),
                }
                .into(),
            ),
            Message::RunList(m) => Some(
                RunList {
                    runs: fit_items(&m.runs, max_payload_bytes),
                }
                .into(),
            ),
            Message::Event(e) if !matches!(e.body, EventBody::Skipped { .. }) => Some(
                Event {
                    job_id: e.job_id,
                    body: EventBody::Skipped { missed: 1 },
                }
                .into(),
            ),
            _ => None,
        }
    }
}

/// The longest prefix of `items` whose encoded list fits `max_bytes`.
fn fit_items<T: WireField + Clone>(items: &[T], max_bytes: usize) -> Vec<T> {
    let mut scratch = BytesMut::new();
    let mut total = 4; // the list's count
    let mut keep = 0;
    for item in items {
        scratch.clear();
        item.write(&mut Writer::new(&mut scratch));
        if total + scratch.len() > max_bytes {
            break;
        }
        total += scratch.len();
        keep += 1;
    }
    items[..keep].to_vec()
}

impl Message {
    /// Whether this kind is a request (spec §5): it MUST carry a fresh
    /// non-zero correlation id, and its answer carries that id back.
    pub fn is_request(&self) -> bool {
        matches!(
            self,
            Message::SubmitJob(_)
                | Message::CancelJob(_)
                | Message::Subscribe(_)
                | Message::ListJobs(_)
                | Message::ListRunners(_)
                | Message::GetJob(_)
                | Message::RegisterRunner(_)
                | Message::SubmitPipeline(_)
                | Message::GetRun(_)
                | Message::ListRuns(_)
                | Message::CancelRun(_)
                | Message::PlayJob(_)
                | Message::RerunRun(_)
                | Message::ListAudit(_)
                | Message::ArtifactChunk(_)
                | Message::ArtifactCommit(_)
                | Message::ArtifactFetch(_)
                | Message::ListArtifacts(_)
                | Message::CacheLookup(_)
                | Message::ListServers(_)
                | Message::PutProject(_)
                | Message::ListProjects(_)
                | Message::RemoveProject(_)
                | Message::AddSchedule(_)
                | Message::ListSchedules(_)
                | Message::RemoveSchedule(_)
        )
    }
}

impl Message {
    /// Whether this kind answers a request (spec §5), carrying the
    /// request's correlation id: the REPLY flag is implied by these kinds.
    /// An Event answers its Subscribe for as long as the subscription lasts.
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Message::Ack(_)
                | Message::RequestFailed(_)
                | Message::JobAccepted(_)
                | Message::JobList(_)
                | Message::RunnerList(_)
                | Message::JobDetails(_)
                | Message::RunnerRegistered(_)
                | Message::RunAccepted(_)
                | Message::RunDetails(_)
                | Message::RunList(_)
                | Message::ServerList(_)
                | Message::AuditList(_)
                | Message::Event(_)
                | Message::Pong(_)
                | Message::ArtifactData(_)
                | Message::ArtifactList(_)
                | Message::CacheEntry(_)
                | Message::ProjectList(_)
                | Message::ScheduleList(_)
        )
    }
}
