//! Following one job: its output live, and an exit code that mirrors its outcome.

use std::io::Write;
use std::process::ExitCode;

use valkyrie_sdk::{Client, EventBody, JobState, OutputStream};

/// Streams a job's output until it ends; the exit code mirrors the job's.
pub async fn follow_job(client: &Client, job: u64, cancel_on_interrupt: bool) -> anyhow::Result<ExitCode> {
    let mut events = client.watch(Some(job), true, true).await?;
    let mut interrupted = false;
    let mut said_waiting = false;
    loop {
        let event = tokio::select! {
            event = events.recv() => event,
            _ = tokio::signal::ctrl_c(), if cancel_on_interrupt && !interrupted => {
                interrupted = true;
                eprintln!("vk: cancelling job {job}…");
                client.cancel(job).await?;
                continue;
            }
        };
        let Some(event) = event else {
            anyhow::bail!("connection to the server ended before job {job} finished")
        };
        match event?.body {
            EventBody::Log { stream, data, .. } => write_output(stream, &data),
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
                let _ = std::io::stdout().flush();
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

pub fn write_output(stream: OutputStream, data: &[u8]) {
    let _ = match stream {
        OutputStream::Stdout => std::io::stdout().write_all(data),
        OutputStream::Stderr | OutputStream::System => std::io::stderr().write_all(data),
    };
}
