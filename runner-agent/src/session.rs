//! The agent's session with the control plane: connect, register, heartbeat,
//! take assignments, forward job messages, and reconnect with backoff and
//! jitter when the server goes away, re-reporting the attempts still running
//! so none is orphaned. Job results are kept until the server acknowledges
//! them and sent again after a reconnect.
//!
//! With [`AgentConfig::supervisor`] set (the `valkyrie-agent` binary sets
//! it), every attempt runs in a supervisor process of its own and the
//! agent follows its journal ([`crate::supervisor`]); a restarted agent
//! re-attaches to the attempts its previous life left running
//! ([`Agent::reattach`]).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foldhash::HashMap;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};
use valkyrie::message::{
    AssignAck, Drain, Heartbeat, JobResult, Message, RegisterRunner, Role, RunningAttempt,
};
use valkyrie::transport::{connect_following, hello, ClientOptions, ConnectError, RequestError};
use valkyrie::{Endpoint, ErrorCode, SessionSender};

use crate::artifacts::ArtifactLink;
use crate::job::{plan, run_attempt, AttemptArtifacts, JobDefaults};
use crate::supervisor::{self, Followed, Stop, Survivor};

/// The longest wait between two rounds of a group of servers (`--server
/// a,b,c`): a standby takes over within seconds, and a standby answers at
/// once (a Redirect to the leader, or a refused connection while it starts).
const GROUP_RECONNECT_INTERVAL: Duration = Duration::from_secs(1);

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The control plane.
    pub server: Endpoint,
    /// The other control planes of its group (MongoDB store): when one
    /// cannot be reached (or is a standby that knows no leader yet), the
    /// next is tried; a standby's Redirect to the leader is followed.
    pub more_servers: Vec<Endpoint>,
    /// Registration token (replaced by the issued credential after registering).
    pub token: String,
    /// Runner name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Concurrent jobs.
    pub slots: u32,
    /// Parent of the per-job workspaces.
    pub work_dir: PathBuf,
    /// Job defaults.
    pub defaults: JobDefaults,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// How long a drain waits for running jobs before cancelling them.
    pub drain_timeout: Duration,
    /// Transport options (TLS trust).
    pub client: ClientOptions,
    /// The program that runs an attempt's supervisor (the agent's own
    /// binary, with [`supervisor::SUBCOMMAND`]). `None`: attempts run
    /// inside this process, and die with it.
    pub supervisor: Option<PathBuf>,
}

/// Why the agent stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The server refused our token: retrying would not help.
    #[error("the server refused this agent: {0}")]
    Refused(String),
}

struct RunningJob {
    attempt: u32,
    control: Control,
}

/// How a running attempt is stopped.
enum Control {
    /// It runs in this process: the executor's cancel flag.
    InProcess(watch::Sender<bool>),
    /// It runs under a supervisor that this process follows.
    Supervised(watch::Sender<Stop>),
}

impl RunningJob {
    /// Cancel: the job ends `cancelled` and its result is reported.
    fn cancel(&self) {
        match &self.control {
            Control::InProcess(cancel) => {
                let _ = cancel.send(true);
            }
            Control::Supervised(stop) => {
                stop.send_if_modified(|s| {
                    let changed = *s == Stop::No;
                    if changed {
                        *s = Stop::Cancel;
                    }
                    changed
                });
            }
        }
    }

    /// The server no longer counts this attempt: stop it. A supervised one
    /// is killed at once and reports nothing more.
    fn abandon(&self) {
        match &self.control {
            Control::InProcess(cancel) => {
                let _ = cancel.send(true);
            }
            Control::Supervised(stop) => {
                let _ = stop.send(Stop::Abandon);
            }
        }
    }
}

#[derive(Default)]
struct State {
    running: HashMap<u64, RunningJob>,
    /// Results not yet acknowledged by the server, by (job, attempt).
    unacked: HashMap<(u64, u32), JobResult>,
    draining: bool,
}

/// The agent. Cheap to share: state sits behind a short-held lock.
pub struct Agent {
    config: AgentConfig,
    state: Arc<Mutex<State>>,
    outbox_tx: mpsc::Sender<Message>,
    outbox_rx: mpsc::Receiver<Message>,
    credential: Option<String>,
    /// The attempts re-attached from an earlier life, whose containers
    /// are not orphans.
    reattached: Vec<(u64, u32)>,
    /// Publishes the current session to artifact transfers.
    link_tx: watch::Sender<Option<(SessionSender, u32)>>,
    link: ArtifactLink,
}

/// The attempts this agent still holds: those running, and those finished
/// whose result the server has not acknowledged. The latter are reported
/// too, so that a server that restarted keeps them on this runner until
/// their result, sent again right after registering, arrives; otherwise it
/// would take them for lost and run them again.
fn running_attempts(state: &State) -> Vec<RunningAttempt> {
    let running = state.running.iter().map(|(job, r)| (*job, r.attempt));
    let finished = state.unacked.keys().copied();
    running
        .chain(finished)
        .map(|(job_id, attempt)| RunningAttempt { job_id, attempt })
        .collect()
}

impl Agent {
    /// A new agent.
    pub fn new(config: AgentConfig) -> Self {
        let (outbox_tx, outbox_rx) = mpsc::channel(1024);
        let (link_tx, link) = ArtifactLink::new();
        Self {
            config,
            state: Default::default(),
            outbox_tx,
            outbox_rx,
            credential: None,
            reattached: Vec::new(),
            link_tx,
            link,
        }
    }

    /// Follows the attempts an earlier life of this agent left
    /// ([`supervisor::survivors`]); they are reported to the server when
    /// registering, which keeps those it still counts on this runner. Call
    /// before [`Self::run`], with [`AgentConfig::supervisor`] set.
    pub fn reattach(&mut self, survivors: Vec<Survivor>) {
        for survivor in survivors {
            info!(
                job_id = survivor.job_id,
                attempt = survivor.attempt,
                running = survivor.running,
                "re-attaching a job an earlier life of this agent left"
            );
            self.reattached.push((survivor.job_id, survivor.attempt));
            self.follow(survivor.job_id, survivor.attempt, None);
        }
    }

    /// Records a supervised attempt as running and forwards its journal;
    /// `spawned` is its supervisor when this process started it.
    fn follow(&self, job_id: u64, attempt: u32, spawned: Option<supervisor::Spawned>) {
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        self.state.lock().expect("state").running.insert(
            job_id,
            RunningJob {
                attempt,
                control: Control::Supervised(stop_tx),
            },
        );
        let work_dir = self.config.work_dir.clone();
        let outbox = self.outbox_tx.clone();
        let state = self.state.clone();
        let docker = self.config.defaults.docker.clone();
        tokio::spawn(async move {
            let followed = supervisor::follow(&work_dir, job_id, attempt, spawned, outbox, stop_rx).await;
            if followed == Followed::Abandoned {
                warn!(job_id, attempt, "killed an attempt the server no longer counts");
                let dir = work_dir.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    crate::leftovers::clean_up_attempt(&dir, job_id, attempt)
                })
                .await;
                if let Some(docker) = docker {
                    if let Err(error) = docker.remove_attempt(job_id, attempt).await {
                        warn!(job_id, %error, "could not remove the containers of an abandoned attempt");
                    }
                }
                let mut state = state.lock().expect("state");
                if state.running.get(&job_id).is_some_and(|r| r.attempt == attempt) {
                    state.running.remove(&job_id);
                }
            }
        });
    }

    /// Runs until `shutdown` resolves (then drains and returns) or the server
    /// refuses our credentials.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<(), AgentError> {
        tokio::pin!(shutdown);
        if let Some(docker) = &self.config.defaults.docker {
            // Nothing runs yet: whatever carries our label is a leftover.
            match docker.remove_orphans(&self.reattached).await {
                Ok(0) => {}
                Ok(n) => info!(
                    removed = n,
                    "removed containers and networks left by a previous run"
                ),
                Err(error) => warn!(%error, "could not remove containers left by a previous run"),
            }
        }
        let mut backoff = Duration::from_millis(100);
        let mut drain_deadline: Option<tokio::time::Instant> = None;
        let servers: Vec<Endpoint> = std::iter::once(self.config.server.clone())
            .chain(self.config.more_servers.iter().cloned())
            .collect();
        // The server tried now; failures in a row since the last session.
        let mut current = 0;
        let mut failures = 0;
        let (heartbeats, client) = Heartbeats::plan(self.config.heartbeat_interval, &self.config.client);
        loop {
            let server = &servers[current % servers.len()];
            let token = self
                .credential
                .clone()
                .unwrap_or_else(|| self.config.token.clone());
            // A standby names the leader; the agent follows it (spec §6.4).
            let connecting = async {
                let (session, reached) =
                    connect_following(server, hello(Role::Agent, token, agent_id()), &client).await?;
                if reached.to_string() != server.to_string() {
                    info!(%server, leader = %reached, "redirected to the leader");
                }
                Ok::<_, ConnectError>(session)
            };
            let session = tokio::select! {
                result = connecting => result,
                _ = &mut shutdown, if drain_deadline.is_none() => {
                    drain_deadline = Some(self.start_drain());
                    continue;
                }
            };
            let session = match session {
                Ok(s) => s,
                Err(ConnectError::Refused { code, reason })
                    if code == ErrorCode::UNAUTHENTICATED || code == ErrorCode::PERMISSION_DENIED =>
                {
                    if code == ErrorCode::UNAUTHENTICATED && self.credential.take().is_some() {
                        // The server forgot us (e.g. restarted): register afresh.
                        continue;
                    }
                    return Err(AgentError::Refused(reason));
                }
                Err(err) => {
                    if drain_deadline.is_some() && self.state.lock().expect("state").running.is_empty() {
                        return Ok(());
                    }
                    // The next server of the group, at once; after a whole
                    // round, a back-off with full jitter (a fleet of agents
                    // does not reconnect in lockstep).
                    current += 1;
                    failures += 1;
                    if failures % servers.len() != 0 {
                        warn!(%err, %server, "cannot reach the server; trying the next one");
                        continue;
                    }
                    let wait = backoff.mul_f64(0.5 + fastrand::f64() * 0.5);
                    warn!(%err, %server, retry_in_ms = wait.as_millis() as u64, "cannot reach the server");
                    tokio::time::sleep(wait).await;
                    // In a group one server is about to lead: come back sooner.
                    let cap = if servers.len() > 1 {
                        GROUP_RECONNECT_INTERVAL
                    } else {
                        valkyrie::transport::MAX_RECONNECT_INTERVAL
                    };
                    backoff = (backoff * 2).min(cap);
                    continue;
                }
            };
            let max_frame_bytes = session
                .welcome()
                .map_or(valkyrie::frame::DEFAULT_MAX_FRAME_BYTES, |w| w.max_frame_bytes);
            let (sender, mut incoming) = session.into_parts();
            let running = running_attempts(&self.state.lock().expect("state"));
            let register = RegisterRunner {
                name: self.config.name.clone(),
                tags: self.advertised_tags(),
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                slots: self.config.slots,
                version: env!("CARGO_PKG_VERSION").into(),
                running,
            };
            // A request: RunnerRegistered answers it with the same correlation id.
            let registered = match sender.request(register).await {
                Ok(Message::RunnerRegistered(r)) => Some(r),
                Ok(other) => {
                    warn!(kind = %other.kind(), "unexpected answer to RegisterRunner");
                    None
                }
                Err(err) => {
                    warn!(%err, "registration failed");
                    None
                }
            };
            let Some(registered) = registered else {
                if let Some(Err(err)) = sender.close_reason() {
                    warn!(%err, "registration failed");
                }
                tokio::time::sleep(backoff).await;
                continue;
            };
            backoff = Duration::from_millis(100);
            failures = 0;
            self.credential = Some(registered.credential.clone());
            info!(runner_id = registered.runner_id, %server, "registered");
            {
                let mut state = self.state.lock().expect("state");
                for stale in &registered.stale {
                    if let Some(job) = state.running.get(&stale.job_id) {
                        if job.attempt == stale.attempt {
                            warn!(
                                job_id = stale.job_id,
                                "server no longer wants this attempt; stopping it"
                            );
                            job.abandon();
                        }
                    }
                    state.unacked.remove(&(stale.job_id, stale.attempt));
                }
                let unacked: Vec<JobResult> = state.unacked.values().cloned().collect();
                drop(state);
                for result in unacked {
                    self.send_result(&sender, result);
                }
            }
            if drain_deadline.is_some() {
                let _ = sender
                    .send(Drain {
                        reason: "agent shutting down".into(),
                    })
                    .await;
            }
            self.link_tx.send_replace(Some((sender.clone(), max_frame_bytes)));
            let mut heartbeat = tokio::time::interval(self.config.heartbeat_interval);
            let mut heartbeats = heartbeats;
            loop {
                let deadline = drain_deadline;
                tokio::select! {
                    inc = incoming.recv() => match inc {
                        Some(inc) => self.on_message(&sender, inc.message).await,
                        None => break,
                    },
                    out = self.outbox_rx.recv() => {
                        let Some(out) = out else { break };
                        self.forward(&sender, out).await;
                    }
                    _ = heartbeat.tick() => {
                        let running = self.state.lock().expect("state").running.len() as u32;
                        // Those that ask for an Ack as requests: the
                        // server's Ack is the agent's sign of the server's
                        // life, so the connection needs no Ping of its own
                        // (spec §6.2). The answer is not awaited.
                        if heartbeats.asks() {
                            let _ = sender.request_queued(Heartbeat { running }).await;
                        } else {
                            let _ = sender.send(Heartbeat { running }).await;
                        }
                    }
                    _ = &mut shutdown, if drain_deadline.is_none() => {
                        drain_deadline = Some(self.start_drain());
                        let _ = sender.send(Drain { reason: "agent shutting down".into() }).await;
                    }
                    _ = sleep_until(deadline), if deadline.is_some() => {
                        warn!("drain deadline reached; cancelling running jobs");
                        for job in self.state.lock().expect("state").running.values() {
                            job.cancel();
                        }
                        drain_deadline = Some(tokio::time::Instant::now() + self.config.defaults.kill_grace * 2);
                    }
                }
                if drain_deadline.is_some() && self.is_drained() {
                    info!("drained; exiting");
                    sender.close(ErrorCode::NORMAL, "agent drained").await;
                    return Ok(());
                }
            }
            self.link_tx.send_replace(None);
            warn!(%server, "disconnected from the server; reconnecting");
        }
    }

    fn is_drained(&self) -> bool {
        let state = self.state.lock().expect("state");
        state.running.is_empty() && state.unacked.is_empty() && self.outbox_rx.is_empty()
    }

    /// The configured tags, plus the Docker executor's when it is on.
    fn advertised_tags(&self) -> Vec<String> {
        let mut tags = self.config.tags.clone();
        if self.config.defaults.docker.is_some() {
            tags.push(valkyrie::message::DOCKER_EXECUTOR_TAG.to_owned());
        }
        tags
    }

    fn start_drain(&self) -> tokio::time::Instant {
        info!(
            timeout_s = self.config.drain_timeout.as_secs(),
            "draining: no new jobs"
        );
        self.state.lock().expect("state").draining = true;
        tokio::time::Instant::now() + self.config.drain_timeout
    }

    async fn on_message(&mut self, sender: &SessionSender, message: Message) {
        match message {
            Message::Assign(assign) => {
                let refusal = {
                    let state = self.state.lock().expect("state");
                    if state.draining {
                        Some("agent is draining".to_owned())
                    } else if state.running.len() as u32 >= self.config.slots {
                        Some(format!("all {} slots busy", self.config.slots))
                    } else if state.running.contains_key(&assign.job_id) {
                        Some("already running an attempt of this job".to_owned())
                    } else {
                        None
                    }
                };
                let accepted = refusal.is_none();
                let ack = AssignAck {
                    job_id: assign.job_id,
                    attempt: assign.attempt,
                    accepted,
                    reason: refusal.unwrap_or_default(),
                };
                let _ = sender.send(ack).await;
                if !accepted {
                    return;
                }
                // A job with artifacts or caches runs in this process: its
                // transfers go over this agent's session, which a supervisor
                // does not have. Such a job does not survive an agent
                // restart (the server retries it). Neither does one that
                // starts no process: it is over before a restart could matter.
                let plan = plan(
                    assign.job_id,
                    assign.attempt,
                    &assign.spec,
                    &self.config.work_dir,
                    &self.config.defaults,
                );
                let supervised = self.config.supervisor.as_ref().filter(|_| {
                    assign.spec.artifacts.is_none() && assign.spec.cache.is_empty() && plan.starts_processes()
                });
                if let Some(program) = supervised {
                    match supervisor::spawn(program, &self.config.work_dir, &assign, &self.config.defaults)
                        .await
                    {
                        Ok(spawned) => self.follow(assign.job_id, assign.attempt, Some(spawned)),
                        Err(error) => {
                            warn!(job_id = assign.job_id, %error, "cannot start the job's supervisor");
                            let result = JobResult::failed(
                                assign.job_id,
                                assign.attempt,
                                format!("the agent could not start the job's supervisor process: {error}"),
                                0,
                            );
                            let _ = std::fs::remove_dir_all(supervisor::state_dir(
                                &self.config.work_dir,
                                assign.job_id,
                                assign.attempt,
                            ));
                            let _ = self.outbox_tx.send(result.into()).await;
                        }
                    }
                    return;
                }
                let (cancel_tx, cancel_rx) = watch::channel(false);
                self.state.lock().expect("state").running.insert(
                    assign.job_id,
                    RunningJob {
                        attempt: assign.attempt,
                        control: Control::InProcess(cancel_tx),
                    },
                );
                let outbox = self.outbox_tx.clone();
                let artifacts = AttemptArtifacts {
                    link: self.link.clone(),
                    spec: assign.spec.artifacts.clone(),
                    cache: assign.spec.cache.clone(),
                    max_bytes: self.config.defaults.max_artifact_bytes,
                };
                // Boxed before it is spawned, as the executor's future in
                // it: a future of a few KiB is otherwise copied several
                // times on its way into the task, once per job.
                tokio::spawn(Box::pin(run_attempt(
                    assign.job_id,
                    assign.attempt,
                    plan,
                    outbox,
                    cancel_rx,
                    artifacts,
                )));
            }
            Message::CancelAssignment(cancel) => {
                let state = self.state.lock().expect("state");
                if let Some(job) = state.running.get(&cancel.job_id) {
                    if job.attempt == cancel.attempt {
                        info!(job_id = cancel.job_id, reason = %cancel.reason, "cancelling");
                        job.cancel();
                    }
                }
            }
            Message::Drain(d) => {
                info!(reason = %d.reason, "server asked us to drain");
                self.state.lock().expect("state").draining = true;
            }
            Message::Ack(_) | Message::RequestFailed(_) => {}
            other => warn!(kind = %other.kind(), "unexpected message from the server"),
        }
    }

    async fn forward(&mut self, sender: &SessionSender, message: Message) {
        if let Message::JobResult(result) = message {
            {
                let mut state = self.state.lock().expect("state");
                if state
                    .running
                    .get(&result.job_id)
                    .is_some_and(|r| r.attempt == result.attempt)
                {
                    state.running.remove(&result.job_id);
                }
                state
                    .unacked
                    .insert((result.job_id, result.attempt), result.clone());
            }
            self.send_result(sender, result);
            return;
        }
        // Logs and step results: if the session is gone they are lost with it
        // (the server finalises the attempt without the missing chunks).
        let _ = sender.send(message).await;
    }

    /// Sends a result and forgets it once the server acknowledged or refused it.
    fn send_result(&self, sender: &SessionSender, result: JobResult) {
        let sender = sender.clone();
        let state = self.state.clone();
        let journal = self
            .config
            .supervisor
            .is_some()
            .then(|| supervisor::state_dir(&self.config.work_dir, result.job_id, result.attempt));
        tokio::spawn(async move {
            let key = (result.job_id, result.attempt);
            let done = match sender.request(result).await {
                Ok(_) => true,
                Err(RequestError::Failed { code, message }) => {
                    warn!(job_id = key.0, attempt = key.1, %code, %message, "server refused the job result");
                    true
                }
                // Kept, and sent again after reconnecting.
                Err(_) => false,
            };
            if done {
                state.lock().expect("state").unacked.remove(&key);
                // The attempt is over for the server too: its journal
                // is no longer needed to re-attach.
                if let Some(dir) = journal {
                    let _ = tokio::fs::remove_dir_all(dir).await;
                }
            }
        });
    }
}

fn agent_id() -> String {
    format!("valkyrie-agent/{}", env!("CARGO_PKG_VERSION"))
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// How many Heartbeats go by per Ack asked for (spec §6.2). The server's Ack
/// is the agent's sign of the server's life. The connection pings a silent
/// server only after one heartbeat interval more than that, and both must
/// fit in the connection's idle timeout with an interval to spare. With the
/// defaults (a Heartbeat every 2 s, 10 s idle timeout), one Heartbeat in
/// three asks, so the server writes a third of the Acks it used to and an
/// idle connection still carries no Ping. With a long interval every
/// Heartbeat asks, and the connection pings as configured.
fn ack_every(heartbeat: Duration, idle_timeout: Duration) -> u32 {
    const MOST: u128 = 3;
    let intervals = idle_timeout.as_nanos() / heartbeat.as_nanos().max(1);
    intervals.saturating_sub(2).clamp(1, MOST) as u32
}

/// Which of a connection's Heartbeats ask for an Ack ([`ack_every`]).
#[derive(Clone, Copy, Debug)]
pub struct Heartbeats {
    every: u32,
    sent: u32,
}

impl Heartbeats {
    /// The rule for a Heartbeat every `interval` on a connection made with
    /// `options`, and the options that connection must then use: it pings
    /// a silent server only after one interval more than the Acks' spacing.
    pub fn plan(interval: Duration, options: &ClientOptions) -> (Self, ClientOptions) {
        let every = ack_every(interval, options.config.idle_timeout_value());
        let mut options = options.clone();
        if every > 1 {
            options.config = options.config.heartbeat_interval(interval * (every + 1));
        }
        (Self { every, sent: 0 }, options)
    }

    /// Counts the Heartbeat about to be sent; whether it asks for an Ack.
    pub fn asks(&mut self) -> bool {
        self.sent = self.sent.wrapping_add(1);
        self.sent.is_multiple_of(self.every)
    }
}

#[cfg(test)]
mod tests {
    use super::{ack_every, Heartbeats};
    use std::time::Duration;
    use valkyrie::transport::ClientOptions;

    #[test]
    fn one_heartbeat_in_three_asks_for_an_ack_when_the_idle_timeout_leaves_room() {
        let s = Duration::from_secs;
        // Defaults: Acks 6 s apart, a Ping after 8 s of silence, dead at 10 s.
        assert_eq!(ack_every(s(2), s(10)), 3);
        assert_eq!(ack_every(Duration::from_millis(500), s(10)), 3);
        // 2.5 s: Acks 5 s apart, a Ping after 7.5 s.
        assert_eq!(ack_every(Duration::from_millis(2500), s(10)), 2);
        // Longer intervals: every Heartbeat asks, as before.
        assert_eq!(ack_every(s(3), s(10)), 1);
        assert_eq!(ack_every(s(10), s(10)), 1);
        assert_eq!(ack_every(s(60), s(10)), 1);
        assert_eq!(ack_every(Duration::ZERO, s(10)), 3);
    }

    #[test]
    fn every_third_heartbeat_asks_and_the_connection_pings_after_four_intervals() {
        let (mut heartbeats, options) = Heartbeats::plan(Duration::from_secs(2), &ClientOptions::default());
        assert_eq!(options.config.heartbeat_interval_value(), Duration::from_secs(8));
        let asked: Vec<bool> = (0..6).map(|_| heartbeats.asks()).collect();
        assert_eq!(asked, [false, false, true, false, false, true]);
        // No room: every Heartbeat asks, and the connection is as given.
        let (mut heartbeats, options) = Heartbeats::plan(Duration::from_secs(5), &ClientOptions::default());
        assert_eq!(options.config.heartbeat_interval_value(), Duration::from_secs(2));
        assert!(heartbeats.asks() && heartbeats.asks());
    }
}
