//! The core's side of durability: collecting changes during a turn, handing
//! them to the store at the end of the turn with the messages that must wait
//! for them, and rebuilding the state from the store at start.

use std::time::Duration;

use tracing::{debug, info, warn};
use valkyrie::message::{Assign, JobState, Message};
use valkyrie::transport::MAX_RECONNECT_INTERVAL;
use valkyrie::SessionSender;

use super::{Core, JobLogs, Link, RunnerRecord, StoredLog};
use crate::responder::Responder;
use crate::run::Run;
use crate::scheduler::{JobId, RunnerId};
use crate::store::{Change, Counters, Loaded};

/// Something to do once a turn's changes are durable. The core does it
/// when the store reports the batch committed ([`Core::committed`]).
pub(super) enum AfterCommit {
    /// Send a reply.
    Reply(Responder, Message),
    /// Hand an assignment to its runner's session: only while its attempt
    /// is still the current one, with its lease running from then.
    Assign(SessionSender, Assign),
    /// Hand a run's new state to the notifier (commit statuses, webhooks).
    Notify(
        crate::source::notifier::RunNotices,
        Box<crate::source::status::RunNotice>,
    ),
}

impl std::fmt::Debug for AfterCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AfterCommit::Reply(_, m) => write!(f, "Reply({})", m.kind()),
            AfterCommit::Assign(_, a) => write!(f, "Assign(job {} attempt {})", a.job_id, a.attempt),
            AfterCommit::Notify(_, n) => write!(f, "Notify(run {})", n.run.run_id),
        }
    }
}

impl Core {
    /// Records a change for the end of this turn's commit.
    pub(super) fn record(&mut self, change: Change) {
        if self.store.is_some() {
            self.changes.push(change);
        }
    }

    /// Runs `action` once this turn's changes are durable (at once without
    /// a store).
    pub(super) fn after_commit(&mut self, action: AfterCommit) {
        if self.store.is_some() {
            self.after.push(action);
        } else {
            self.perform(action);
        }
    }

    /// Does what waited for a commit. An assignment is sent only if its
    /// attempt is still the current one, and its lease runs from now: had
    /// its lease run out while the commit was slow, the job was queued
    /// again, and sending it anyway would start an attempt beside its
    /// successor.
    fn perform(&mut self, action: AfterCommit) {
        match action {
            AfterCommit::Reply(responder, message) => responder.reply(message),
            AfterCommit::Assign(sender, assign) => {
                let deadline = self.now.at + self.config.assign_lease;
                let current = self
                    .jobs
                    .get_mut(&JobId(assign.job_id))
                    .is_some_and(|job| job.lease_from(assign.attempt, deadline));
                if !current {
                    debug!(
                        job_id = assign.job_id,
                        attempt = assign.attempt,
                        "assignment no longer current once durable; not sent"
                    );
                    return;
                }
                if let Err(err) = sender.push(0, assign) {
                    debug!(%err, "assignment not sent: the runner's session is gone or not reading");
                }
            }
            AfterCommit::Notify(notices, notice) => notices.offer(*notice),
        }
    }

    /// End of a turn: send the states that changed in it, and hand the
    /// changes and what waits for them to the store.
    pub(super) fn flush(&mut self) {
        let jobs = &self.jobs;
        self.subscribers
            .publish_changed(|j| jobs.get(&j).map(super::state_event));
        let Some(store) = self.store.clone() else {
            // Without a store nothing waits to be written: what changed is
            // forgotten, not kept for ever.
            self.dirty_jobs.clear();
            self.dirty_runs.clear();
            self.counters_dirty = false;
            return;
        };
        let dirty_jobs = std::mem::take(&mut self.dirty_jobs);
        for id in dirty_jobs {
            let change = match self.jobs.get(&id) {
                Some(job) => Change::Job(Box::new(job.clone())),
                None => Change::DeleteJob(id.0),
            };
            self.changes.push(change);
        }
        let dirty_runs = std::mem::take(&mut self.dirty_runs);
        for id in dirty_runs {
            if let Some(run) = self.runs.get(&id) {
                self.changes.push(Change::Run(Box::new(run.to_row())));
            }
        }
        if std::mem::take(&mut self.counters_dirty) {
            self.changes.push(Change::Counters(Counters {
                next_job: self.next_job,
                next_run: self.next_run,
                next_pipeline: self.next_pipeline,
                next_runner: self.next_runner,
                next_audit: self.next_audit,
            }));
        }
        let after = std::mem::take(&mut self.after);
        if self.changes.is_empty() {
            // Nothing new to commit: what waits goes after the batches in
            // flight, or at once if there are none.
            if self.last_batch == self.committed_batch {
                after.into_iter().for_each(|action| self.perform(action));
            } else if !after.is_empty() {
                match self.awaiting.back_mut() {
                    Some((id, waiting)) if *id == self.last_batch => waiting.extend(after),
                    _ => self.awaiting.push_back((self.last_batch, after)),
                }
            }
            return;
        }
        self.last_batch += 1;
        store.submit(self.last_batch, std::mem::take(&mut self.changes));
        if !after.is_empty() {
            self.awaiting.push_back((self.last_batch, after));
        }
    }

    /// The store made every batch up to `batch` durable: what waited for
    /// them is done, in order.
    pub(super) fn committed(&mut self, batch: u64, now: super::Now) {
        self.now = now;
        self.committed_batch = batch;
        while self.awaiting.front().is_some_and(|(id, _)| *id <= batch) {
            let Some((_, actions)) = self.awaiting.pop_front() else {
                break;
            };
            for action in actions {
                self.perform(action);
            }
        }
    }

    /// Rebuilds the state from the store. Queued jobs queue again; jobs that
    /// were assigned or running stay with their runner, which has
    /// `runner_lost_after` to reconnect and re-report them (they are then
    /// re-attached) before they are retried or marked lost like any job of
    /// a lost runner. Nothing is dropped silently and nothing is queued
    /// twice.
    pub(super) fn recover(&mut self, loaded: Loaded) {
        let now = self.now.at;
        let counters = loaded.counters;
        self.next_job = counters.next_job.max(1);
        self.next_run = counters.next_run.max(1);
        self.next_pipeline = counters.next_pipeline.max(1);
        self.next_runner = counters.next_runner.max(1);
        self.next_audit = counters.next_audit.max(1);
        for record in loaded.audit {
            self.next_audit = self.next_audit.max(record.id + 1);
            self.keep_audit(record);
        }
        self.expire_audit(self.now.wall_ms);
        self.projects.recover(loaded.projects, loaded.deliveries);
        for mut def in loaded.pipelines {
            if def.source.is_empty() {
                // Stored before texts were masked: `yaml` is the source.
                def.source = std::mem::take(&mut def.yaml);
                def.yaml = crate::masking::masked_pipeline_text(&def.file_name, &def.source);
            }
            self.next_pipeline = self.next_pipeline.max(def.id + 1);
            self.pipelines.insert(def.id, def);
        }
        for row in loaded.runners {
            let id = RunnerId(row.id);
            self.next_runner = self.next_runner.max(row.id + 1);
            self.tokens.restore_runner_credential(&row.credential);
            self.runner_names.insert(row.name.clone(), id);
            let tags = self.scheduler.tag_set(&row.tags);
            self.scheduler.upsert_runner(id, tags, row.slots);
            // The lost clock starts once the agent had time to come back:
            // it may be waiting out its reconnect back-off (at most
            // MAX_RECONNECT_INTERVAL) while we were down.
            let record = RunnerRecord::new(row, Link::Disconnected(now + MAX_RECONNECT_INTERVAL), now);
            self.scheduler.set_availability(id, record.availability());
            self.runners.insert(id, record);
        }
        let (mut queued, mut on_runners, mut finished) = (0, 0, 0);
        for mut job in loaded.jobs {
            self.next_job = self.next_job.max(job.id.0 + 1);
            match job.state() {
                JobState::Queued => {
                    self.enqueue(&job);
                    queued += 1;
                }
                JobState::Assigned | JobState::Running => {
                    // The lease and the server-side timeout start again.
                    if job.state() == JobState::Assigned {
                        job.lease_deadline = Some(
                            now + MAX_RECONNECT_INTERVAL
                                + self.config.runner_lost_after
                                + self.config.assign_lease,
                        );
                    }
                    if job.spec.timeout_ms > 0 || job.cancel_requested {
                        job.kill_deadline = Some(
                            now + Duration::from_millis(job.spec.timeout_ms)
                                + self.config.kill_grace
                                + self.config.runner_lost_after
                                + MAX_RECONNECT_INTERVAL,
                        );
                    }
                    match job.runner.and_then(|r| self.runners.get_mut(&r)) {
                        Some(runner) => {
                            runner.jobs.insert(job.id);
                        }
                        None => warn!(job_id = job.id.0, "job on an unknown runner; it will be retried"),
                    }
                    on_runners += 1;
                }
                _ => {
                    self.finished.push_back(job.id);
                    finished += 1;
                }
            }
            self.jobs.insert(job.id, job);
        }
        // A job on no known runner cannot be re-reported: retry it now.
        let orphans: Vec<JobId> = self
            .jobs
            .values()
            .filter(|j| matches!(j.state(), JobState::Assigned | JobState::Running))
            .filter(|j| j.runner.is_none_or(|r| !self.runners.contains_key(&r)))
            .map(|j| j.id)
            .collect();
        for id in orphans {
            self.lose(id, None, "its runner is unknown after a restart");
        }
        for log in loaded.logs {
            let id = JobId(log.job);
            let logs: &mut JobLogs = self.logs.entry(id).or_default();
            logs.bytes += log.data.len();
            logs.next_seq = logs.next_seq.max(log.seq + 1);
            logs.chunks.push(StoredLog {
                stream: log.stream,
                seq: log.seq,
                data: log.data.into(),
            });
        }
        let now_ms = self.now.wall_ms;
        for row in loaded.runs {
            self.next_run = self.next_run.max(row.id + 1);
            let id = row.id;
            match Run::from_row(row, now_ms, now) {
                Ok(run) => {
                    for (index, job) in run.released_jobs() {
                        self.job_runs.insert(job, (id, index));
                    }
                    self.runs.insert(id, run);
                }
                Err(err) => warn!(run_id = id, %err, "stored run cannot be rebuilt; it is left out"),
            }
        }
        // Jobs may have finished after their run was last stored.
        let run_ids: Vec<u64> = self.runs.keys().copied().collect();
        for id in run_ids {
            let states: Vec<(usize, JobState)> = match self.runs.get(&id) {
                Some(run) => run
                    .released_jobs()
                    .filter_map(|(i, job)| self.jobs.get(&job).map(|j| (i, j.state())))
                    .collect(),
                None => continue,
            };
            if let Some(run) = self.runs.get_mut(&id) {
                for (index, state) in states {
                    run.job_changed(index, state);
                }
            }
            self.advance_run(id);
        }
        info!(
            queued,
            on_runners,
            finished,
            runs = self.runs.len(),
            "state recovered from the store"
        );
    }
}
