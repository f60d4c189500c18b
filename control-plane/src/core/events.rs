//! Event fan-out to subscribers. A subscriber that cannot keep up never
//! slows the core: sends never wait; what does not fit in its queue is
//! counted and reported to it as one `Skipped { missed }` marker as soon as
//! its queue has room again.

use valkyrie::message::{Event, EventBody};
use valkyrie::SendError;

use crate::responder::EventSink;

use crate::scheduler::JobId;

struct Subscriber {
    sink: EventSink,
    job: Option<JobId>,
    logs: bool,
    missed: u64,
}

/// The set of live subscriptions.
#[derive(Default)]
pub struct Subscribers {
    subs: Vec<Subscriber>,
}

impl Subscribers {
    /// Adds a subscription.
    pub fn add(&mut self, sink: EventSink, job: Option<JobId>, logs: bool) {
        self.subs.push(Subscriber {
            sink,
            job,
            logs,
            missed: 0,
        });
    }

    /// Sends one event to everyone it concerns.
    pub fn publish(&mut self, job: JobId, body: &EventBody) {
        let is_log = matches!(body, EventBody::Log { .. });
        self.subs.retain_mut(|sub| {
            if sub.job.is_some_and(|j| j != job) || (is_log && !sub.logs) {
                return true;
            }
            if sub.missed > 0 {
                let marker = Event {
                    job_id: job.0,
                    body: EventBody::Skipped { missed: sub.missed },
                };
                match sub.sink.try_send(marker) {
                    Ok(()) => sub.missed = 0,
                    Err(SendError::QueueFull(_)) => {
                        sub.missed += 1;
                        return true;
                    }
                    Err(_) => return false,
                }
            }
            match sub.sink.try_send(Event {
                job_id: job.0,
                body: body.clone(),
            }) {
                Ok(()) => true,
                Err(SendError::QueueFull(_)) => {
                    sub.missed += 1;
                    true
                }
                Err(_) => false,
            }
        });
    }

    /// Sends the pending `Skipped` markers of subscribers that fell behind
    /// and have had no event since (called on the core's tick), so that a
    /// subscriber learns it missed events even when nothing else follows.
    pub fn flush_markers(&mut self) {
        self.subs.retain_mut(|sub| {
            if sub.missed == 0 {
                return true;
            }
            let job_id = sub.job.map_or(0, |j| j.0);
            let marker = Event {
                job_id,
                body: EventBody::Skipped { missed: sub.missed },
            };
            match sub.sink.try_send(marker) {
                Ok(()) => {
                    sub.missed = 0;
                    true
                }
                Err(SendError::QueueFull(_)) => true,
                Err(_) => false,
            }
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
