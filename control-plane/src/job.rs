//! The job lifecycle as a typed state machine.
//!
//! ```text
//!                 submit
//!                   |
//!                   v
//!   +---------->  queued  --------------------------------> cancelled
//!   |               | scheduler picks a runner (attempt += 1)
//!   |               v
//!   |  hand-off  assigned --- hand-off fails `handoff_limit` times in a row --> lost
//!   |  failed       | agent acks
//!   |  (refused,    v
//!   |  lease, gone) running --> succeeded | failed | cancelled | timed_out
//!   |  runner lost, |                          (failed/timed_out may retry)
//!   |  retryable    |
//!   +---------------+ runner lost --> lost (no retries left)
//! ```
//!
//! Every transition is a method that refuses an illegal event with
//! [`TransitionError`]. Each assignment starts a new attempt; the attempt
//! number is the fencing token: a report naming another attempt is stale.
//!
//! A **hand-off** is an assignment not yet acknowledged. When it fails (the
//! agent refuses it for want of a slot or because it drains, the lease runs
//! out, the runner goes away first) nothing of the job ran, so it is not
//! the job's fault: the job goes back to the queue without spending a
//! retry. Only a cap on failed hand-offs in a row can end it (`lost`, with
//! the reason). Retries count attempts that started.

use std::sync::Arc;
use std::time::Instant;

use valkyrie::message::{JobInfo, JobOutcome, JobSpec, JobState, RetryOn, StepInfo, StepOutcome};

use crate::scheduler::{JobId, RunnerId};

/// Why a job event was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The report names an attempt that is not the current one.
    #[error("{job} attempt {got} is stale: the current attempt is {current}")]
    StaleAttempt {
        /// The job.
        job: JobId,
        /// Attempt named by the report.
        got: u32,
        /// The current attempt.
        current: u32,
    },
    /// The report names the current attempt number, but that attempt is
    /// over: the job was queued again (its hand-off failed) or finished.
    #[error("{job} attempt {attempt} is no longer current: the job is now {state}")]
    AttemptOver {
        /// The job.
        job: JobId,
        /// Attempt named by the report.
        attempt: u32,
        /// The job's state.
        state: &'static str,
    },
    /// The event is not allowed in the job's state.
    #[error("{job} is {state}: cannot {event}")]
    Illegal {
        /// The job.
        job: JobId,
        /// Its state.
        state: &'static str,
        /// What was attempted.
        event: &'static str,
    },
}

/// What happens to a job whose attempt ended without success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Queued again for another attempt.
    Retry,
    /// The hand-off failed (`failures` in a row): queued again, without
    /// spending a retry; the caller may delay it.
    HandBack {
        /// Failed hand-offs in a row, this one included.
        failures: u32,
    },
    /// Final.
    Final(JobState),
}

thread_local! {
    /// Whether records serialized on this thread leave their spec out.
    static SPECS_APART: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `serialize` with job records serialized without their spec: for a
/// store that writes a job's spec once, apart from the record it rewrites
/// at each change of the job.
pub fn without_specs<R>(serialize: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            SPECS_APART.set(self.0);
        }
    }
    let _reset = Reset(SPECS_APART.replace(true));
    serialize()
}

fn spec_left_out(_: &Arc<JobSpec>) -> bool {
    SPECS_APART.get()
}

/// What a record read back without its spec holds in its place: one shared
/// empty spec, told apart by [`is_spec_placeholder`].
fn spec_placeholder() -> Arc<JobSpec> {
    static PLACEHOLDER: std::sync::LazyLock<Arc<JobSpec>> =
        std::sync::LazyLock::new(|| Arc::new(JobSpec::with_steps("", Vec::new())));
    PLACEHOLDER.clone()
}

/// Whether `spec` is the placeholder of a record read back without one.
pub fn is_spec_placeholder(spec: &Arc<JobSpec>) -> bool {
    Arc::ptr_eq(spec, &spec_placeholder())
}

/// A job and its current attempt. Stored as it is (timers excepted: they
/// are set again on recovery).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct JobRecord {
    /// Id.
    pub id: JobId,
    /// As submitted. Shared: a job's spec never changes once it is
    /// accepted, so the copies of the record a turn hands to the store
    /// share it instead of copying it. Left out of the record's stored
    /// form where the store keeps it apart ([`without_specs`]); a record
    /// read back without one holds [`spec_placeholder`] until the store puts
    /// the spec back.
    #[serde(default = "spec_placeholder", skip_serializing_if = "spec_left_out")]
    pub spec: Arc<JobSpec>,
    state: JobState,
    /// Current attempt (0 before the first assignment).
    pub attempt: u32,
    /// Runner of the current attempt.
    pub runner: Option<RunnerId>,
    /// Runner name of the current attempt, for listings.
    pub runner_name: Option<String>,
    /// When the lease of an assignment runs out.
    #[serde(skip)]
    pub lease_deadline: Option<Instant>,
    /// Server-side backstop for the job timeout or a cancel.
    #[serde(skip)]
    pub kill_deadline: Option<Instant>,
    /// A cancel was requested while the job was on a runner.
    pub cancel_requested: bool,
    /// Attempts that started (acknowledged by their agent): what retries
    /// count.
    #[serde(default)]
    pub started_attempts: u32,
    /// Hand-offs in a row that failed (refused, lease expired, runner gone
    /// before acknowledging); reset when an attempt starts.
    #[serde(default)]
    pub failed_handoffs: u32,
    /// Submission time (ms since epoch).
    pub submitted_at_ms: u64,
    /// Start of the current attempt (ms since epoch).
    pub started_at_ms: Option<u64>,
    /// When the job reached its final state (ms since epoch).
    pub finished_at_ms: Option<u64>,
    /// Exit code of the failing or last step.
    pub exit_code: Option<i32>,
    /// Why it ended, or the last requeue reason.
    pub message: String,
    /// What the runner reported of the steps of attempt `steps_attempt`:
    /// `(step index, outcome, exit code, duration in ms)`, in report order.
    #[serde(default)]
    pub steps: Vec<(u32, StepOutcome, Option<i32>, u64)>,
    /// The attempt `steps` belongs to.
    #[serde(default)]
    pub steps_attempt: u32,
}

impl JobRecord {
    /// A newly submitted job, queued.
    pub fn new(id: JobId, spec: JobSpec, now_ms: u64) -> Self {
        Self {
            id,
            spec: Arc::new(spec),
            state: JobState::Queued,
            attempt: 0,
            runner: None,
            runner_name: None,
            lease_deadline: None,
            kill_deadline: None,
            cancel_requested: false,
            started_attempts: 0,
            failed_handoffs: 0,
            submitted_at_ms: now_ms,
            started_at_ms: None,
            finished_at_ms: None,
            exit_code: None,
            message: String::new(),
            steps: Vec::new(),
            steps_attempt: 0,
        }
    }

    /// Current state.
    pub fn state(&self) -> JobState {
        self.state
    }

    fn illegal(&self, event: &'static str) -> TransitionError {
        TransitionError::Illegal {
            job: self.id,
            state: self.state.as_str(),
            event,
        }
    }

    /// Checks that a report names the current attempt on the current runner.
    pub fn check_attempt(&self, runner: RunnerId, attempt: u32) -> Result<(), TransitionError> {
        if attempt != self.attempt || self.runner.is_some_and(|r| r != runner) {
            return Err(TransitionError::StaleAttempt {
                job: self.id,
                got: attempt,
                current: self.attempt,
            });
        }
        if self.runner.is_none() || self.state.is_terminal() {
            return Err(TransitionError::AttemptOver {
                job: self.id,
                attempt,
                state: self.state.as_str(),
            });
        }
        Ok(())
    }

    /// queued → assigned: a new attempt, leased until `lease_deadline`.
    pub fn assign(
        &mut self,
        runner: RunnerId,
        runner_name: &str,
        lease_deadline: Instant,
    ) -> Result<u32, TransitionError> {
        if self.state != JobState::Queued {
            return Err(self.illegal("assign"));
        }
        self.attempt += 1;
        self.state = JobState::Assigned;
        self.runner = Some(runner);
        self.runner_name = Some(runner_name.to_owned());
        self.lease_deadline = Some(lease_deadline);
        Ok(self.attempt)
    }

    /// The assignment of `attempt` is about to reach its agent: its lease
    /// runs from now (`deadline`), not from when it was planned, so a slow
    /// commit does not eat it. False if the attempt is no longer the
    /// current, assigned one (its lease ran out meanwhile): then it must not
    /// be sent at all.
    pub fn lease_from(&mut self, attempt: u32, deadline: Instant) -> bool {
        if self.state != JobState::Assigned || self.attempt != attempt {
            return false;
        }
        self.lease_deadline = Some(deadline);
        true
    }

    /// assigned → running: the agent acknowledged the lease.
    pub fn acknowledge(
        &mut self,
        runner: RunnerId,
        attempt: u32,
        now_ms: u64,
    ) -> Result<(), TransitionError> {
        self.check_attempt(runner, attempt)?;
        match self.state {
            JobState::Assigned => {
                self.state = JobState::Running;
                self.lease_deadline = None;
                self.started_at_ms = Some(now_ms);
                self.started_attempts += 1;
                self.failed_handoffs = 0;
                Ok(())
            }
            // A duplicate ack (e.g. re-sent after a reconnect) changes nothing.
            JobState::Running => Ok(()),
            _ => Err(self.illegal("acknowledge")),
        }
    }

    /// Back to queued, e.g. after a lost runner or an expired lease.
    fn requeue(&mut self, why: String) {
        self.state = JobState::Queued;
        self.runner = None;
        self.runner_name = None;
        self.lease_deadline = None;
        self.kill_deadline = None;
        self.started_at_ms = None;
        self.message = why;
    }

    fn finish(&mut self, state: JobState, exit_code: Option<i32>, message: String, now_ms: u64) {
        self.state = state;
        self.exit_code = exit_code;
        self.message = message;
        self.lease_deadline = None;
        self.kill_deadline = None;
        self.finished_at_ms = Some(now_ms);
    }

    /// Whether another attempt may follow the current one: hand-offs that
    /// failed do not count, only attempts that started.
    fn retries_left(&self) -> bool {
        self.started_attempts <= self.spec.retry.max_retries
    }

    /// The attempt ended: reported by its agent (running or assigned → final,
    /// or → queued when the policy retries the outcome).
    pub fn complete(
        &mut self,
        runner: RunnerId,
        attempt: u32,
        outcome: JobOutcome,
        exit_code: Option<i32>,
        message: String,
        now_ms: u64,
    ) -> Result<Disposition, TransitionError> {
        self.check_attempt(runner, attempt)?;
        if self.state == JobState::Assigned {
            // A result means the attempt ran, acknowledged or not.
            self.started_attempts += 1;
            self.failed_handoffs = 0;
        }
        let (state, retry_on) = match outcome {
            JobOutcome::Succeeded => (JobState::Succeeded, None),
            JobOutcome::Failed => (JobState::Failed, Some(RetryOn::FAILED)),
            JobOutcome::TimedOut => (JobState::TimedOut, Some(RetryOn::TIMED_OUT)),
            JobOutcome::Cancelled => (JobState::Cancelled, None),
        };
        let retry = !self.cancel_requested
            && retry_on.is_some_and(|on| self.spec.retry.on.contains(on))
            && self.retries_left();
        if retry {
            self.requeue(format!(
                "attempt {attempt} {}: {message}; retrying",
                state.as_str()
            ));
            return Ok(Disposition::Retry);
        }
        self.finish(state, exit_code, message, now_ms);
        Ok(Disposition::Final(state))
    }

    /// The attempt is gone without a result. Still assigned (refused, the
    /// lease ran out, the runner went away before acknowledging), it is a
    /// failed hand-off: back to the queue without spending a retry, unless
    /// `handoff_limit` hand-offs in a row have now failed. Running (the
    /// runner vanished), it is retried while the policy allows, else the
    /// job is lost.
    pub fn lose_attempt(
        &mut self,
        why: String,
        handoff_limit: u32,
        now_ms: u64,
    ) -> Result<Disposition, TransitionError> {
        if !matches!(self.state, JobState::Assigned | JobState::Running) {
            return Err(self.illegal("lose its attempt"));
        }
        if self.cancel_requested {
            self.finish(JobState::Cancelled, None, format!("cancelled ({why})"), now_ms);
            return Ok(Disposition::Final(JobState::Cancelled));
        }
        if self.state == JobState::Assigned {
            self.failed_handoffs += 1;
            let failures = self.failed_handoffs;
            if failures >= handoff_limit.max(1) {
                let message = format!(
                    "{failures} hand-offs to runners in a row failed without the job starting \
                     (the limit); the last: {why}"
                );
                self.finish(JobState::Lost, None, message, now_ms);
                return Ok(Disposition::Final(JobState::Lost));
            }
            self.requeue(format!(
                "hand-off of attempt {} failed ({why}); queued again",
                self.attempt
            ));
            return Ok(Disposition::HandBack { failures });
        }
        if self.spec.retry.on.contains(RetryOn::LOST) && self.retries_left() {
            self.requeue(format!("attempt {} lost: {why}; retrying", self.attempt));
            return Ok(Disposition::Retry);
        }
        self.finish(JobState::Lost, None, why, now_ms);
        Ok(Disposition::Final(JobState::Lost))
    }

    /// Ends the job without its agent's word: a queued job cancelled, or the
    /// server-side backstop for a timeout or a cancel the agent never confirmed.
    pub fn force_final(
        &mut self,
        state: JobState,
        message: String,
        now_ms: u64,
    ) -> Result<(), TransitionError> {
        if self.state.is_terminal() {
            return Err(self.illegal("end"));
        }
        self.finish(state, None, message, now_ms);
        Ok(())
    }

    /// Records a step the runner reported for attempt `attempt` (already
    /// checked to be the current one).
    pub fn step_finished(
        &mut self,
        attempt: u32,
        step: u32,
        outcome: StepOutcome,
        exit_code: Option<i32>,
        duration_ms: u64,
    ) {
        if self.steps_attempt != attempt {
            self.steps.clear();
            self.steps_attempt = attempt;
        }
        // A reconnecting agent may report a step again; the index bounds
        // the list by the spec's step count.
        if (step as usize) < self.spec.steps.len() && !self.steps.iter().any(|s| s.0 == step) {
            self.steps.push((step, outcome, exit_code, duration_ms));
        }
    }

    /// The steps of the current attempt, every one of the spec's, with what
    /// is known of each. A step's name defaults to its command line, which
    /// may hold a secret: names are masked like the pipeline text.
    pub fn step_infos(&self) -> Vec<StepInfo> {
        let current = self.steps_attempt == self.attempt;
        let secrets: Vec<String> = self.spec.secrets.iter().map(|(_, value)| value.clone()).collect();
        self.spec
            .steps
            .iter()
            .enumerate()
            .map(|(i, step)| {
                let reported = current
                    .then(|| self.steps.iter().find(|s| s.0 as usize == i))
                    .flatten();
                let mut name = crate::masking::mask(&step.name, &secrets);
                if name.len() > 255 {
                    let mut cut = 255;
                    while !name.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    name.truncate(cut);
                }
                StepInfo {
                    name,
                    outcome: reported.map(|s| s.1),
                    exit_code: reported.and_then(|s| s.2),
                    duration_ms: reported.map(|s| s.3),
                }
            })
            .collect()
    }

    /// The listing view.
    pub fn info(&self, reason: String) -> JobInfo {
        JobInfo {
            job_id: self.id.0,
            name: self.spec.name.clone(),
            project: self.spec.project.clone(),
            priority: self.spec.priority,
            tags: self.spec.tags.clone(),
            state: self.state,
            attempt: self.attempt,
            runner: self.runner_name.clone(),
            reason,
            exit_code: self.exit_code,
            submitted_at_ms: self.submitted_at_ms,
            started_at_ms: self.started_at_ms,
            finished_at_ms: self.finished_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valkyrie::message::{RetryPolicy, StepSpec};

    fn job(retry: RetryPolicy) -> JobRecord {
        let mut spec = JobSpec::with_steps("t", vec![StepSpec::noop()]);
        spec.retry = retry;
        JobRecord::new(JobId(1), spec, 0)
    }

    #[test]
    fn happy_path() {
        let mut j = job(RetryPolicy::default());
        let r = RunnerId(7);
        let a = j.assign(r, "r", Instant::now()).unwrap();
        assert_eq!((a, j.state()), (1, JobState::Assigned));
        j.acknowledge(r, 1, 5).unwrap();
        assert_eq!(j.state(), JobState::Running);
        let d = j
            .complete(r, 1, JobOutcome::Succeeded, Some(0), "ok".into(), 9)
            .unwrap();
        assert_eq!(d, Disposition::Final(JobState::Succeeded));
        assert!(
            j.assign(r, "r", Instant::now()).is_err(),
            "a finished job cannot be assigned"
        );
    }

    #[test]
    fn stale_attempts_are_refused() {
        let mut j = job(RetryPolicy::default());
        let (r1, r2) = (RunnerId(1), RunnerId(2));
        j.assign(r1, "a", Instant::now()).unwrap();
        j.acknowledge(r1, 1, 1).unwrap();
        assert_eq!(j.lose_attempt("gone".into(), 10, 1).unwrap(), Disposition::Retry);
        j.assign(r2, "b", Instant::now()).unwrap();
        let err = j
            .complete(r1, 1, JobOutcome::Succeeded, Some(0), String::new(), 2)
            .unwrap_err();
        assert!(matches!(
            err,
            TransitionError::StaleAttempt {
                got: 1,
                current: 2,
                ..
            }
        ));
        // Right attempt number from the wrong runner is stale too.
        assert!(j.acknowledge(r1, 2, 3).is_err());
        j.acknowledge(r2, 2, 3).unwrap();
    }

    #[test]
    fn retries_follow_the_policy() {
        let mut j = job(RetryPolicy {
            max_retries: 1,
            on: RetryOn::FAILED,
        });
        let r = RunnerId(1);
        j.assign(r, "r", Instant::now()).unwrap();
        assert_eq!(
            j.complete(r, 1, JobOutcome::Failed, Some(1), "x".into(), 1)
                .unwrap(),
            Disposition::Retry
        );
        j.assign(r, "r", Instant::now()).unwrap();
        assert_eq!(
            j.complete(r, 2, JobOutcome::Failed, Some(1), "x".into(), 2)
                .unwrap(),
            Disposition::Final(JobState::Failed)
        );
        // LOST is not in this policy: a lost runner ends the job.
        let mut j = job(RetryPolicy {
            max_retries: 3,
            on: RetryOn::FAILED,
        });
        j.assign(r, "r", Instant::now()).unwrap();
        j.acknowledge(r, 1, 1).unwrap();
        assert_eq!(
            j.lose_attempt("gone".into(), 10, 1).unwrap(),
            Disposition::Final(JobState::Lost)
        );
    }

    /// A hand-off that fails (refused, lease expired) is not the job's
    /// fault: the job is queued again without spending a retry, even with
    /// `retry: 0`, until the cap on failed hand-offs in a row.
    #[test]
    fn failed_handoffs_requeue_without_spending_retries() {
        let mut j = job(RetryPolicy {
            max_retries: 0,
            on: RetryOn(0),
        });
        let r = RunnerId(1);
        for n in 1..3 {
            j.assign(r, "r", Instant::now()).unwrap();
            assert_eq!(
                j.lose_attempt("all 1 slots busy".into(), 3, 1).unwrap(),
                Disposition::HandBack { failures: n }
            );
            assert_eq!(j.state(), JobState::Queued);
            assert!(j.message.contains("all 1 slots busy"), "{}", j.message);
        }
        // The report of an attempt that was handed back is over, and says so.
        let err = j.acknowledge(r, 2, 2).unwrap_err();
        assert_eq!(
            err.to_string(),
            "job-1 attempt 2 is no longer current: the job is now queued"
        );
        // An attempt that starts resets the count; it ran, so it is the one
        // attempt `retry: 0` allows.
        j.assign(r, "r", Instant::now()).unwrap();
        j.acknowledge(r, 3, 3).unwrap();
        assert_eq!(j.failed_handoffs, 0);
        assert_eq!(
            j.complete(r, 3, JobOutcome::Succeeded, Some(0), "ok".into(), 4)
                .unwrap(),
            Disposition::Final(JobState::Succeeded)
        );
        let err = j
            .complete(r, 3, JobOutcome::Succeeded, Some(0), "ok".into(), 5)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "job-1 attempt 3 is no longer current: the job is now succeeded"
        );

        // The cap ends the job, naming it and the last reason.
        let mut j = job(RetryPolicy::default());
        for _ in 0..2 {
            j.assign(r, "r", Instant::now()).unwrap();
            j.lose_attempt("agent is draining".into(), 3, 1).unwrap();
        }
        j.assign(r, "r", Instant::now()).unwrap();
        assert_eq!(
            j.lose_attempt("agent is draining".into(), 3, 1).unwrap(),
            Disposition::Final(JobState::Lost)
        );
        assert!(j.message.contains("3 hand-offs"), "{}", j.message);
        assert!(j.message.contains("agent is draining"), "{}", j.message);
    }

    #[test]
    fn cancel_requested_is_never_retried() {
        let mut j = job(RetryPolicy {
            max_retries: 3,
            on: RetryOn(0x07),
        });
        let r = RunnerId(1);
        j.assign(r, "r", Instant::now()).unwrap();
        j.cancel_requested = true;
        assert_eq!(
            j.lose_attempt("gone".into(), 10, 1).unwrap(),
            Disposition::Final(JobState::Cancelled)
        );
    }
}
