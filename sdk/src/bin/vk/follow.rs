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
                client.cancel(job).await?;
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
                eprintln!(
                    "vk: lost the connection to the server ({why}); job {job} keeps running there; reconnecting…"
                );
                match reconnect_and_watch(&reconnect, job).await {
                    Some((new_client, new_events)) => {
                        eprintln!("vk: reconnected; following job {job} again");
                        client = new_client;
                        events = new_events;
                        continue;
                    }
                    None => anyhow::bail!(
                        "could not reconnect within {}s; job {job} may still be running: follow it with `vk logs {job} -f`, cancel it with `vk cancel {job}`",
                        RECONNECT_FOR.as_secs()
                    ),
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
                    let info = client.job(job).await?;
                    if info.state == JobState::Queued && !info.reason.is_empty() {
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

/// Reconnects with backoff for up to [`RECONNECT_FOR`] and subscribes again
/// (with replay: the caller skips what it already showed).
async fn reconnect_and_watch<F, Fut>(reconnect: &F, job: u64) -> Option<(Client, valkyrie_sdk::EventStream)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Client>>,
{
    let deadline = tokio::time::Instant::now() + RECONNECT_FOR;
    let mut backoff = Duration::from_millis(200);
    while tokio::time::Instant::now() < deadline {
        if let Ok(client) = reconnect().await {
            if let Ok(events) = client.watch(Some(job), true, true).await {
                return Some((client, events));
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    None
}
