//! Running one step's process: spawn, stream both pipes, stop on cancel or
//! timeout, clean up the process group.
//!
//! Stopping a step (cancel or job timeout): SIGTERM to the group, then up to
//! `kill_grace` for the leader to exit, then SIGKILL to the group. Whenever
//! the leader exits, for any reason, the group gets SIGKILL so no background
//! child survives the step. Output keeps being read while the step stops, so
//! a process blocked on a full pipe can still see its signal and exit.

use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Component, Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;

use super::env::{Env, ExpandError};
use super::pipe::PipeReader;
use super::process_group::{self, StepProcess};
use super::program;
use super::{EventSink, JobPlan, OutputStream, StepOutcome, StepPlan, StepResult};

/// After the leader exited and the group was killed, the pipes normally hit
/// EOF at once. A process that escaped the group (`setsid`) may still hold
/// them open; we read what it wrote for this long and then stop waiting.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);

/// Why the agent stopped a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    Cancelled,
    TimedOut,
}

/// Why a step's process could not be started. Every variant names what
/// was wrong (the directory, the program, the variable) and how to fix it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(super) enum StartStepError {
    /// `working_directory` is absolute or has `..`.
    #[error("working_directory `{0}` must be a relative path inside the workspace, without `..`")]
    WorkingDirectoryOutside(String),
    /// `working_directory` does not exist.
    #[error(
        "working directory `{0}` does not exist in the job workspace; \
         create it in an earlier step or fix the path"
    )]
    WorkingDirectoryMissing(String),
    /// `working_directory` is a file.
    #[error("working directory `{0}` is not a directory")]
    WorkingDirectoryNotADirectory(String),
    /// The command (shell or argv) is empty.
    #[error("the step's command is empty (an empty `shell`?)")]
    EmptyCommand,
    /// No executable of that name on the step's `PATH`.
    #[error("program `{program}` was not found on the step's PATH `{path}`; install it on the runner or fix `PATH`")]
    ProgramNotOnPath {
        /// The program.
        program: String,
        /// The step's `PATH` (`<unset>` when it has none).
        path: String,
    },
    /// A program given with a `/` is missing or not executable.
    #[error("program `{0}` does not exist or is not executable")]
    ProgramMissing(String),
    /// A step `env` value is too long after expansion.
    #[error("step env {0}")]
    Env(#[from] ExpandError),
    /// `spawn` itself failed.
    #[error("could not start `{program}`: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// What the OS said.
        source: io::Error,
    },
}

/// One step of a job that runs a process: a shell line (`argv` is the
/// job's shell plus the line) or an argv step.
pub(super) struct ProcessStep<'a> {
    pub(super) plan: &'a JobPlan,
    pub(super) index: u32,
    pub(super) step: &'a StepPlan,
    /// Program and arguments.
    pub(super) argv: Vec<String>,
    /// The step's whole environment; nothing else reaches the process.
    pub(super) env: Result<Env, ExpandError>,
    /// The job's deadline, which also bounds this step.
    pub(super) deadline: Option<Instant>,
}

impl ProcessStep<'_> {
    pub(super) async fn run(self, sink: &mut EventSink, cancel: &mut watch::Receiver<bool>) -> StepResult {
        let span = tracing::info_span!(
            "step",
            index = self.index,
            name = %self.step.name,
            pgid = tracing::field::Empty
        );
        self.run_in_span(sink, cancel).instrument(span).await
    }

    fn spawn(&self) -> Result<StepProcess, StartStepError> {
        let env = self.env.as_ref().map_err(|e| StartStepError::Env(e.clone()))?;
        let cwd = working_directory(&self.plan.workspace, self.step.working_directory.as_deref())?;
        let program = self.argv.first().ok_or(StartStepError::EmptyCommand)?;
        let path = env.get("PATH");
        let resolved = program::find_program(program, path, &cwd).ok_or_else(|| {
            if program.contains('/') {
                StartStepError::ProgramMissing(program.clone())
            } else {
                StartStepError::ProgramNotOnPath {
                    program: program.clone(),
                    path: path.unwrap_or("<unset>").to_owned(),
                }
            }
        })?;
        process_group::spawn(&resolved, &self.argv, &cwd, env.iter()).map_err(|source| {
            StartStepError::Spawn {
                program: program.clone(),
                source,
            }
        })
    }

    async fn run_in_span(self, sink: &mut EventSink, cancel: &mut watch::Receiver<bool>) -> StepResult {
        let started = Instant::now();
        let process = match self.spawn() {
            Ok(process) => process,
            Err(error) => {
                tracing::warn!(%error, "could not start step");
                sink.started(self.index, &self.step.name, None).await;
                sink.system(&format!(
                    "[valkyrie] could not start step `{}`: {error}\n",
                    self.step.name
                ))
                .await;
                return StepResult {
                    exit_code: None,
                    signal: None,
                    duration: started.elapsed(),
                    outcome: self.failed(),
                    error: Some(format!("could not start: {error}")),
                };
            }
        };
        tracing::Span::current().record("pgid", process.pgid());
        // For the next agent, should this one be killed while the step
        // runs (see `leftovers`); removed with the directory when the job ends.
        let record = super::files_dir(&self.plan.workspace).join(crate::leftovers::PGID_FILE);
        if let Err(error) = std::fs::write(&record, process.pgid().to_string()) {
            tracing::warn!(%error, "could not record the step's process group");
        }
        tracing::info!("step started");
        sink.started(self.index, &self.step.name, Some(process.pgid()))
            .await;

        let (status, stopped) = self.drive(process, sink, cancel).await;
        let outcome = match (stopped, status) {
            (Some(StopReason::Cancelled), _) => StepOutcome::Cancelled,
            (Some(StopReason::TimedOut), _) => StepOutcome::TimedOut,
            (None, Some(status)) if status.success() => StepOutcome::Succeeded,
            (None, _) => self.failed(),
        };
        let result = StepResult {
            exit_code: status.and_then(|s| s.code()),
            signal: status.and_then(|s| s.signal()),
            duration: started.elapsed(),
            outcome,
            error: None,
        };
        tracing::info!(?result.outcome, ?result.exit_code, ?result.signal, "step finished");
        result
    }

    fn failed(&self) -> StepOutcome {
        if self.step.continue_on_error {
            StepOutcome::FailedAllowed
        } else {
            StepOutcome::Failed
        }
    }

    /// Streams output until the leader has exited and both pipes are done.
    /// Returns the leader's exit status (`None` if it could not be read) and
    /// why the agent stopped the step, if it did.
    async fn drive(
        &self,
        mut process: StepProcess,
        sink: &mut EventSink,
        cancel: &mut watch::Receiver<bool>,
    ) -> (Option<ExitStatus>, Option<StopReason>) {
        let mut stdout = PipeReader::new(process.stdout.take(), sink.secrets.clone());
        let mut stderr = PipeReader::new(process.stderr.take(), sink.secrets.clone());

        // `Some(status)` once the leader was reaped; `Some(None)` if waiting
        // for it failed, which we treat as an exit with unknown status.
        let mut exited: Option<Option<ExitStatus>> = None;
        let mut stopped: Option<StopReason> = None;
        let mut sigkill_at: Option<Instant> = None;
        let mut drain_until: Option<Instant> = None;

        while exited.is_none() || stdout.is_open() || stderr.is_open() {
            let running = exited.is_none();
            // Copied out: the read futures below borrow the readers mutably.
            let (stdout_flush_at, stderr_flush_at) = (stdout.flush_partial_at, stderr.flush_partial_at);
            tokio::select! {
                status = process.child.wait(), if running => {
                    exited = Some(status.inspect_err(|error| tracing::warn!(%error, "could not wait for step process")).ok());
                    process.kill_group_after_exit();
                    drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                }
                () = cancelled(cancel), if running && stopped.is_none() => {
                    tracing::info!("step cancelled, sending SIGTERM to its process group");
                    stopped = Some(StopReason::Cancelled);
                    process.signal_group(Signal::SIGTERM);
                    sigkill_at = Some(Instant::now() + self.plan.kill_grace);
                }
                () = sleep_until(self.deadline), if running && stopped.is_none() => {
                    tracing::info!("job timed out, sending SIGTERM to the step's process group");
                    stopped = Some(StopReason::TimedOut);
                    process.signal_group(Signal::SIGTERM);
                    sigkill_at = Some(Instant::now() + self.plan.kill_grace);
                }
                () = sleep_until(sigkill_at), if running => {
                    tracing::info!("kill grace expired, sending SIGKILL to the step's process group");
                    process.signal_group(Signal::SIGKILL);
                    sigkill_at = None;
                }
                read = stdout.read() => {
                    sink.output(OutputStream::Stdout, stdout.on_read(read)).await;
                }
                read = stderr.read() => {
                    sink.output(OutputStream::Stderr, stderr.on_read(read)).await;
                }
                () = sleep_until(stdout_flush_at) => {
                    sink.output(OutputStream::Stdout, stdout.flush_partial_line()).await;
                }
                () = sleep_until(stderr_flush_at) => {
                    sink.output(OutputStream::Stderr, stderr.flush_partial_line()).await;
                }
                () = sleep_until(drain_until) => {
                    tracing::warn!("step output still open after its process group was killed (a process left the group?); no longer reading it");
                    drain_until = None;
                    sink.output(OutputStream::Stdout, stdout.close()).await;
                    sink.output(OutputStream::Stderr, stderr.close()).await;
                }
            }
        }
        (exited.flatten(), stopped)
    }
}

/// Completes when the cancel flag is (or becomes) true; never, if the sender
/// is gone without cancelling.
pub(super) async fn cancelled(cancel: &mut watch::Receiver<bool>) {
    if cancel.wait_for(|cancelled| *cancelled).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Sleeps until `at`, or forever when there is no such deadline.
pub(super) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The step's cwd: the workspace, or a directory inside it. Refuses paths
/// that would leave the workspace, so a pipeline cannot run steps elsewhere
/// on the runner by accident, and names a directory that is missing.
pub(super) fn working_directory(workspace: &Path, relative: Option<&str>) -> Result<PathBuf, StartStepError> {
    let Some(relative) = relative else {
        return Ok(workspace.to_path_buf());
    };
    let path = Path::new(relative);
    if !path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(StartStepError::WorkingDirectoryOutside(relative.to_owned()));
    }
    let cwd = workspace.join(path);
    match std::fs::metadata(&cwd) {
        Ok(meta) if meta.is_dir() => Ok(cwd),
        Ok(_) => Err(StartStepError::WorkingDirectoryNotADirectory(relative.to_owned())),
        Err(_) => Err(StartStepError::WorkingDirectoryMissing(relative.to_owned())),
    }
}
