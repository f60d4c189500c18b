//! `vk run`: submit a pipeline and show it live: one line per job with its
//! state, runner and elapsed time, redrawn in place on a terminal; plain
//! appended lines otherwise (or with --plain); JSON lines with --json.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use console::style;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use valkyrie_sdk::{
    Client, EventBody, EventStream, OutputStream, RunInfo, RunJobInfo, RunJobState, RunState,
};

use crate::listing::format_ms;

/// How to show a run.
#[derive(Clone, Copy, Debug)]
pub struct ViewOptions {
    /// Interleave job output, prefixed with the job name.
    pub logs: bool,
    /// Appended lines even on a terminal.
    pub plain: bool,
    /// JSON lines.
    pub json: bool,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn styled_state(state: RunJobState) -> String {
    // Pad before styling: escape codes must not count towards the width.
    let s = format!("{:<10}", state.as_str());
    match state {
        RunJobState::Succeeded => style(s).green().to_string(),
        RunJobState::Failed | RunJobState::TimedOut | RunJobState::Lost => style(s).red().bold().to_string(),
        RunJobState::Running | RunJobState::Assigned => style(s).cyan().to_string(),
        RunJobState::Skipped | RunJobState::Cancelled => style(s).dim().to_string(),
        RunJobState::Waiting | RunJobState::Queued => style(s).yellow().to_string(),
    }
}

fn elapsed(job: &RunJobInfo) -> String {
    match (job.started_at_ms, job.finished_at_ms) {
        (Some(s), Some(f)) => format_ms(f.saturating_sub(s)),
        (Some(s), None) => format_ms(now_ms().saturating_sub(s)),
        _ => String::new(),
    }
}

fn job_line(job: &RunJobInfo, width: usize) -> String {
    let mut line = format!(
        "{:<width$}  {} {:<14} {:>7}",
        job.name,
        styled_state(job.state),
        job.runner.as_deref().unwrap_or(""),
        elapsed(job),
    );
    if !job.state.is_terminal() && !job.reason.is_empty() && job.state != RunJobState::Running {
        line.push_str(&format!("  {}", style(&job.reason).dim()));
    }
    if job.state == RunJobState::Failed && job.allow_failure {
        line.push_str(&format!("  {}", style("(allowed to fail)").dim()));
    }
    if job.state == RunJobState::Skipped {
        line.push_str(&format!("  {}", style(&job.reason).dim()));
    }
    line
}

/// The log subscription for [`follow_run`], when `options` ask for logs.
pub async fn subscribe(client: &Client, options: ViewOptions) -> anyhow::Result<Option<EventStream>> {
    Ok(if options.logs {
        Some(client.watch(None, true, false).await?)
    } else {
        None
    })
}

/// Follows run `run_id` until it ends; exit code 0 only if it succeeded.
///
/// `events` must be subscribed before the run was submitted (see
/// [`subscribe`]) so that no early output is missed.
pub async fn follow_run(
    client: &Client,
    run_id: u64,
    options: ViewOptions,
    mut events: Option<EventStream>,
) -> anyhow::Result<(ExitCode, RunInfo)> {
    let tty = std::io::stdout().is_terminal() && !options.plain && !options.json;
    let mut run = client.run(run_id).await?;
    let width = run.jobs.iter().map(|j| j.name.len()).max().unwrap_or(8).max(8);
    let multi = MultiProgress::with_draw_target(if tty {
        ProgressDrawTarget::stdout()
    } else {
        ProgressDrawTarget::hidden()
    });
    let bars: Vec<ProgressBar> = if tty {
        run.jobs
            .iter()
            .map(|_| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("template"));
                bar
            })
            .collect()
    } else {
        Vec::new()
    };
    let started = Instant::now();
    if !options.json && !tty {
        println!("run r{run_id} of `{}`: {} jobs", run.name, run.jobs.len());
    }
    let mut last_states: Vec<Option<RunJobState>> = vec![None; run.jobs.len()];
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    let mut interrupted = false;
    loop {
        // Redraw or report changes.
        for (i, job) in run.jobs.iter().enumerate() {
            if let Some(id) = job.job_id {
                names.insert(id, job.name.clone());
            }
            if tty {
                if job.state.is_terminal() {
                    if !bars[i].is_finished() {
                        bars[i].finish_with_message(job_line(job, width));
                    }
                } else {
                    bars[i].set_message(job_line(job, width));
                    bars[i].tick();
                }
            } else if last_states[i] != Some(job.state) {
                if options.json {
                    let line = serde_json::json!({
                        "type": "job", "run_id": run_id, "name": job.name, "state": job.state,
                        "job_id": job.job_id, "runner": job.runner, "exit_code": job.exit_code,
                        "reason": job.reason,
                    });
                    println!("{line}");
                } else {
                    println!("{}", job_line(job, width));
                }
            }
            last_states[i] = Some(job.state);
        }
        if run.state.is_terminal() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            event = async { match events.as_mut() { Some(e) => e.recv().await, None => std::future::pending().await } } => {
                if let Some(Ok(event)) = event {
                    if let EventBody::Log { stream, data, .. } = &event.body {
                        if !names.contains_key(&event.job_id) {
                            // A job released since the last refresh: learn its name.
                            run = client.run(run_id).await?;
                            for job in &run.jobs {
                                if let Some(id) = job.job_id {
                                    names.insert(id, job.name.clone());
                                }
                            }
                        }
                        if let Some(name) = names.get(&event.job_id) {
                            print_log(&multi, tty, options.json, name, *stream, data);
                        }
                    }
                }
                continue;
            }
            _ = tokio::signal::ctrl_c(), if !interrupted => {
                interrupted = true;
                let _ = multi.println(format!("vk: cancelling run r{run_id}…"));
                if !tty { eprintln!("vk: cancelling run r{run_id}…"); }
                client.cancel_run(run_id).await?;
            }
        }
        run = client.run(run_id).await?;
    }
    for bar in &bars {
        bar.finish();
    }
    let total = started.elapsed();
    if options.json {
        let line =
            serde_json::json!({"type": "run", "run_id": run_id, "state": run.state, "message": run.message});
        println!("{line}");
    } else {
        print_summary(&run, total);
        for job in run
            .jobs
            .iter()
            .filter(|j| j.state == RunJobState::Failed && !j.allow_failure)
        {
            if let Some(job_id) = job.job_id {
                print_tail(client, job_id, &job.name).await;
            }
        }
    }
    let code = if run.state == RunState::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    };
    Ok((code, run))
}

fn print_log(multi: &MultiProgress, tty: bool, json: bool, name: &str, stream: OutputStream, data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.lines() {
        if json {
            let out = serde_json::json!({"type": "log", "name": name, "stream": stream, "line": line});
            println!("{out}");
        } else {
            let prefixed = format!("{} {line}", style(format!("[{name}]")).blue());
            if tty {
                let _ = multi.println(prefixed);
            } else {
                println!("{prefixed}");
            }
        }
    }
}

fn print_summary(run: &RunInfo, total: Duration) {
    let verdict = match run.state {
        RunState::Succeeded => style("succeeded").green().bold(),
        other => style(other.as_str()).red().bold(),
    };
    println!();
    println!(
        "run r{} `{}` {verdict} in {}: {}",
        run.run_id,
        run.name,
        format_ms(total.as_millis() as u64),
        run.message
    );
    for job in &run.jobs {
        let took = elapsed(job);
        println!(
            "  {:<32} {:<10} {:>7}  {}",
            job.name,
            job.state.as_str(),
            if took.is_empty() { "-".into() } else { took },
            job.runner.as_deref().unwrap_or("")
        );
    }
}

/// Prints the last lines of a failed job's output.
async fn print_tail(client: &Client, job_id: u64, name: &str) {
    let Ok(mut events) = client.watch(Some(job_id), true, true).await else {
        return;
    };
    let mut output = Vec::new();
    while let Some(Ok(event)) = events.recv().await {
        match event.body {
            EventBody::Log { data, .. } => output.extend_from_slice(&data),
            EventBody::ReplayDone => break,
            _ => {}
        }
    }
    let text = String::from_utf8_lossy(&output);
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(20)..];
    eprintln!(
        "\n{} last {} lines of `{name}` (job {job_id}):",
        style("✗").red(),
        tail.len()
    );
    for line in tail {
        eprintln!("  {line}");
    }
}
