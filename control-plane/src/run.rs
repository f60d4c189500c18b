//! A pipeline run: which of its jobs are released, waiting or skipped, and
//! when the run is over. Pure decisions, no I/O: the core releases what
//! [`Run::advance`] returns and reports final job states back.
//!
//! ```text
//!   waiting --deps final, condition met--> released --> (job states) --> final
//!      |  |
//!      |  +--deps final, condition met, `when: manual`--> manual --play--> released
//!      |
//!      +--deps final, condition not met, or run cancelled--> skipped
//!   (a job whose `if:` expression is false whatever its needs come to is
//!   skipped when the run is created)
//!
//!   run: running --every job final, skipped, manual or waiting for a manual job-->
//!        succeeded | failed --play--> running
//!        running --cancel--> (unfinished jobs cancelled, waiting skipped) --> cancelled
//!        running --timeout--> (likewise) --> timed_out
//! ```
//!
//! Fail-fast is derived from the slots, never stored: a leg of a
//! `fail_fast` matrix that failed cancels its running siblings and skips
//! its waiting ones; with the pipeline's `fail_fast`, a failed job does the
//! same to every `on_success` job of the run. Rebuilding a run from its
//! stored slots therefore decides exactly as before the restart.

use std::time::Instant;

use valkyrie::message::{JobState, RunInfo, RunJobInfo, RunJobState, RunState};
use valkyrie_pipeline::{Condition, Pipeline};

use crate::job::JobRecord;
use crate::scheduler::JobId;
use crate::store::{RunRow, SlotRow};

/// Where one pipeline job is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Slot {
    Waiting,
    /// `when: manual`, ready: waits to be played.
    Manual,
    /// Played: released by the next [`Run::advance`].
    Played,
    Released {
        job: JobId,
        state: JobState,
    },
    Skipped {
        reason: String,
        because_of_failure: bool,
    },
}

/// One run of a pipeline.
#[derive(Debug)]
pub struct Run {
    /// Id.
    pub id: u64,
    pipeline: Pipeline,
    slots: Vec<Slot>,
    state: RunState,
    message: String,
    created_at_ms: u64,
    finished_at_ms: Option<u64>,
    /// When the run-level timeout fires.
    pub deadline: Option<Instant>,
    ending: Option<RunState>,
    /// The pipeline file it came from, kept so the run can be stored and
    /// rebuilt after a restart.
    file_name: String,
    yaml: String,
    /// What started it, for a run from a project's repository; already
    /// applied to the jobs of `pipeline`.
    trigger: Option<crate::source::Trigger>,
    /// Job indices, each after everything it depends on: one pass of
    /// [`advance`](Self::advance) in this order decides every job that can
    /// be decided.
    order: Vec<usize>,
    /// What `if:` expressions read: the pipeline's `env` under the
    /// trigger's context and variables.
    vars: std::collections::HashMap<String, String>,
    /// Waiting jobs that wait (directly or not) only for manual jobs: the
    /// run can end without them. Derived by [`Run::advance`].
    blocked: Vec<bool>,
}

impl Run {
    /// A new run; call [`advance`](Self::advance) to get the first jobs.
    pub fn new(id: u64, pipeline: Pipeline, now_ms: u64, now: Instant) -> Self {
        let deadline =
            (pipeline.timeout_ms > 0).then(|| now + std::time::Duration::from_millis(pipeline.timeout_ms));
        let slots = vec![Slot::Waiting; pipeline.jobs.len()];
        let order = pipeline.dependency_order();
        Self {
            id,
            order,
            pipeline,
            slots,
            state: RunState::Running,
            message: String::new(),
            created_at_ms: now_ms,
            finished_at_ms: None,
            deadline,
            ending: None,
            file_name: String::new(),
            yaml: String::new(),
            trigger: None,
            vars: Default::default(),
            blocked: Vec::new(),
        }
        .with_vars()
    }

    /// Computes what `if:` expressions read.
    fn with_vars(mut self) -> Self {
        self.compute_vars();
        self
    }

    fn compute_vars(&mut self) {
        let mut vars: std::collections::HashMap<String, String> = self.pipeline.env.iter().cloned().collect();
        if let Some(trigger) = &self.trigger {
            vars.extend(trigger.variables(self.id, &self.pipeline.name));
        }
        self.vars = vars;
    }

    /// Records what started the run and gives it to every job.
    pub fn set_trigger(&mut self, trigger: crate::source::Trigger) {
        trigger.apply(self.id, &mut self.pipeline);
        self.trigger = Some(trigger);
        self.compute_vars();
    }

    /// Decides the rules that need no job to have run: refuses the run when
    /// `workflow: if` is false or every job's `if:` is, and otherwise
    /// skips the jobs whose `if:` is false whatever their needs come to.
    /// Call once, before the first [`advance`](Self::advance).
    pub fn apply_rules(&mut self) -> Result<(), String> {
        let vars = &self.vars;
        let lookup = |name: &str| vars.get(name).cloned();
        if let Some(rule) = &self.pipeline.workflow_rule {
            if !rule.eval_vars(&lookup) {
                return Err(format!("`workflow: if` is false: {rule}"));
            }
        }
        for (slot, job) in self.slots.iter_mut().zip(&self.pipeline.jobs) {
            if let Some(rule) = &job.rule {
                if rule.eval(&lookup, None) == Some(false) {
                    *slot = Slot::Skipped {
                        reason: format!("skipped by rules: `if: {rule}` is false"),
                        because_of_failure: false,
                    };
                }
            }
        }
        if !self.slots.is_empty() && self.slots.iter().all(|s| matches!(s, Slot::Skipped { .. })) {
            return Err("every job is skipped by its `if:` rules".into());
        }
        Ok(())
    }

    /// Plays manual job `name`: it is released by the next
    /// [`advance`](Self::advance). A run that ended with it waiting runs
    /// again.
    pub fn play(&mut self, name: &str) -> Result<(), crate::core::CoreError> {
        let Some(i) = self.pipeline.jobs.iter().position(|j| j.name == name) else {
            let hint = self
                .pipeline
                .jobs
                .iter()
                .zip(&self.slots)
                .filter(|(_, s)| **s == Slot::Manual)
                .map(|(j, _)| format!("`{}`", j.name))
                .collect::<Vec<_>>();
            return Err(crate::core::CoreError::NotFound(format!(
                "run {} has no job `{name}`{}",
                self.id,
                if hint.is_empty() {
                    String::new()
                } else {
                    format!("; its manual jobs: {}", hint.join(", "))
                }
            )));
        };
        match &self.slots[i] {
            Slot::Manual => {}
            Slot::Waiting if self.pipeline.jobs[i].manual && self.ending.is_none() => {
                return Err(crate::core::CoreError::Conflict(format!(
                    "job `{name}` is manual but still waits for the jobs it needs; play it once they end"
                )))
            }
            _ if !self.pipeline.jobs[i].manual => {
                return Err(crate::core::CoreError::Conflict(format!(
                    "job `{name}` of run {} is not a manual job",
                    self.id
                )))
            }
            other => {
                return Err(crate::core::CoreError::Conflict(format!(
                    "job `{name}` of run {} cannot be played: it is {}",
                    self.id,
                    match other {
                        Slot::Skipped { .. } => "skipped",
                        _ => "already played",
                    }
                )))
            }
        }
        if matches!(self.state, RunState::Cancelled | RunState::TimedOut) {
            return Err(crate::core::CoreError::Conflict(format!(
                "run {} was {}",
                self.id,
                self.state.as_str()
            )));
        }
        self.slots[i] = Slot::Played;
        if self.state.is_terminal() {
            self.state = RunState::Running;
            self.finished_at_ms = None;
            self.message.clear();
        }
        Ok(())
    }

    /// The first slots of a rerun of this (finished) run: everything
    /// (`failed_only` false), or only the jobs that failed, were cancelled,
    /// or were skipped because of a failure, with everything that waits
    /// for them; the others keep their results (their jobs).
    pub fn rerun_slots(&self, failed_only: bool) -> Result<Vec<SlotRow>, String> {
        if !self.state.is_terminal() {
            return Err(format!(
                "run {} is still running; wait for it to end or cancel it first",
                self.id
            ));
        }
        let mut again: Vec<bool> = self
            .slots
            .iter()
            .map(|s| {
                !failed_only
                    || !matches!(
                        s,
                        Slot::Released {
                            state: JobState::Succeeded,
                            ..
                        } | Slot::Skipped {
                            because_of_failure: false,
                            ..
                        }
                    )
            })
            .collect();
        if failed_only {
            if !self
                .slots
                .iter()
                .zip(&again)
                .any(|(s, &a)| a && !matches!(s, Slot::Manual | Slot::Waiting))
            {
                return Err(format!("run {} has no failed or cancelled job to rerun", self.id));
            }
            for &i in &self.order {
                if !again[i] && self.pipeline.dependencies(i).iter().any(|&d| again[d]) {
                    again[i] = true;
                }
            }
        }
        Ok(self
            .slots
            .iter()
            .zip(again)
            .map(|(slot, again)| match slot {
                // A job that runs again, or waited (manual ones too), waits.
                Slot::Released { .. } | Slot::Skipped { .. } if !again => slot.to_row(),
                _ => SlotRow::Waiting,
            })
            .collect())
    }

    /// Starts from `slots` (of [`rerun_slots`](Self::rerun_slots)) instead
    /// of every job waiting.
    pub fn set_slots(&mut self, slots: Vec<SlotRow>) {
        if slots.len() == self.slots.len() {
            self.slots = slots.into_iter().map(Slot::from_row).collect();
        }
    }

    /// The pipeline file it came from: name and text.
    pub fn source(&self) -> (&str, &str) {
        (&self.file_name, &self.yaml)
    }

    /// What started the run, if it came from a project's repository.
    pub fn trigger(&self) -> Option<&crate::source::Trigger> {
        self.trigger.as_ref()
    }

    /// Records the pipeline file the run came from.
    pub fn set_source(&mut self, file_name: &str, yaml: &str) {
        self.file_name = file_name.to_owned();
        self.yaml = yaml.to_owned();
    }

    /// The stored form.
    pub fn to_row(&self) -> RunRow {
        let deadline_ms =
            (self.pipeline.timeout_ms > 0).then(|| self.created_at_ms + self.pipeline.timeout_ms);
        RunRow {
            id: self.id,
            file_name: self.file_name.clone(),
            yaml: self.yaml.clone(),
            slots: self.slots.iter().map(Slot::to_row).collect(),
            state: self.state,
            message: self.message.clone(),
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms,
            ending: self.ending,
            deadline_ms,
            trigger: self.trigger.clone(),
        }
    }

    /// Rebuilds a stored run (its pipeline file is parsed again).
    pub fn from_row(row: RunRow, now_ms: u64, now: Instant) -> Result<Self, String> {
        let mut pipeline = valkyrie_pipeline::parse(&row.file_name, &row.yaml).map_err(|e| e.to_string())?;
        if let Some(trigger) = &row.trigger {
            trigger.apply(row.id, &mut pipeline);
        }
        if pipeline.jobs.len() != row.slots.len() {
            return Err(format!(
                "run {} has {} stored jobs but its pipeline has {}",
                row.id,
                row.slots.len(),
                pipeline.jobs.len()
            ));
        }
        let slots = row.slots.into_iter().map(Slot::from_row).collect();
        let deadline = row
            .deadline_ms
            .map(|d| now + std::time::Duration::from_millis(d.saturating_sub(now_ms)));
        Ok(Self {
            id: row.id,
            order: pipeline.dependency_order(),
            pipeline,
            slots,
            state: row.state,
            message: row.message,
            created_at_ms: row.created_at_ms,
            finished_at_ms: row.finished_at_ms,
            deadline,
            ending: row.ending,
            file_name: row.file_name,
            yaml: row.yaml,
            trigger: row.trigger,
            vars: Default::default(),
            blocked: Vec::new(),
        }
        .with_vars())
    }

    /// The released jobs and their pipeline index.
    pub fn released_jobs(&self) -> impl Iterator<Item = (usize, JobId)> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Released { job, .. } => Some((i, *job)),
            _ => None,
        })
    }

    /// The run's state.
    pub fn state(&self) -> RunState {
        self.state
    }

    /// The pipeline.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// Decides every waiting job whose dependencies are all final: returns
    /// the indices to release now and marks the skipped ones. One pass in
    /// dependency order, so a skip decides its dependents in the same pass;
    /// linear in the pipeline's size.
    pub fn advance(&mut self) -> Vec<usize> {
        let fail_fast = self.fail_fast_state();
        let mut release = Vec::new();
        let mut releasing = vec![false; self.slots.len()];
        // What the jobs of each stage came to, filled in as the pass goes:
        // every job of the earlier stages precedes a stage-ordered job.
        let mut stages = vec![Outcome::default(); self.pipeline.stages.len()];
        self.blocked = vec![false; self.slots.len()];
        for o in 0..self.order.len() {
            let i = self.order[o];
            if self.slots[i] == Slot::Played {
                if self.ending.is_some() {
                    self.slots[i] = Slot::Waiting;
                } else {
                    releasing[i] = true;
                    release.push(i);
                }
            }
            if self.slots[i] == Slot::Manual && self.ending.is_some() {
                self.slots[i] = Slot::Waiting;
            }
            if self.slots[i] == Slot::Waiting {
                if self.ending.is_some() {
                    self.slots[i] = Slot::Skipped {
                        reason: "run ended".into(),
                        because_of_failure: false,
                    };
                } else if let Some(reason) = fail_fast.skips(&self.pipeline.jobs[i]) {
                    self.slots[i] = Slot::Skipped {
                        reason,
                        because_of_failure: true,
                    };
                } else {
                    match self.decide(i, &releasing, &stages) {
                        Decision::Wait { blocked } => self.blocked[i] = blocked,
                        Decision::Release if self.pipeline.jobs[i].manual => self.slots[i] = Slot::Manual,
                        Decision::Release => {
                            releasing[i] = true;
                            release.push(i);
                        }
                        Decision::Skip {
                            reason,
                            because_of_failure,
                        } => {
                            self.slots[i] = Slot::Skipped {
                                reason,
                                because_of_failure,
                            };
                        }
                    }
                }
            }
            let job = &self.pipeline.jobs[i];
            if let Some(stage) = stages.get_mut(job.stage_index) {
                // Through stage order only failures count: a job skipped
                // by its rules, or a manual job not played, does not hold
                // back or skip the later stages (as in GitLab).
                let mut outcome = self.outcome(i, &releasing);
                outcome.skipped = None;
                outcome.manual = false;
                stage.add(outcome);
            }
        }
        release.sort_unstable();
        release
    }

    /// Whether slot `i` is a failure that fails fast: failed, timed out or
    /// lost, without `allow_failure` (a cancelled job does not: cancels are
    /// what fail-fast sends).
    fn fails_fast(&self, i: usize) -> bool {
        matches!(
            self.slots[i],
            Slot::Released {
                state: JobState::Failed | JobState::TimedOut | JobState::Lost,
                ..
            }
        ) && !self.pipeline.jobs[i].allow_failure
    }

    /// Which matrices, and whether the whole run, are failing fast.
    fn fail_fast_state(&self) -> FailFast {
        let mut state = FailFast::default();
        for i in 0..self.slots.len() {
            if !self.fails_fast(i) {
                continue;
            }
            let job = &self.pipeline.jobs[i];
            if let Some(group) = job.fail_fast_group {
                state.groups.entry(group).or_insert_with(|| job.name.clone());
            }
            if self.pipeline.fail_fast && state.run.is_none() {
                state.run = Some(job.name.clone());
            }
        }
        state
    }

    /// Released, unfinished jobs that fail-fast cancels: the other legs of
    /// a failed `fail_fast` matrix, and with the pipeline's `fail_fast`
    /// every `on_success` job once one job failed.
    pub fn fail_fast_cancellations(&self) -> Vec<JobId> {
        let state = self.fail_fast_state();
        if state.groups.is_empty() && state.run.is_none() {
            return Vec::new();
        }
        self.slots
            .iter()
            .zip(&self.pipeline.jobs)
            .filter_map(|(slot, job)| match slot {
                Slot::Released { job: id, state: s } if !s.is_terminal() => state.skips(job).map(|_| *id),
                _ => None,
            })
            .collect()
    }

    /// How job `d` counts for the jobs that wait for it.
    fn outcome(&self, d: usize, releasing: &[bool]) -> Outcome {
        let dep = &self.pipeline.jobs[d];
        let mut out = Outcome::default();
        match &self.slots[d] {
            Slot::Manual => out.manual = true,
            Slot::Waiting if self.blocked.get(d) == Some(&true) => out.manual = true,
            Slot::Waiting | Slot::Played => out.pending = true,
            Slot::Released { state, .. } if !state.is_terminal() => out.pending = true,
            Slot::Released { state, .. } => {
                if *state != JobState::Succeeded && !dep.allow_failure {
                    out.failed = Some(format!("`{}` {}", dep.name, state.as_str()));
                }
            }
            Slot::Skipped {
                because_of_failure, ..
            } => {
                if *because_of_failure {
                    out.failed = Some(format!("`{}` was skipped after a failure", dep.name));
                } else {
                    out.skipped = Some(format!("`{}` was skipped", dep.name));
                }
            }
        }
        out.pending |= releasing[d];
        out
    }

    fn decide(&self, i: usize, releasing: &[bool], stages: &[Outcome]) -> Decision {
        let job = &self.pipeline.jobs[i];
        let mut deps = Outcome::default();
        if job.waits_for_earlier_stages {
            for stage in &stages[..job.stage_index.min(stages.len())] {
                deps.add(stage.clone());
            }
        } else {
            for &d in &job.depends_on {
                deps.add(self.outcome(d, releasing));
                if deps.pending {
                    break;
                }
            }
        }
        if deps.pending || deps.manual {
            return Decision::Wait {
                blocked: !deps.pending,
            };
        }
        let (failed, skipped) = (deps.failed, deps.skipped);
        if let Some(rule) = &job.rule {
            let status = valkyrie_pipeline::Status {
                failed: failed.is_some(),
                skipped: skipped.is_some(),
            };
            let vars = &self.vars;
            if rule.eval(&|name: &str| vars.get(name).cloned(), Some(status)) == Some(true) {
                return Decision::Release;
            }
            return match (rule.uses_status(), failed, skipped) {
                (false, Some(f), _) => Decision::Skip {
                    reason: format!("skipped: needs {f}"),
                    because_of_failure: true,
                },
                (false, None, Some(s)) => Decision::Skip {
                    reason: format!("skipped: needs {s}"),
                    because_of_failure: false,
                },
                _ => Decision::Skip {
                    reason: format!("skipped by rules: `if: {rule}` is false"),
                    because_of_failure: false,
                },
            };
        }
        match job.condition {
            Condition::Always => Decision::Release,
            Condition::OnSuccess => match (failed, skipped) {
                (Some(f), _) => Decision::Skip {
                    reason: format!("skipped: needs {f}"),
                    because_of_failure: true,
                },
                (None, Some(s)) => Decision::Skip {
                    reason: format!("skipped: needs {s}"),
                    because_of_failure: false,
                },
                (None, None) => Decision::Release,
            },
            Condition::OnFailure => match failed {
                Some(_) => Decision::Release,
                None => Decision::Skip {
                    reason: "skipped: runs only on failure, and nothing failed".into(),
                    because_of_failure: false,
                },
            },
        }
    }

    /// Records that pipeline job `index` was released as `job`.
    pub fn released(&mut self, index: usize, job: JobId) {
        self.slots[index] = Slot::Released {
            job,
            state: JobState::Queued,
        };
    }

    /// Records a released job's new state.
    pub fn job_changed(&mut self, index: usize, state: JobState) {
        if let Slot::Released { state: s, .. } = &mut self.slots[index] {
            *s = state;
        }
    }

    /// Starts ending the run early (cancel or timeout): returns the released
    /// jobs that are not final, to be cancelled; waiting jobs will be skipped.
    pub fn end_early(&mut self, state: RunState, why: &str) -> Vec<JobId> {
        if self.state.is_terminal() || self.ending.is_some() {
            return Vec::new();
        }
        self.ending = Some(state);
        self.message = why.to_owned();
        self.advance();
        self.slots
            .iter()
            .filter_map(|s| match s {
                Slot::Released { job, state } if !state.is_terminal() => Some(*job),
                _ => None,
            })
            .collect()
    }

    /// Ends the run once every job is final or skipped. Returns whether it
    /// ended now.
    pub fn finish_if_done(&mut self, now_ms: u64) -> bool {
        if self.state.is_terminal() {
            return false;
        }
        let done = self.slots.iter().enumerate().all(|(i, s)| match s {
            Slot::Waiting => self.blocked.get(i) == Some(&true),
            Slot::Played => false,
            Slot::Released { state, .. } => state.is_terminal(),
            Slot::Skipped { .. } | Slot::Manual => true,
        });
        if !done {
            return false;
        }
        // Name a job that failed on its own before one that was cancelled
        // (by fail-fast, say), whatever their order in the file.
        let failures = || {
            self.slots
                .iter()
                .zip(&self.pipeline.jobs)
                .filter_map(|(s, j)| match s {
                    Slot::Released { state, .. } if *state != JobState::Succeeded && !j.allow_failure => {
                        Some((*state, format!("job `{}` {}", j.name, state.as_str())))
                    }
                    _ => None,
                })
        };
        let failure = failures()
            .find(|(state, _)| *state != JobState::Cancelled)
            .or_else(|| failures().next())
            .map(|(_, message)| message);
        self.state = match (self.ending, failure) {
            (Some(ending), _) => ending,
            (None, Some(f)) => {
                self.message = f;
                RunState::Failed
            }
            (None, None) => {
                let count = |f: &dyn Fn(&Slot) -> bool| self.slots.iter().filter(|s| f(s)).count();
                let succeeded = count(&|s| {
                    matches!(
                        s,
                        Slot::Released {
                            state: JobState::Succeeded,
                            ..
                        }
                    )
                });
                let skipped = count(&|s| matches!(s, Slot::Skipped { .. }));
                let manual = count(&|s| matches!(s, Slot::Manual));
                let not_run = count(&|s| matches!(s, Slot::Waiting));
                let allowed = self.slots.len() - succeeded - skipped - manual - not_run;
                self.message =
                    format!("{succeeded} succeeded, {allowed} failed (allowed), {skipped} skipped");
                if manual + not_run > 0 {
                    self.message.push_str(&format!(
                        ", {manual} manual not played ({not_run} waiting for them)"
                    ));
                }
                RunState::Succeeded
            }
        };
        self.finished_at_ms = Some(now_ms);
        true
    }

    /// The listing view; `job` looks up released jobs.
    pub fn info<'a>(&self, job: impl Fn(JobId) -> Option<(&'a JobRecord, String)>) -> RunInfo {
        let unfinished = |s: &Slot| match s {
            Slot::Waiting | Slot::Manual | Slot::Played => true,
            Slot::Released { state, .. } => !state.is_terminal(),
            Slot::Skipped { .. } => false,
        };
        let mut unfinished_stage = vec![false; self.pipeline.stages.len()];
        for (pj, slot) in self.pipeline.jobs.iter().zip(&self.slots) {
            if unfinished(slot) {
                if let Some(s) = unfinished_stage.get_mut(pj.stage_index) {
                    *s = true;
                }
            }
        }
        let jobs = self
            .pipeline
            .jobs
            .iter()
            .zip(&self.slots)
            .map(|(pj, slot)| {
                let mut info = RunJobInfo {
                    name: pj.name.clone(),
                    stage: pj.stage.clone(),
                    state: RunJobState::Waiting,
                    job_id: None,
                    runner: None,
                    exit_code: None,
                    started_at_ms: None,
                    finished_at_ms: None,
                    allow_failure: pj.allow_failure,
                    reason: String::new(),
                };
                match slot {
                    Slot::Waiting if pj.waits_for_earlier_stages => {
                        let stages: Vec<&str> = (0..pj.stage_index)
                            .filter(|&s| unfinished_stage[s])
                            .map(|s| self.pipeline.stages[s].as_str())
                            .collect();
                        info.reason = format!("waiting for stage {}", stages.join(", "));
                    }
                    Slot::Waiting => {
                        let waiting_on: Vec<&str> = pj
                            .depends_on
                            .iter()
                            .filter(|&&d| unfinished(&self.slots[d]))
                            .map(|&d| self.pipeline.jobs[d].name.as_str())
                            .collect();
                        info.reason = format!("waiting for {}", waiting_on.join(", "));
                    }
                    Slot::Skipped { reason, .. } => {
                        info.state = RunJobState::Skipped;
                        info.reason = reason.clone();
                    }
                    Slot::Manual => {
                        info.state = RunJobState::Manual;
                        info.reason = format!("manual: run `vk play r{} {}`", self.id, pj.name);
                    }
                    Slot::Played => info.reason = "played; being released".into(),
                    Slot::Released { job: id, state } => {
                        info.state = RunJobState::from_job(*state);
                        info.job_id = Some(id.0);
                        if let Some((record, reason)) = job(*id) {
                            info.runner = record.runner_name.clone();
                            info.exit_code = record.exit_code;
                            info.started_at_ms = record.started_at_ms;
                            info.finished_at_ms = record.finished_at_ms;
                            info.reason = reason;
                        }
                    }
                }
                info
            })
            .collect();
        RunInfo {
            run_id: self.id,
            name: self.pipeline.name.clone(),
            state: self.state,
            message: self.message.clone(),
            created_at_ms: self.created_at_ms,
            finished_at_ms: self.finished_at_ms,
            jobs,
        }
    }
}

/// What a set of dependencies came to: whether any is unfinished, and the
/// first failure and the first skip among them.
#[derive(Debug, Clone, Default)]
struct Outcome {
    pending: bool,
    /// A manual job (not played), or a job waiting only for one.
    manual: bool,
    failed: Option<String>,
    skipped: Option<String>,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.pending |= other.pending;
        self.manual |= other.manual;
        if self.failed.is_none() {
            self.failed = other.failed;
        }
        if self.skipped.is_none() {
            self.skipped = other.skipped;
        }
    }
}

/// Who is failing fast: the first failed leg of each `fail_fast` matrix
/// (by its group), and the first failed job when the pipeline fails fast.
#[derive(Debug, Default)]
struct FailFast {
    groups: std::collections::HashMap<usize, String>,
    run: Option<String>,
}

impl FailFast {
    /// Why fail-fast stops `job`, if it does.
    fn skips(&self, job: &valkyrie_pipeline::PipelineJob) -> Option<String> {
        if let Some(failed) = job.fail_fast_group.and_then(|g| self.groups.get(&g)) {
            return Some(format!(
                "skipped: `{failed}` failed and the matrix fails fast (fail_fast)"
            ));
        }
        match (&self.run, job.condition) {
            (Some(failed), Condition::OnSuccess) => Some(format!(
                "skipped: `{failed}` failed and the pipeline fails fast (fail_fast)"
            )),
            _ => None,
        }
    }
}

enum Decision {
    /// `blocked`: only manual jobs hold it back.
    Wait {
        blocked: bool,
    },
    Release,
    Skip {
        reason: String,
        because_of_failure: bool,
    },
}

impl Slot {
    fn to_row(&self) -> SlotRow {
        match self {
            Slot::Waiting => SlotRow::Waiting,
            Slot::Manual => SlotRow::Manual,
            Slot::Played => SlotRow::Played,
            Slot::Released { job, state } => SlotRow::Released {
                job: job.0,
                state: *state,
            },
            Slot::Skipped {
                reason,
                because_of_failure,
            } => SlotRow::Skipped {
                reason: reason.clone(),
                because_of_failure: *because_of_failure,
            },
        }
    }

    fn from_row(row: SlotRow) -> Self {
        match row {
            SlotRow::Waiting => Slot::Waiting,
            SlotRow::Manual => Slot::Manual,
            SlotRow::Played => Slot::Played,
            SlotRow::Released { job, state } => Slot::Released {
                job: JobId(job),
                state,
            },
            SlotRow::Skipped {
                reason,
                because_of_failure,
            } => Slot::Skipped {
                reason,
                because_of_failure,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(yaml: &str) -> Run {
        let p = valkyrie_pipeline::parse("t.yaml", yaml).unwrap_or_else(|e| panic!("{e}"));
        Run::new(1, p, 0, Instant::now())
    }

    fn names(r: &Run, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| r.pipeline.jobs[i].name.clone()).collect()
    }

    /// Releases `idx` as jobs with ids equal to their index.
    fn release(r: &mut Run, idx: &[usize]) {
        for &i in idx {
            r.released(i, JobId(i as u64));
        }
    }

    fn finish(r: &mut Run, name: &str, state: JobState) -> Vec<String> {
        let i = r.pipeline.jobs.iter().position(|j| j.name == name).unwrap();
        r.job_changed(i, state);
        let next = r.advance();
        release(r, &next);
        names(r, &next)
    }

    const DAG: &str = "stages: [build, test, deploy]\njobs:\n  a:\n    stage: build\n    steps: [x]\n  b:\n    stage: build\n    steps: [x]\n  t:\n    stage: test\n    needs: [a]\n    steps: [x]\n  d:\n    stage: deploy\n    steps: [x]\n  clean:\n    stage: deploy\n    if: always\n    needs: [t]\n    steps: [x]\n  alarm:\n    stage: deploy\n    if: on_failure\n    steps: [x]\n";

    #[test]
    fn jobs_are_released_as_their_needs_finish() {
        let mut r = run(DAG);
        let first = r.advance();
        assert_eq!(names(&r, &first), ["a", "b"]);
        release(&mut r, &first);
        assert_eq!(finish(&mut r, "a", JobState::Succeeded), ["t"], "t needs only a");
        assert_eq!(finish(&mut r, "t", JobState::Succeeded), ["clean"]);
        // d and alarm wait for every earlier-stage job, including b.
        assert_eq!(finish(&mut r, "b", JobState::Succeeded), ["d"]);
        assert!(r
            .info(|_| None)
            .jobs
            .iter()
            .any(|j| j.name == "alarm" && j.state == RunJobState::Skipped));
        finish(&mut r, "clean", JobState::Succeeded);
        finish(&mut r, "d", JobState::Succeeded);
        assert!(r.finish_if_done(5));
        assert_eq!(r.state(), RunState::Succeeded);
    }

    #[test]
    fn a_failure_skips_dependents_runs_cleanup_and_fails_the_run() {
        let mut r = run(DAG);
        let first = r.advance();
        release(&mut r, &first);
        // t is skipped because of the failure, so clean (always, needs t)
        // runs at once; after b, d is skipped and alarm (on_failure) runs.
        assert_eq!(finish(&mut r, "a", JobState::Failed), ["clean"]);
        let info = r.info(|_| None);
        let t = info.jobs.iter().find(|j| j.name == "t").unwrap();
        assert_eq!(t.state, RunJobState::Skipped);
        assert!(t.reason.contains("`a` failed"), "{}", t.reason);
        assert_eq!(finish(&mut r, "b", JobState::Succeeded), ["alarm"]);
        finish(&mut r, "clean", JobState::Succeeded);
        assert!(!r.finish_if_done(1), "alarm still runs");
        finish(&mut r, "alarm", JobState::Succeeded);
        assert!(r.finish_if_done(2));
        assert_eq!(r.state(), RunState::Failed);
        assert!(r.info(|_| None).message.contains("job `a` failed"));
    }

    #[test]
    fn allowed_failures_do_not_skip_or_fail() {
        let mut r = run("jobs:\n  flaky:\n    allow_failure: true\n    steps: [x]\n  next:\n    needs: [flaky]\n    steps: [x]\n");
        let first = r.advance();
        release(&mut r, &first);
        assert_eq!(finish(&mut r, "flaky", JobState::Failed), ["next"]);
        finish(&mut r, "next", JobState::Succeeded);
        assert!(r.finish_if_done(1));
        assert_eq!(r.state(), RunState::Succeeded);
    }

    #[test]
    fn a_stored_run_is_rebuilt_as_it_was() {
        let mut r = run(DAG);
        r.set_source("t.yaml", DAG);
        let first = r.advance();
        release(&mut r, &first);
        finish(&mut r, "a", JobState::Failed);
        let row = r.to_row();
        let back = Run::from_row(row.clone(), 0, Instant::now()).unwrap();
        assert_eq!(back.to_row(), row);
        assert_eq!(back.info(|_| None), r.info(|_| None));
    }

    const MATRIX: &str = "jobs:\n  t:\n    matrix:\n      os: [a, b, c]\n    steps: [x]\n  after:\n    needs: [t]\n    steps: [x]\n  report:\n    if: always\n    needs: [t]\n    steps: [x]\n";

    #[test]
    fn a_failing_leg_cancels_the_other_legs_of_a_fail_fast_matrix() {
        let mut r = run(MATRIX);
        let first = r.advance();
        release(&mut r, &first);
        assert!(r.fail_fast_cancellations().is_empty());
        finish(&mut r, "t [os=a]", JobState::Succeeded);
        finish(&mut r, "t [os=b]", JobState::Failed);
        assert_eq!(r.fail_fast_cancellations(), [JobId(2)], "the running leg c");
        assert_eq!(finish(&mut r, "t [os=c]", JobState::Cancelled), ["report"]);
        assert!(r.fail_fast_cancellations().is_empty(), "nothing left to cancel");
        finish(&mut r, "report", JobState::Succeeded);
        assert!(r.finish_if_done(1));
        assert_eq!(r.state(), RunState::Failed);
        assert_eq!(
            r.info(|_| None).message,
            "job `t [os=b]` failed",
            "the failure, not the cancel"
        );
        // With `fail_fast: false` every leg runs to its end.
        let mut r = run(&MATRIX.replace(
            "    steps: [x]\n  after",
            "    fail_fast: false\n    steps: [x]\n  after",
        ));
        let first = r.advance();
        release(&mut r, &first);
        finish(&mut r, "t [os=b]", JobState::Failed);
        assert!(r.fail_fast_cancellations().is_empty());
    }

    #[test]
    fn a_fail_fast_pipeline_stops_on_success_jobs_but_runs_cleanup() {
        let yaml = "fail_fast: true\njobs:\n  a:\n    steps: [x]\n  b:\n    steps: [x]\n  c:\n    needs: [b]\n    steps: [x]\n  d:\n    if: always\n    needs: [b]\n    steps: [x]\n  e:\n    needs: []\n    if: always\n    steps: [x]\n";
        let mut r = run(yaml);
        let first = r.advance();
        assert_eq!(names(&r, &first), ["a", "b", "e"]);
        release(&mut r, &first);
        finish(&mut r, "a", JobState::Failed);
        assert_eq!(r.fail_fast_cancellations(), [JobId(1)], "b, not the always job e");
        assert_eq!(
            finish(&mut r, "b", JobState::Cancelled),
            ["d"],
            "c is skipped, d (always) runs"
        );
        let c = r.info(|_| None).jobs.into_iter().find(|j| j.name == "c").unwrap();
        assert_eq!(c.state, RunJobState::Skipped);
        finish(&mut r, "d", JobState::Succeeded);
        finish(&mut r, "e", JobState::Succeeded);
        assert!(r.finish_if_done(1));
        assert_eq!(r.info(|_| None).message, "job `a` failed");
    }

    #[test]
    fn cancel_cancels_released_jobs_and_skips_waiting_ones() {
        let mut r = run(DAG);
        let first = r.advance();
        release(&mut r, &first);
        finish(&mut r, "a", JobState::Running);
        let to_cancel = r.end_early(RunState::Cancelled, "cancelled by user");
        assert_eq!(to_cancel, [JobId(0), JobId(1)]);
        assert!(
            r.advance().is_empty(),
            "nothing new is released once the run ends"
        );
        assert!(!r.finish_if_done(1));
        finish(&mut r, "a", JobState::Cancelled);
        finish(&mut r, "b", JobState::Cancelled);
        assert!(r.finish_if_done(2));
        assert_eq!(r.state(), RunState::Cancelled);
        assert!(
            r.info(|_| None)
                .jobs
                .iter()
                .filter(|j| j.state == RunJobState::Skipped)
                .count()
                == 4
        );
    }

    fn run_with(yaml: &str, vars: &[(&str, &str)]) -> Result<Run, String> {
        let mut r = run(yaml);
        let vars = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        r.set_trigger(crate::source::Trigger::plain("run", vars));
        r.apply_rules().map(|()| r)
    }

    fn state_of(r: &Run, name: &str) -> (RunJobState, String) {
        let info = r.info(|_| None);
        let job = info.jobs.into_iter().find(|j| j.name == name).unwrap();
        (job.state, job.reason)
    }

    const RULES: &str = "stages: [build, deploy, after]\nenv:\n  TARGET: staging\njobs:\n  build:\n    stage: build\n    steps: [x]\n  deploy:\n    stage: deploy\n    if: $DEPLOY == \"1\" && $TARGET =~ /^stag/\n    steps: [x]\n  smoke:\n    stage: after\n    needs: [deploy]\n    steps: [x]\n  notify:\n    stage: after\n    steps: [x]\n";

    #[test]
    fn rules_skip_at_creation_and_only_needs_follow_the_skip() {
        let mut r = run_with(RULES, &[]).unwrap();
        let (state, reason) = state_of(&r, "deploy");
        assert_eq!(state, RunJobState::Skipped, "skipped before anything ran");
        assert!(reason.contains("`if: $DEPLOY"), "{reason}");
        let first = r.advance();
        release(&mut r, &first);
        // smoke needs the skipped job and is skipped; notify waits for the
        // earlier stages by order, where a rule's skip does not count.
        assert_eq!(finish(&mut r, "build", JobState::Succeeded), ["notify"]);
        assert_eq!(state_of(&r, "smoke").0, RunJobState::Skipped);
        finish(&mut r, "notify", JobState::Succeeded);
        assert!(r.finish_if_done(1));
        assert_eq!(r.state(), RunState::Succeeded);
        // With the variable the job runs; the pipeline's env is readable.
        let mut r = run_with(RULES, &[("DEPLOY", "1")]).unwrap();
        let first = r.advance();
        release(&mut r, &first);
        assert_eq!(finish(&mut r, "build", JobState::Succeeded), ["deploy"]);
        // A variable overriding the env decides too.
        let r = run_with(RULES, &[("DEPLOY", "1"), ("TARGET", "prod")]).unwrap();
        assert_eq!(state_of(&r, "deploy").0, RunJobState::Skipped);
    }

    #[test]
    fn workflow_rules_and_all_skipped_create_no_run() {
        let yaml = "workflow:\n  if: $VALKYRIE_EVENT != \"run\"\njobs:\n  a:\n    steps: [x]\n";
        let err = run_with(yaml, &[]).unwrap_err();
        assert!(err.contains("`workflow: if` is false"), "{err}");
        let yaml = "jobs:\n  a:\n    if: $GO\n    steps: [x]\n  b:\n    if: $GO\n    steps: [x]\n";
        assert!(run_with(yaml, &[])
            .unwrap_err()
            .to_string()
            .contains("every job is skipped"));
        assert!(run_with(yaml, &[("GO", "yes")]).is_ok());
    }

    #[test]
    fn status_functions_in_expressions_are_decided_when_the_needs_end() {
        let yaml = "jobs:\n  a:\n    steps: [x]\n  alarm:\n    needs: [a]\n    if: failure() && $NOTIFY\n    steps: [x]\n  never:\n    needs: [a]\n    if: failure() && $UNSET\n    steps: [x]\n";
        let mut r = run_with(yaml, &[("NOTIFY", "1")]).unwrap();
        assert_eq!(
            state_of(&r, "never").0,
            RunJobState::Skipped,
            "false whatever `a` does"
        );
        assert_eq!(state_of(&r, "alarm").0, RunJobState::Waiting);
        let first = r.advance();
        release(&mut r, &first);
        assert_eq!(finish(&mut r, "a", JobState::Failed), ["alarm"]);
    }

    const MANUAL: &str = "jobs:\n  build:\n    steps: [x]\n  deploy:\n    needs: [build]\n    when: manual\n    steps: [x]\n  smoke:\n    needs: [deploy]\n    steps: [x]\n";

    #[test]
    fn a_manual_job_waits_to_be_played_without_holding_the_run() {
        let mut r = run_with(MANUAL, &[]).unwrap();
        let first = r.advance();
        release(&mut r, &first);
        assert!(r.play("deploy").unwrap_err().to_string().contains("still waits"));
        assert!(finish(&mut r, "build", JobState::Succeeded).is_empty());
        let (state, reason) = state_of(&r, "deploy");
        assert_eq!(state, RunJobState::Manual);
        assert_eq!(reason, "manual: run `vk play r1 deploy`");
        assert!(
            r.finish_if_done(1),
            "an unplayed manual job does not hold the run"
        );
        assert_eq!(r.state(), RunState::Succeeded);
        assert!(r
            .info(|_| None)
            .message
            .contains("1 manual not played (1 waiting for them)"));
        assert!(
            matches!(r.play("smoke"), Err(crate::core::CoreError::Conflict(m)) if m.contains("not a manual job")),
            "a job that is not manual conflicts"
        );
        assert!(
            matches!(r.play("nope"), Err(crate::core::CoreError::NotFound(m)) if m.contains("its manual jobs: `deploy`")),
            "a job the run does not have is not found"
        );
        // Playing it runs the run again; its dependents follow.
        r.play("deploy").unwrap();
        assert_eq!(r.state(), RunState::Running);
        let next = r.advance();
        assert_eq!(names(&r, &next), ["deploy"]);
        release(&mut r, &next);
        assert!(r
            .play("deploy")
            .unwrap_err()
            .to_string()
            .contains("already played"));
        assert_eq!(finish(&mut r, "deploy", JobState::Succeeded), ["smoke"]);
        finish(&mut r, "smoke", JobState::Succeeded);
        assert!(r.finish_if_done(2));
        assert_eq!(r.state(), RunState::Succeeded);
        // The stored run keeps the manual state.
        let mut r = run_with(MANUAL, &[]).unwrap();
        r.set_source("t.yaml", MANUAL);
        let first = r.advance();
        release(&mut r, &first);
        finish(&mut r, "build", JobState::Succeeded);
        let back = Run::from_row(r.to_row(), 0, Instant::now()).unwrap();
        assert_eq!(state_of(&back, "deploy").0, RunJobState::Manual);
    }

    #[test]
    fn rerun_failed_resets_failures_and_what_waits_for_them() {
        let mut r = run(DAG);
        let first = r.advance();
        release(&mut r, &first);
        assert!(r
            .rerun_slots(true)
            .unwrap_err()
            .to_string()
            .contains("still running"));
        // a fails: t is skipped, clean (always) runs; b succeeds, d is
        // skipped, alarm runs.
        finish(&mut r, "a", JobState::Failed);
        finish(&mut r, "b", JobState::Succeeded);
        finish(&mut r, "clean", JobState::Succeeded);
        finish(&mut r, "alarm", JobState::Succeeded);
        assert!(r.finish_if_done(1));
        let slots = r.rerun_slots(true).unwrap();
        let kept: Vec<&str> = r
            .pipeline
            .jobs
            .iter()
            .zip(&slots)
            .filter(|(_, s)| **s != SlotRow::Waiting)
            .map(|(j, _)| j.name.as_str())
            .collect();
        assert_eq!(kept, ["b"], "only b neither failed nor waits for a failure");
        let mut again = Run::new(2, r.pipeline.clone(), 0, Instant::now());
        again.set_slots(slots);
        let next = again.advance();
        assert_eq!(names(&again, &next), ["a"]);
        assert!(r
            .rerun_slots(false)
            .unwrap()
            .iter()
            .all(|s| *s == SlotRow::Waiting));
        // Nothing failed: nothing to rerun.
        let mut ok = run("jobs:\n  a:\n    steps: [x]\n");
        let first = ok.advance();
        release(&mut ok, &first);
        finish(&mut ok, "a", JobState::Succeeded);
        assert!(ok.finish_if_done(1));
        assert!(ok
            .rerun_slots(true)
            .unwrap_err()
            .contains("no failed or cancelled job"));
    }
}
