//! Runner records: identity, capacity, connection and liveness.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use valkyrie::message::{RunnerInfo, RunnerState};
use valkyrie::SessionSender;

use crate::scheduler::{Availability, JobId, RunnerId};

/// When an agent was last heard from. Its session task marks every message
/// it reads, so heartbeats (the bulk of an idle fleet's traffic) never reach
/// the core; the core reads the mark when it judges liveness.
#[derive(Debug, Clone)]
pub struct Heard {
    since: Instant,
    /// Milliseconds after `since`.
    ms: Arc<AtomicU64>,
}

impl Heard {
    /// Heard now.
    pub fn new(now: Instant) -> Self {
        Self {
            since: now,
            ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The agent was heard at `now`.
    pub fn mark(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.since).as_millis() as u64;
        self.ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the agent was last heard (to the millisecond).
    pub fn at(&self) -> Instant {
        self.since + Duration::from_millis(self.ms.load(Ordering::Relaxed))
    }
}

/// A runner's connection to this server: one half of its lifecycle (the
/// other is whether it drains). The scheduler's availability is derived
/// from both ([`RunnerRecord::availability`]) and handed over after every
/// transition, so the three can never disagree.
///
/// ```text
///               register (a new record, not draining)
///                   |
///                   v       Drain (agent or operator)
///   +-------> Connected ------------------------------+
///   |           |     ^                               |  (draining: takes no
///   |  session  |     | register again                |   new job; its own
///   |  ended    v     | (same credential)             |   finish)
///   |      Disconnected                               v
///   |           | runner_lost_after, or         Connected+draining
///   |           | silent for runner_lost_after        |
///   |           v                                     | session ended
///   |         Lost  <---------------------------------+
///   |           |
///   +-----------+ register again
///
/// shown as: Connected idle/busy, draining; Disconnected or Lost: lost, or
/// stopped when it drained with nothing left to run.
/// ```
#[derive(Debug)]
pub enum Link {
    /// Connected on session `session`.
    Connected {
        /// Distinguishes this connection from earlier ones of the same runner.
        session: u64,
        /// Where to send assignments and cancels.
        sender: SessionSender,
        /// Marked by the session on every message from the agent.
        heard: Heard,
    },
    /// Disconnected since the instant; lost after `runner_lost_after`.
    Disconnected(Instant),
    /// Declared lost; its jobs were retried or lost.
    Lost,
}

/// One registered runner.
#[derive(Debug)]
pub struct RunnerRecord {
    /// Id.
    pub id: RunnerId,
    /// Unique name.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Operating system.
    pub os: String,
    /// Architecture.
    pub arch: String,
    /// Slots.
    pub slots: u32,
    /// Agent version.
    pub version: String,
    /// Credential issued at registration.
    pub credential: String,
    /// Connection state; changed only by the transitions below.
    link: Link,
    /// The agent (or an operator) said it drains.
    draining: bool,
    /// When it was last heard from before its current link: set when it
    /// registered and when its connection ends (from the session's
    /// [`Heard`] mark, which covers every message while connected).
    last_seen: Instant,
    /// Jobs whose current attempt is on this runner.
    pub jobs: BTreeSet<JobId>,
    /// `vk runners rm --force`: remove the record once it disconnects.
    pub remove_when_gone: bool,
}

impl RunnerRecord {
    /// A runner known by `row`, in state `link`, not draining.
    pub fn new(row: crate::store::RunnerRow, link: Link, now: Instant) -> Self {
        Self {
            id: RunnerId(row.id),
            name: row.name,
            tags: row.tags,
            os: row.os,
            arch: row.arch,
            slots: row.slots,
            version: row.version,
            credential: row.credential,
            link,
            draining: false,
            last_seen: now,
            jobs: BTreeSet::new(),
            remove_when_gone: false,
        }
    }

    /// Its connection state.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// Whether it drains.
    pub fn draining(&self) -> bool {
        self.draining
    }

    /// What the scheduler may do with it: derived, never set by hand.
    pub fn availability(&self) -> Availability {
        match self.link {
            Link::Connected { .. } if self.draining => Availability::Draining,
            Link::Connected { .. } => Availability::Ready,
            Link::Disconnected(_) | Link::Lost => Availability::Lost,
        }
    }

    /// Its session ended at `at`.
    pub fn disconnect(&mut self, at: Instant) {
        self.last_seen = self.last_seen();
        self.link = Link::Disconnected(at);
    }

    /// Declared lost (disconnected or silent too long).
    pub fn lose(&mut self) {
        self.last_seen = self.last_seen();
        self.link = Link::Lost;
    }

    /// It takes no new job from now on.
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// The session sender, when connected.
    pub fn sender(&self) -> Option<&SessionSender> {
        match &self.link {
            Link::Connected { sender, .. } => Some(sender),
            _ => None,
        }
    }

    /// When the runner was last heard from.
    pub fn last_seen(&self) -> Instant {
        match &self.link {
            Link::Connected { heard, .. } => self.last_seen.max(heard.at()),
            _ => self.last_seen,
        }
    }

    /// Whether `session` is the runner's current connection.
    pub fn is_session(&self, session: u64) -> bool {
        matches!(self.link, Link::Connected { session: s, .. } if s == session)
    }

    /// The registry state shown to people.
    pub fn state(&self) -> RunnerState {
        match self.link {
            // A drained agent that went away with nothing left to do was
            // stopped on purpose (SIGTERM), not lost.
            Link::Lost | Link::Disconnected(_) if self.draining && self.jobs.is_empty() => {
                RunnerState::Stopped
            }
            Link::Lost | Link::Disconnected(_) => RunnerState::Lost,
            Link::Connected { .. } if self.draining => RunnerState::Draining,
            Link::Connected { .. } if self.jobs.len() as u32 >= self.slots => RunnerState::Busy,
            Link::Connected { .. } => RunnerState::Idle,
        }
    }

    /// The listing view.
    pub fn info(&self, now: Instant) -> RunnerInfo {
        RunnerInfo {
            runner_id: self.id.0,
            name: self.name.clone(),
            tags: self.tags.clone(),
            os: self.os.clone(),
            arch: self.arch.clone(),
            slots: self.slots,
            busy: self.jobs.len() as u32,
            state: self.state(),
            last_seen_ms_ago: now.saturating_duration_since(self.last_seen()).as_millis() as u64,
            version: self.version.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunnerRow;

    fn row() -> RunnerRow {
        RunnerRow {
            id: 1,
            name: "a".into(),
            tags: vec![],
            os: "linux".into(),
            arch: "x86_64".into(),
            slots: 1,
            version: "1".into(),
            credential: "c".into(),
        }
    }

    #[test]
    fn the_schedulers_availability_follows_every_transition() {
        let now = Instant::now();
        let (sender, _sent) = SessionSender::in_memory();
        let link = Link::Connected {
            session: 1,
            sender,
            heard: Heard::new(now),
        };
        let mut r = RunnerRecord::new(row(), link, now);
        assert_eq!(
            (r.availability(), r.state()),
            (Availability::Ready, RunnerState::Idle)
        );
        r.drain();
        assert_eq!(
            (r.availability(), r.state()),
            (Availability::Draining, RunnerState::Draining)
        );
        r.disconnect(now);
        assert_eq!(
            (r.availability(), r.state()),
            (Availability::Lost, RunnerState::Stopped)
        );
        r.jobs.insert(JobId(7));
        assert_eq!(
            r.state(),
            RunnerState::Lost,
            "gone with a job left: lost, not stopped"
        );
        r.lose();
        assert_eq!(r.availability(), Availability::Lost);

        let mut recovered = RunnerRecord::new(row(), Link::Disconnected(now), now);
        assert_eq!(recovered.availability(), Availability::Lost);
        assert!(!recovered.draining());
        recovered.lose();
        assert!(matches!(recovered.link(), Link::Lost));
    }
}
