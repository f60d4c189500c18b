//! Event fan-out to subscribers. A subscriber that cannot keep up never
//! slows the core: sends never wait; what does not fit in its queue is
//! counted and reported to it as one `Skipped { missed }` marker as soon as
//! its queue has room again.
//!
//! Guarantee: a subscriber may miss intermediate events, but **never a
//! terminal state**. Whenever a state event is dropped for it (for a
//! one-job subscription, any event), the job is remembered; after the
//! `Skipped` marker the subscriber gets the job's current state, so the
//! last state it sees of every job it follows is the job's real one.
//!
//! State events are coalesced per turn of the core: a job whose state
//! changes several times in one turn (queued and assigned at once, running
//! and finished in one batch of its agent's reports) costs each subscriber
//! one event, its state at the end of the turn. A job's pending state goes
//! out before its next log event, so output never precedes the state it
//! was produced in.

use std::collections::BTreeSet;

use foldhash::HashSet;

use valkyrie::message::{Event, EventBody};
use valkyrie::SendError;

use crate::responder::EventSink;

use crate::scheduler::JobId;

struct Subscriber {
    sink: EventSink,
    job: Option<JobId>,
    logs: bool,
    /// Events dropped since the last `Skipped` marker.
    missed: u64,
    /// Jobs whose current state this subscriber is owed (after the marker).
    owed: BTreeSet<JobId>,
    /// An all-jobs replay still owes its `ReplayDone` (after `owed`).
    replay_done_owed: bool,
}

/// Why a catch-up stopped.
enum CatchUp {
    /// Nothing is owed any more.
    Done,
    /// The queue is full; the rest waits.
    Behind,
    /// The subscriber is gone.
    Gone,
}

impl Subscriber {
    fn concerns(&self, job: JobId, is_log: bool) -> bool {
        self.job.is_none_or(|j| j == job) && (!is_log || self.logs)
    }

    fn try_send(&self, event: Event) -> Result<(), CatchUp> {
        match self.sink.try_send(event) {
            Ok(()) => Ok(()),
            Err(SendError::QueueFull(_)) => Err(CatchUp::Behind),
            Err(_) => Err(CatchUp::Gone),
        }
    }

    /// Sends what the subscriber is owed, in order: the `Skipped` marker,
    /// the current state of each owed job, then an owed `ReplayDone`.
    fn catch_up(&mut self, marker_job: u64, current: &impl Fn(JobId) -> Option<EventBody>) -> CatchUp {
        if self.missed > 0 {
            let marker = Event {
                job_id: marker_job,
                body: EventBody::Skipped { missed: self.missed },
            };
            if let Err(stop) = self.try_send(marker) {
                return stop;
            }
            self.missed = 0;
        }
        while let Some(&job) = self.owed.first() {
            if let Some(body) = current(job) {
                if let Err(stop) = self.try_send(Event { job_id: job.0, body }) {
                    return stop;
                }
            }
            self.owed.remove(&job);
        }
        if self.replay_done_owed {
            let done = Event {
                job_id: 0,
                body: EventBody::ReplayDone,
            };
            if let Err(stop) = self.try_send(done) {
                return stop;
            }
            self.replay_done_owed = false;
        }
        CatchUp::Done
    }

    fn owes(&self) -> bool {
        self.missed > 0 || !self.owed.is_empty() || self.replay_done_owed
    }

    /// Counts an event that could not be sent, remembering its job when
    /// its state must follow the marker.
    fn dropped(&mut self, job: JobId, body: &EventBody) {
        self.missed += 1;
        if self.job.is_some() || matches!(body, EventBody::State { .. }) {
            self.owed.insert(job);
        }
    }
}

/// The set of live subscriptions.
#[derive(Default)]
pub struct Subscribers {
    subs: Vec<Subscriber>,
    /// Jobs whose state changed this turn, in the order of their first
    /// change; their state is sent at the end of the turn.
    changed: Vec<JobId>,
    changed_set: HashSet<JobId>,
}

impl Subscribers {
    /// Adds a subscription.
    pub fn add(&mut self, sink: EventSink, job: Option<JobId>, logs: bool) {
        self.subs.push(Subscriber {
            sink,
            job,
            logs,
            missed: 0,
            owed: BTreeSet::new(),
            replay_done_owed: false,
        });
    }

    /// Adds an all-jobs subscription with replay: the current state of
    /// each of `unfinished`, then `ReplayDone`, then live events. What does
    /// not fit in its queue now follows as it makes room, before any live
    /// event.
    pub fn add_replaying(
        &mut self,
        sink: EventSink,
        logs: bool,
        unfinished: BTreeSet<JobId>,
        current: impl Fn(JobId) -> Option<EventBody>,
    ) {
        let mut sub = Subscriber {
            sink,
            job: None,
            logs,
            missed: 0,
            owed: unfinished,
            replay_done_owed: true,
        };
        if !matches!(sub.catch_up(0, &current), CatchUp::Gone) {
            self.subs.push(sub);
        }
    }

    /// Notes that `job`'s state changed: its state is sent once, at the
    /// end of the turn ([`Subscribers::publish_changed`]).
    pub fn state_changed(&mut self, job: JobId) {
        if !self.subs.is_empty() && self.changed_set.insert(job) {
            self.changed.push(job);
        }
    }

    /// End of a turn: sends the state of every job that changed in it,
    /// once each. `current` gives a job's state.
    pub fn publish_changed(&mut self, current: impl Fn(JobId) -> Option<EventBody>) {
        if self.changed.is_empty() {
            return;
        }
        self.changed_set.clear();
        for job in std::mem::take(&mut self.changed) {
            if let Some(body) = current(job) {
                self.send(job, &body, &current);
            }
        }
    }

    /// Sends `job`'s pending state change now, if it has one (before its
    /// log, or before the job is forgotten).
    pub fn publish_changed_job(&mut self, job: JobId, current: impl Fn(JobId) -> Option<EventBody>) {
        if self.changed_set.remove(&job) {
            self.changed.retain(|j| *j != job);
            if let Some(body) = current(job) {
                self.send(job, &body, &current);
            }
        }
    }

    /// Sends one event to everyone it concerns: a log event at once (after
    /// its job's pending state), a state event at the end of the turn.
    /// `current` gives a job's current state, for subscribers owed one.
    pub fn publish(&mut self, job: JobId, body: &EventBody, current: impl Fn(JobId) -> Option<EventBody>) {
        match body {
            EventBody::State { .. } => self.state_changed(job),
            _ => {
                self.publish_changed_job(job, &current);
                self.send(job, body, &current);
            }
        }
    }

    fn send(&mut self, job: JobId, body: &EventBody, current: impl Fn(JobId) -> Option<EventBody>) {
        let is_log = matches!(body, EventBody::Log { .. });
        self.subs.retain_mut(|sub| {
            if !sub.concerns(job, is_log) {
                return true;
            }
            if sub.owes() {
                match sub.catch_up(job.0, &current) {
                    CatchUp::Done => {}
                    CatchUp::Behind => {
                        sub.dropped(job, body);
                        return true;
                    }
                    CatchUp::Gone => return false,
                }
            }
            let event = Event {
                job_id: job.0,
                body: body.clone(),
            };
            match sub.try_send(event) {
                Ok(()) => true,
                Err(CatchUp::Behind) => {
                    sub.dropped(job, body);
                    true
                }
                Err(_) => false,
            }
        });
    }

    /// Sends what subscribers that fell behind are owed (the `Skipped`
    /// marker, then current states) once they have room, even when no
    /// other event follows (called on the core's tick).
    pub fn flush_markers(&mut self, current: impl Fn(JobId) -> Option<EventBody>) {
        self.subs.retain_mut(|sub| {
            if !sub.owes() {
                return true;
            }
            let marker_job = sub.job.map_or(0, |j| j.0);
            !matches!(sub.catch_up(marker_job, &current), CatchUp::Gone)
        });
    }

    /// How many subscriptions are live.
    pub fn len(&self) -> usize {
        self.subs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.subs.is_empty()
    }
}
