//! One assigned attempt: turns the job spec into an executor plan, runs it,
//! and translates executor events into protocol messages for the outbox, in
//! order: LogChunk and StepResult as they happen, JobResult last.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};
use tracing::{info, Instrument};
use valkyrie::message::{self as msg, JobSpec, StepCommand as WireStep};

use crate::executor::{self, ExecEvent, JobPlan, StepCommand, StepOutcome, StepPlan};

/// Settings the agent applies to every job.
#[derive(Clone, Debug)]
pub struct JobDefaults {
    /// Shell argv when the job names none. Default
    /// [`executor::default_shell`] (`bash -eo pipefail -c` where bash
    /// exists, `sh -e -c` otherwise).
    pub shell: Vec<String>,
    /// SIGTERM → SIGKILL grace. Default [`executor::DEFAULT_KILL_GRACE`].
    pub kill_grace: Duration,
    /// Output limit per job. Default [`executor::DEFAULT_OUTPUT_LIMIT_BYTES`].
    pub output_limit_bytes: u64,
    /// The part of the agent's environment every step inherits, shared by
    /// every job's plan. Default [`executor::env::agent_environment`] with
    /// no extra names: never a `VALKYRIE_*` variable, so never the agent's
    /// credentials.
    pub host_env: executor::HostEnv,
    /// The Docker executor (`--executor docker`): every job runs in a
    /// container. Default: none, steps run on this machine.
    pub docker: Option<executor::docker::DockerExecutor>,
    /// The largest artifact archive a job may upload. Default
    /// [`DEFAULT_MAX_ARTIFACT_BYTES`] (1 GiB).
    pub max_artifact_bytes: u64,
}

impl Default for JobDefaults {
    fn default() -> Self {
        Self {
            shell: executor::default_shell(),
            kill_grace: executor::DEFAULT_KILL_GRACE,
            output_limit_bytes: executor::DEFAULT_OUTPUT_LIMIT_BYTES,
            host_env: executor::env::agent_environment(&[]).into(),
            docker: None,
            max_artifact_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
        }
    }
}

/// What an attempt needs to move artifacts.
#[derive(Debug, Clone)]
pub struct AttemptArtifacts {
    /// The session transfers use.
    pub link: crate::artifacts::ArtifactLink,
    /// The job's `artifacts` field.
    pub spec: Option<Box<msg::ArtifactsSpec>>,
    /// The job's `cache` field.
    pub cache: Vec<msg::CacheSpec>,
    /// The largest archive the job may upload (artifacts or a cache).
    pub max_bytes: u64,
}

impl AttemptArtifacts {
    /// No artifacts, and no link to move them (tests).
    pub fn none() -> Self {
        Self {
            link: crate::artifacts::ArtifactLink::none(),
            spec: None,
            cache: Vec::new(),
            max_bytes: DEFAULT_MAX_ARTIFACT_BYTES,
        }
    }
}

/// The default of `--max-artifact-bytes`: 1 GiB.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Builds the executor plan for an attempt.
pub fn plan(job_id: u64, attempt: u32, spec: &JobSpec, work_dir: &Path, defaults: &JobDefaults) -> JobPlan {
    let workspace = work_dir.join(format!("job-{job_id}-{attempt}"));
    let mut plan = JobPlan::with_host_env(job_id, workspace, defaults.host_env.clone());
    plan.steps = spec
        .steps
        .iter()
        .map(|s| StepPlan {
            name: s.name.clone(),
            command: match &s.command {
                WireStep::Shell(line) => StepCommand::Shell(line.clone()),
                WireStep::Noop => StepCommand::Noop,
                WireStep::Argv(argv) => StepCommand::Argv(argv.clone()),
            },
            env: s.env.clone(),
            working_directory: s.working_directory.clone(),
            continue_on_error: s.continue_on_error,
            condition: s.condition,
        })
        .collect();
    // What the agent sets for every job comes before the job's own env (a
    // pipeline may override it) and is never `$`-expanded.
    plan.base_env.extend([
        ("CI".to_owned(), "true".to_owned()),
        ("VALKYRIE_JOB_ID".to_owned(), job_id.to_string()),
        ("VALKYRIE_JOB_ATTEMPT".to_owned(), attempt.to_string()),
        ("VALKYRIE_JOB_NAME".to_owned(), spec.name.clone()),
        (
            "VALKYRIE_WORKSPACE".to_owned(),
            plan.workspace.display().to_string(),
        ),
    ]);
    plan.env = spec.env.clone();
    plan.secrets = spec.secrets.clone();
    plan.shell = if spec.shell.is_empty() {
        defaults.shell.clone()
    } else {
        spec.shell.clone()
    };
    plan.timeout = (spec.timeout_ms > 0).then(|| Duration::from_millis(spec.timeout_ms));
    plan.kill_grace = defaults.kill_grace;
    plan.output_limit_bytes = defaults.output_limit_bytes;
    trigger_plan(&mut plan, spec, work_dir);
    container_plan(&mut plan, attempt, spec, defaults);
    // The cache directory is for the job's processes: a job that starts
    // none takes none (nor the lock on it).
    plan.cache_pool = plan
        .starts_processes()
        .then(|| crate::cache::pool_dir(work_dir, &spec.project, &spec.name));
    plan
}

/// Gives the job its trigger's variables (literal, before the job's own
/// env, which may override them) and the commit to check out, from the
/// runner's mirrors in `<work dir>/git-mirrors`.
fn trigger_plan(plan: &mut JobPlan, spec: &JobSpec, work_dir: &Path) {
    let Some(trigger) = &spec.trigger else { return };
    plan.base_env.extend(trigger.variables.iter().cloned());
    plan.checkout = trigger
        .checkout
        .clone()
        .map(|spec| crate::checkout::CheckoutPlan {
            spec,
            mirrors_dir: work_dir.join(crate::checkout::MIRRORS_DIR),
        });
}

/// Sets up a container job: the container from the spec (or the runner's
/// default image), an environment without the agent's own (the image
/// brings its `PATH`), `sh -e -c` unless the job names a shell. A job this
/// runner cannot run gets a `refusal`.
fn container_plan(plan: &mut JobPlan, attempt: u32, spec: &JobSpec, defaults: &JobDefaults) {
    let Some(executor) = &defaults.docker else {
        if let Some(container) = &spec.container {
            plan.refusal = Some(format!(
                "this runner has no Docker executor, but the job runs in image `{}`; \
                 run it on a runner started with `--executor docker`",
                container.image
            ));
        }
        return;
    };
    let container = match (&spec.container, &executor.settings().default_image) {
        (Some(container), _) => (**container).clone(),
        (None, Some(image)) => msg::ContainerSpec::image(image.clone()),
        (None, None) => {
            plan.refusal = Some(
                "this runner runs jobs in containers only and the job names no `image:`; \
                 add `image:` to the job, or start the runner with `--docker-default-image`"
                    .to_owned(),
            );
            return;
        }
    };
    plan.host_env = executor::HostEnv::default();
    for (name, value) in &mut plan.base_env {
        if name == "VALKYRIE_WORKSPACE" {
            *value = executor::docker::WORKSPACE_PATH.to_owned();
        }
    }
    if spec.shell.is_empty() {
        plan.shell = executor::SH_SHELL.iter().map(|s| (*s).to_owned()).collect();
    }
    plan.container = Some(executor::ContainerPlan {
        executor: executor.clone(),
        spec: container,
        attempt,
    });
}

fn wire_stream(s: executor::OutputStream) -> msg::OutputStream {
    match s {
        executor::OutputStream::Stdout => msg::OutputStream::Stdout,
        executor::OutputStream::Stderr => msg::OutputStream::Stderr,
        executor::OutputStream::System => msg::OutputStream::System,
    }
}

fn wire_step_outcome(o: StepOutcome) -> msg::StepOutcome {
    match o {
        StepOutcome::Succeeded => msg::StepOutcome::Succeeded,
        StepOutcome::Failed => msg::StepOutcome::Failed,
        StepOutcome::FailedAllowed => msg::StepOutcome::FailedAllowed,
        StepOutcome::Cancelled => msg::StepOutcome::Cancelled,
        StepOutcome::TimedOut => msg::StepOutcome::TimedOut,
        StepOutcome::Skipped => msg::StepOutcome::Skipped,
    }
}

/// The first step that failed: its name, exit code, signal, and why it
/// could not start.
type FailedStep = (String, Option<i32>, Option<i32>, Option<String>);

/// What a panic said, when it said it with a string.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
        (Some(message), _) => message,
        (_, Some(message)) => message,
        _ => "no message",
    }
}

/// Runs one attempt to completion, sending its messages to `outbox`.
/// Returns when the JobResult has been queued.
pub async fn run_attempt(
    job_id: u64,
    attempt: u32,
    mut plan: JobPlan,
    outbox: mpsc::Sender<msg::Message>,
    cancel: watch::Receiver<bool>,
    artifacts: AttemptArtifacts,
) {
    let span = tracing::info_span!("job", job_id, attempt);
    async move {
        let AttemptArtifacts {
            mut link,
            spec: artifacts,
            cache,
            max_bytes: max_artifact_bytes,
        } = artifacts;
        let workspace = plan.workspace.clone();
        let caches = restore_caches(&mut plan, &link, job_id, attempt, cache);
        // A job with no workspace to make and nothing fetched leaves none
        // behind: nothing to look for once it ends.
        let leaves_workspace = artifacts.is_some() || plan.needs_workspace();
        let step_names: Vec<String> = plan.steps.iter().map(|s| s.name.clone()).collect();
        // No JobStarted: the AssignAck made the attempt running on the
        // server, and JobStarted would tell it nothing more (spec §8).
        // Chunks are numbered here: the agent's own lines (artifacts) and
        // the executor's output share one sequence.
        let mut log_chunks = 0u64;
        let system = |line: String, n: &mut u64| -> msg::Message {
            let chunk = msg::LogChunk {
                job_id,
                attempt,
                seq: *n,
                stream: msg::OutputStream::System,
                data: line.into(),
            };
            *n += 1;
            chunk.into()
        };
        if let Some(spec) = &artifacts {
            let mut lines = Vec::new();
            let fetched = crate::artifacts::before_steps(&mut link, spec, &workspace, &mut lines).await;
            if let Err(error) = &fetched {
                lines.push(format!("[valkyrie] {error}\n"));
            }
            for line in lines {
                let _ = outbox.send(system(line, &mut log_chunks)).await;
            }
            if let Err(message) = fetched {
                let result = msg::JobResult::failed(job_id, attempt, message, log_chunks);
                let _ = outbox.send(result.into()).await;
                if workspace.exists() {
                    let _ = tokio::fs::remove_dir_all(&workspace).await;
                }
                return;
            }
        }
        let (ev_tx, ev_rx) = mpsc::channel(256);
        // The executor runs in this task, beside the loop that forwards
        // its events: one task per attempt, not two. A panic in it fails
        // the attempt, as before when it was a task of its own. Boxed: its
        // future is several KiB, which would otherwise be copied at each
        // move into this task's state.
        let exec = AssertUnwindSafe(Box::pin(executor::run_job(plan, ev_tx, cancel))).catch_unwind();
        let mut failed_step: Option<FailedStep> = None;
        // Every step's report rides on the JobResult. A step's StepResult
        // is sent on its own only once the next step starts: live progress
        // for a job that goes on, no frame for the last step (nor for the
        // steps that end with the job, such as those skipped after a
        // failure).
        let mut steps: Vec<msg::StepSummary> = Vec::with_capacity(step_names.len());
        let mut unsent: Option<msg::StepResult> = None;
        let forward = async {
            let mut ev_rx = ev_rx;
            while let Some(event) = ev_rx.recv().await {
                let message: msg::Message = match event {
                    ExecEvent::StepStarted { .. } => match unsent.take() {
                        Some(report) => report.into(),
                        None => continue,
                    },
                    ExecEvent::Output { stream, data, .. } => {
                        let seq = log_chunks;
                        log_chunks += 1;
                        msg::LogChunk {
                            job_id,
                            attempt,
                            seq,
                            stream: wire_stream(stream),
                            data,
                        }
                        .into()
                    }
                    ExecEvent::StepFinished {
                        index,
                        exit_code,
                        signal,
                        duration,
                        outcome,
                        error,
                    } => {
                        if matches!(
                            outcome,
                            StepOutcome::Failed | StepOutcome::TimedOut | StepOutcome::Cancelled
                        ) && failed_step.is_none()
                        {
                            let name = step_names.get(index as usize).cloned().unwrap_or_default();
                            failed_step = Some((name, exit_code, signal, error));
                        }
                        let report = msg::StepResult {
                            job_id,
                            attempt,
                            step: index,
                            outcome: wire_step_outcome(outcome),
                            exit_code,
                            duration_ms: duration.as_millis() as u64,
                        };
                        steps.push(report.summary());
                        unsent = Some(report);
                        continue;
                    }
                };
                if outbox.send(message).await.is_err() {
                    // Dropping the receiver ends the executor's sends.
                    return;
                }
            }
        };
        let (report, ()) = tokio::join!(exec, forward);
        let report = match report {
            Ok(report) => report,
            Err(panic) => {
                // The steps that did report keep their reports.
                let result = msg::JobResult {
                    steps,
                    ..msg::JobResult::failed(
                        job_id,
                        attempt,
                        format!(
                            "the agent's executor failed: it panicked ({})",
                            panic_message(&*panic)
                        ),
                        log_chunks,
                    )
                };
                let _ = outbox.send(result.into()).await;
                return;
            }
        };
        let outcome = match report.outcome {
            executor::JobOutcome::Succeeded => msg::JobOutcome::Succeeded,
            executor::JobOutcome::Failed => msg::JobOutcome::Failed,
            executor::JobOutcome::Cancelled => msg::JobOutcome::Cancelled,
            executor::JobOutcome::TimedOut => msg::JobOutcome::TimedOut,
        };
        let mut message = match (&outcome, failed_step) {
            (msg::JobOutcome::Succeeded, _) => format!("{} step(s) succeeded", step_names.len()),
            (msg::JobOutcome::TimedOut, _) => "job timed out; its processes were terminated".into(),
            (msg::JobOutcome::Cancelled, _) => "job cancelled; its processes were terminated".into(),
            (_, Some((name, _, _, Some(error)))) => format!("step `{name}` {error}"),
            (_, Some((name, Some(code), _, None))) => format!("step `{name}` exited with code {code}"),
            (_, Some((name, None, Some(signal), None))) => {
                format!("step `{name}` was killed by signal {signal}")
            }
            (_, _) => match report.error {
                Some(error) => error,
                None => "a step failed".into(),
            },
        };
        let mut outcome = outcome;
        if let Some(spec) = artifacts.as_ref().filter(|a| !a.paths.is_empty()) {
            if crate::artifacts::wanted(spec.when, outcome) {
                let mut lines = Vec::new();
                let uploaded = crate::artifacts::after_steps(
                    &mut link,
                    spec,
                    job_id,
                    attempt,
                    &workspace,
                    max_artifact_bytes,
                    &mut lines,
                )
                .await;
                if let Err(error) = uploaded {
                    lines.push(format!("[valkyrie] {error}\n"));
                    // Jobs that need these artifacts would fail without them.
                    if outcome == msg::JobOutcome::Succeeded {
                        outcome = msg::JobOutcome::Failed;
                        message = error;
                    }
                }
                for line in lines {
                    let _ = outbox.send(system(line, &mut log_chunks)).await;
                }
            }
        }
        let resolved = std::mem::take(&mut *caches.lock().expect("cache resolutions"));
        if !resolved.is_empty() {
            let mut lines = Vec::new();
            crate::artifacts::cache::save(
                &mut link,
                job_id,
                attempt,
                &resolved,
                outcome,
                &workspace,
                max_artifact_bytes,
                &mut lines,
            )
            .await;
            for line in lines {
                let _ = outbox.send(system(line, &mut log_chunks)).await;
            }
        }
        info!(
            ?outcome,
            duration_ms = report.duration.as_millis() as u64,
            "attempt finished"
        );
        let result = msg::JobResult {
            job_id,
            attempt,
            outcome,
            exit_code: report.exit_code,
            duration_ms: report.duration.as_millis() as u64,
            message,
            log_chunks,
            steps,
        };
        let _ = outbox.send(result.into()).await;
        if leaves_workspace && workspace.exists() {
            let _ = tokio::fs::remove_dir_all(&workspace).await;
        }
    }
    .instrument(span)
    .await
}

/// Sets the plan's hook that restores `caches` before the first step;
/// the caches it resolved are left in the returned slot for the save.
fn restore_caches(
    plan: &mut JobPlan,
    link: &crate::artifacts::ArtifactLink,
    job_id: u64,
    attempt: u32,
    caches: Vec<msg::CacheSpec>,
) -> crate::artifacts::cache::Resolutions {
    let slot = crate::artifacts::cache::Resolutions::default();
    if caches.is_empty() {
        return slot;
    }
    let (out, link, workspace) = (slot.clone(), link.clone(), plan.workspace.clone());
    let caches = std::sync::Arc::new(caches);
    plan.before_steps = Some(std::sync::Arc::new(
        move |env: executor::env::Env| -> futures_util::future::BoxFuture<'static, Vec<String>> {
            let (out, mut link, workspace, caches) =
                (out.clone(), link.clone(), workspace.clone(), caches.clone());
            Box::pin(async move {
                let mut lines = Vec::new();
                let resolved = crate::artifacts::cache::restore(
                    &mut link, job_id, attempt, &caches, &env, &workspace, &mut lines,
                )
                .await;
                *out.lock().expect("cache resolutions") = resolved;
                lines
            })
        },
    ));
    slot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> JobDefaults {
        JobDefaults {
            host_env: [("PATH".to_owned(), "/usr/bin:/bin".to_owned())].into(),
            ..JobDefaults::default()
        }
    }

    #[test]
    fn every_job_gets_ci_and_its_ids_before_its_own_env() {
        let mut spec = JobSpec::shell("build", "true");
        spec.env = vec![("CI".into(), "overridden".into())];
        let plan = plan(7, 2, &spec, Path::new("/work"), &defaults());
        let base: Vec<(&str, &str)> = plan
            .host_env
            .iter()
            .chain(&plan.base_env)
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            base,
            [
                ("PATH", "/usr/bin:/bin"),
                ("CI", "true"),
                ("VALKYRIE_JOB_ID", "7"),
                ("VALKYRIE_JOB_ATTEMPT", "2"),
                ("VALKYRIE_JOB_NAME", "build"),
                ("VALKYRIE_WORKSPACE", "/work/job-7-2"),
            ]
        );
        assert_eq!(plan.env, [("CI".to_owned(), "overridden".to_owned())]);
    }

    #[test]
    fn only_a_job_that_starts_a_process_needs_a_supervisor_or_a_cache() {
        let starts = |spec: &JobSpec| {
            let plan = plan(1, 1, spec, Path::new("/work"), &defaults());
            assert_eq!(plan.cache_pool.is_some(), plan.starts_processes());
            plan.starts_processes()
        };
        let noop = JobSpec::with_steps("n", vec![msg::StepSpec::noop(), msg::StepSpec::noop()]);
        assert!(!starts(&noop));
        let mut mixed = noop.clone();
        mixed.steps.push(msg::StepSpec::shell("true"));
        assert!(starts(&mixed));
        let mut checkout = noop.clone();
        checkout.trigger = Some(Box::new(msg::TriggerSpec {
            checkout: Some(msg::CheckoutSpec {
                repository: "git://example/r".into(),
                sha: "0".repeat(40),
                git_ref: String::new(),
                depth: 1,
                token: String::new(),
            }),
            ..Default::default()
        }));
        assert!(starts(&checkout));
    }

    /// A job that checks out with a token: the workspace is at the
    /// commit, and neither the job's environment, the workspace's git
    /// config nor the log holds the token (not even masked: it never
    /// reached them).
    #[tokio::test]
    async fn a_checkout_token_stays_out_of_the_env_the_config_and_the_log() {
        let root = tempfile::tempdir().unwrap();
        let origin = root.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        let git = |args: &[&str]| {
            let out = std::process::Command::new("git")
                .arg("-C")
                .arg(&origin)
                .args(args)
                .env("GIT_AUTHOR_NAME", "t")
                .env("GIT_AUTHOR_EMAIL", "t@t")
                .env("GIT_COMMITTER_NAME", "t")
                .env("GIT_COMMITTER_EMAIL", "t@t")
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        git(&["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("f"), "x").unwrap();
        git(&["add", "f"]);
        git(&["commit", "-q", "-m", "x"]);
        let sha = git(&["rev-parse", "HEAD"]);
        let token = "tok-very-secret-4711";
        let mut spec = JobSpec::shell("co", "git rev-parse HEAD; env; cat .git/config");
        spec.trigger = Some(Box::new(msg::TriggerSpec {
            variables: vec![("VALKYRIE_COMMIT_SHA".into(), sha.clone())],
            checkout: Some(msg::CheckoutSpec {
                repository: format!("file://{}", origin.display()),
                sha: sha.clone(),
                git_ref: "refs/heads/main".into(),
                depth: 1,
                token: token.into(),
            }),
        }));
        let work = root.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let plan = plan(5, 1, &spec, &work, &defaults());
        let (outbox, mut rx) = mpsc::channel(1024);
        let (_cancel, cancel_rx) = watch::channel(false);
        run_attempt(5, 1, plan, outbox, cancel_rx, AttemptArtifacts::none()).await;
        let mut log = Vec::new();
        let mut result = None;
        while let Ok(message) = rx.try_recv() {
            match message {
                msg::Message::LogChunk(chunk) => log.extend_from_slice(&chunk.data),
                msg::Message::JobResult(r) => result = Some(r),
                _ => {}
            }
        }
        let log = String::from_utf8_lossy(&log);
        assert_eq!(result.unwrap().outcome, msg::JobOutcome::Succeeded, "{log}");
        assert!(log.contains(&format!("{sha}\n")), "{log}");
        assert!(log.contains(&format!("VALKYRIE_COMMIT_SHA={sha}")), "{log}");
        assert!(!log.contains(token) && !log.contains("***"), "{log}");
        assert!(work.join(crate::checkout::MIRRORS_DIR).is_dir());
    }

    /// The job's reason names the step and why it could not start.
    #[tokio::test]
    async fn the_job_result_says_why_a_step_could_not_start() {
        let root = tempfile::tempdir().unwrap();
        let mut step = msg::StepSpec::shell("pwd");
        step.name = "in sub".into();
        step.working_directory = Some("sub/dir".into());
        let spec = JobSpec::with_steps("j", vec![step]);
        let plan = plan(3, 1, &spec, root.path(), &defaults());
        let (outbox, mut rx) = mpsc::channel(64);
        let (_cancel, cancel_rx) = watch::channel(false);
        run_attempt(3, 1, plan, outbox, cancel_rx, AttemptArtifacts::none()).await;
        let mut result = None;
        while let Ok(message) = rx.try_recv() {
            if let msg::Message::JobResult(r) = message {
                result = Some(r);
            }
        }
        let result = result.expect("a JobResult");
        assert_eq!(result.outcome, msg::JobOutcome::Failed);
        assert_eq!(
            result.message,
            "step `in sub` could not start: working directory `sub/dir` does not exist in the job \
             workspace; create it in an earlier step or fix the path"
        );
    }

    /// What a one-step job with one line of output reports: its chunk and
    /// its result, which carries the step's report; nothing else (no
    /// JobStarted: the AssignAck already made the attempt running; no
    /// StepResult: no step follows it).
    #[tokio::test]
    async fn a_one_step_job_reports_two_frames() {
        let root = tempfile::tempdir().unwrap();
        let spec = JobSpec::with_steps("j", vec![msg::StepSpec::shell("echo hi")]);
        let plan = plan(6, 1, &spec, root.path(), &defaults());
        let (outbox, mut rx) = mpsc::channel(64);
        let (_cancel, cancel_rx) = watch::channel(false);
        run_attempt(6, 1, plan, outbox, cancel_rx, AttemptArtifacts::none()).await;
        let mut messages = Vec::new();
        while let Ok(message) = rx.try_recv() {
            messages.push(message);
        }
        let kinds: Vec<_> = messages.iter().map(msg::Message::kind).collect();
        assert_eq!(
            kinds,
            [valkyrie::FrameKind::LOG_CHUNK, valkyrie::FrameKind::JOB_RESULT]
        );
        let Some(msg::Message::JobResult(result)) = messages.pop() else {
            unreachable!()
        };
        assert_eq!(result.steps.len(), 1);
        assert_eq!(
            (
                result.steps[0].step,
                result.steps[0].outcome,
                result.steps[0].exit_code
            ),
            (0, msg::StepOutcome::Succeeded, Some(0))
        );
    }

    /// A step's StepResult is sent when the next step starts (live
    /// progress); the last step that ran and those skipped after a failure
    /// are reported by the JobResult alone, which carries every step.
    #[tokio::test]
    async fn step_results_go_out_as_the_next_step_starts_and_the_result_carries_all() {
        let root = tempfile::tempdir().unwrap();
        let spec = JobSpec::with_steps(
            "j",
            vec![
                msg::StepSpec::shell("true"),
                msg::StepSpec::shell("exit 3"),
                msg::StepSpec::shell("true"),
            ],
        );
        let plan = plan(8, 1, &spec, root.path(), &defaults());
        let (outbox, mut rx) = mpsc::channel(64);
        let (_cancel, cancel_rx) = watch::channel(false);
        run_attempt(8, 1, plan, outbox, cancel_rx, AttemptArtifacts::none()).await;
        let mut step_results = Vec::new();
        let mut result = None;
        while let Ok(message) = rx.try_recv() {
            match message {
                msg::Message::StepResult(s) => step_results.push(s.summary()),
                msg::Message::JobResult(r) => result = Some(r),
                _ => {}
            }
        }
        let result = result.expect("a JobResult");
        assert_eq!(result.outcome, msg::JobOutcome::Failed);
        let outcomes: Vec<_> = result
            .steps
            .iter()
            .map(|s| (s.step, s.outcome, s.exit_code))
            .collect();
        assert_eq!(
            outcomes,
            [
                (0, msg::StepOutcome::Succeeded, Some(0)),
                (1, msg::StepOutcome::Failed, Some(3)),
                (2, msg::StepOutcome::Skipped, None),
            ]
        );
        assert_eq!(
            step_results,
            result.steps[..1],
            "only the step another one followed"
        );
    }

    /// A container job on a runner without Docker fails before any step,
    /// with a reason that says where it can run.
    #[tokio::test]
    async fn a_container_job_on_a_shell_runner_fails_saying_why() {
        let root = tempfile::tempdir().unwrap();
        let spec = JobSpec {
            container: Some(Box::new(msg::ContainerSpec::image("rust:1.89"))),
            ..JobSpec::shell("boxed", "true")
        };
        let plan = plan(4, 1, &spec, root.path(), &defaults());
        assert!(plan.container.is_none());
        let (outbox, mut rx) = mpsc::channel(64);
        let (_cancel, cancel_rx) = watch::channel(false);
        run_attempt(4, 1, plan, outbox, cancel_rx, AttemptArtifacts::none()).await;
        let mut result = None;
        while let Ok(message) = rx.try_recv() {
            if let msg::Message::JobResult(r) = message {
                result = Some(r);
            }
        }
        let result = result.expect("a JobResult");
        assert_eq!(result.outcome, msg::JobOutcome::Failed);
        assert!(
            result.message.contains("no Docker executor") && result.message.contains("rust:1.89"),
            "{}",
            result.message
        );
    }
}
