//! Event fan-out to subscribers. A subscriber that cannot keep up never
//! slows the core: sends never wait; what does not fit in its queue is
//! counted and reported to it as one `Skipped { missed }` marker as soon as
//! its queue has room again.

use valkyrie::message::{Event, EventBody};
use valkyrie::{SendError, SessionSender};

use crate::scheduler::JobId;

struct Subscriber {
    sender: SessionSender,
    correlation: u64,
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
    /// Adds a subscription whose events carry `correlation`.
    pub fn add(&mut self, sender: SessionSender, correlation: u64, job: Option<JobId>, logs: bool) {
        self.subs.push(Subscriber {
            sender,
            correlation,
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
                match sub.sender.try_reply(sub.correlation, marker) {
                    Ok(()) => sub.missed = 0,
                    Err(SendError::QueueFull(_)) => {
                        sub.missed += 1;
                        return true;
                    }
                    Err(_) => return false,
                }
            }
            match sub.sender.try_reply(
                sub.correlation,
                Event {
                    job_id: job.0,
                    body: body.clone(),
                },
            ) {
                Ok(()) => true,
                Err(SendError::QueueFull(_)) => {
                    sub.missed += 1;
                    true
                }
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
