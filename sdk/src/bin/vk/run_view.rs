//! `vk run`: submit a pipeline and show it live: one line per job with its
//! state, runner and elapsed time, redrawn in place on a terminal; plain
//! appended lines otherwise (or with --plain); JSON lines with --json.

use std::collections::HashMap;
use std::future::Future;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use console::style;
use valkyrie_sdk::{
    Client, EventBody, EventStream, OutputStream, RunInfo, RunJobInfo, RunJobState, RunState,
};

use crate::follow::{gave_up, is_loss, reconnect_then, say_lost};
use crate::listing::{format_ms, now_ms};
use crate::live::LiveScreen;
use crate::out::outln;

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

fn styled_state(state: RunJobState) -> String {
    // Pad before styling: escape codes must not count towards the width.
    let s = format!("{:<10}", state.as_str());
    match state {
        RunJobState::Succeeded => style(s).green().to_string(),
        RunJobState::Failed | RunJobState::TimedOut | RunJobState::Lost => style(s).red().bold().to_string(),
        RunJobState::Running | RunJobState::Assigned => style(s).cyan().to_string(),
        RunJobState::Skipped | RunJobState::Cancelled => style(s).dim().to_string(),
        RunJobState::Waiting | RunJobState::Queued => style(s).yellow().to_string(),
        RunJobState::Manual => style(s).magenta().to_string(),
    }
}

fn elapsed(job: &RunJobInfo) -> String {
    match (job.started_at_ms, job.finished_at_ms) {
        (Some(s), Some(f)) => format_ms(f.saturating_sub(s)),
        (Some(s), None) => format_ms(now_ms().saturating_sub(s)),
        _ => String::new(),
    }
}

fn job_line(job: &RunJobInfo, width: usize, step: Option<&String>) -> String {
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
    if let Some(step) = step.filter(|_| job.state == RunJobState::Running) {
        line.push_str(&format!("  {}", style(step).dim()));
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

/// How often the terminal display is redrawn at most.
const DRAW_INTERVAL: Duration = Duration::from_millis(100);
/// How often the run is fetched again for its table.
const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Follows run `run_id` until it ends; see [`exit_code`] for its exit code.
///
/// `events` must be subscribed before the run was submitted (see
/// [`subscribe`]) so that no early output is missed. A lost connection (the
/// server died, or the group's leader changed) is reconnected with
/// `reconnect`; the subscription is made again and each job's stored output
/// is replayed after the last chunk shown, so nothing is shown twice.
pub async fn follow_run<F, Fut>(
    client: &Client,
    run_id: u64,
    options: ViewOptions,
    mut events: Option<EventStream>,
    reconnect: F,
) -> anyhow::Result<(ExitCode, RunInfo)>
where
    F: Fn() -> Fut,
    Fut: Future<Output = anyhow::Result<Client>>,
{
    let mut client = client.clone();
    let tty = std::io::stdout().is_terminal() && !options.plain && !options.json;
    let mut run = client.run(run_id).await?;
    let width = run.jobs.iter().map(|j| j.name.len()).max().unwrap_or(8).max(8);
    let mut screen = tty.then(|| {
        let columns = console::Term::stdout().size().1 as usize;
        LiveScreen::new(std::io::stdout(), columns, DRAW_INTERVAL)
    });
    let started = Instant::now();
    if !options.json && !tty {
        outln!("run r{run_id} of `{}`: {} jobs", run.name, run.jobs.len());
    }
    let mut last_states: Vec<Option<RunJobState>> = vec![None; run.jobs.len()];
    let mut names: HashMap<u64, String> = HashMap::new();
    // The latest step line of each job (its system output), shown in the table.
    let mut steps: HashMap<String, String> = HashMap::new();
    // The last output chunk shown per job id.
    let mut shown: HashMap<u64, u64> = HashMap::new();
    let mut tick = tokio::time::interval(DRAW_INTERVAL);
    let mut last_refresh = Instant::now();
    // Installed before the submit by `vk run`; here for `vk demo`.
    crate::interrupt::install()?;
    let mut interrupted = false;
    let mut interrupts = 0;
    // Why the connection was lost, until it is made again.
    let mut lost: Option<String> = None;
    loop {
        if let Some(why) = lost.take() {
            notice(&mut screen, say_lost(&why, &format!("run r{run_id}")));
            let again = |client: Client| async move {
                // Subscribe before fetching, so no output falls in between.
                let events = subscribe(&client, options).await?;
                Ok((client.run(run_id).await?, events))
            };
            let Some((new_client, (new_run, new_events))) = reconnect_then(&reconnect, again).await else {
                return Err(gave_up(
                    &format!("run r{run_id}"),
                    &format!("vk status r{run_id}"),
                    &format!("vk cancel r{run_id}"),
                ));
            };
            notice(
                &mut screen,
                format!("vk: reconnected; following run r{run_id} again"),
            );
            (client, run, events) = (new_client, new_run, new_events);
            last_refresh = Instant::now();
            if interrupted {
                // The cancel may have been lost with the connection; a
                // refusal means the run has ended (the next refresh says how).
                if let Err(err) = client.cancel_run(run_id).await {
                    tracing::debug!("cancel again after reconnecting: {err}");
                }
            }
            if options.logs {
                show_stored(&client, &run, &mut shown, &mut screen, options.json).await;
            }
        }
        for job in &run.jobs {
            if let Some(id) = job.job_id {
                names.insert(id, job.name.clone());
            }
        }
        if let Some(screen) = screen.as_mut() {
            let table = run
                .jobs
                .iter()
                .map(|job| job_line(job, width, steps.get(&job.name)))
                .collect();
            screen.set_table(table);
            draw(screen.poll(Instant::now()));
        } else {
            for (i, job) in run.jobs.iter().enumerate() {
                if last_states[i] == Some(job.state) {
                    continue;
                }
                last_states[i] = Some(job.state);
                if options.json {
                    let line = serde_json::json!({
                        "type": "job", "run_id": run_id, "name": job.name, "state": job.state,
                        "job_id": job.job_id, "runner": job.runner, "exit_code": job.exit_code,
                        "reason": job.reason,
                    });
                    outln!("{line}");
                } else {
                    outln!("{}", job_line(job, width, None));
                }
            }
        }
        if run.state.is_terminal() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            event = async { match events.as_mut() { Some(e) => e.recv().await, None => std::future::pending().await } } => {
                match event {
                    Some(Ok(event)) => {
                        if let EventBody::Log { stream, data, seq } = &event.body {
                            if shown.get(&event.job_id).is_some_and(|last| seq <= last) {
                                // Already shown (replayed after a reconnect).
                                continue;
                            }
                            if !names.contains_key(&event.job_id) {
                                // A job released since the last refresh: learn its name.
                                match client.run(run_id).await {
                                    Ok(fresh) => run = fresh,
                                    Err(err) if is_loss(&err) => {
                                        lost = Some(err.to_string());
                                        continue;
                                    }
                                    Err(err) => return Err(err.into()),
                                }
                                last_refresh = Instant::now();
                                for job in &run.jobs {
                                    if let Some(id) = job.job_id {
                                        names.insert(id, job.name.clone());
                                    }
                                }
                            }
                            if let Some(name) = names.get(&event.job_id) {
                                if *stream == OutputStream::System {
                                    if let Some(last) = String::from_utf8_lossy(data).lines().last() {
                                        steps.insert(name.clone(), last.trim().to_owned());
                                    }
                                }
                                shown.insert(event.job_id, *seq);
                                show_chunk(&mut screen, name, event.job_id, *stream, data, options.json);
                            }
                        }
                    }
                    Some(Err(err)) if is_loss(&err) => lost = Some(err.to_string()),
                    None => lost = Some("the connection ended".to_owned()),
                    // The subscription was refused: keep polling the run.
                    Some(Err(_)) => events = None,
                }
                if lost.is_some() || last_refresh.elapsed() < REFRESH_INTERVAL {
                    continue;
                }
            }
            _ = crate::interrupt::next(&mut interrupts), if !interrupted => {
                interrupted = true;
                notice(&mut screen, format!("vk: cancelling run r{run_id}…"));
                match client.cancel_run(run_id).await {
                    // Sent again once reconnected.
                    Err(err) if is_loss(&err) => lost = Some(err.to_string()),
                    Err(err) => return Err(err.into()),
                    Ok(()) => {}
                }
            }
        }
        if lost.is_none() && last_refresh.elapsed() >= REFRESH_INTERVAL {
            match client.run(run_id).await {
                Ok(fresh) => run = fresh,
                Err(err) if is_loss(&err) => lost = Some(err.to_string()),
                Err(err) => return Err(err.into()),
            }
            last_refresh = Instant::now();
        }
    }
    if options.logs {
        // Output still on its way when the run ended (fast jobs end before
        // their last chunks reach this subscriber).
        show_stored(&client, &run, &mut shown, &mut screen, options.json).await;
    }
    if let Some(screen) = screen.as_mut() {
        let table = run.jobs.iter().map(|job| job_line(job, width, None)).collect();
        screen.set_table(table);
        draw(screen.finish(Instant::now()));
    }
    let total = started.elapsed();
    if options.json {
        let line =
            serde_json::json!({"type": "run", "run_id": run_id, "state": run.state, "message": run.message});
        outln!("{line}");
    } else {
        print_summary(&run, total);
        for job in run
            .jobs
            .iter()
            .filter(|j| j.state == RunJobState::Failed && !j.allow_failure)
        {
            if let Some(job_id) = job.job_id {
                print_tail(&client, job_id, &job.name).await;
            }
        }
    }
    Ok((exit_code(run.state), run))
}

/// Replays each job's stored output after the last chunk `shown` of it.
async fn show_stored(
    client: &Client,
    run: &RunInfo,
    shown: &mut HashMap<u64, u64>,
    screen: &mut Option<LiveScreen<std::io::Stdout>>,
    json: bool,
) {
    for job in &run.jobs {
        let Some(job_id) = job.job_id else { continue };
        let Ok(mut replay) = client.watch(Some(job_id), true, true).await else {
            continue;
        };
        while let Some(Ok(event)) = replay.recv().await {
            match event.body {
                EventBody::Log { stream, seq, data } if shown.get(&job_id).is_none_or(|last| seq > *last) => {
                    shown.insert(job_id, seq);
                    show_chunk(screen, &job.name, job_id, stream, &data, json);
                }
                EventBody::ReplayDone => break,
                _ => {}
            }
        }
    }
}

/// A line from `vk` itself: above the live table, or on stderr.
fn notice(screen: &mut Option<LiveScreen<std::io::Stdout>>, line: String) {
    match screen.as_mut() {
        Some(screen) => screen.log("", line),
        None => eprintln!("{line}"),
    }
}

/// The exit code of `vk run` (see the README's table): 0 succeeded, 130
/// cancelled (by Ctrl-C here or by anyone), 124 timed out, 1 otherwise.
pub fn exit_code(state: RunState) -> ExitCode {
    match state {
        RunState::Succeeded => ExitCode::SUCCESS,
        RunState::Cancelled => ExitCode::from(130),
        RunState::TimedOut => ExitCode::from(124),
        _ => ExitCode::from(1),
    }
}

/// Shows one chunk of a job's output: on the live screen, or as lines.
fn show_chunk(
    screen: &mut Option<LiveScreen<std::io::Stdout>>,
    name: &str,
    job_id: u64,
    stream: OutputStream,
    data: &[u8],
    json: bool,
) {
    let lines = log_lines(name, job_id, stream, data, json);
    match screen.as_mut() {
        Some(screen) => {
            for line in lines {
                screen.log(name, line);
            }
            draw(screen.poll(Instant::now()));
        }
        None => lines.iter().for_each(|line| outln!("{line}")),
    }
}

/// A failed terminal write: a closed pipe ends `vk` quietly, like any other output.
fn draw(result: std::io::Result<()>) {
    if let Err(err) = result {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
    }
}

/// One chunk of a job's output as display lines: `[name] line`, system lines
/// (step names, durations, markers) set apart; JSON lines with `--json`.
fn log_lines(name: &str, job_id: u64, stream: OutputStream, data: &[u8], json: bool) -> Vec<String> {
    let text = String::from_utf8_lossy(data);
    text.lines()
        .map(|line| {
            if json {
                serde_json::json!({"type": "log", "name": name, "job_id": job_id, "stream": stream, "line": line})
                    .to_string()
            } else if stream == OutputStream::System {
                format!("{} {}", style(format!("[{name}]")).blue(), style(format!("▸ {line}")).dim())
            } else {
                format!("{} {line}", style(format!("[{name}]")).blue())
            }
        })
        .collect()
}

fn print_summary(run: &RunInfo, total: Duration) {
    let verdict = match run.state {
        RunState::Succeeded => style("succeeded").green().bold(),
        other => style(other.as_str()).red().bold(),
    };
    outln!();
    outln!(
        "run r{} `{}` {verdict} in {}: {}",
        run.run_id,
        run.name,
        format_ms(total.as_millis() as u64),
        run.message
    );
    for job in &run.jobs {
        let took = elapsed(job);
        outln!(
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
