//! A point-in-time summary of the core's state, for health checks and the
//! gauges of `/metrics`.

use std::collections::BTreeMap;

use super::Core;

/// Counts describing the core's state now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreSnapshot {
    /// Jobs by state name (queued, running, …), among the jobs held in memory.
    pub jobs_by_state: BTreeMap<&'static str, u64>,
    /// Queued jobs by priority.
    pub queued_by_priority: BTreeMap<u8, u64>,
    /// Runners by state name (idle, busy, draining, lost).
    pub runners_by_state: BTreeMap<&'static str, u64>,
    /// Runs by state name.
    pub runs_by_state: BTreeMap<&'static str, u64>,
}

impl Core {
    pub(super) fn snapshot(&self) -> CoreSnapshot {
        let mut snap = CoreSnapshot::default();
        for job in self.jobs.values() {
            *snap.jobs_by_state.entry(job.state().as_str()).or_default() += 1;
            if job.state() == valkyrie::message::JobState::Queued {
                *snap.queued_by_priority.entry(job.spec.priority).or_default() += 1;
            }
        }
        for runner in self.runners.values() {
            *snap.runners_by_state.entry(runner.state().as_str()).or_default() += 1;
        }
        for run in self.runs.values() {
            *snap.runs_by_state.entry(run.state().as_str()).or_default() += 1;
        }
        snap
    }
}
