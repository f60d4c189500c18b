//! Cron schedules of projects: which slot is due, and the task that fires
//! due slots on the leader.
//!
//! A slot is fired at most once, even across a restart or a change of
//! leader: the core claims it (stores it as the schedule's last slot)
//! before the task reads the pipeline file, and the run it starts carries
//! the delivery key `schedule:ID:SLOT`, which the core remembers in the
//! same turn as it starts the run. A slot missed while no server led is
//! fired late, once; older missed slots are skipped, as cron daemons do.

use std::time::Duration;

use chrono::{DateTime, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde::{Deserialize, Serialize};

use super::mirror::Mirrors;
use super::start::{start_run, StartError};
use super::{Project, Trigger};
use crate::audit::Actor;
use crate::core::{Command, CoreHandle, ProjectCommand};

/// Schedules a project may have.
pub const MAX_SCHEDULES_PER_PROJECT: usize = 20;

/// How often the leader looks for due slots: the finest cron granularity
/// (6-field expressions name seconds).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A cron schedule: runs a project's branch in each slot of `cron` (UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique in the server.
    pub id: u64,
    /// Cron expression: 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The branch each run checks out.
    pub branch: String,
    /// Variables every job of its runs gets.
    #[serde(default)]
    pub variables: Vec<(String, String)>,
    /// When it was added (ms since the Unix epoch); no slot before it fires.
    pub created_at_ms: u64,
    /// The last slot claimed (fired or skipped), ms since the Unix epoch;
    /// 0 before the first.
    #[serde(default)]
    pub last_slot_ms: u64,
}

/// Parses a cron expression: 5 fields (minute first) or 6 (second first),
/// in UTC; `@daily` and the other nicknames too. One that never fires
/// (`0 0 30 2 *`) is refused.
pub fn parse_cron(text: &str) -> Result<Cron, String> {
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(text.trim())
        .map_err(|e| format!("cron expression `{text}` is not valid: {e}"))?;
    let epoch = DateTime::<Utc>::UNIX_EPOCH;
    cron.find_next_occurrence(&epoch, false)
        .map_err(|_| format!("cron expression `{text}` never fires"))?;
    Ok(cron)
}

fn to_time(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(i64::try_from(ms).ok()?)
}

fn to_ms(time: DateTime<Utc>) -> u64 {
    u64::try_from(time.timestamp_millis()).unwrap_or(0)
}

impl Schedule {
    fn cron(&self) -> Option<Cron> {
        parse_cron(&self.cron).ok()
    }

    /// The first slot of `cron` after the later of its creation and its
    /// last slot.
    fn next_of(&self, cron: &Cron) -> Option<u64> {
        let after = to_time(self.created_at_ms.max(self.last_slot_ms))?;
        cron.find_next_occurrence(&after, false).ok().map(to_ms)
    }

    /// The first slot after the later of its creation and its last slot.
    pub fn next_ms(&self) -> Option<u64> {
        self.next_of(&self.cron()?)
    }

    /// The slot to fire at `now_ms`, if one came since its last: the latest
    /// slot not after `now_ms` (older missed slots are skipped).
    pub fn due(&self, now_ms: u64) -> Option<u64> {
        let cron = self.cron()?;
        let next = self.next_of(&cron)?;
        if next > now_ms {
            return None;
        }
        let latest = cron
            .find_previous_occurrence(&to_time(now_ms)?, true)
            .ok()
            .map(to_ms)
            .unwrap_or(next);
        Some(latest.max(next))
    }

    /// What clients see.
    pub fn info(&self, project: &str) -> valkyrie::message::ScheduleInfo {
        valkyrie::message::ScheduleInfo {
            id: self.id,
            project: project.to_owned(),
            cron: self.cron.clone(),
            branch: self.branch.clone(),
            variables: self.variables.clone(),
            last_slot_ms: self.last_slot_ms,
            next_ms: self.next_ms().unwrap_or(0),
        }
    }
}

/// A slot the core claimed for the task to fire.
#[derive(Debug, Clone)]
pub struct DueSlot {
    /// The schedule's project, as it is now.
    pub project: Project,
    /// The schedule.
    pub schedule: Schedule,
    /// The slot (ms since the Unix epoch).
    pub slot_ms: u64,
}

/// Fires due slots until the core stops: every [`CHECK_INTERVAL`] the core
/// claims the due slots, and each is started off the core (a git fetch
/// and a validation may take a while), one after the other.
pub async fn run(core: CoreHandle) {
    let mut ticks = tokio::time::interval(CHECK_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(due) = core
            .call(|reply| Command::Project(ProjectCommand::ClaimDue(reply)))
            .await
        else {
            return;
        };
        for slot in due {
            fire(&core, core.mirrors(), slot).await;
        }
    }
}

async fn fire(core: &CoreHandle, mirrors: &Mirrors, slot: DueSlot) {
    let DueSlot {
        project,
        schedule,
        slot_ms,
    } = slot;
    let git_ref = format!("refs/heads/{}", schedule.branch);
    let sha = match mirrors.resolve(&project, &git_ref).await {
        Ok(sha) => sha,
        Err(err) => {
            tracing::warn!(project = %project.name, schedule = schedule.id, %err, "schedule skipped: its branch could not be read");
            return;
        }
    };
    let trigger = Trigger {
        project: project.name.clone(),
        repository: project.repo.clone(),
        event: "schedule".into(),
        git_ref,
        sha,
        branch: schedule.branch.clone(),
        tag: String::new(),
        pr_number: None,
        variables: schedule.variables.clone(),
        depth: 1,
        delivery: format!("schedule:{}:{slot_ms}", schedule.id),
    };
    let actor = Actor::server();
    match start_run(core, mirrors, Some(actor), &project, trigger).await {
        Ok(started) => tracing::info!(
            project = %project.name,
            schedule = schedule.id,
            slot_ms,
            run_id = started.run_id,
            duplicate = started.duplicate,
            "schedule fired"
        ),
        Err(StartError::Rules(why)) => {
            tracing::info!(project = %project.name, schedule = schedule.id, %why, "schedule fired; the pipeline's rules start no run")
        }
        Err(err) => {
            tracing::warn!(project = %project.name, schedule = schedule.id, %err, "schedule fired; no run started")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(cron: &str, created_at_ms: u64, last_slot_ms: u64) -> Schedule {
        Schedule {
            id: 1,
            cron: cron.into(),
            branch: "main".into(),
            variables: vec![],
            created_at_ms,
            last_slot_ms,
        }
    }

    const MINUTE: u64 = 60_000;
    // 2026-11-30T00:00:00Z
    const T0: u64 = 1_795_996_800_000;

    #[test]
    fn expressions_are_checked() {
        assert!(parse_cron("0 3 * * *").is_ok());
        assert!(parse_cron("*/2 * * * * *").is_ok(), "seconds first");
        assert!(parse_cron("@daily").is_ok());
        assert!(parse_cron("0 3 * *").unwrap_err().contains("not valid"));
        assert!(parse_cron("61 * * * *").is_err());
        assert!(parse_cron("0 0 0 30 2 * 2030").is_err(), "no year field");
        assert!(parse_cron("0 0 30 2 *").unwrap_err().contains("never fires"));
    }

    #[test]
    fn the_latest_slot_fires_once_and_older_missed_slots_are_skipped() {
        let s = schedule("*/5 * * * *", T0, 0);
        assert_eq!(s.next_ms(), Some(T0 + 5 * MINUTE));
        assert_eq!(s.due(T0 + 4 * MINUTE), None, "not yet");
        assert_eq!(s.due(T0 + 5 * MINUTE), Some(T0 + 5 * MINUTE), "on the slot");
        assert_eq!(
            s.due(T0 + 17 * MINUTE),
            Some(T0 + 15 * MINUTE),
            "late: the latest slot"
        );
        let fired = schedule("*/5 * * * *", T0, T0 + 15 * MINUTE);
        assert_eq!(fired.due(T0 + 17 * MINUTE), None, "claimed already");
        assert_eq!(fired.due(T0 + 20 * MINUTE), Some(T0 + 20 * MINUTE));
        assert_eq!(fired.info("app").next_ms, T0 + 20 * MINUTE);
    }
}
