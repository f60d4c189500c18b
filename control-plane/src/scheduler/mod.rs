//! The scheduler: decides which queued job runs on which runner.
//!
//! It is **pure**: no I/O, no clock, no async, no randomness. It holds a
//! view of the runners and the queue, and [`Scheduler::schedule`] turns
//! them into a plan, a list of [`Assignment`]s. Another part of the
//! control plane (the dispatcher) sends the plan to the runners and feeds
//! back what happened: runners coming and going, jobs finishing. The
//! caller passes the time in (`now_ms`), so the same inputs always give
//! the same plan, and tests run on a virtual clock.
//!
//! # Pipeline of one pass
//!
//! ```text
//!   queue (lanes: one per project × base priority, FIFO inside)
//!      │
//!      ▼
//!   RANK ──── heap of lane heads, best first:
//!      │        effective priority (base + aging)  ▸ higher first
//!      │        project running / weight            ▸ lower first
//!      │        project virtual time                ▸ lower first
//!      │        enqueue time, arrival order         ▸ older first
//!      ▼
//!   FEASIBLE ─ runner groups (one per distinct tag set) whose tags ⊇ the
//!      │       job's required tags; memoised per required tag set per pass
//!      ▼
//!   PICK ───── in those groups, the runner with the most free slots,
//!      │       fewest-tag group first (keep special runners for special jobs)
//!      │
//!      ├─ found ──▶ Assignment: slot taken, project charged, job leaves queue
//!      └─ none ───▶ job skipped for this pass (it does not block the jobs
//!                   behind it), and its tag set is remembered as full
//!
//!   stop when every runner is full or every job was visited once
//! ```
//!
//! # Vocabulary
//!
//! - **Runner slot**: capacity for one job on a runner ([`RunnerSlot`]).
//! - **Schedulable**: a runner that is [`Availability::Ready`]; draining
//!   and lost runners keep their running jobs but get no new ones.
//! - **Group**: all runners with exactly the same tag set. Feasibility is
//!   checked per group, never per runner.
//! - **Eligible**: a runner (or group) whose tags are a superset of the
//!   job's required tags.
//! - **Lane**: the queued jobs of one project at one base priority, FIFO.
//! - **Effective priority**: base priority + 1 per `aging_interval_ms`
//!   waited, so low-priority work cannot starve.
//! - **Fair share**: within an effective priority, the project with the
//!   fewest running jobs per unit of weight goes first; ties go to the
//!   project that received the least weighted service (virtual time).
//! - **Plan**: the assignments returned by one [`Scheduler::schedule`].
//! - **Pending reason**: why a job still waits ([`PendingReason`]),
//!   computed only when asked.
//!
//! # Guarantees
//!
//! Checked by the property tests in `tests.rs`:
//! - a runner never gets more jobs than it has slots;
//! - a job only goes to a runner that has all its required tags and is
//!   schedulable;
//! - a job is assigned at most once: it leaves the queue when assigned;
//! - work conserving: after `schedule`, no queued job has a schedulable
//!   eligible runner with a free slot.

mod ids;
mod queue;
mod reason;
mod runners;
mod tags;
#[cfg(test)]
mod tests;

use foldhash::{HashMap, HashMapExt};

pub use ids::{JobId, RunnerId};
pub use queue::QueuedJob;
pub use reason::{PartialMatch, PendingReason};
pub use runners::{Availability, RunnerSlot};
pub use tags::{TagId, TagInterner, TagSet};

use queue::{JobQueue, ProjectIdx};
use runners::{GroupIdx, RunnerIndex};

/// One decision of the plan: run `job` on `runner`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Assignment {
    /// The job to start.
    pub job: JobId,
    /// Where to start it.
    pub runner: RunnerId,
}

/// Scheduler settings.
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    aging_interval_ms: u64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            aging_interval_ms: 30_000,
        }
    }
}

impl SchedulerConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// A queued job gains one priority level per this many milliseconds of
    /// waiting. Default 30 000 (30 s); 0 disables aging.
    pub fn aging_interval_ms(mut self, aging_interval_ms: u64) -> Self {
        self.aging_interval_ms = aging_interval_ms;
        self
    }
}

/// Why [`Scheduler::enqueue`] refused a job. Both are caller mistakes: the
/// same job id was submitted twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueJobError {
    /// The job is already waiting; cancel it first to requeue it.
    #[error("{0} is already queued; remove it before enqueueing it again")]
    AlreadyQueued(JobId),
    /// The job is assigned and not reported finished; report it with
    /// `job_finished` before enqueueing it again (or retry under a new id).
    #[error("{0} is assigned to {1}; report it finished before enqueueing it again")]
    AlreadyRunning(JobId, RunnerId),
}

/// A job the scheduler assigned and that has not finished.
#[derive(Debug, Clone, Copy)]
struct RunningJob {
    /// `None` once its runner was removed: the slot went with the runner,
    /// and a new runner reusing the id must not have a slot freed by it.
    runner: Option<RunnerId>,
    /// The runner it was assigned to, for reporting.
    assigned_to: RunnerId,
    project: ProjectIdx,
}

/// The scheduler state: runners, queued jobs, running jobs, fair-share usage.
#[derive(Debug)]
pub struct Scheduler {
    tags: TagInterner,
    runners: RunnerIndex,
    queue: JobQueue,
    /// Invariant: a job is never both here and in `queue`.
    running: HashMap<JobId, RunningJob>,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new(SchedulerConfig::default())
    }
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            tags: TagInterner::new(),
            runners: RunnerIndex::default(),
            queue: JobQueue::new(config.aging_interval_ms),
            running: HashMap::new(),
        }
    }

    /// The tag names known so far.
    pub fn tags(&self) -> &TagInterner {
        &self.tags
    }

    /// Interns tag names into a [`TagSet`] for runners and jobs of this
    /// scheduler.
    pub fn tag_set<I, S>(&mut self, names: I) -> TagSet
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.tags.set(names)
    }

    // ----- runners ---------------------------------------------------------

    /// Adds a runner (ready, no slot used), or changes the tags and slot
    /// count of a known one, keeping its used slots and availability.
    pub fn upsert_runner(&mut self, id: RunnerId, tags: TagSet, slots: u32) {
        self.runners.upsert(id, tags, slots);
    }

    /// Forgets a runner. The jobs it was running stay counted against
    /// their project until reported with [`Scheduler::job_finished`].
    /// `O(running jobs)`.
    pub fn remove_runner(&mut self, id: RunnerId) -> Option<RunnerSlot> {
        let runner = self.runners.remove(id)?;
        for job in self.running.values_mut().filter(|j| j.runner == Some(id)) {
            job.runner = None;
        }
        Some(runner)
    }

    /// Marks a runner ready, draining or lost; false if unknown.
    pub fn set_availability(&mut self, id: RunnerId, availability: Availability) -> bool {
        self.runners.set_availability(id, availability)
    }

    /// The scheduler's view of a runner.
    pub fn runner(&self, id: RunnerId) -> Option<&RunnerSlot> {
        self.runners.get(id)
    }

    /// Every known runner, in no particular order.
    pub fn runners(&self) -> impl Iterator<Item = &RunnerSlot> {
        self.runners.iter()
    }

    /// Free slots on schedulable runners.
    pub fn free_slots(&self) -> u64 {
        self.runners.total_free()
    }

    // ----- jobs ------------------------------------------------------------

    /// Sets a project's fair-share weight (default 1; 0 is taken as 1).
    pub fn set_project_weight(&mut self, project: &str, weight: u32) {
        self.queue.set_weight(project, weight);
    }

    /// Jobs of `project` assigned and not finished.
    pub fn project_running(&self, project: &str) -> u64 {
        self.queue
            .projects
            .iter()
            .find(|p| p.name == project)
            .map_or(0, |p| p.running)
    }

    /// Puts a job in the queue.
    pub fn enqueue(&mut self, job: QueuedJob) -> Result<(), EnqueueJobError> {
        if self.queue.contains(job.id) {
            return Err(EnqueueJobError::AlreadyQueued(job.id));
        }
        if let Some(running) = self.running.get(&job.id) {
            return Err(EnqueueJobError::AlreadyRunning(job.id, running.assigned_to));
        }
        self.queue.push(job);
        Ok(())
    }

    /// Takes a job out of the queue (cancelled before it started); false
    /// if it was not queued.
    pub fn remove_job(&mut self, id: JobId) -> bool {
        self.queue.remove(id).is_some()
    }

    /// Reports that an assigned job ended (success, failure, cancel, or its
    /// runner was lost): frees its slot and its project's usage. Returns
    /// its assignment, or `None` if the scheduler did not have it running.
    ///
    /// This is the only way slots are freed, so the runner's `used` count
    /// and the running jobs cannot disagree.
    pub fn job_finished(&mut self, id: JobId) -> Option<Assignment> {
        let job = self.running.remove(&id)?;
        if let Some(runner) = job.runner {
            let known = self.runners.release_slot(runner);
            debug_assert!(known, "running job on unknown {runner}");
        }
        self.queue.discharge(job.project);
        Some(Assignment {
            job: id,
            runner: job.assigned_to,
        })
    }

    /// Records a job that is already running on `runner` (an attempt the
    /// runner re-reported after the control plane restarted): it holds a
    /// slot and counts towards its project's share exactly as if it had been
    /// assigned here. False if the job is already known or the runner is not.
    pub fn restore_running(&mut self, job: JobId, project: &str, runner: RunnerId) -> bool {
        if self.running.contains_key(&job) || self.queue.contains(job) || self.runners.get(runner).is_none() {
            return false;
        }
        self.runners.take_slot(runner);
        let project = self.queue.project(project);
        self.queue.charge(project);
        self.running.insert(
            job,
            RunningJob {
                runner: Some(runner),
                assigned_to: runner,
                project,
            },
        );
        true
    }

    /// Jobs waiting.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Jobs assigned and not finished.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Whether a job is waiting in the queue.
    pub fn is_queued(&self, id: JobId) -> bool {
        self.queue.contains(id)
    }

    // ----- decisions -------------------------------------------------------

    /// Assigns as many queued jobs as fit, best ranked first (see the
    /// module doc), and returns the plan. Assigned jobs leave the queue and
    /// hold a slot until [`Scheduler::job_finished`].
    ///
    /// Cost: `O(visited jobs × (log lanes + eligible groups))`, where a job
    /// is visited at most once and the pass ends as soon as no slot is free.
    pub fn schedule(&mut self, now_ms: u64) -> Vec<Assignment> {
        let mut plan = Vec::new();
        if self.runners.total_free() == 0 || self.queue.len() == 0 {
            return plan;
        }
        let _span = tracing::debug_span!("schedule", now_ms, queued = self.queue.len()).entered();
        // Eligible groups per distinct requirement, computed once per pass:
        // most jobs share a few tag sets. Group indices are stable during a
        // pass because assignments never add or remove groups. When a
        // requirement finds every eligible group full its list is emptied:
        // slots only get taken during a pass, so it stays full.
        let mut eligible: HashMap<TagSet, Vec<GroupIdx>> = HashMap::new();
        let mut pass = self.queue.pass(now_ms);
        while self.runners.total_free() > 0 {
            let Some(job_id) = pass.next(&self.queue) else {
                break;
            };
            let required = &self
                .queue
                .get(job_id)
                .expect("pass yields queued jobs")
                .job
                .required;
            if !eligible.contains_key(required) {
                eligible.insert(required.clone(), self.runners.eligible_groups(required));
            }
            let groups = eligible.get_mut(required).expect("inserted above");
            let target = self.runners.pick(groups);
            if target.is_none() {
                groups.clear();
            }
            if let Some(runner) = target {
                self.assign(job_id, runner, &mut plan);
            }
            pass.advance(&self.queue);
        }
        tracing::debug!(
            assigned = plan.len(),
            still_queued = self.queue.len(),
            "scheduling pass done"
        );
        plan
    }

    fn assign(&mut self, job: JobId, runner: RunnerId, plan: &mut Vec<Assignment>) {
        let entry = self.queue.remove(job).expect("assigning a queued job");
        // Keeps "never more jobs than slots": `pick` only returns runners
        // from the free sets, which hold runners with a free slot.
        let taken = self.runners.take_slot(runner);
        debug_assert!(taken);
        self.queue.charge(entry.project);
        let previous = self.running.insert(
            job,
            RunningJob {
                runner: Some(runner),
                assigned_to: runner,
                project: entry.project,
            },
        );
        debug_assert!(previous.is_none(), "{job} assigned twice");
        tracing::debug!(job_id = job.0, runner_id = runner.0, project = %entry.job.project, "assigned");
        plan.push(Assignment { job, runner });
    }

    /// Why a queued job is not running yet, as of `now_ms`; `None` if the
    /// job is not queued. Costs a scan of runners and queue: meant for
    /// people asking, not for every pass.
    pub fn pending_reason(&self, job: JobId, now_ms: u64) -> Option<PendingReason> {
        let entry = self.queue.get(job)?;
        Some(reason::explain(
            entry,
            &self.queue,
            &self.runners,
            &self.tags,
            now_ms,
        ))
    }
}
