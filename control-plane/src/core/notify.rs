//! Announcing a run's start and end to the notifier (commit statuses on
//! the forge, the generic webhook). The core only fills the notice; it is
//! handed over once the turn's changes are durable, and the notifier
//! ([`crate::source::notifier`]) does the I/O off the core.

use super::persist::AfterCommit;
use super::Core;
use crate::source::status::RunNotice;

impl Core {
    /// Announces run `id`'s current state (it just started, started again,
    /// or ended), if it came from a project that reports its runs and a
    /// notifier listens.
    pub(super) fn notify_run(&mut self, id: u64) {
        let Some(notices) = self.config.run_notices.clone() else {
            return;
        };
        let Some(run) = self.runs.get(&id) else { return };
        let Some(trigger) = run.trigger() else { return };
        let Some(project) = self.projects.project(&trigger.project) else {
            return;
        };
        if !project.reports_runs() {
            return;
        }
        let notice = RunNotice {
            project: Box::new(project.clone()),
            trigger: Box::new(trigger.clone()),
            run: self.run_info(run),
        };
        self.after_commit(AfterCommit::Notify(notices, Box::new(notice)));
    }
}
