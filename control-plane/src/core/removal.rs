//! Removing runner records: by an operator (`vk runners rm`, REST
//! `DELETE /api/runners/{name}`), and automatically once a runner has been
//! lost or stopped for longer than [`CoreConfig::runner_retention`].
//!
//! A record is only removed while its runner is not connected: a connected
//! runner would otherwise keep running jobs the server no longer knows it
//! has. `force` drains a connected runner instead and removes it when it
//! disconnects.

use std::time::Instant;

use valkyrie::ErrorCode;

use super::{Core, Link};
use crate::audit::{Actor, AuditAction};
use crate::responder::Responder;
use crate::scheduler::RunnerId;
use crate::store::Change;

impl Core {
    pub(super) fn remove_runner_by_name(&mut self, name: &str, force: bool, reply: Responder) {
        let Some(&id) = self.runner_names.get(name) else {
            let known: Vec<&str> = self.runner_names.keys().map(String::as_str).collect();
            let hint = if known.is_empty() {
                "no runner is registered".to_owned()
            } else {
                format!("`vk runners` lists them: {}", known.join(", "))
            };
            reply.fail(ErrorCode::NOT_FOUND, format!("no runner named `{name}`; {hint}"));
            return;
        };
        let Some(runner) = self.runners.get(&id) else {
            reply.fail(ErrorCode::NOT_FOUND, format!("no runner named `{name}`"));
            return;
        };
        if matches!(runner.link(), Link::Connected { .. }) {
            if !force {
                reply.fail(
                    ErrorCode::CONFLICT,
                    format!(
                        "runner `{name}` is connected ({}); stop its agent first, or use --force \
                         to drain it and remove it once it disconnects",
                        runner.state().as_str()
                    ),
                );
                return;
            }
            if let Err(refused) = self.drain_runner(id.0) {
                return reply.refuse(refused);
            }
            if let Some(runner) = self.runners.get_mut(&id) {
                runner.remove_when_gone = true;
            }
            self.audit(
                AuditAction::RemoveRunner,
                format!("runner {}", id.0),
                format!("{name}: draining, removed once it disconnects"),
            );
            reply.ack();
            return;
        }
        self.audit(
            AuditAction::RemoveRunner,
            format!("runner {}", id.0),
            name.to_owned(),
        );
        self.remove_runner(id, "removed by an operator");
        self.after_commit(super::persist::AfterCommit::Reply(
            reply,
            valkyrie::message::Ack {}.into(),
        ));
    }

    /// Forgets runner `id` (not connected): its record, its name, its
    /// scheduler entry and its stored row. Jobs still counted on it are
    /// lost, as when a runner is declared lost.
    pub(super) fn remove_runner(&mut self, id: RunnerId, why: &str) {
        let Some(mut runner) = self.runners.remove(&id) else {
            return;
        };
        self.runner_names.remove(&runner.name);
        self.scheduler.remove_runner(id);
        for job in std::mem::take(&mut runner.jobs) {
            self.lose(job, Some(id), "its runner was removed");
        }
        tracing::info!(runner = %runner.name, why, "runner removed");
        self.record(Change::DeleteRunner(id.0));
    }

    /// Removes the runners lost or stopped for longer than the retention.
    /// Looked for only once the first can be due: a runner is last seen
    /// no earlier than it was at the last look (or, registered since, than
    /// the look itself), so none is removed before the earliest of those
    /// instants plus the retention (looked for at least once a day).
    pub(super) fn remove_old_runners(&mut self, now: Instant) {
        if now < self.removal_check_at {
            return;
        }
        let retention = self.config.runner_retention;
        let mut next = now + retention.min(super::LOOK_AT_LEAST_EVERY);
        let mut old: Vec<(RunnerId, String)> = Vec::new();
        for r in self.runners.values() {
            let seen = r.last_seen();
            if !matches!(r.link(), Link::Connected { .. }) && now.saturating_duration_since(seen) >= retention
            {
                old.push((r.id, r.name.clone()));
            } else {
                next = next.min(seen.checked_add(retention).unwrap_or(next));
            }
        }
        self.removal_check_at = next;
        for (id, name) in old {
            let detail = format!(
                "{name}: not seen for over {}",
                humantime::format_duration(retention)
            );
            self.audit_as(
                Actor::server(),
                AuditAction::RemoveRunner,
                format!("runner {}", id.0),
                detail,
                self.now.wall_ms,
            );
            self.remove_runner(id, "not seen for longer than the runner retention");
        }
    }
}
