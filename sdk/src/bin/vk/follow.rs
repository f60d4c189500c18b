//! Following one job: its output live, and an exit code that mirrors its
//! outcome. A lost connection is reconnected (the output resumes after the
//! last chunk shown, by sequence number, so nothing is shown twice); if that
//! fails, `vk` says that the job keeps running and how to follow it.

use std::future::Future;
use std::process::ExitCode;
use std::time::Duration;

use valkyrie_sdk::{Client, ClientError, EventBody, JobState, OutputStream};

use crate::out::{self, outln};

/// How long `vk` keeps trying to reconnect before it gives up.
const RECONNECT_FOR: Duration = Duration::from_secs(30);

/// Where a job's output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// `vk exec`: the job's stdout on stdout, its stderr and the system
    /// lines on stderr, as if it ran here.
    Split,
    /// `vk logs`: every stream on stdout in the job's order, as CI log
    /// views show it.
    Merged,
    /// `vk logs --json`: one JSON object per chunk, with its stream.
    Json,
}

/// Writes one chunk of a job's output.
pub fn write_chunk(output: Output, job: u64, stream: OutputStream, seq: u64, data: &[u8]) {
    match (output, stream) {
        (Output::Json, _) => {
            let line = serde_json::json!({
                "job_id": job,
                "seq": seq,
                "stream": stream,
                "text": String::from_utf8_lossy(data),
            });
            outln!("{line}");
        }
        (Output::Merged, _) | (Output::Split, OutputStream::Stdout) => out::bytes(data),
        (Output::Split, _) => out::err_bytes(data),
    }
}

/// Streams a job's output until it ends; the exit code mirrors the job's
/// (see the README's table). `reconnect` makes a new client after a lost
/// connection.
pub async fn follow_job<F, Fut>(
    client: &Client,
    job: u64,
    output: Output,
    cancel_on_interrupt: bool,
    reconnect: F,
) -> anyhow::Result<ExitCode>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Client>>,
{
    let mut client = client.clone();
    let mut events = client.watch(Some(job), true, true).await?;
    let mut interrupted = false;
    let mut interrupts = 0;
    let mut said_waiting = false;
    // The last output chunk shown, so that a replay after a reconnect resumes after it.
    let mut shown: Option<u64> = None;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = crate::interrupt::next(&mut interrupts), if cancel_on_interrupt && !interrupted => {
                interrupted = true;
                eprintln!("vk: cancelling job {job}…");
                match client.cancel(job).await {
                    // Sent again once reconnected (the subscription ends too).
                    Err(err) if !is_loss(&err) => return Err(err.into()),
                    _ => {}
                }
                continue;
            }
        };
        let event = match event {
            Some(Ok(event)) => event,
            Some(Err(ClientError::Request(err))) if !is_connection_loss(&err) => {
                return Err(err.into());
            }
            Some(Err(ClientError::Unexpected(kind))) => {
                anyhow::bail!("the server answered with an unexpected {kind} message")
            }
            lost => {
                let why = match lost {
                    Some(Err(err)) => err.to_string(),
                    _ => "the connection ended".to_owned(),
                };
                eprintln!("{}", say_lost(&why, &format!("job {job}")));
                // Subscribe again with replay: what was already shown is skipped below.
                let watch = |client: Client| async move { Ok(client.watch(Some(job), true, true).await?) };
                match reconnect_then(&reconnect, watch).await {
                    Some((new_client, new_events)) => {
                        eprintln!("vk: reconnected; following job {job} again");
                        client = new_client;
                        events = new_events;
                        if interrupted {
                            // The cancel may have been lost with the connection;
                            // a refusal means the job has ended (the replay says how).
                            if let Err(err) = client.cancel(job).await {
                                tracing::debug!("cancel again after reconnecting: {err}");
                            }
                        }
                        continue;
                    }
                    None => {
                        return Err(gave_up(
                            &format!("job {job}"),
                            &format!("vk logs {job} -f"),
                            &format!("vk cancel {job}"),
                        ))
                    }
                }
            }
        };
        match event.body {
            EventBody::Log { stream, data, seq } => {
                if shown.is_some_and(|last| seq <= last) {
                    continue;
                }
                shown = Some(seq);
                write_chunk(output, job, stream, seq, &data);
            }
            EventBody::Skipped { missed } => {
                eprintln!("vk: {missed} events skipped because this client fell behind; `vk logs {job}` shows all output")
            }
            EventBody::ReplayDone => {}
            EventBody::State {
                state,
                exit_code,
                message,
                runner,
                ..
            } => {
                if state == JobState::Queued && !said_waiting {
                    // A freshly queued job has no reason yet: ask for it.
                    // A lost connection shows in the subscription next.
                    let info = match client.job(job).await {
                        Ok(info) => Some(info),
                        Err(err) if is_loss(&err) => None,
                        Err(err) => return Err(err.into()),
                    };
                    if let Some(info) = info.filter(|i| i.state == JobState::Queued && !i.reason.is_empty()) {
                        eprintln!("vk: job {job} waiting: {}", info.reason);
                        said_waiting = true;
                    }
                }
                if !state.is_terminal() {
                    continue;
                }
                out::flush();
                return Ok(match state {
                    JobState::Succeeded => ExitCode::SUCCESS,
                    JobState::Failed => {
                        eprintln!(
                            "vk: job {job} failed on {}: {message}",
                            runner.unwrap_or_default()
                        );
                        ExitCode::from(
                            exit_code
                                .and_then(|c| u8::try_from(c).ok())
                                .filter(|c| *c != 0)
                                .unwrap_or(1),
                        )
                    }
                    JobState::TimedOut => {
                        eprintln!("vk: job {job} timed out: {message}");
                        ExitCode::from(124)
                    }
                    JobState::Cancelled => {
                        eprintln!("vk: job {job} cancelled: {message}");
                        ExitCode::from(130)
                    }
                    _ => {
                        eprintln!("vk: job {job} {}: {message}", state.as_str());
                        ExitCode::from(1)
                    }
                });
            }
        }
    }
}

/// Whether a request error means the connection is gone (worth reconnecting)
/// rather than a refusal by the server.
fn is_connection_loss(err: &valkyrie::transport::RequestError) -> bool {
    !matches!(err, valkyrie::transport::RequestError::Failed { .. })
}

/// Whether `err` means the server went away (it died, or lost the lead of
/// its group): worth reconnecting, perhaps to another server of the group,
/// rather than a refusal to report.
pub fn is_loss(err: &ClientError) -> bool {
    match err {
        ClientError::Request(err) => is_connection_loss(err),
        ClientError::Connect(_) => true,
        _ => false,
    }
}

/// The first pause between two reconnection rounds; it doubles up to
/// [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest pause between two rounds: in a group a standby takes over
/// within seconds of the leader's death.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Reconnects through the servers (`reconnect` tries each in turn and
/// follows a standby's redirect), with a jittered, doubling pause between
/// rounds, for up to [`RECONNECT_FOR`]; then runs `then` on the new client
/// (subscribes again, fetches what was missed). A `then` that fails counts
/// as a failed round. `None` once the time is up.
pub async fn reconnect_then<F, Fut, G, GFut, T>(reconnect: &F, then: G) -> Option<(Client, T)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Client>>,
    G: Fn(Client) -> GFut,
    GFut: Future<Output = anyhow::Result<T>>,
{
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut backoff = FIRST_BACKOFF;
    loop {
        match reconnect().await {
            Ok(client) => match then(client.clone()).await {
                Ok(value) => return Some((client, value)),
                Err(err) => tracing::debug!("reconnected, but: {err:#}"),
            },
            Err(err) => tracing::debug!("cannot reconnect yet: {err:#}"),
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        // Full jitter over the upper half: several clients of a group that
        // lost its leader do not all come back at the same instant.
        tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Says that the connection is lost and `what` keeps running on the server.
pub fn say_lost(why: &str, what: &str) -> String {
    format!("vk: lost the connection to the server ({why}); {what} keeps running there; reconnecting…")
}

/// The error when [`reconnect_then`] gave up.
pub fn gave_up(what: &str, follow: &str, cancel: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "could not reconnect within {}s; {what} may still be running: follow it with `{follow}`, cancel it with `{cancel}`",
        RECONNECT_FOR.as_secs()
    )
}
