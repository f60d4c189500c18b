//! A pipeline run: which of its jobs are released, waiting or skipped, and
//! when the run is over. Pure decisions, no I/O: the core releases what
//! [`Run::advance`] returns and reports final job states back.
//!
//! ```text
//!   waiting --deps final, condition met--> released --> (job states) --> final
//!      |
//!      +--deps final, condition not met, or run cancelled--> skipped
//!
//!   run: running --every job final or skipped--> succeeded | failed
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
        }
    }

    /// Records what started the run and gives it to every job.
    pub fn set_trigger(&mut self, trigger: crate::source::Trigger) {
        trigger.apply(self.id, &mut self.pipeline);
        self.trigger = Some(trigger);
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
            slots: self
                .slots
                .iter()
                .map(|s| match s {
                    Slot::Waiting => SlotRow::Waiting,
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
                })
                .collect(),
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
        let slots = row
            .slots
            .into_iter()
            .map(|s| match s {
                SlotRow::Waiting => Slot::Waiting,
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
            })
            .collect();
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
        })
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
        for o in 0..self.order.len() {
            let i = self.order[o];
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
                        Decision::Wait => {}
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
                stage.add(self.outcome(i, &releasing));
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
            Slot::Waiting => out.pending = true,
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
        if deps.pending {
            return Decision::Wait;
        }
        let (failed, skipped) = (deps.failed, deps.skipped);
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
        let done = self.slots.iter().all(|s| match s {
            Slot::Waiting => false,
            Slot::Released { state, .. } => state.is_terminal(),
            Slot::Skipped { .. } => true,
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
                let allowed = self.slots.len() - succeeded - skipped;
                self.message =
                    format!("{succeeded} succeeded, {allowed} failed (allowed), {skipped} skipped");
                RunState::Succeeded
            }
        };
        self.finished_at_ms = Some(now_ms);
        true
    }

    /// The listing view; `job` looks up released jobs.
    pub fn info<'a>(&self, job: impl Fn(JobId) -> Option<(&'a JobRecord, String)>) -> RunInfo {
        let unfinished = |s: &Slot| match s {
            Slot::Waiting => true,
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
    failed: Option<String>,
    skipped: Option<String>,
}

impl Outcome {
    fn add(&mut self, other: Outcome) {
        self.pending |= other.pending;
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
    Wait,
    Release,
    Skip {
        reason: String,
        because_of_failure: bool,
    },
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
}
