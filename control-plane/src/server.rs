//! Serves Valkyrie sessions: authenticates Hellos, then turns each client or
//! agent message into a core [`Command`]. A session's failure ends only that
//! session.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use tracing::{info, warn};
use valkyrie::message::{Message, Role};
use valkyrie::transport::{Listener, ListenerOptions};
use valkyrie::{Endpoint, ErrorCode, Session};

use crate::audit::Actor;
use crate::auth::Tokens;
use crate::core::{Command, CoreHandle, ValidatePipelineError};
use crate::metrics::TransportLabel;
use crate::responder::{EventSink, Responder};

static SESSIONS: AtomicU64 = AtomicU64::new(1);

/// Characters of a client's software name kept in the audit log.
const MAX_CLIENT_NAME_CHARS: usize = 64;

/// Listener options whose authenticator checks `tokens`.
pub fn listener_options(tokens: Arc<Tokens>, base: ListenerOptions) -> ListenerOptions {
    ListenerOptions {
        authenticate: Some(Arc::new(move |hello| tokens.authenticate(hello))),
        ..base
    }
}

/// Accepts sessions on `listener` until it stops.
pub async fn serve(mut listener: Listener, core: CoreHandle) {
    let endpoint = listener.local_endpoint().clone();
    info!(%endpoint, "listening");
    while let Some(session) = listener.accept().await {
        let core = core.clone();
        let transport = endpoint.transport();
        tokio::spawn(async move {
            let label = TransportLabel {
                transport: transport.to_owned(),
            };
            let open = core.metrics().connections.get_or_create(&label).clone();
            open.inc();
            match session.hello().map(|h| h.role) {
                Some(Role::Agent) => serve_agent(session, core, transport).await,
                _ => serve_client(session, core).await,
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

async fn serve_client(mut session: Session, core: CoreHandle) {
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
    while let Some(incoming) = session.recv().await {
        let reply = Responder::new(sender.clone(), incoming.correlation);
        let command = match incoming.message {
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
            // Validated here, off the core; this session's next request
            // waits for it (requests keep their order).
            Message::SubmitPipeline(m) => match core.validate_pipeline(m.file_name, m.yaml).await {
                Ok(pipeline) => Command::SubmitPipeline {
                    pipeline: Box::new(pipeline),
                    reply,
                },
                Err(err) => {
                    let code = match err {
                        ValidatePipelineError::Busy | ValidatePipelineError::Internal(_) => {
                            ErrorCode::INTERNAL
                        }
                        _ => ErrorCode::INVALID_REQUEST,
                    };
                    reply.fail(code, err.to_string());
                    continue;
                }
            },
            Message::GetRun(m) => Command::GetRun(m.run_id, reply),
            Message::ListRuns(m) => Command::ListRuns(m.limit, reply),
            Message::CancelRun(m) => Command::CancelRun(m.run_id, reply),
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
                    correlation: incoming.correlation,
                },
                resume_from: None,
            },
            other => {
                reply.fail(
                    ErrorCode::PERMISSION_DENIED,
                    format!("clients may not send {}", other.kind()),
                );
                continue;
            }
        };
        let command = Command::As {
            actor: actor.clone(),
            command: Box::new(command),
        };
        if !core.send(command).await {
            return;
        }
    }
}

async fn serve_agent(mut session: Session, core: CoreHandle, transport: &'static str) {
    let sender = session.sender();
    let session_id = SESSIONS.fetch_add(1, Ordering::Relaxed);
    // spec: an agent's first message after the handshake is RegisterRunner.
    let register = match session.recv().await {
        Some(incoming) => match incoming.message {
            Message::RegisterRunner(m) => m,
            other => {
                let reason = format!("an agent must register first; got {}", other.kind());
                sender.close(ErrorCode::UNEXPECTED_MESSAGE, reason).await;
                return;
            }
        },
        None => return,
    };
    let name = register.name.clone();
    let (done_tx, done_rx) = oneshot::channel();
    let command = Command::Register {
        msg: register,
        sender: sender.clone(),
        session: session_id,
        done: done_tx,
    };
    if !core.send(command).await {
        return;
    }
    let runner = match done_rx.await {
        Ok(Ok(runner)) => runner,
        Ok(Err(reason)) => {
            sender.close(ErrorCode::INVALID_REQUEST, reason).await;
            return;
        }
        Err(_) => return,
    };
    info!(runner = %name, transport, "agent session open");
    while let Some(incoming) = session.recv().await {
        let command = Command::FromRunner {
            runner,
            session: session_id,
            correlation: incoming.correlation,
            message: incoming.message,
        };
        if !core.send(command).await {
            return;
        }
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
