//! The step executor: runs one job's steps, in order, as local child
//! processes and reports what happens as a stream of [`ExecEvent`]s.
//!
//! It does no networking; the session layer hands it a [`JobPlan`], forwards
//! the events to the control plane and flips the cancel flag.
//!
//! Guarantees of [`run_job`]:
//! * every step gets exactly one `StepFinished`; a step that ran also gets a
//!   `StepStarted` before its output. A step that does not run gets only
//!   `StepFinished { outcome: Skipped }`: after a failure every step but
//!   those with condition `on_failure` or `always` is skipped, after a
//!   cancellation or timeout every step is, and an `on_failure` step is
//!   skipped when nothing failed. The job's outcome and exit code stay
//!   those of the first step that failed;
//! * `Output` events are numbered from 0 without gaps across the whole job,
//!   and within one stream arrive in the order the process wrote them;
//! * when `run_job` returns, the process group of every step has been sent
//!   SIGKILL. The one escape is a descendant that left the group (`setsid`);
//!   its output is read for at most a second after the step's process exits;
//! * events are sent with backpressure: a consumer that stops reading stalls
//!   the step (its pipes fill, and cancellation waits for the send). The
//!   caller must drain events until `run_job` returns. If the receiver is
//!   dropped the job still runs to completion and the report is returned.
//!
//! Output is exactly what the processes wrote, with secret values replaced
//! by `***`; the System stream carries only the agent's own messages (the
//! truncation marker, a step that could not be started).
//!
//! A step's environment is built by [`env`](mod@env): nothing of the agent's own
//! environment but [`JobPlan::host_env`] reaches it.

pub mod docker;
pub mod env;
mod output;
mod pipe;
mod process_group;
mod program;
mod step;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;
pub use valkyrie::message::StepCondition;

pub use output::{MAX_CHUNK_BYTES, MIN_SECRET_BYTES, SECRET_MASK};
pub use program::{default_shell, BASH_SHELL, SH_SHELL};

use env::{Additions, Env, EnvFileError, MAX_ENV_FILE_BYTES};
use output::{OutputLog, Secrets};

/// Default grace between SIGTERM and SIGKILL when a step is stopped.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Default cap on a job's total output.
pub const DEFAULT_OUTPUT_LIMIT_BYTES: u64 = 64 * 1024 * 1024;

/// Everything needed to run one job.
#[derive(Clone)]
pub struct JobPlan {
    pub job_id: u64,
    pub steps: Vec<StepPlan>,
    /// What every step inherits first, taken literally: the allow-listed
    /// part of the agent's environment, read once and shared by every job.
    /// Steps see nothing else of the agent's environment. Default
    /// [`env::agent_environment`] with no extra names.
    pub host_env: HostEnv,
    /// The variables the agent sets for this job (`CI`, its ids, its
    /// trigger's variables), after `host_env`, taken literally. Default:
    /// none.
    pub base_env: Vec<(String, String)>,
    /// Job environment, on top of `base_env`; each value is `$VAR`-expanded
    /// ([`env::expand`]) against the variables set before it.
    pub env: Vec<(String, String)>,
    /// Exported as environment variables too; their values (3 bytes or
    /// longer) are replaced by `***` in all output.
    pub secrets: Vec<(String, String)>,
    /// Fresh per-job directory, created by [`run_job`]; the steps' cwd.
    pub workspace: PathBuf,
    /// Program and leading arguments; a step's line is appended as the last
    /// argument. Default [`default_shell`]: `bash -eo pipefail -c` where
    /// bash exists, `sh -e -c` otherwise, so a failing line of a
    /// multi-line script fails the step.
    pub shell: Vec<String>,
    /// Limit for the whole job, all steps together. Default: none.
    pub timeout: Option<Duration>,
    /// How long a step may take to exit after SIGTERM before its process
    /// group gets SIGKILL. Default [`DEFAULT_KILL_GRACE`].
    pub kill_grace: Duration,
    /// Cap on the job's total output bytes (after masking).
    /// Default [`DEFAULT_OUTPUT_LIMIT_BYTES`].
    pub output_limit_bytes: u64,
    /// Run the steps in a container (the Docker executor). Default: none,
    /// steps are processes on this machine.
    pub container: Option<ContainerPlan>,
    /// Why this runner cannot run the job (e.g. a container job on a
    /// runner without Docker); the job fails with it before any step.
    pub refusal: Option<String>,
    /// The commit to check out into the workspace before the first step
    /// ([`crate::checkout`]). Default: none, the workspace starts empty.
    pub checkout: Option<crate::checkout::CheckoutPlan>,
    /// The pool the job's `$VALKYRIE_CACHE_DIR` comes from
    /// ([`crate::cache`]). Default: none, the job has no cache directory.
    pub cache_pool: Option<PathBuf>,
    /// Runs after the checkout (and the container's start), before the
    /// first step, with the job's environment; its lines go to the job's
    /// log. It restores the job's `cache:` ([`crate::artifacts::cache`]).
    /// Default: none.
    pub before_steps: Option<BeforeSteps>,
}

/// The part of the agent's environment every job inherits
/// ([`JobPlan::host_env`]).
pub type HostEnv = std::sync::Arc<[(String, String)]>;

/// A [`JobPlan::before_steps`] hook.
pub type BeforeSteps =
    std::sync::Arc<dyn Fn(env::Env) -> futures_util::future::BoxFuture<'static, Vec<String>> + Send + Sync>;

/// The container a job's steps run in, and the executor that makes it.
#[derive(Clone, Debug)]
pub struct ContainerPlan {
    pub executor: docker::DockerExecutor,
    pub spec: valkyrie::message::ContainerSpec,
    /// For the labels.
    pub attempt: u32,
}

impl JobPlan {
    /// A job with no steps and the defaults documented on each field.
    pub fn new(job_id: u64, workspace: impl Into<PathBuf>) -> Self {
        Self::with_host_env(job_id, workspace, env::agent_environment(&[]).into())
    }

    /// Whether the job starts any process: a container, a checkout (git),
    /// or a step that is not a no-op. One that starts none needs no
    /// workspace, cache directory or supervisor: it is over at once.
    pub fn starts_processes(&self) -> bool {
        self.container.is_some()
            || self.checkout.is_some()
            || self.steps.iter().any(|s| !matches!(s.command, StepCommand::Noop))
    }

    /// Whether the executor makes the job's workspace: for a process, or
    /// for what is fetched into it before the steps.
    pub fn needs_workspace(&self) -> bool {
        self.starts_processes() || self.before_steps.is_some()
    }

    /// [`JobPlan::new`] with the agent's environment given, not read from
    /// this process's environment (the agent reads it once, not per job:
    /// it was a fifth of a no-op job's instructions) and shared, not copied.
    pub fn with_host_env(job_id: u64, workspace: impl Into<PathBuf>, host_env: HostEnv) -> Self {
        JobPlan {
            job_id,
            steps: Vec::new(),
            host_env,
            base_env: Vec::new(),
            env: Vec::new(),
            secrets: Vec::new(),
            workspace: workspace.into(),
            shell: default_shell(),
            timeout: None,
            kill_grace: DEFAULT_KILL_GRACE,
            output_limit_bytes: DEFAULT_OUTPUT_LIMIT_BYTES,
            container: None,
            refusal: None,
            checkout: None,
            cache_pool: None,
            before_steps: None,
        }
    }
}

// Hand-written so that secret values never reach a log line.
impl std::fmt::Debug for JobPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret_names: Vec<&str> = self.secrets.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("JobPlan")
            .field("job_id", &self.job_id)
            .field("steps", &self.steps)
            .field(
                "host_env",
                &self.host_env.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field(
                "base_env",
                &self.base_env.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("env", &self.env)
            .field("secrets", &secret_names)
            .field("workspace", &self.workspace)
            .field("shell", &self.shell)
            .field("timeout", &self.timeout)
            .field("kill_grace", &self.kill_grace)
            .field("output_limit_bytes", &self.output_limit_bytes)
            .field("container", &self.container.as_ref().map(|c| &c.spec))
            .field("refusal", &self.refusal)
            .field("checkout", &self.checkout)
            .field("cache_pool", &self.cache_pool)
            .field("before_steps", &self.before_steps.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    pub name: String,
    pub command: StepCommand,
    /// Step environment, on top of the job's environment, secrets and what
    /// earlier steps added; `$VAR`-expanded like the job's.
    pub env: Vec<(String, String)>,
    /// Relative to the workspace; must not be absolute or contain `..`.
    pub working_directory: Option<String>,
    /// A failure of this step is reported as `FailedAllowed` and does not
    /// fail the job.
    pub continue_on_error: bool,
    /// When it runs: after success only (the default), only once an
    /// earlier step failed the job, or either way. Never after a cancel or
    /// a timeout.
    pub condition: StepCondition,
}

impl StepPlan {
    /// A step running `line` in the job's shell.
    pub fn shell(name: impl Into<String>, line: impl Into<String>) -> Self {
        StepPlan {
            name: name.into(),
            command: StepCommand::Shell(line.into()),
            env: Vec::new(),
            working_directory: None,
            continue_on_error: false,
            condition: StepCondition::OnSuccess,
        }
    }

    /// A step that starts no process and succeeds immediately.
    pub fn noop(name: impl Into<String>) -> Self {
        StepPlan {
            command: StepCommand::Noop,
            ..StepPlan::shell(name, "")
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepCommand {
    /// A line for the job's shell.
    Shell(String),
    /// Starts no process and succeeds immediately (benchmarks, health checks).
    Noop,
    /// A program and its arguments, started directly (no shell) as the
    /// leader of the step's process group, so signals reach it.
    Argv(Vec<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
    /// Lines the agent itself writes, e.g. the truncation marker.
    System,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    StepStarted {
        index: u32,
        name: String,
        /// Process group of the step; `None` when no process was started.
        pgid: Option<i32>,
    },
    Output {
        /// Starts at 0, +1 per `Output` event across the whole job, no gaps.
        seq: u64,
        stream: OutputStream,
        /// At most [`MAX_CHUNK_BYTES`]; split at a newline where possible.
        data: Bytes,
    },
    StepFinished {
        index: u32,
        /// `None` when the process was killed by a signal or never ran.
        exit_code: Option<i32>,
        signal: Option<i32>,
        duration: Duration,
        outcome: StepOutcome,
        /// Why the step failed without its process deciding it: it could
        /// not be started, or left an unusable `$VALKYRIE_ENV` file.
        error: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepOutcome {
    Succeeded,
    Failed,
    /// Failed, but the step has `continue_on_error`.
    FailedAllowed,
    Cancelled,
    TimedOut,
    /// Not run because an earlier step ended the job.
    Skipped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobOutcome {
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReport {
    pub outcome: JobOutcome,
    /// Exit code of the step that ended the job, or of the last step that
    /// ran; `None` if that step was signalled, was a Noop or never started.
    pub exit_code: Option<i32>,
    pub duration: Duration,
    pub output_truncated: bool,
    /// Why the job failed before any step could run (its workspace or its
    /// environment), for people.
    pub error: Option<String>,
}

/// How one step ended.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StepResult {
    exit_code: Option<i32>,
    signal: Option<i32>,
    duration: Duration,
    outcome: StepOutcome,
    error: Option<String>,
}

impl StepResult {
    /// `succeeded in 1.20s`, `failed with exit code 4 in 0.03s`, `skipped`:
    /// the end of a step's section line.
    fn summary(&self) -> String {
        let how = match self.outcome {
            StepOutcome::Succeeded => "succeeded",
            StepOutcome::Failed => "failed",
            StepOutcome::FailedAllowed => "failed (continue_on_error)",
            StepOutcome::Cancelled => "cancelled",
            StepOutcome::TimedOut => "timed out",
            StepOutcome::Skipped => return "skipped".into(),
        };
        let status = match (self.exit_code, self.signal) {
            (Some(code), _) if code != 0 => format!(" with exit code {code}"),
            (_, Some(signal)) => format!(" by signal {signal}"),
            _ => String::new(),
        };
        format!("{how}{status} in {:.2}s", self.duration.as_secs_f64())
    }

    fn not_started(outcome: StepOutcome) -> Self {
        StepResult {
            exit_code: None,
            signal: None,
            duration: Duration::ZERO,
            outcome,
            error: None,
        }
    }
}

/// Where a job's `$VALKYRIE_ENV` and `$VALKYRIE_PATH` files live: next to
/// its workspace (`<workspace>.valkyrie`), so that nothing the job does to
/// its workspace touches them. Removed when the job ends.
pub fn files_dir(workspace: &Path) -> PathBuf {
    let mut dir = workspace.as_os_str().to_owned();
    dir.push(".valkyrie");
    PathBuf::from(dir)
}

/// The job's environment before its first step: `host_env`, `base_env`,
/// the job's `env` expanded in order, then its secrets (literal).
fn job_environment(plan: &JobPlan, container: Option<&docker::JobContainer>) -> Result<Env, String> {
    let mut env = Env::default();
    // In a container, the image's environment (its PATH above all) first.
    for (name, value) in container.iter().flat_map(|c| &c.image_env) {
        env.set(name, value.clone());
    }
    for (name, value) in plan.host_env.iter().chain(&plan.base_env) {
        env.set(name, value.clone());
    }
    for (name, value) in &plan.env {
        env.set_expanded(name, value)
            .map_err(|e| format!("job env {e}"))?;
    }
    for (name, value) in &plan.secrets {
        env.set(name, value.clone());
    }
    Ok(env)
}

/// Paths of one step's `$VALKYRIE_ENV` and `$VALKYRIE_PATH` files.
struct StepFiles {
    env: PathBuf,
    path: PathBuf,
    /// 0600, or 0666 for a container job, whose user need not be the agent's.
    mode: u32,
}

impl StepFiles {
    fn new(dir: &Path, shared: bool) -> Self {
        StepFiles {
            env: dir.join("env"),
            path: dir.join("path"),
            mode: if shared { 0o666 } else { 0o600 },
        }
    }

    /// Empties both files for the next step.
    async fn reset(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for file in [&self.env, &self.path] {
            tokio::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(self.mode)
                .open(file)
                .await?;
            if self.mode != 0o600 {
                // The umask may have narrowed the mode given at creation.
                tokio::fs::set_permissions(file, std::fs::Permissions::from_mode(self.mode)).await?;
            }
        }
        Ok(())
    }

    /// What the step wrote to them.
    async fn read(&self) -> Result<Additions, String> {
        let env = read_bounded(&self.env, "$VALKYRIE_ENV").await?;
        let path = read_bounded(&self.path, "$VALKYRIE_PATH").await?;
        Ok(Additions {
            env: env::parse_env_file(&env).map_err(|e: EnvFileError| e.to_string())?,
            path: env::parse_path_file(&path),
        })
    }
}

/// Reads a step's file, refusing one over [`MAX_ENV_FILE_BYTES`] before
/// reading it. A missing file (the step removed it) is empty.
async fn read_bounded(file: &Path, what: &str) -> Result<String, String> {
    match tokio::fs::metadata(file).await {
        Ok(meta) if meta.len() > MAX_ENV_FILE_BYTES => {
            return Err(format!(
                "{what} holds {} bytes, over the {MAX_ENV_FILE_BYTES}-byte limit",
                meta.len()
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(e) => return Err(format!("cannot read {what}: {e}")),
    }
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| format!("cannot read {what}: {e}"))?;
    String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
}

/// Runs `plan` to completion, cancellation (`cancel` becomes `true`) or
/// timeout, sending events to `events`. Never panics on a step's failure;
/// everything that goes wrong is in the events and the report.
pub async fn run_job(
    mut plan: JobPlan,
    events: mpsc::Sender<ExecEvent>,
    mut cancel: watch::Receiver<bool>,
) -> JobReport {
    let span = tracing::info_span!("job", job_id = plan.job_id);
    async move {
        let started = Instant::now();
        let deadline = plan.timeout.map(|timeout| started + timeout);
        let checkout_secrets = plan
            .checkout
            .as_ref()
            .map(crate::checkout::CheckoutPlan::secret_values)
            .unwrap_or_default();
        let secrets = Secrets::new(
            plan.secrets
                .iter()
                .map(|(_, value)| value.as_str())
                .chain(checkout_secrets.iter().map(String::as_str)),
        );
        let mut sink = EventSink {
            events,
            log: OutputLog::new(plan.output_limit_bytes),
            secrets,
            steps: plan.steps.len(),
        };

        let mut ended: Option<JobOutcome> = None;
        let mut job_error: Option<String> = None;
        let mut exit_code = None;
        // Jobs that start no process need no directory, unless something
        // is fetched into it before the steps.
        let needs_workspace = plan.needs_workspace();
        let files = StepFiles::new(&files_dir(&plan.workspace), plan.container.is_some());
        let created = if needs_workspace {
            match create_private_dir(&plan.workspace).await {
                Ok(()) => create_private_dir(&files_dir(&plan.workspace)).await,
                Err(e) => Err(e),
            }
        } else {
            Ok(())
        };
        // A container's user need not be the agent's: its two directories
        // are opened to every user. Nobody else on the host reaches them,
        // as the work directory above them stays private (0700).
        let created = match created {
            Ok(()) if plan.container.is_some() => {
                use std::os::unix::fs::PermissionsExt;
                let open = std::fs::Permissions::from_mode(0o777);
                match tokio::fs::set_permissions(&plan.workspace, open.clone()).await {
                    Ok(()) => tokio::fs::set_permissions(files_dir(&plan.workspace), open).await,
                    Err(e) => Err(e),
                }
            }
            other => other,
        };
        if let Err(error) = created {
            tracing::warn!(workspace = %plan.workspace.display(), %error, "could not create workspace");
            let message = format!(
                "could not create the job workspace {}: {error}",
                plan.workspace.display()
            );
            sink.system(&format!("[valkyrie] {message}\n")).await;
            job_error = Some(message);
            ended = Some(JobOutcome::Failed);
        }
        if let (None, Some(refusal)) = (ended, &plan.refusal) {
            sink.system(&format!("[valkyrie] {refusal}\n")).await;
            job_error = Some(refusal.clone());
            ended = Some(JobOutcome::Failed);
        }
        // Held until the job ends: no other job uses this cache meanwhile.
        let mut cache = None;
        if let (None, Some(pool)) = (ended, plan.cache_pool.clone()) {
            match take_cache(pool, plan.container.is_some()).await {
                Ok(lease) => {
                    let seen = match plan.container {
                        Some(_) => docker::CACHE_PATH.to_owned(),
                        None => lease.dir().display().to_string(),
                    };
                    plan.base_env.push(("VALKYRIE_CACHE_DIR".to_owned(), seen));
                    cache = Some(lease);
                }
                Err(error) => {
                    let message = format!("could not take the job's cache directory: {error}");
                    sink.system(&format!("[valkyrie] {message}\n")).await;
                    job_error = Some(message);
                    ended = Some(JobOutcome::Failed);
                }
            }
        }
        if let (None, Some(checkout)) = (ended, &plan.checkout) {
            if let Err((outcome, error)) =
                run_checkout(checkout, &plan.workspace, deadline, &mut cancel, &mut sink).await
            {
                job_error = error;
                ended = Some(outcome);
            }
        }
        let mut container: Option<docker::JobContainer> = None;
        if let (None, Some(c)) = (ended, &plan.container) {
            let (started, result) = docker::JobContainer::start(
                &c.executor,
                &c.spec,
                plan.job_id,
                c.attempt,
                &plan.workspace,
                &files_dir(&plan.workspace),
                cache.as_ref().map(|c| c.dir()),
                deadline,
                &mut cancel,
            )
            .await;
            match result {
                Ok(()) => {}
                Err(docker::StartError::Failed(error)) => {
                    tracing::warn!(%error, "could not start the job's containers");
                    sink.system(&format!("[valkyrie] {error}\n")).await;
                    job_error = Some(error);
                    ended = Some(JobOutcome::Failed);
                }
                Err(docker::StartError::Cancelled) => ended = Some(JobOutcome::Cancelled),
                Err(docker::StartError::TimedOut) => ended = Some(JobOutcome::TimedOut),
            }
            container = Some(started);
        }
        // Only processes and the hook before the steps see the environment:
        // a job with neither builds none (nor fails on one).
        let job_env = if needs_workspace {
            job_environment(&plan, container.as_ref())
        } else {
            Ok(Env::default())
        };
        let mut job_env = match job_env {
            Ok(env) => env,
            Err(error) => {
                if ended.is_none() {
                    sink.system(&format!("[valkyrie] {error}\n")).await;
                    job_error = Some(error.to_string());
                    ended = Some(JobOutcome::Failed);
                }
                Env::default()
            }
        };
        if let (None, Some(hook)) = (ended, plan.before_steps.clone()) {
            // A cache restore may move a large archive: a cancel or the
            // job's timeout stops it (dropping the hook's future ends the
            // transfer; its scratch file is removed on drop).
            let cancelled = async {
                if cancel.wait_for(|c| *c).await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            let timed_out = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                lines = hook(job_env.clone()) => {
                    for line in lines {
                        sink.system(&line).await;
                    }
                }
                () = cancelled => {
                    sink.system("[valkyrie] job cancelled while restoring its caches; the restore stopped\n")
                        .await;
                    ended = Some(JobOutcome::Cancelled);
                }
                () = timed_out => {
                    sink.system("[valkyrie] job timed out while restoring its caches; the restore stopped\n")
                        .await;
                    ended = Some(JobOutcome::TimedOut);
                }
            }
        }

        for (index, step) in plan.steps.iter().enumerate() {
            // Step counts come from a pipeline file; more than u32::MAX is absurd.
            let index = u32::try_from(index).unwrap_or(u32::MAX);
            // A cancel or timeout stops every step; a failure only those
            // that run on success.
            let stopped = if *cancel.borrow() {
                Some(JobOutcome::Cancelled)
            } else if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                Some(JobOutcome::TimedOut)
            } else {
                None
            };
            if ended.is_none() {
                ended = stopped;
            }
            let failing = ended == Some(JobOutcome::Failed);
            let runs = match step.condition {
                _ if stopped.is_some() => false,
                StepCondition::OnSuccess => ended.is_none(),
                StepCondition::OnFailure => failing,
                StepCondition::Always => ended.is_none() || failing,
            };
            // Section lines, as GitLab's: which step starts, and how it
            // ended. A job of one step has none; its own state, exit code
            // and duration say the same.
            let sections = plan.steps.len() > 1;
            let result = if !runs {
                StepResult::not_started(StepOutcome::Skipped)
            } else {
                match &step.command {
                    StepCommand::Noop => {
                        sink.started(index, &step.name, None).await;
                        StepResult::not_started(StepOutcome::Succeeded)
                    }
                    StepCommand::Shell(line) => {
                        let mut argv = plan.shell.clone();
                        argv.push(line.clone());
                        run_process_step(
                            &plan,
                            index,
                            step,
                            argv,
                            &mut job_env,
                            &files,
                            container.as_ref(),
                            deadline,
                            &mut sink,
                            &mut cancel,
                        )
                        .await
                    }
                    StepCommand::Argv(argv) => {
                        run_process_step(
                            &plan,
                            index,
                            step,
                            argv.clone(),
                            &mut job_env,
                            &files,
                            container.as_ref(),
                            deadline,
                            &mut sink,
                            &mut cancel,
                        )
                        .await
                    }
                }
            };
            if sections {
                let line = format!(
                    "[valkyrie] step {}/{} `{}` {}\n",
                    index + 1,
                    plan.steps.len(),
                    step.name,
                    result.summary()
                );
                sink.system(&line).await;
            }
            sink.send(ExecEvent::StepFinished {
                index,
                exit_code: result.exit_code,
                signal: result.signal,
                duration: result.duration,
                outcome: result.outcome,
                error: result.error.clone(),
            })
            .await;
            if result.outcome == StepOutcome::Skipped {
                continue;
            }
            let step_ended = match result.outcome {
                StepOutcome::Failed => Some(JobOutcome::Failed),
                StepOutcome::Cancelled => Some(JobOutcome::Cancelled),
                StepOutcome::TimedOut => Some(JobOutcome::TimedOut),
                StepOutcome::Succeeded | StepOutcome::FailedAllowed | StepOutcome::Skipped => None,
            };
            // A cleanup step after a failure leaves the job failed, with
            // the exit code of the step that failed it.
            if ended.is_none() {
                exit_code = result.exit_code;
                ended = step_ended;
            }
        }

        let report = JobReport {
            outcome: ended.unwrap_or(JobOutcome::Succeeded),
            exit_code,
            duration: started.elapsed(),
            output_truncated: sink.log.truncated(),
            error: job_error,
        };
        if let Some(container) = container {
            container.teardown().await;
        }
        if needs_workspace {
            let _ = tokio::fs::remove_dir_all(files_dir(&plan.workspace)).await;
        }
        tracing::info!(outcome = ?report.outcome, exit_code = ?report.exit_code, "job finished");
        report
    }
    .instrument(span)
    .await
}

/// Takes an instance of the cache `pool`; for a container job it is
/// opened to every user, as the workspace is.
async fn take_cache(pool: PathBuf, shared: bool) -> std::io::Result<crate::cache::CacheLease> {
    tokio::task::spawn_blocking(move || {
        let lease = crate::cache::acquire_in(&pool)?;
        if shared {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(lease.dir(), std::fs::Permissions::from_mode(0o777))?;
        }
        Ok(lease)
    })
    .await
    .unwrap_or_else(|join| Err(std::io::Error::other(join)))
}

/// Creates `dir` (and its parents) private to the agent's user (0700):
/// other users of the machine see no job's files.
async fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || valkyrie::private_fs::create_dir_all(&dir))
        .await
        .unwrap_or_else(|join| Err(std::io::Error::other(join)))
}

/// Runs one step that starts a process, with the job's environment plus
/// the step's, and folds what it wrote to `$VALKYRIE_ENV` and
/// `$VALKYRIE_PATH` into `job_env` for the steps after it.
#[allow(clippy::too_many_arguments)]
async fn run_process_step(
    plan: &JobPlan,
    index: u32,
    step: &StepPlan,
    argv: Vec<String>,
    job_env: &mut Env,
    files: &StepFiles,
    container: Option<&docker::JobContainer>,
    deadline: Option<Instant>,
    sink: &mut EventSink,
    cancel: &mut watch::Receiver<bool>,
) -> StepResult {
    let files_ready = files.reset().await;
    let mut env = job_env.clone();
    let mut expanded = Ok(());
    for (name, value) in &step.env {
        if let Err(e) = env.set_expanded(name, value) {
            expanded = Err(e);
            break;
        }
    }
    if let Err(error) = files_ready {
        tracing::warn!(%error, "could not prepare $VALKYRIE_ENV / $VALKYRIE_PATH");
    }
    let mut result = match container {
        Some(container) => {
            env.set("VALKYRIE_ENV", format!("{}/env", docker::FILES_PATH));
            env.set("VALKYRIE_PATH", format!("{}/path", docker::FILES_PATH));
            run_container_step(
                plan,
                index,
                step,
                argv,
                expanded.map(|()| env),
                container,
                deadline,
                sink,
                cancel,
            )
            .await
        }
        None => {
            env.set("VALKYRIE_ENV", files.env.display().to_string());
            env.set("VALKYRIE_PATH", files.path.display().to_string());
            let run = step::ProcessStep {
                plan,
                index,
                step,
                argv,
                env: expanded.map(|()| env),
                deadline,
            };
            run.run(sink, cancel).await
        }
    };
    if !matches!(
        result.outcome,
        StepOutcome::Succeeded | StepOutcome::FailedAllowed
    ) {
        return result;
    }
    match files.read().await {
        Ok(additions) => {
            for (name, value) in additions.env {
                job_env.set(&name, value);
            }
            for dir in additions.path {
                job_env.prepend_path(&dir);
            }
        }
        Err(error) => {
            sink.system(&format!("[valkyrie] step `{}`: {error}\n", step.name))
                .await;
            result.outcome = if step.continue_on_error {
                StepOutcome::FailedAllowed
            } else {
                StepOutcome::Failed
            };
            result.error = Some(error);
        }
    }
    result
}

/// Runs one step in the job's container (`docker exec`): the same events,
/// outcomes and working-directory rules as a process step.
#[allow(clippy::too_many_arguments)]
async fn run_container_step(
    plan: &JobPlan,
    index: u32,
    step: &StepPlan,
    argv: Vec<String>,
    env: Result<Env, env::ExpandError>,
    container: &docker::JobContainer,
    deadline: Option<Instant>,
    sink: &mut EventSink,
    cancel: &mut watch::Receiver<bool>,
) -> StepResult {
    let span = tracing::info_span!("step", index, name = %step.name);
    async move {
        let started = Instant::now();
        let failed = if step.continue_on_error {
            StepOutcome::FailedAllowed
        } else {
            StepOutcome::Failed
        };
        sink.send(ExecEvent::StepStarted {
            index,
            name: step.name.clone(),
            pgid: None,
        })
        .await;
        let prepared = (|| {
            let env = env.map_err(|e| format!("step env {e}"))?;
            step::working_directory(&plan.workspace, step.working_directory.as_deref())
                .map_err(|e| e.to_string())?;
            if argv.is_empty() {
                return Err("the step's command is empty (an empty `shell`?)".to_owned());
            }
            let cwd = match &step.working_directory {
                Some(dir) => format!("{}/{dir}", docker::WORKSPACE_PATH),
                None => docker::WORKSPACE_PATH.to_owned(),
            };
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Ok((env, cwd))
        })();
        let ran = match prepared {
            Ok((env, cwd)) => {
                let command = docker::ExecCommand { argv, env, cwd };
                container
                    .exec(command, deadline, plan.kill_grace, sink, cancel)
                    .await
            }
            Err(e) => Err(e),
        };
        let result = match ran {
            Ok(ran) => StepResult {
                exit_code: ran.exit_code,
                signal: None,
                duration: started.elapsed(),
                outcome: match (ran.stopped, ran.exit_code) {
                    (Some(step::StopReason::Cancelled), _) => StepOutcome::Cancelled,
                    (Some(step::StopReason::TimedOut), _) => StepOutcome::TimedOut,
                    (None, Some(0)) => StepOutcome::Succeeded,
                    (None, _) => failed,
                },
                error: None,
            },
            Err(error) => {
                sink.system(&format!(
                    "[valkyrie] could not start step `{}`: {error}\n",
                    step.name
                ))
                .await;
                StepResult {
                    exit_code: None,
                    signal: None,
                    duration: started.elapsed(),
                    outcome: failed,
                    error: Some(format!("could not start: {error}")),
                }
            }
        };
        tracing::info!(?result.outcome, ?result.exit_code, "step finished");
        result
    }
    .instrument(span)
    .await
}

/// Where events go: numbering, limit and masking in front of the channel.
/// Checks the job's commit out ([`crate::checkout`]), its lines in the
/// job's log (masked); how the job ends if it fails.
async fn run_checkout(
    checkout: &crate::checkout::CheckoutPlan,
    workspace: &Path,
    deadline: Option<Instant>,
    cancel: &mut watch::Receiver<bool>,
    sink: &mut EventSink,
) -> Result<(), (JobOutcome, Option<String>)> {
    use crate::checkout::CheckoutError;
    let mut log = Vec::new();
    let result = crate::checkout::checkout(checkout, workspace, deadline, cancel, &mut log).await;
    for line in log {
        sink.system(&format!("{line}\n")).await;
    }
    match result {
        Ok(()) => Ok(()),
        Err(CheckoutError::Cancelled) => Err((JobOutcome::Cancelled, None)),
        Err(CheckoutError::TimedOut) => Err((JobOutcome::TimedOut, None)),
        Err(CheckoutError::Failed(error)) => {
            let message = format!("checkout failed: {error}");
            sink.system(&format!("[valkyrie] {message}\n")).await;
            // The reason is shown too: masked like the log.
            let masked = String::from_utf8_lossy(&sink.secrets.mask_all(message.as_bytes())).into_owned();
            tracing::warn!(error = %masked, "checkout failed");
            Err((JobOutcome::Failed, Some(masked)))
        }
    }
}

struct EventSink {
    events: mpsc::Sender<ExecEvent>,
    log: OutputLog,
    secrets: Secrets,
    /// Steps in the job: a job of more than one gets section lines.
    steps: usize,
}

impl EventSink {
    async fn send(&self, event: ExecEvent) {
        // A closed channel means nobody listens any more; the job still runs
        // to completion so the report (and process cleanup) stay correct.
        let _ = self.events.send(event).await;
    }

    /// Sends chunks of process output through the job's output limit.
    async fn output(&mut self, stream: OutputStream, chunks: Vec<Bytes>) {
        let mut ready = Vec::new();
        for chunk in chunks {
            self.log.admit(stream, chunk, &mut ready);
        }
        for event in ready {
            self.send(event).await;
        }
    }

    /// Sends `StepStarted`, then (in a job of several steps) the section
    /// line that opens the step in the log.
    async fn started(&mut self, index: u32, name: &str, pgid: Option<i32>) {
        self.send(ExecEvent::StepStarted {
            index,
            name: name.to_owned(),
            pgid,
        })
        .await;
        if self.steps > 1 {
            let line = format!("[valkyrie] step {}/{} `{name}` started\n", index + 1, self.steps);
            self.system(&line).await;
        }
    }

    /// Sends one of the agent's own messages, masked like process output.
    async fn system(&mut self, text: &str) {
        let masked = self.secrets.mask_all(text.as_bytes());
        let event = self.log.system(Bytes::from(masked));
        self.send(event).await;
    }
}

#[cfg(test)]
mod tests;
