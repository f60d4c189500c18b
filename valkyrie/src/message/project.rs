//! Projects and their schedules as clients see them (`vk projects`, `vk
//! schedules`): what [`ProjectList`](super::ProjectList) and
//! [`ScheduleList`](super::ScheduleList) carry. Secrets are never sent
//! back: a project only says whether it has them.

use serde::{Deserialize, Serialize};

use super::field::WireField;
use super::wire::{Reader, Writer};
use crate::error::DecodeError;

/// One project: a git repository whose pushes, triggers and schedules
/// start runs of its pipeline file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectInfo {
    /// Unique name.
    pub name: String,
    /// Clone URL, without credentials.
    pub repo: String,
    /// Default branch.
    pub branch: String,
    /// Path of the pipeline file in the repository.
    pub file: String,
    /// Whether it has a webhook secret (never sent).
    pub has_webhook_secret: bool,
    /// Whether it has a token for its repository (never sent).
    pub has_token: bool,
    /// Creation time, in milliseconds since the Unix epoch.
    pub created_at_ms: u64,
}

impl ProjectInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            name: r.string("project.name")?,
            repo: r.string("project.repo")?,
            branch: r.string("project.branch")?,
            file: r.string("project.file")?,
            has_webhook_secret: bool::read(r, "project.has_webhook_secret")?,
            has_token: bool::read(r, "project.has_token")?,
            created_at_ms: r.u64("project.created_at_ms")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.string(&self.name);
        w.string(&self.repo);
        w.string(&self.branch);
        w.string(&self.file);
        self.has_webhook_secret.write(w);
        self.has_token.write(w);
        w.u64(self.created_at_ms);
    }
}

/// One schedule: a cron expression that starts a run of a project's
/// branch in each of its slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// Id, unique in the server.
    pub id: u64,
    /// The project.
    pub project: String,
    /// The cron expression (UTC): 5 fields, or 6 with seconds first.
    pub cron: String,
    /// The branch each run checks out.
    pub branch: String,
    /// Variables every job of its runs gets.
    pub variables: Vec<(String, String)>,
    /// The last slot fired (or skipped), in milliseconds since the Unix
    /// epoch; 0 before the first.
    pub last_slot_ms: u64,
    /// The next slot, in milliseconds since the Unix epoch; 0 if none.
    pub next_ms: u64,
}

impl ScheduleInfo {
    pub(crate) fn read(r: &mut Reader) -> Result<Self, DecodeError> {
        Ok(Self {
            id: r.u64("schedule.id")?,
            project: r.string("schedule.project")?,
            cron: r.string("schedule.cron")?,
            branch: r.string("schedule.branch")?,
            variables: <Vec<(String, String)>>::read(r, "schedule.variables")?,
            last_slot_ms: r.u64("schedule.last_slot_ms")?,
            next_ms: r.u64("schedule.next_ms")?,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer) {
        w.u64(self.id);
        w.string(&self.project);
        w.string(&self.cron);
        w.string(&self.branch);
        self.variables.write(w);
        w.u64(self.last_slot_ms);
        w.u64(self.next_ms);
    }
}
