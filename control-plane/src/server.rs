//! Serves Valkyrie sessions: authenticates Hellos, then turns each client or
//! agent message into a core [`Command`]. A session's failure ends only that
//! session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info, warn};
use valkyrie::message::{Ack, Message, Role, ServerList};
use valkyrie::transport::{Hooked, InboundHook, Incoming, Listener, ListenerOptions};
use valkyrie::{Endpoint, ErrorCode, Session, SessionSender};

use crate::artifacts::session::AgentUploads;
use crate::audit::Actor;
use crate::auth::Tokens;
use crate::core::{Command, CoreHandle, Heard, RunCommand, ValidatePipelineError};
use crate::group::Group;
use crate::metrics::TransportLabel;
use crate::responder::{EventSink, Responder};
use crate::scheduler::RunnerId;

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// The answer to an artifact request on a server without an artifact store.
const NO_ARTIFACTS: &str = "this server keeps no artifacts";

fn is_artifact_transfer(message: &Message) -> bool {
    matches!(
        message,
        Message::ArtifactChunk(_)
            | Message::ArtifactCommit(_)
            | Message::ArtifactFetch(_)
            | Message::ListArtifacts(_)
            | Message::CacheLookup(_)
    )
}

/// Characters of a client's software name kept in the audit log.
const MAX_CLIENT_NAME_CHARS: usize = 64;

/// Listener options whose authenticator checks `tokens`.
pub fn listener_options(tokens: Arc<Tokens>, base: ListenerOptions) -> ListenerOptions {
    ListenerOptions {
        authenticate: Some(Arc::new(move |hello| {
            tokens
                .authenticate(hello)
                .map_err(|refused| (refused.code(), refused.to_string()))
        })),
        ..base
    }
}

/// Accepts sessions on `listener` until it stops (a server alone, as with
/// the embedded store).
pub async fn serve(listener: Listener, core: CoreHandle) {
    let group = Group::alone(None);
    group.set_advertise(vec![listener.local_endpoint().to_string()]);
    serve_in_group(listener, core, group).await
}

/// [`serve`] for a server of a group: ListServers answers `group`.
pub async fn serve_in_group(mut listener: Listener, core: CoreHandle, group: Arc<Group>) {
    let endpoint = listener.local_endpoint().clone();
    info!(%endpoint, "listening");
    while let Some(session) = listener.accept().await {
        let core = core.clone();
        let group = group.clone();
        let transport = endpoint.transport();
        tokio::spawn(async move {
            let label = TransportLabel {
                transport: transport.to_owned(),
            };
            let open = core.metrics().connections.get_or_create(&label).clone();
            open.inc();
            match session.hello().map(|h| h.role) {
                Some(Role::Agent) => serve_agent(session, core, transport).await,
                _ => serve_client(session, core, group).await,
            }
            open.dec();
        });
    }
}

/// Binds every endpoint; fails on the first that cannot be bound.
pub async fn bind_all(
    endpoints: &[Endpoint],
    options: &ListenerOptions,
) -> Result<Vec<Listener>, valkyrie::transport::BindError> {
    let mut listeners = Vec::new();
    for endpoint in endpoints {
        listeners.push(Listener::bind(endpoint, options.clone()).await?);
    }
    Ok(listeners)
}

/// spec §5: a request carries a fresh non-zero correlation id. One with id
/// 0 could never be answered (its reply would be dropped while it still
/// took effect), so it ends the connection with a reason instead.
async fn refuse_uncorrelated(sender: &SessionSender, message: &Message) -> bool {
    if !message.is_request() {
        return false;
    }
    let reason = format!(
        "{} carries correlation id 0; a request needs a fresh non-zero correlation id (spec §5)",
        message.kind()
    );
    sender.close(ErrorCode::PROTOCOL_ERROR, reason).await;
    true
}

/// How many of a session's messages its task has finished with, for the
/// session's inbound hook: a message may skip the task only when the task
/// has finished with every message queued before it, so that the core
/// gets a peer's messages in the peer's order.
#[derive(Clone, Default)]
struct Finished(Arc<AtomicU64>);

impl Finished {
    /// Whether the task is done with all of the first `queued` messages.
    fn caught_up(&self, queued: u64) -> bool {
        self.0.load(Ordering::Acquire) == queued
    }

    /// Counts one message finished when dropped: at the end of the task's
    /// turn for it, whichever way that turn ends.
    fn on_drop(&self) -> FinishedOne<'_> {
        FinishedOne(&self.0)
    }
}

struct FinishedOne<'a>(&'a AtomicU64);

impl Drop for FinishedOne<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::Release);
    }
}

/// Whether the session's task, not its hook, must take `incoming`: a
/// request without a correlation id is refused there (closing the
/// connection waits), and nothing may overtake a message in its hands.
fn for_the_task(incoming: &Incoming, queued: u64, finished: &Finished) -> bool {
    !finished.caught_up(queued) || (incoming.correlation == 0 && incoming.message.is_request())
}

/// What a client's request becomes.
enum ClientRequest {
    /// A core command.
    Core(Command),
    /// Nothing more: it was answered.
    Answered,
    /// Work that waits (file reads, validation, the project store): the
    /// session's task does it.
    Task(Message),
}

/// Turns a client's request into what serves it, without waiting.
fn client_request(
    message: Message,
    correlation: u64,
    sender: &SessionSender,
    group: &Group,
) -> ClientRequest {
    let reply = Responder::new(sender.clone(), correlation);
    let command = match message {
        // Served beside the core: they read files, never its state.
        message @ (Message::ArtifactFetch(_) | Message::ListArtifacts(_) | Message::SubmitPipeline(_)) => {
            return ClientRequest::Task(message)
        }
        message if crate::source::requests::is_project_request(&message) => {
            return ClientRequest::Task(message)
        }
        Message::SubmitJob(m) => Command::Submit(m.spec, reply),
        Message::CancelJob(m) => Command::Cancel(m.job_id, reply),
        Message::GetJob(m) => Command::GetJob(m.job_id, reply),
        Message::ListJobs(m) => Command::ListJobs(m.limit, reply),
        Message::ListRunners(_) => Command::ListRunners(reply),
        Message::RemoveRunner(m) => Command::RemoveRunner {
            name: m.name,
            force: m.force,
            reply,
        },
        Message::GetRun(m) => Command::GetRun(m.run_id, reply),
        Message::ListRuns(m) => Command::ListRuns(m.limit, reply),
        Message::CancelRun(m) => Command::CancelRun(m.run_id, reply),
        Message::PlayJob(m) => Command::Run(RunCommand::Play {
            run_id: m.run_id,
            job: m.job,
            reply,
        }),
        Message::RerunRun(m) => Command::Run(RunCommand::Rerun {
            run_id: m.run_id,
            failed_only: m.failed_only,
            reply,
        }),
        // Answered here: the group is not the core's state.
        Message::ListServers(_) => {
            let servers = group.servers();
            reply.reply(ServerList { servers });
            return ClientRequest::Answered;
        }
        Message::ListAudit(m) => Command::ListAudit {
            limit: m.limit,
            before: m.before,
            reply,
        },
        Message::Subscribe(m) => Command::Subscribe {
            job: m.job_id,
            logs: m.logs,
            replay: m.replay,
            sink: EventSink::Session {
                sender: sender.clone(),
                correlation,
            },
            resume_from: None,
        },
        // spec §8: a message the client role never sends is refused
        // alone (RequestFailed, when it has a correlation id to answer);
        // the connection stays open.
        other => {
            reply.fail(
                ErrorCode::PERMISSION_DENIED,
                format!("clients may not send {}", other.kind()),
            );
            return ClientRequest::Answered;
        }
    };
    ClientRequest::Core(command)
}

async fn serve_client(mut session: Session, core: CoreHandle, group: Arc<Group>) {
    let sender = session.sender();
    // Clients hold the API token; the software name they gave is kept as a
    // hint of which client it was (bounded, printable: it is theirs to say).
    let software: String = session
        .hello()
        .map(|h| {
            h.agent
                .chars()
                .filter(|c| !c.is_control())
                .take(MAX_CLIENT_NAME_CHARS)
                .collect()
        })
        .unwrap_or_default();
    let actor = Actor::api_token(if software.is_empty() {
        crate::rest::auth::API_TOKEN_SUBJECT.to_owned()
    } else {
        software
    });
    let as_actor = |actor: &Actor, command| Command::As {
        actor: actor.clone(),
        command: Box::new(command),
    };
    // A request that needs no waiting goes from the connection's task
    // straight into the core's queue, when the queue has room.
    let finished = Finished::default();
    session.set_inbound_hook({
        let (core, sender, group, actor, finished) = (
            core.clone(),
            sender.clone(),
            group.clone(),
            actor.clone(),
            finished.clone(),
        );
        Box::new(move |incoming, queued| {
            if for_the_task(&incoming, queued, &finished) {
                return Hooked::Queue(incoming);
            }
            let Some(permit) = core.try_reserve() else {
                return Hooked::Queue(incoming);
            };
            let correlation = incoming.correlation;
            match client_request(incoming.message, correlation, &sender, &group) {
                ClientRequest::Core(command) => permit.send(as_actor(&actor, command)),
                ClientRequest::Answered => {}
                ClientRequest::Task(message) => return Hooked::Queue(Incoming { correlation, message }),
            }
            Hooked::Taken
        })
    });
    while let Some(incoming) = session.recv().await {
        let _finished = finished.on_drop();
        let correlation = incoming.correlation;
        if correlation == 0 && refuse_uncorrelated(&sender, &incoming.message).await {
            return;
        }
        let command = match client_request(incoming.message, correlation, &sender, &group) {
            ClientRequest::Core(command) => command,
            ClientRequest::Answered => continue,
            ClientRequest::Task(message) => {
                // Boxed: its state is large and rarely needed, and a
                // session's task lives as long as the connection.
                match Box::pin(client_task(message, correlation, &sender, &core, &actor)).await {
                    Some(command) => command,
                    None => continue,
                }
            }
        };
        if !core.send(as_actor(&actor, command)).await {
            return;
        }
    }
}

/// Serves a client's request that waits for something besides the core;
/// the command it ends in, if any.
async fn client_task(
    message: Message,
    correlation: u64,
    sender: &SessionSender,
    core: &CoreHandle,
    actor: &Actor,
) -> Option<Command> {
    let reply = Responder::new(sender.clone(), correlation);
    match message {
        message @ (Message::ArtifactFetch(_) | Message::ListArtifacts(_)) => {
            match core.artifacts() {
                Some(store) => {
                    crate::artifacts::session::serve_read(store, sender, correlation, message).await
                }
                None => reply.fail(ErrorCode::NOT_FOUND, NO_ARTIFACTS),
            }
            None
        }
        // Validated here, off the core; this session's next request
        // waits for it (requests keep their order).
        Message::SubmitPipeline(m) => {
            if let Err(why) = crate::source::check_variables(&m.variables) {
                reply.fail(ErrorCode::INVALID_REQUEST, why);
                return None;
            }
            match core.validate_pipeline(m.file_name, m.yaml).await {
                Ok(pipeline) => Some(Command::SubmitPipeline {
                    pipeline: Box::new(pipeline),
                    variables: m.variables,
                    reply,
                }),
                Err(err) => {
                    let code = match err {
                        ValidatePipelineError::Busy | ValidatePipelineError::Internal(_) => {
                            ErrorCode::INTERNAL
                        }
                        _ => ErrorCode::INVALID_REQUEST,
                    };
                    reply.fail(code, err.to_string());
                    None
                }
            }
        }
        // Project requests (what `client_request` hands over).
        message => {
            crate::source::requests::serve(core, actor, reply, message).await;
            None
        }
    }
}

/// Reads an agent's session until it registers. Returns the runner and its
/// name, or `None` when the session ended first.
///
/// spec §6.1: the agent's first request is RegisterRunner. Heartbeat and
/// Drain before it are ignored (there is no runner yet to apply them to);
/// a refused registration is answered with RequestFailed and the agent may
/// try again on the same connection; any other message closes it.
async fn register_agent(
    session: &mut Session,
    core: &CoreHandle,
    session_id: u64,
    heard: &Heard,
    finished: &Finished,
) -> Option<(RunnerId, String)> {
    let sender = session.sender();
    let token = session.hello().map(|h| h.token.clone()).unwrap_or_default();
    loop {
        let incoming = session.recv().await?;
        let _finished = finished.on_drop();
        let register = match incoming.message {
            Message::RegisterRunner(m) if incoming.correlation != 0 => m,
            Message::Heartbeat(_) | Message::Drain(_) => continue,
            other => {
                if incoming.correlation == 0 && refuse_uncorrelated(&sender, &other).await {
                    return None;
                }
                let reason = format!(
                    "an agent must register first (RegisterRunner); got {}",
                    other.kind()
                );
                sender.close(ErrorCode::UNEXPECTED_MESSAGE, reason).await;
                return None;
            }
        };
        let name = register.name.clone();
        let (done_tx, done_rx) = oneshot::channel();
        let command = Command::Register {
            msg: *register,
            sender: sender.clone(),
            session: session_id,
            heard: heard.clone(),
            correlation: incoming.correlation,
            token: token.clone(),
            done: done_tx,
        };
        if !core.send(command).await {
            return None;
        }
        match done_rx.await.ok()? {
            Ok(runner) => return Some((runner, name)),
            Err(refused) => Responder::new(sender.clone(), incoming.correlation).refuse(refused),
        }
    }
}

/// A registered agent session's inbound hook: its heartbeats stop here
/// (marked and answered) and its reports go from the connection's task
/// straight into the core's queue; artifact transfers (which wait on the
/// store), and everything while the session's task has messages in hand or
/// the core's queue is full, go through the task. Set once the runner is
/// registered, with its id in the hook's own state: a heartbeat then reads
/// no other allocation to learn it (that read was the hook's largest cost
/// with 10,000 idle runners, a cache miss per heartbeat).
fn agent_hook(
    core: CoreHandle,
    runner: RunnerId,
    session: u64,
    heard: Heard,
    finished: Finished,
) -> InboundHook {
    Box::new(move |incoming, queued| {
        if let Message::Heartbeat(_) = incoming.message {
            heard.mark(Instant::now());
            // spec §6.2: a correlated heartbeat is answered.
            return match incoming.correlation {
                0 => Hooked::Taken,
                correlation => Hooked::Reply(correlation, Ack {}.into()),
            };
        }
        if for_the_task(&incoming, queued, &finished) || is_artifact_transfer(&incoming.message) {
            return Hooked::Queue(incoming);
        }
        let Some(permit) = core.try_reserve() else {
            return Hooked::Queue(incoming);
        };
        heard.mark(Instant::now());
        permit.send(Command::FromRunner {
            runner,
            session,
            correlation: incoming.correlation,
            message: incoming.message,
        });
        Hooked::Taken
    })
}

async fn serve_agent(mut session: Session, core: CoreHandle, transport: &'static str) {
    let sender = session.sender();
    let session_id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let heard = Heard::new(Instant::now());
    let finished = Finished::default();
    // Boxed, as the artifact transfers and their close below: a state
    // needed once (or rarely) would otherwise be part of every idle
    // agent's task.
    let Some((runner, name)) =
        Box::pin(register_agent(&mut session, &core, session_id, &heard, &finished)).await
    else {
        return;
    };
    session.set_inbound_hook(agent_hook(
        core.clone(),
        runner,
        session_id,
        heard.clone(),
        finished.clone(),
    ));
    info!(runner = %name, transport, "agent session open");
    let mut uploads = core
        .artifacts()
        .cloned()
        .map(|store| AgentUploads::new(store, core.clone(), runner));
    while let Some(incoming) = session.recv().await {
        let _finished = finished.on_drop();
        heard.mark(Instant::now());
        // A heartbeat says only that the agent lives: the mark above is all
        // it does, and the core is not woken for it. A correlated one is
        // answered (spec §6.2), which keeps the agent's side from pinging.
        // (Once the hook is in place it takes them; one queued before may
        // still come here.)
        if matches!(incoming.message, Message::Heartbeat(_)) {
            if incoming.correlation != 0 {
                let _ = sender.push(incoming.correlation, Ack {});
            }
            continue;
        }
        if incoming.correlation == 0 && refuse_uncorrelated(&sender, &incoming.message).await {
            break;
        }
        // Artifact transfers go to the store, beside the core.
        let message = match &mut uploads {
            Some(uploads) => Box::pin(uploads.serve(&sender, incoming.correlation, incoming.message)).await,
            None if is_artifact_transfer(&incoming.message) => {
                Responder::new(sender.clone(), incoming.correlation).fail(ErrorCode::NOT_FOUND, NO_ARTIFACTS);
                None
            }
            None => Some(incoming.message),
        };
        let Some(message) = message else { continue };
        let command = Command::FromRunner {
            runner,
            session: session_id,
            correlation: incoming.correlation,
            message,
        };
        if !core.send(command).await {
            return;
        }
    }
    if let Some(uploads) = uploads {
        Box::pin(uploads.close()).await;
    }
    if let Some(Err(err)) = sender.close_reason() {
        warn!(runner = %name, %err, "agent session ended");
    }
    core.send(Command::RunnerDisconnected {
        runner,
        session: session_id,
    })
    .await;
}
