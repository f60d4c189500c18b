//! Value types shared by several messages: job specifications, states,
//! listings and events.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::artifacts::ArtifactsSpec;
use super::cache::CacheSpec;
use super::container::{ContainerSpec, DOCKER_EXECUTOR_TAG};
use super::trigger::TriggerSpec;
use super::wire::{Reader, Writer};
use crate::error::DecodeError;

/// Declares a closed `u8`-coded enum with its wire mapping.
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $value:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[repr(u8)]
        pub enum $name { $($(#[$vdoc])* $variant = $value),* }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            pub(crate) fn read(r: &mut Reader, field: &'static str) -> Result<Self, DecodeError> {
                let value = r.u8(field)?;
                match value {
                    $($value => Ok($name::$variant),)*
                    other => Err(r.invalid(field, other.into())),
                }
            }

            pub(crate) fn write(self, w: &mut Writer) {
                w.u8(self as u8);
            }
        }
    };
}

wire_enum! {
    /// What a connecting peer is.
    Role {
        /// An SDK client or `vk`.
        Client = 1,
        /// A runner agent.
        Agent = 2,
    }
}

wire_enum! {
    /// Where a job is in its lifecycle (see the control plane's job state machine).
    JobState {
        /// Waiting for a runner.
        Queued = 0,
        /// Leased to a runner; waiting for its acknowledgement.
        Assigned = 1,
        /// Acknowledged and running.
        Running = 2,
        /// Every step succeeded (or was allowed to fail).
        Succeeded = 3,
        /// A step failed.
        Failed = 4,
        /// Cancelled by a user.
        Cancelled = 5,
        /// Ran over its timeout.
        TimedOut = 6,
        /// Its runner vanished and no retry remained.
        Lost = 7,
    }
}

impl JobState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut | Self::Lost
        )
    }

    /// The lower-case name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
        }
    }
}

wire_enum! {
    /// How an attempt ended, as its agent reports it.
    JobOutcome {
        /// Every step succeeded or was allowed to fail.
        Succeeded = 0,
        /// A step failed.
        Failed = 1,
        /// Stopped on request.
        Cancelled = 2,
        /// Ran over its timeout.
        TimedOut = 3,
    }
}

wire_enum! {
    /// How one step ended.
    StepOutcome {
        /// Exited 0.
        Succeeded = 0,
        /// Exited non-zero or could not start.
        Failed = 1,
        /// Failed, but `continue_on_error` was set.
        FailedAllowed = 2,
        /// Stopped on request.
        Cancelled = 3,
        /// Stopped by the job timeout.
        TimedOut = 4,
        /// Not run because an earlier step failed.
        Skipped = 5,
    }
}

wire_enum! {
    /// Which stream a log chunk comes from.
    OutputStream {
        /// The process's standard output.
        Stdout = 0,
        /// The process's standard error.
        Stderr = 1,
        /// Lines written by the agent itself (e.g. a truncation marker).
        System = 2,
    }
}

wire_enum! {
    /// A runner's state in the registry.
    RunnerState {
        /// Connected with free slots.
        Idle = 0,
        /// Connected, every slot used.
        Busy = 1,
        /// Finishing its jobs, taking no new ones.
        Draining = 2,
        /// Silent for longer than `runner_lost_after`.
        Lost = 3,
        /// Stopped cleanly: it said it drains, then disconnected with no job left.
        Stopped = 4,
    }
}

impl RunnerState {
    /// The lower-case name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Busy => "busy",
            Self::Draining => "draining",
            Self::Lost => "lost",
            Self::Stopped => "stopped",
        }
    }
}

wire_enum! {
    /// When a step runs, given how the steps before it ended (a pipeline
    /// step's `if:`). A cancelled or timed-out job runs no further step.
    #[derive(Default)]
    StepCondition {
        /// Every earlier step succeeded (or failed with `continue_on_error`). The default.
        #[default]
        OnSuccess = 0,
        /// An earlier step failed the job.
        OnFailure = 1,
        /// Whether or not an earlier step failed (cleanup).
        Always = 2,
    }
}

/// What a step runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepCommand {
    /// A command line run by the job's shell (by default `bash -eo pipefail
    /// -c LINE`, or `sh -e -c LINE` where there is no bash).
    Shell(String),
    /// Starts no process and succeeds (benchmarks, health checks).
    Noop,
    /// A program and its arguments, run directly, with no shell in between
    /// (`vk exec -- argv…`): signals reach the program itself. The program
    /// is looked up on the step's `PATH`.
    Argv(Vec<String>),
}

/// One step of a job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSpec {
    /// Display name.
    pub name: String,
    /// What it runs.
    pub command: StepCommand,
    /// Extra environment for this step.
    pub env: Vec<(String, String)>,
    /// Directory relative to the job workspace.
    pub working_directory: Option<String>,
    /// A failure of this step does not fail the job.
    pub continue_on_error: bool,
    /// When it runs, given how the earlier steps ended.
    #[serde(default)]
    pub condition: StepCondition,
}

impl StepSpec {
    /// A shell step named after its command line.
    pub fn shell(line: impl Into<String>) -> Self {
        let line = line.into();
        Self {
            name: line.clone(),
            command: StepCommand::Shell(line),
            env: Vec::new(),
            working_directory: None,
            continue_on_error: false,
            condition: StepCondition::OnSuccess,
        }
    }

    /// A step running `argv` directly, named after it.
    pub fn argv(argv: Vec<String>) -> Self {
        Self {
            name: argv.join(" "),
            command: StepCommand::Argv(argv),
            env: Vec::new(),
            working_directory: None,
            continue_on_error: false,
            condition: StepCondition::OnSuccess,
        }
    }

    /// A no-op step.
    pub fn noop() -> Self {
        Self {
            name: "noop".into(),
            command: StepCommand::Noop,
            env: Vec::new(),
            working_directory: None,
            continue_on_error: false,
            condition: StepCondition::OnSuccess,
        }
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        let name = r.string("step.name")?;
        let command = match r.u8("step.command")? {
            0 => StepCommand::Shell(r.string("step.run")?),
            1 => StepCommand::Noop,
            2 => StepCommand::Argv(r.strings("step.argv")?),
            other => return Err(r.invalid("step.command", other.into())),
        };
        Ok(Self {
            name,
            command,
            env: r.pairs("step.env")?,
            working_directory: r.option("step.working_directory", |r| r.string("step.working_directory"))?,
            continue_on_error: r.bool("step.continue_on_error")?,
            condition: StepCondition::read(r, "step.condition")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.name);
        match &self.command {
            StepCommand::Shell(line) => {
                w.u8(0);
                w.string(line);
            }
            StepCommand::Noop => w.u8(1),
            StepCommand::Argv(argv) => {
                w.u8(2);
                w.strings(argv);
            }
        }
        w.pairs(&self.env);
        w.option(&self.working_directory, |w, d| w.string(d));
        w.bool(self.continue_on_error);
        self.condition.write(w);
    }
}

/// Which outcomes a job is retried on (bit set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RetryOn(pub u8);

impl RetryOn {
    /// Retry when a step failed.
    pub const FAILED: RetryOn = RetryOn(0x01);
    /// Retry when the job timed out.
    pub const TIMED_OUT: RetryOn = RetryOn(0x02);
    /// Retry when the runner was lost or never acknowledged (the default).
    pub const LOST: RetryOn = RetryOn(0x04);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: RetryOn) -> bool {
        self.0 & other.0 == other.0
    }
}

/// How often, and after which outcomes, a job is tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts after the first.
    pub max_retries: u32,
    /// Outcomes that trigger a retry.
    pub on: RetryOn,
}

impl Default for RetryPolicy {
    /// Two retries, only when the runner was lost.
    fn default() -> Self {
        Self {
            max_retries: 2,
            on: RetryOn::LOST,
        }
    }
}

/// Everything needed to run a job, as submitted and as assigned.
///
/// Its `Debug` form shows secret names with `***` for their values, so a
/// spec in a log line or an error message never carries a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Display name.
    pub name: String,
    /// Project, for fair share.
    pub project: String,
    /// Higher runs first.
    pub priority: u8,
    /// A runner must have every one of these tags.
    pub tags: Vec<String>,
    /// Steps, run in order.
    pub steps: Vec<StepSpec>,
    /// Environment for every step.
    pub env: Vec<(String, String)>,
    /// Secret variables: exported like `env`, their values masked in logs.
    pub secrets: Vec<(String, String)>,
    /// Whole-job timeout in milliseconds; 0 means none.
    pub timeout_ms: u64,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Shell argv the step line is appended to; empty means the agent's
    /// default (`bash -eo pipefail -c`, or `sh -e -c` without bash).
    pub shell: Vec<String>,
    /// The container the steps run in (`image:`); `None` runs them on the
    /// runner's host. A job with a container needs a Docker runner.
    /// Boxed: most jobs have none, and messages stay small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerSpec>>,
    /// What started the job: its variables and the commit to check out;
    /// `None` for a job submitted on its own. Boxed like `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Box<TriggerSpec>>,
    /// Artifacts it uploads and downloads (`artifacts:`, and the artifacts
    /// of the jobs it needs); `None` for neither. Boxed like `container`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<Box<ArtifactsSpec>>,
    /// Caches it restores before its steps and saves after them
    /// (`cache:`); empty for none. On the wire an option after
    /// `artifacts`, absent when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cache: Vec<CacheSpec>,
}

impl std::fmt::Debug for JobSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secrets: Vec<(&str, &str)> = self
            .secrets
            .iter()
            .map(|(name, _)| (name.as_str(), "***"))
            .collect();
        f.debug_struct("JobSpec")
            .field("name", &self.name)
            .field("project", &self.project)
            .field("priority", &self.priority)
            .field("tags", &self.tags)
            .field("steps", &self.steps)
            .field("env", &self.env)
            .field("secrets", &secrets)
            .field("timeout_ms", &self.timeout_ms)
            .field("retry", &self.retry)
            .field("shell", &self.shell)
            .field("container", &self.container)
            .field("trigger", &self.trigger)
            .field("artifacts", &self.artifacts)
            .field("cache", &self.cache)
            .finish()
    }
}

impl JobSpec {
    /// A job with one shell step and defaults elsewhere.
    pub fn shell(name: impl Into<String>, line: impl Into<String>) -> Self {
        Self::with_steps(name, vec![StepSpec::shell(line)])
    }

    /// A job with the given steps and defaults elsewhere.
    pub fn with_steps(name: impl Into<String>, steps: Vec<StepSpec>) -> Self {
        Self {
            name: name.into(),
            project: "default".into(),
            priority: 0,
            tags: Vec::new(),
            steps,
            env: Vec::new(),
            secrets: Vec::new(),
            timeout_ms: 0,
            retry: RetryPolicy::default(),
            shell: Vec::new(),
            container: None,
            trigger: None,
            artifacts: None,
            cache: Vec::new(),
        }
    }

    /// The tags a runner needs to take this job: its own `tags`, plus
    /// [`DOCKER_EXECUTOR_TAG`] when it runs in a container.
    pub fn required_tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        if self.container.is_some() && !tags.contains(&DOCKER_EXECUTOR_TAG) {
            tags.push(DOCKER_EXECUTOR_TAG);
        }
        tags
    }

    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string("job.name")?,
            project: r.string("job.project")?,
            priority: r.u8("job.priority")?,
            tags: r.strings("job.tags")?,
            // A step takes at least 12 bytes: name (4), command (1), env (4),
            // working_directory (1), continue_on_error (1), condition (1).
            steps: r.list("job.steps", 12, StepSpec::read)?,
            env: r.pairs("job.env")?,
            secrets: r.pairs("job.secrets")?,
            timeout_ms: r.u64("job.timeout_ms")?,
            retry: RetryPolicy {
                max_retries: r.u32("job.retry.max_retries")?,
                on: RetryOn(r.u8("job.retry.on")?),
            },
            shell: r.strings("job.shell")?,
            container: r.option("job.container", |r| ContainerSpec::read(r).map(Box::new))?,
            trigger: r.option("job.trigger", |r| TriggerSpec::read(r).map(Box::new))?,
            artifacts: r.option("job.artifacts", |r| ArtifactsSpec::read(r).map(Box::new))?,
            cache: super::cache::read_caches(r)?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.name);
        w.string(&self.project);
        w.u8(self.priority);
        w.strings(&self.tags);
        w.list(&self.steps, |w, s| s.write(w));
        w.pairs(&self.env);
        w.pairs(&self.secrets);
        w.u64(self.timeout_ms);
        w.u32(self.retry.max_retries);
        w.u8(self.retry.on.0);
        w.strings(&self.shell);
        w.option(&self.container, |w, c| c.write(w));
        w.option(&self.trigger, |w, t| t.write(w));
        w.option(&self.artifacts, |w, a| a.write(w));
        super::cache::write_caches(&self.cache, w);
    }
}

/// A job as listings show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job id.
    pub job_id: u64,
    /// Display name.
    pub name: String,
    /// Project.
    pub project: String,
    /// Priority.
    pub priority: u8,
    /// Required tags.
    pub tags: Vec<String>,
    /// Current state.
    pub state: JobState,
    /// Current attempt, starting at 1 (0 before the first assignment).
    pub attempt: u32,
    /// Name of the runner of the current attempt.
    pub runner: Option<String>,
    /// Why the job waits (queued jobs), or how it ended.
    pub reason: String,
    /// Exit code of the failing or last step.
    pub exit_code: Option<i32>,
    /// Submission time, milliseconds since the Unix epoch.
    pub submitted_at_ms: u64,
    /// When the current attempt started running.
    pub started_at_ms: Option<u64>,
    /// When the job reached its final state.
    pub finished_at_ms: Option<u64>,
}

impl JobInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            job_id: r.u64("job_id")?,
            name: r.string("name")?,
            project: r.string("project")?,
            priority: r.u8("priority")?,
            tags: r.strings("tags")?,
            state: JobState::read(r, "state")?,
            attempt: r.u32("attempt")?,
            runner: r.option("runner", |r| r.string("runner"))?,
            reason: r.string("reason")?,
            exit_code: r.option("exit_code", |r| r.i32("exit_code"))?,
            submitted_at_ms: r.u64("submitted_at_ms")?,
            started_at_ms: r.option("started_at_ms", |r| r.u64("started_at_ms"))?,
            finished_at_ms: r.option("finished_at_ms", |r| r.u64("finished_at_ms"))?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u64(self.job_id);
        w.string(&self.name);
        w.string(&self.project);
        w.u8(self.priority);
        w.strings(&self.tags);
        self.state.write(w);
        w.u32(self.attempt);
        w.option(&self.runner, |w, s| w.string(s));
        w.string(&self.reason);
        w.option(&self.exit_code, |w, c| w.i32(*c));
        w.u64(self.submitted_at_ms);
        w.option(&self.started_at_ms, |w, t| w.u64(*t));
        w.option(&self.finished_at_ms, |w, t| w.u64(*t));
    }
}

/// One step of a job's current attempt (in [`JobDetails`](super::JobDetails)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepInfo {
    /// Display name, cut to at most 255 bytes.
    pub name: String,
    /// How it ended; none while it runs or before it starts.
    pub outcome: Option<StepOutcome>,
    /// Its exit code, when its process exited.
    pub exit_code: Option<i32>,
    /// Run time in milliseconds, once it ended.
    pub duration_ms: Option<u64>,
}

impl StepInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string("step.name")?,
            outcome: r.option("step.outcome", |r| StepOutcome::read(r, "step.outcome"))?,
            exit_code: r.option("step.exit_code", |r| r.i32("step.exit_code"))?,
            duration_ms: r.option("step.duration_ms", |r| r.u64("step.duration_ms"))?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.name);
        w.option(&self.outcome, |w, o| o.write(w));
        w.option(&self.exit_code, |w, c| w.i32(*c));
        w.option(&self.duration_ms, |w, d| w.u64(*d));
    }
}

impl StepInfo {
    /// The state listings show for each of a job's steps: the outcome's
    /// name once reported; before that `running` for the first unreported
    /// step of a running job, `pending` otherwise.
    pub fn states(job: JobState, steps: &[StepInfo]) -> Vec<&'static str> {
        let first_open = steps.iter().position(|s| s.outcome.is_none());
        steps
            .iter()
            .enumerate()
            .map(|(i, step)| match step.outcome {
                Some(outcome) => outcome.as_str(),
                None if job == JobState::Running && first_open == Some(i) => "running",
                None => "pending",
            })
            .collect()
    }
}

impl StepOutcome {
    /// The lower-case name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::FailedAllowed => "failed_allowed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Skipped => "skipped",
        }
    }
}

/// A runner as listings show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunnerInfo {
    /// Runner id.
    pub runner_id: u64,
    /// Name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Operating system, as the agent detected it.
    pub os: String,
    /// CPU architecture, as the agent detected it.
    pub arch: String,
    /// Maximum concurrent jobs.
    pub slots: u32,
    /// Jobs running or assigned now.
    pub busy: u32,
    /// Registry state.
    pub state: RunnerState,
    /// Milliseconds since the last frame from the runner.
    pub last_seen_ms_ago: u64,
    /// Agent version.
    pub version: String,
}

impl RunnerInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            runner_id: r.u64("runner_id")?,
            name: r.string("name")?,
            tags: r.strings("tags")?,
            os: r.string("os")?,
            arch: r.string("arch")?,
            slots: r.u32("slots")?,
            busy: r.u32("busy")?,
            state: RunnerState::read(r, "state")?,
            last_seen_ms_ago: r.u64("last_seen_ms_ago")?,
            version: r.string("version")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u64(self.runner_id);
        w.string(&self.name);
        w.strings(&self.tags);
        w.string(&self.os);
        w.string(&self.arch);
        w.u32(self.slots);
        w.u32(self.busy);
        self.state.write(w);
        w.u64(self.last_seen_ms_ago);
        w.string(&self.version);
    }
}

/// One audit record: who did what, and when (see [`AuditList`](super::AuditList)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Increasing id; the paging cursor.
    pub id: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// How the actor was authenticated: `jwt`, `api_token`, `runner`,
    /// `local` or `server`.
    pub actor_kind: String,
    /// Who: JWT subject, client software, runner name or local user.
    pub actor: String,
    /// What: `submit_job`, `submit_pipeline`, `create_pipeline`,
    /// `trigger_pipeline`, `cancel_job`, `cancel_run`, `drain_runner`,
    /// `remove_runner`, `register_runner` or `mint_token`.
    pub action: String,
    /// What it was done to, e.g. `job 12`.
    pub target: String,
    /// Names and settings for a reader; never a secret value.
    pub detail: String,
}

impl AuditEntry {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64("audit.id")?,
            at_ms: r.u64("audit.at_ms")?,
            actor_kind: r.string("audit.actor_kind")?,
            actor: r.string("audit.actor")?,
            action: r.string("audit.action")?,
            target: r.string("audit.target")?,
            detail: r.string("audit.detail")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u64(self.id);
        w.u64(self.at_ms);
        w.string(&self.actor_kind);
        w.string(&self.actor);
        w.string(&self.action);
        w.string(&self.target);
        w.string(&self.detail);
    }
}

wire_enum! {
    /// What a control plane is in its group ([`ServerInfo`]).
    ServerRole {
        /// Holds the lease: serves clients and agents.
        Leader = 1,
        /// Waits to lead; redirects peers to the leader.
        Standby = 2,
        /// Has not renewed its membership for longer than the lease's
        /// time to live (stopped, or cut off from the store).
        Silent = 3,
    }
}

/// One control plane of a group (see [`ServerList`](super::ServerList)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's id (stable across restarts of its data directory).
    pub server_id: String,
    /// Leader, standby or silent.
    pub role: ServerRole,
    /// The leader's epoch (for the leader); the epoch it last saw (others).
    pub epoch: u64,
    /// When the leader's lease runs out if not renewed, in milliseconds
    /// since the Unix epoch (by the leader's clock); 0 for other servers.
    pub lease_expires_ms: u64,
    /// When the server last reported itself, in milliseconds since the
    /// Unix epoch (by its clock).
    pub seen_at_ms: u64,
    /// URIs where agents and clients reach it (`--advertise`).
    pub uris: Vec<String>,
    /// Its REST API's URL (`--advertise-http`), empty without one.
    pub http_url: String,
}

impl ServerInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            server_id: r.string("server.server_id")?,
            role: ServerRole::read(r, "server.role")?,
            epoch: r.u64("server.epoch")?,
            lease_expires_ms: r.u64("server.lease_expires_ms")?,
            seen_at_ms: r.u64("server.seen_at_ms")?,
            uris: <Vec<String> as super::WireField>::read(r, "server.uris")?,
            http_url: r.string("server.http_url")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.server_id);
        self.role.write(w);
        w.u64(self.epoch);
        w.u64(self.lease_expires_ms);
        w.u64(self.seen_at_ms);
        super::WireField::write(&self.uris, w);
        w.string(&self.http_url);
    }
}

/// What happened, in an [`Event`](super::Event).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBody {
    /// The job changed state.
    State {
        /// New state.
        state: JobState,
        /// Attempt number.
        attempt: u32,
        /// Runner of the attempt.
        runner: Option<String>,
        /// Exit code, in final states.
        exit_code: Option<i32>,
        /// Why (pending reason, failure message).
        message: String,
    },
    /// A chunk of the job's output.
    Log {
        /// Stream.
        stream: OutputStream,
        /// Sequence number of the chunk within the job's output.
        seq: u64,
        /// The bytes.
        data: Bytes,
    },
    /// The subscriber fell behind; `missed` events were dropped for it.
    Skipped {
        /// How many.
        missed: u64,
    },
    /// Stored history has been replayed; live events follow.
    ReplayDone,
}

impl EventBody {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        match r.u8("event.type")? {
            0 => Ok(Self::State {
                state: JobState::read(r, "event.state")?,
                attempt: r.u32("event.attempt")?,
                runner: r.option("event.runner", |r| r.string("event.runner"))?,
                exit_code: r.option("event.exit_code", |r| r.i32("event.exit_code"))?,
                message: r.string("event.message")?,
            }),
            1 => Ok(Self::Log {
                stream: OutputStream::read(r, "event.stream")?,
                seq: r.u64("event.seq")?,
                data: r.bytes("event.data")?,
            }),
            2 => Ok(Self::Skipped {
                missed: r.u64("event.missed")?,
            }),
            3 => Ok(Self::ReplayDone),
            other => Err(r.invalid("event.type", other.into())),
        }
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        match self {
            Self::State {
                state,
                attempt,
                runner,
                exit_code,
                message,
            } => {
                w.u8(0);
                state.write(w);
                w.u32(*attempt);
                w.option(runner, |w, s| w.string(s));
                w.option(exit_code, |w, c| w.i32(*c));
                w.string(message);
            }
            Self::Log { stream, seq, data } => {
                w.u8(1);
                stream.write(w);
                w.u64(*seq);
                w.bytes(data);
            }
            Self::Skipped { missed } => {
                w.u8(2);
                w.u64(*missed);
            }
            Self::ReplayDone => w.u8(3),
        }
    }
}

wire_enum! {
    /// Where a pipeline run is.
    RunState {
        /// Jobs are waiting, queued or running.
        Running = 0,
        /// Every job succeeded, was allowed to fail, or was skipped by its condition.
        Succeeded = 1,
        /// A job failed (and was not allowed to).
        Failed = 2,
        /// Cancelled by a user.
        Cancelled = 3,
        /// Ran over the pipeline timeout.
        TimedOut = 4,
    }
}

impl RunState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }

    /// The lower-case name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
        }
    }
}

wire_enum! {
    /// Where one job of a run is.
    RunJobState {
        /// Waiting for the jobs it depends on.
        Waiting = 0,
        /// Released: waiting for a runner.
        Queued = 1,
        /// Leased to a runner.
        Assigned = 2,
        /// Running.
        Running = 3,
        /// Succeeded.
        Succeeded = 4,
        /// Failed.
        Failed = 5,
        /// Cancelled.
        Cancelled = 6,
        /// Ran over its timeout.
        TimedOut = 7,
        /// Its runner vanished and no retry remained.
        Lost = 8,
        /// Not run: its condition on the jobs it depends on, or its
        /// `if:` rule, was not met.
        Skipped = 9,
        /// A `when: manual` job, ready, waiting to be played.
        Manual = 10,
    }
}

impl RunJobState {
    /// The state of a released job.
    pub fn from_job(state: JobState) -> Self {
        match state {
            JobState::Queued => Self::Queued,
            JobState::Assigned => Self::Assigned,
            JobState::Running => Self::Running,
            JobState::Succeeded => Self::Succeeded,
            JobState::Failed => Self::Failed,
            JobState::Cancelled => Self::Cancelled,
            JobState::TimedOut => Self::TimedOut,
            JobState::Lost => Self::Lost,
        }
    }

    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::TimedOut | Self::Lost | Self::Skipped
        )
    }

    /// The lower-case name used in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued => "queued",
            Self::Assigned => "assigned",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "timed_out",
            Self::Lost => "lost",
            Self::Skipped => "skipped",
            Self::Manual => "manual",
        }
    }
}

/// One job of a run, as listings show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunJobInfo {
    /// Name within the pipeline (matrix jobs: `name [key=value]`).
    pub name: String,
    /// Stage.
    pub stage: String,
    /// State.
    pub state: RunJobState,
    /// The job's id once released.
    pub job_id: Option<u64>,
    /// Runner of the current attempt.
    pub runner: Option<String>,
    /// Exit code of the failing or last step.
    pub exit_code: Option<i32>,
    /// When it started running (ms since the Unix epoch).
    pub started_at_ms: Option<u64>,
    /// When it finished.
    pub finished_at_ms: Option<u64>,
    /// Its failure does not fail the run.
    pub allow_failure: bool,
    /// Why it waits, or how it ended.
    pub reason: String,
}

impl RunJobInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string("name")?,
            stage: r.string("stage")?,
            state: RunJobState::read(r, "state")?,
            job_id: r.option("job_id", |r| r.u64("job_id"))?,
            runner: r.option("runner", |r| r.string("runner"))?,
            exit_code: r.option("exit_code", |r| r.i32("exit_code"))?,
            started_at_ms: r.option("started_at_ms", |r| r.u64("started_at_ms"))?,
            finished_at_ms: r.option("finished_at_ms", |r| r.u64("finished_at_ms"))?,
            allow_failure: r.bool("allow_failure")?,
            reason: r.string("reason")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.name);
        w.string(&self.stage);
        self.state.write(w);
        w.option(&self.job_id, |w, v| w.u64(*v));
        w.option(&self.runner, |w, v| w.string(v));
        w.option(&self.exit_code, |w, v| w.i32(*v));
        w.option(&self.started_at_ms, |w, v| w.u64(*v));
        w.option(&self.finished_at_ms, |w, v| w.u64(*v));
        w.bool(self.allow_failure);
        w.string(&self.reason);
    }
}

/// A pipeline run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// Run id.
    pub run_id: u64,
    /// Pipeline name.
    pub name: String,
    /// State.
    pub state: RunState,
    /// How it ended, for people.
    pub message: String,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// When it reached its final state.
    pub finished_at_ms: Option<u64>,
    /// Its jobs, in pipeline order.
    pub jobs: Vec<RunJobInfo>,
}

impl RunInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            run_id: r.u64("run_id")?,
            name: r.string("name")?,
            state: RunState::read(r, "state")?,
            message: r.string("message")?,
            created_at_ms: r.u64("created_at_ms")?,
            finished_at_ms: r.option("finished_at_ms", |r| r.u64("finished_at_ms"))?,
            jobs: r.list("jobs", 19, RunJobInfo::read)?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u64(self.run_id);
        w.string(&self.name);
        self.state.write(w);
        w.string(&self.message);
        w.u64(self.created_at_ms);
        w.option(&self.finished_at_ms, |w, v| w.u64(*v));
        w.list(&self.jobs, |w, j| j.write(w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_debug_form_of_a_spec_never_shows_secret_values() {
        let mut spec = JobSpec::shell("j", "echo hi");
        spec.secrets = vec![("TOKEN".into(), "hunter2-value".into())];
        let shown = format!("{spec:?} {:#?}", spec);
        assert!(shown.contains("TOKEN") && shown.contains("***"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
