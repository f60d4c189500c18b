//! Runner records: identity, capacity, connection and liveness.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use valkyrie::message::{RunnerInfo, RunnerState};
use valkyrie::SessionSender;

use crate::scheduler::{JobId, RunnerId};

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

/// A runner's connection to this server.
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
    /// Connection state.
    pub link: Link,
    /// The agent said it drains.
    pub draining: bool,
    /// Last message from the runner that reached the core; the session's
    /// [`Heard`] mark may be later (see [`last_seen`](Self::last_seen)).
    pub last_seen: Instant,
    /// Jobs whose current attempt is on this runner.
    pub jobs: BTreeSet<JobId>,
    /// `vk runners rm --force`: remove the record once it disconnects.
    pub remove_when_gone: bool,
}

impl RunnerRecord {
    /// The session sender, when connected.
    pub fn sender(&self) -> Option<&SessionSender> {
        match &self.link {
            Link::Connected { sender, .. } => Some(sender),
            _ => None,
        }
    }

    /// When the runner was last heard from, by the core or its session.
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
