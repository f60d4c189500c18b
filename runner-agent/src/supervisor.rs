//! Jobs that survive the agent: every attempt runs in a supervisor process
//! of its own, so that a restarted agent (after `kill -9`, a crash or an
//! upgrade) re-attaches to it instead of losing it.
//!
//! ```text
//! agent ──spawn──> valkyrie-agent __supervise <state dir>   (own process group)
//!   │  stdin:  the job (settings + Assign frame), then closed
//!   │  stdout: <state>/lock, flock held for the supervisor's whole life
//!   │  stderr: doorbell, one byte per journal append (its log goes to
//!   │          <state>/supervisor.log)
//!   │
//!   └─ follows <state>/journal: the attempt's messages (LogChunk,
//!      StepResult, JobResult) as protocol frames, appended by
//!      the supervisor in order, forwarded by the agent to the server
//! ```
//!
//! The state directory is `<work_dir>/job-<id>-<attempt>.supervisor`. The
//! supervisor runs the whole attempt exactly as the agent would in its own
//! process ([`crate::job::run_attempt`], either executor), with the
//! journal in place of the session. Cancellation is SIGTERM to the
//! supervisor (its pid is in `<state>/pid`), which it turns into the
//! executor's cancel. The agent removes the state directory once the
//! server has acknowledged the attempt's `JobResult`.
//!
//! Why a supervisor per attempt and not per step: the executor's state
//! between steps (the environment steps add with `$VALKYRIE_ENV`, the
//! job's deadline, the Docker job container and its exec streams, whose
//! output the Engine does not keep for a later client) lives in one
//! process that the agent's death does not touch, so nothing needs to be
//! rebuilt on re-attach; both executors re-attach the same way.
//!
//! On start the agent lists the state directories ([`survivors`]): an
//! attempt whose supervisor still holds its lock runs on; one whose
//! supervisor has ended but whose journal holds the `JobResult` has
//! finished, and its result may not have reached the server. Both are
//! reported to the server when registering; the server keeps those it
//! still counts as running on this runner and names the others stale,
//! which the agent then kills (SIGKILL to the supervisor, the process
//! groups and workspace as [`crate::leftovers`] does, the Docker objects
//! by label). What the agent followed before it died is replayed from the
//! start of the journal: the server drops the log chunks it already has
//! (by their sequence number), so the log has neither gaps nor
//! duplicates, and a repeated `StepResult` or `JobResult` is idempotent.
//!
//! No process outlives its job: the supervisor exits when its attempt
//! ends, and it ends the attempt's processes as the executor always did.
//! An agent that never comes back leaves the supervisor to finish its job
//! and exit.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStderr};
use tokio::sync::{mpsc, watch};
use valkyrie::frame::{encode_to_vec, FrameDecoder};
use valkyrie::message::{self as msg, Assign, JobSpec, Message};
use valkyrie::Flags;

use crate::executor::docker::{DockerExecutor, DockerSettings};
use crate::job::{plan, run_attempt, AttemptArtifacts, JobDefaults};

/// The hidden sub-command of `valkyrie-agent` that runs a supervisor.
pub const SUBCOMMAND: &str = "__supervise";
/// Suffix of an attempt's state directory, next to its workspace.
pub const STATE_SUFFIX: &str = "supervisor";
/// How often a re-attached agent (which has no doorbell) looks at the journal.
const REATTACHED_POLL: Duration = Duration::from_millis(100);
/// How often a followed supervisor is checked for an exit without a result.
const LIVENESS_POLL: Duration = Duration::from_secs(1);
/// The variables of the agent's environment a supervisor gets besides
/// those every job gets ([`JobDefaults::host_env`]): nothing secret (never
/// `VALKYRIE_RUNNER_TOKEN`). Steps get their environment from the plan,
/// not from the supervisor's.
const SUPERVISOR_ENV: &[&str] = &[
    "VALKYRIE_LOG",
    "DOCKER_HOST",
    "DOCKER_CERT_PATH",
    "DOCKER_TLS_VERIFY",
];

/// An attempt's state directory.
pub fn state_dir(work_dir: &Path, job_id: u64, attempt: u32) -> PathBuf {
    work_dir.join(format!("job-{job_id}-{attempt}.{STATE_SUFFIX}"))
}

/// What the supervisor needs besides the job: the agent's job defaults.
#[derive(Serialize, Deserialize)]
struct Launch {
    work_dir: PathBuf,
    shell: Vec<String>,
    kill_grace_ms: u64,
    output_limit_bytes: u64,
    host_env: Vec<(String, String)>,
    docker: Option<DockerSettings>,
}

/// A supervisor just started for an assignment.
pub struct Spawned {
    child: Child,
    doorbell: ChildStderr,
}

/// Starts the supervisor of an attempt: `program` (the agent's own binary)
/// with [`SUBCOMMAND`], in a process group of its own (a Ctrl-C meant for
/// the agent does not reach it), holding the state directory's lock from
/// before it starts.
pub async fn spawn(
    program: &Path,
    work_dir: &Path,
    assign: &Assign,
    defaults: &JobDefaults,
) -> std::io::Result<Spawned> {
    let dir = state_dir(work_dir, assign.job_id, assign.attempt);
    valkyrie::private_fs::create_dir_all(&dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("lock"))?;
    // Taken here and handed down as the child's stdout (the same open file,
    // so the same lock): it is held from before the supervisor starts, and
    // an agent killed right after cannot take a live supervisor for a dead
    // one.
    let held = Flock::lock(lock, FlockArg::LockExclusiveNonblock)
        .map_err(|(_, errno)| std::io::Error::from(errno))?;
    let for_child = held.try_clone()?;
    // Our own descriptor goes without unlocking (dropping a Flock would
    // unlock the file for the child too).
    let raw = held.as_raw_fd();
    std::mem::forget(held);
    let _ = nix::unistd::close(raw);
    let mut command = tokio::process::Command::new(program);
    command
        .arg(SUBCOMMAND)
        .arg(&dir)
        .env_clear()
        .envs(defaults.host_env.iter().map(|(n, v)| (n, v)))
        .envs(
            SUPERVISOR_ENV
                .iter()
                .filter_map(|name| Some((name, std::env::var_os(name)?))),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::from(for_child))
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    let mut child = command.spawn()?;
    let launch = Launch {
        work_dir: work_dir.to_owned(),
        shell: defaults.shell.clone(),
        kill_grace_ms: defaults.kill_grace.as_millis() as u64,
        output_limit_bytes: defaults.output_limit_bytes,
        host_env: defaults.host_env.to_vec(),
        docker: defaults.docker.as_ref().map(|d| d.settings().clone()),
    };
    let mut input = serde_json::to_vec(&launch).map_err(std::io::Error::other)?;
    input.push(b'\n');
    input.extend(encode_to_vec(&Message::from(assign.clone()), 0, Flags::NONE));
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin.write_all(&input).await?;
    drop(stdin);
    let doorbell = child.stderr.take().expect("piped stderr");
    Ok(Spawned { child, doorbell })
}

/// An attempt an earlier life of the agent left in its work directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Survivor {
    pub job_id: u64,
    pub attempt: u32,
    /// Its supervisor still runs (else its journal holds the JobResult).
    pub running: bool,
}

impl Survivor {
    /// The names in the work directory that belong to this attempt: its
    /// workspace, its files directory and its state directory.
    pub fn names(&self) -> [String; 3] {
        let base = format!("job-{}-{}", self.job_id, self.attempt);
        [format!("{base}.{STATE_SUFFIX}"), format!("{base}.valkyrie"), base]
    }
}

/// The attempts of an earlier agent that can be re-attached: those whose
/// supervisor still runs, and those that finished with a result in their
/// journal. Call with the work directory locked, before
/// [`crate::leftovers::clean_up_except`] (which removes everything else).
pub fn survivors(work_dir: &Path) -> Vec<Survivor> {
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return Vec::new();
    };
    let mut found: Vec<Survivor> = entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let ids = name
                .strip_prefix("job-")?
                .strip_suffix(&format!(".{STATE_SUFFIX}"))?;
            let (job, attempt) = ids.split_once('-')?;
            let (job_id, attempt) = (job.parse().ok()?, attempt.parse().ok()?);
            let dir = entry.path();
            if alive(&dir) {
                return Some(Survivor {
                    job_id,
                    attempt,
                    running: true,
                });
            }
            let journal = std::fs::read(dir.join("journal")).ok()?;
            let finished = Journal::default()
                .feed(&journal)
                .iter()
                .any(|m| matches!(m, Message::JobResult(_)));
            finished.then_some(Survivor {
                job_id,
                attempt,
                running: false,
            })
        })
        .collect();
    found.sort_by_key(|s| (s.job_id, s.attempt));
    found
}

/// Whether the supervisor of `dir` still holds its lock.
fn alive(dir: &Path) -> bool {
    let Ok(file) = std::fs::OpenOptions::new().write(true).open(dir.join("lock")) else {
        return false;
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_free) => false,
        Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
    }
}

/// The supervisor's pid, from its own record; `None` if it is not running.
fn supervisor_pid(dir: &Path) -> Option<Pid> {
    if !alive(dir) {
        return None;
    }
    let pid: i32 = std::fs::read_to_string(dir.join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (pid > 1).then(|| Pid::from_raw(pid))
}

/// Frames of the journal, decoded as they complete.
#[derive(Default)]
struct Journal {
    decoder: Option<FrameDecoder>,
}

impl Journal {
    fn feed(&mut self, bytes: &[u8]) -> Vec<Message> {
        let decoder = self.decoder.get_or_insert_with(|| FrameDecoder::new(u32::MAX));
        decoder.extend(bytes);
        let mut out = Vec::new();
        while let Ok(Some(frame)) = decoder.next_frame() {
            match frame.message() {
                Ok(message) => out.push(message),
                Err(error) => tracing::warn!(%error, "undecodable message in a job journal; skipped"),
            }
        }
        out
    }
}

/// How the agent wants a followed attempt to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Let it run.
    No,
    /// Cancel it (SIGTERM to the supervisor; the job ends `cancelled`).
    Cancel,
    /// The server no longer counts it: kill it and forward nothing more.
    Abandon,
}

/// How [`follow`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Followed {
    /// The JobResult was forwarded.
    Finished,
    /// Abandoned: its supervisor was killed; the caller cleans up.
    Abandoned,
}

/// Forwards an attempt's journal to `outbox` from its start until its
/// `JobResult`. `spawned` is the supervisor the agent just started (its
/// doorbell wakes the follower at once); without it (re-attached), the
/// journal is polled. A supervisor that dies without a result gets one
/// (failed) from here.
pub async fn follow(
    work_dir: &Path,
    job_id: u64,
    attempt: u32,
    mut spawned: Option<Spawned>,
    outbox: mpsc::Sender<Message>,
    mut stop: watch::Receiver<Stop>,
) -> Followed {
    let dir = state_dir(work_dir, job_id, attempt);
    let mut journal = Journal::default();
    let mut offset = 0u64;
    let mut log_chunks = 0u64;
    let mut cancelled = false;
    let mut buf = vec![0u8; 64];
    loop {
        if *stop.borrow() == Stop::Abandon {
            abandon(&dir, spawned.as_mut()).await;
            return Followed::Abandoned;
        }
        if *stop.borrow() == Stop::Cancel && !cancelled {
            cancelled = true;
            match (&spawned, supervisor_pid(&dir)) {
                (Some(s), _) => {
                    if let Some(pid) = s.child.id() {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                }
                (None, Some(pid)) => {
                    let _ = kill(pid, Signal::SIGTERM);
                }
                (None, None) => {}
            }
        }
        // Whether the supervisor had ended before this read: then the read
        // sees everything it wrote.
        let ended = match &mut spawned {
            Some(s) => matches!(s.child.try_wait(), Ok(Some(_))),
            None => !alive(&dir),
        };
        let fresh = read_from(&dir.join("journal"), &mut offset).await;
        for message in journal.feed(&fresh) {
            if matches!(message, Message::LogChunk(_)) {
                log_chunks += 1;
            }
            let last = matches!(message, Message::JobResult(_));
            let _ = outbox.send(message).await;
            if last {
                if let Some(mut s) = spawned {
                    let _ = s.child.wait().await;
                }
                return Followed::Finished;
            }
        }
        if ended {
            tracing::warn!(job_id, attempt, "the job's supervisor ended without a result");
            let result = msg::JobResult::failed(
                job_id,
                attempt,
                format!(
                    "the job's supervisor process ended without a result (see {})",
                    dir.join("supervisor.log").display()
                ),
                log_chunks,
            );
            let _ = outbox.send(result.into()).await;
            return Followed::Finished;
        }
        match &mut spawned {
            Some(s) => {
                tokio::select! {
                    read = s.doorbell.read(&mut buf) => {
                        if !matches!(read, Ok(n) if n > 0) {
                            // The supervisor closed it (it is exiting):
                            // from now on its exit is what to wait for.
                            let _ = tokio::time::timeout(LIVENESS_POLL, s.child.wait()).await;
                        }
                    }
                    _ = tokio::time::sleep(LIVENESS_POLL) => {}
                    _ = stop.changed() => {}
                }
            }
            None => {
                tokio::select! {
                    _ = tokio::time::sleep(REATTACHED_POLL) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    }
}

/// Reads what was appended to `path` since `offset`.
async fn read_from(path: &Path, offset: &mut u64) -> Vec<u8> {
    use tokio::io::AsyncSeekExt;
    let Ok(mut file) = tokio::fs::File::open(path).await else {
        return Vec::new();
    };
    if file.seek(std::io::SeekFrom::Start(*offset)).await.is_err() {
        return Vec::new();
    }
    let mut out = Vec::new();
    if file.read_to_end(&mut out).await.is_ok() {
        *offset += out.len() as u64;
    }
    out
}

/// Kills an abandoned attempt's supervisor and waits until it is gone
/// (its lock is free), at most a few seconds.
async fn abandon(dir: &Path, spawned: Option<&mut Spawned>) {
    match spawned {
        Some(s) => {
            let _ = s.child.start_kill();
            let _ = s.child.wait().await;
        }
        None => {
            if let Some(pid) = supervisor_pid(dir) {
                let _ = kill(pid, Signal::SIGKILL);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while alive(dir) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The supervisor: `valkyrie-agent __supervise <state dir>`. Runs one
/// attempt, appending its messages to the journal, and exits when it ends.
pub fn main(args: &[OsString]) -> std::process::ExitCode {
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("valkyrie-agent {SUBCOMMAND}: the state directory is missing");
        return std::process::ExitCode::FAILURE;
    };
    // stdout holds the lock and stderr is the doorbell: the log goes to
    // a file of the state directory.
    match File::create(dir.join("supervisor.log")) {
        Ok(log) => {
            let filter = tracing_subscriber::EnvFilter::try_from_env("VALKYRIE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log))
                .init();
        }
        Err(error) => eprintln!("cannot create the supervisor's log: {error}"),
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the runtime");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(supervise(&dir)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %format!("{error:#}"), "supervisor failed");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn supervise(dir: &Path) -> anyhow::Result<()> {
    use anyhow::Context as _;
    std::fs::write(dir.join("pid"), std::process::id().to_string()).context("cannot record the pid")?;
    // The doorbell must never block a job: when the agent does not read it
    // (or is dead), a full pipe already rings.
    let doorbell = std::io::stderr();
    nix::fcntl::fcntl(
        doorbell.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    )
    .context("doorbell")?;
    let mut input = Vec::new();
    // A few kilobytes from the agent, already written: a blocking read.
    std::io::Read::read_to_end(&mut std::io::stdin(), &mut input).context("cannot read the job")?;
    let newline = input
        .iter()
        .position(|b| *b == b'\n')
        .context("no settings line")?;
    let launch: Launch = serde_json::from_slice(&input[..newline]).context("bad settings")?;
    let (_, message) =
        valkyrie::frame::decode_exact(&input[newline + 1..], u32::MAX).context("bad assignment")?;
    let Message::Assign(assign) = message else {
        anyhow::bail!("the job is not an Assign message");
    };
    drop(input);
    let mut journal = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("journal"))
        .context("cannot open the journal")?;
    let (cancel_tx, cancel_rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        if term.recv().await.is_some() {
            tracing::info!("SIGTERM: cancelling the job");
            let _ = cancel_tx.send(true);
            // Further signals change nothing.
            while term.recv().await.is_some() {}
        }
    });
    let (outbox, mut messages) = mpsc::channel(256);
    let runner = tokio::spawn(run(launch, *assign, outbox, cancel_rx));
    while let Some(message) = messages.recv().await {
        journal
            .write_all(&encode_to_vec(&message, 0, Flags::NONE))
            .context("cannot append to the journal")?;
        let _ = doorbell.lock().write(&[1]);
    }
    runner.await.context("the job panicked")?;
    Ok(())
}

async fn run(launch: Launch, assign: Assign, outbox: mpsc::Sender<Message>, cancel: watch::Receiver<bool>) {
    let docker = match launch.docker {
        Some(settings) => match DockerExecutor::connect(settings).await {
            Ok(docker) => Some(docker),
            Err(error) => {
                let result = failed_before_start(&assign, format!("{error}"));
                let _ = outbox.send(result).await;
                return;
            }
        },
        None => None,
    };
    let defaults = JobDefaults {
        shell: launch.shell,
        kill_grace: Duration::from_millis(launch.kill_grace_ms),
        output_limit_bytes: launch.output_limit_bytes,
        host_env: launch.host_env.into(),
        docker,
        ..JobDefaults::default()
    };
    let spec: &JobSpec = &assign.spec;
    let plan = plan(assign.job_id, assign.attempt, spec, &launch.work_dir, &defaults);
    // Jobs with artifacts never come here: their transfers need the
    // agent's session (see `supervised` in the session).
    let artifacts = AttemptArtifacts::none();
    run_attempt(assign.job_id, assign.attempt, plan, outbox, cancel, artifacts).await;
}

fn failed_before_start(assign: &Assign, message: String) -> Message {
    msg::JobResult::failed(assign.job_id, assign.attempt, message, 0).into()
}
