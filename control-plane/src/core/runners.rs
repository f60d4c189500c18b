//! Runner records: identity, capacity, connection and liveness.

use std::collections::BTreeSet;
use std::time::Instant;

use valkyrie::message::{RunnerInfo, RunnerState};
use valkyrie::SessionSender;

use crate::scheduler::{JobId, RunnerId};

/// A runner's connection to this server.
#[derive(Debug)]
pub enum Link {
    /// Connected on session `session`.
    Connected {
        /// Distinguishes this connection from earlier ones of the same runner.
        session: u64,
        /// Where to send assignments and cancels.
        sender: SessionSender,
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
    /// Last frame from the runner.
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
            last_seen_ms_ago: now.saturating_duration_since(self.last_seen).as_millis() as u64,
            version: self.version.clone(),
        }
    }
}
