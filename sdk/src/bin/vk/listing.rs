//! Human-readable tables for `vk jobs`, `vk runners` and `vk runs`.

use valkyrie_sdk::{Client, JobInfo, RunInfo, RunJobInfo, RunnerInfo};

use crate::out::outln;

pub fn print_jobs(jobs: &[JobInfo]) {
    outln!(
        "{:<8} {:<10} {:<24} {:<16} {:>4}  REASON",
        "ID",
        "STATE",
        "NAME",
        "RUNNER",
        "EXIT"
    );
    for j in jobs {
        let exit = j.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
        outln!(
            "{:<8} {:<10} {:<24} {:<16} {:>4}  {}",
            j.job_id,
            j.state.as_str(),
            truncate(&j.name, 24),
            j.runner.as_deref().unwrap_or("-"),
            exit,
            j.reason
        );
    }
}

pub fn print_runners(runners: &[RunnerInfo]) {
    outln!(
        "{:<6} {:<20} {:<9} {:>9}  {:<12} TAGS",
        "ID",
        "NAME",
        "STATE",
        "BUSY",
        "OS/ARCH"
    );
    for r in runners {
        outln!(
            "{:<6} {:<20} {:<9} {:>9}  {:<12} {}",
            r.runner_id,
            truncate(&r.name, 20),
            r.state.as_str(),
            format!("{}/{}", r.busy, r.slots),
            format!("{}/{}", r.os, r.arch),
            r.tags.join(",")
        );
    }
}

pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let cut: String = s.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

pub fn print_runs(runs: &[RunInfo]) {
    outln!(
        "{:<8} {:<10} {:<24} {:>5} {:>9}  MESSAGE",
        "ID",
        "STATE",
        "PIPELINE",
        "JOBS",
        "DURATION"
    );
    for r in runs {
        let duration = r
            .finished_at_ms
            .map(|f| format_ms(f.saturating_sub(r.created_at_ms)))
            .unwrap_or_else(|| "-".into());
        outln!(
            "{:<8} {:<10} {:<24} {:>5} {:>9}  {}",
            format!("r{}", r.run_id),
            r.state.as_str(),
            truncate(&r.name, 24),
            r.jobs.len(),
            duration,
            r.message
        );
    }
}

/// The audit log, newest first: when (UTC), who, what, to what.
pub fn print_audit(entries: &[valkyrie_sdk::AuditEntry]) {
    println!(
        "{:<6} {:<20} {:<28} {:<17} {:<12}  DETAIL",
        "ID", "WHEN (UTC)", "ACTOR", "ACTION", "TARGET"
    );
    for e in entries {
        let when = humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.at_ms),
        )
        .to_string();
        println!(
            "{:<6} {:<20} {:<28} {:<17} {:<12}  {}",
            e.id,
            when.trim_end_matches('Z').replace('T', " "),
            truncate(&format!("{}:{}", e.actor_kind, e.actor), 28),
            e.action,
            e.target,
            e.detail
        );
    }
}

/// The control planes of a group: the lease's expiry and each server's
/// last report, relative to now (by this machine's clock).
pub fn print_servers(servers: &[valkyrie_sdk::ServerInfo]) {
    let now_ms = now_ms();
    let relative = |at_ms: u64| {
        if at_ms == 0 {
            "-".to_owned()
        } else if at_ms >= now_ms {
            format!("in {}", format_ms(at_ms - now_ms))
        } else {
            format!("{} ago", format_ms(now_ms - at_ms))
        }
    };
    outln!(
        "{:<18} {:<8} {:>5}  {:<14} {:<14} URIS",
        "SERVER",
        "ROLE",
        "EPOCH",
        "LEASE EXPIRES",
        "SEEN"
    );
    for s in servers {
        let role = match s.role {
            valkyrie_sdk::ServerRole::Leader => "leader",
            valkyrie_sdk::ServerRole::Standby => "standby",
            valkyrie_sdk::ServerRole::Silent => "silent",
        };
        let mut uris = s.uris.join(",");
        if !s.http_url.is_empty() {
            uris = format!("{uris} {}", s.http_url);
        }
        outln!(
            "{:<18} {:<8} {:>5}  {:<14} {:<14} {}",
            truncate(&s.server_id, 18),
            role,
            s.epoch,
            relative(s.lease_expires_ms),
            relative(s.seen_at_ms),
            uris
        );
    }
}

/// `1.2s`, `3m04s`.
pub fn format_ms(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

pub fn print_run_jobs(run: &RunInfo) {
    outln!(
        "{:<32} {:<10} {:<8} {:<16} {:>4} {:>9}  REASON",
        "JOB",
        "STATE",
        "ID",
        "RUNNER",
        "EXIT",
        "DURATION"
    );
    for j in &run.jobs {
        outln!(
            "{:<32} {:<10} {:<8} {:<16} {:>4} {:>9}  {}",
            truncate(&j.name, 32),
            j.state.as_str(),
            j.job_id.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            j.runner.as_deref().unwrap_or("-"),
            j.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
            job_duration_ms(j, now_ms()).map_or_else(|| "-".into(), format_ms),
            j.reason
        );
    }
}

/// The local clock, in milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How long a job ran (so far, if it still runs), once it started.
pub fn job_duration_ms(job: &RunJobInfo, now_ms: u64) -> Option<u64> {
    let started = job.started_at_ms?;
    Some(job.finished_at_ms.unwrap_or(now_ms).saturating_sub(started))
}

/// `vk runs --json`: a run as the protocol names its fields (the REST API
/// uses the same names), with `duration_ms` for the run (once finished) and
/// each job (once started; so far, while it runs).
pub fn run_json(run: &RunInfo) -> serde_json::Value {
    let mut value = serde_json::to_value(run).expect("a RunInfo serializes");
    let now = now_ms();
    value["duration_ms"] = run
        .finished_at_ms
        .map(|f| f.saturating_sub(run.created_at_ms))
        .into();
    if let Some(jobs) = value.get_mut("jobs").and_then(|j| j.as_array_mut()) {
        for (json, job) in jobs.iter_mut().zip(&run.jobs) {
            json["duration_ms"] = job_duration_ms(job, now).into();
        }
    }
    value
}

/// `vk status --json`: [`run_json`], each job also with its current
/// `attempt` (0 before the first assignment).
pub async fn run_status_json(client: &Client, run: &RunInfo) -> anyhow::Result<serde_json::Value> {
    let mut value = run_json(run);
    if let Some(jobs) = value.get_mut("jobs").and_then(|j| j.as_array_mut()) {
        for (json, job) in jobs.iter_mut().zip(&run.jobs) {
            let (attempt, steps) = match job.job_id {
                Some(id) => {
                    let (info, steps) = client.job_with_steps(id).await?;
                    (info.attempt, steps_json(info.state, &steps))
                }
                None => (0, Vec::new()),
            };
            json["attempt"] = attempt.into();
            json["steps"] = steps.into();
        }
    }
    Ok(value)
}

/// A job's steps for `--json`: name, state (`pending` and `running` before
/// the runner reports an outcome), exit_code, duration_ms; the REST API's
/// `steps` have the same shape.
fn steps_json(job: valkyrie_sdk::JobState, steps: &[valkyrie_sdk::StepInfo]) -> Vec<serde_json::Value> {
    let states = valkyrie_sdk::StepInfo::states(job, steps);
    steps
        .iter()
        .zip(states)
        .map(|(step, state)| {
            serde_json::json!({
                "name": step.name,
                "state": state,
                "exit_code": step.exit_code,
                "duration_ms": step.duration_ms,
            })
        })
        .collect()
}
