//! The core's side of the audit log ([`crate::audit`]): records are made
//! during a turn under the actor of the command being handled, stored with
//! the turn's other changes, expired like finished jobs, and read a page at
//! a time.

use valkyrie::message::AuditList;

use super::Core;
use crate::audit::{Actor, AuditAction, AuditRecord, DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE};
use crate::responder::Responder;
use crate::store::Change;

impl Core {
    /// Records that the current actor (or, with none, the server) did
    /// `action` to `target`.
    pub(super) fn audit(&mut self, action: AuditAction, target: String, detail: String) {
        let actor = self.actor.clone().unwrap_or_else(Actor::server);
        self.audit_as(actor, action, target, detail, self.now.wall_ms);
    }

    /// Records an action done by `actor` at `at_ms`.
    pub(super) fn audit_as(
        &mut self,
        actor: Actor,
        action: AuditAction,
        target: String,
        detail: String,
        at_ms: u64,
    ) {
        let now = self.now.wall_ms;
        if at_ms < self.audit_cutoff(now) {
            // Imported after the retention had already passed it.
            tracing::info!(actor = %actor, action = action.as_str(), at_ms, "audit record older than the retention; not kept");
            return;
        }
        let record = AuditRecord {
            id: self.next_audit,
            at_ms,
            actor,
            action,
            target,
            detail,
        };
        self.next_audit += 1;
        self.counters_dirty = true;
        tracing::info!(
            audit_id = record.id,
            actor = %record.actor,
            action = record.action.as_str(),
            target = %record.target,
            "audit"
        );
        self.record(Change::Audit(Box::new(record.clone())));
        self.keep_audit(record);
        self.expire_audit(now);
    }

    /// Appends `record` (the newest id) to the log in memory.
    pub(super) fn keep_audit(&mut self, record: AuditRecord) {
        if self
            .audit_log
            .back()
            .is_some_and(|last| last.at_ms > record.at_ms)
        {
            self.audit_stragglers.insert((record.at_ms, record.id));
        }
        self.audit_log.push_back(record);
    }

    /// Records made before this are past the retention age.
    fn audit_cutoff(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.config.retention.as_millis() as u64)
    }

    /// Deletes the oldest records beyond the retention count, and every
    /// record older than the retention age (the same settings as finished
    /// jobs).
    pub(super) fn expire_audit(&mut self, now_ms: u64) {
        let cutoff = self.audit_cutoff(now_ms);
        while let Some(front) = self.audit_log.front() {
            let too_many = self.audit_log.len() > self.config.finished_job_retention;
            if !too_many && front.at_ms >= cutoff {
                break;
            }
            let (id, at_ms) = (front.id, front.at_ms);
            self.audit_log.pop_front();
            self.audit_stragglers.remove(&(at_ms, id));
            self.record(Change::DeleteAudit(id));
        }
        // Records older than the front, further back: rare (imports), so
        // one pass over the log when one of them is due.
        if self.audit_stragglers.first().is_some_and(|&(at, _)| at < cutoff) {
            let due: std::collections::BTreeSet<u64> = self
                .audit_stragglers
                .iter()
                .take_while(|&&(at, _)| at < cutoff)
                .map(|&(_, id)| id)
                .collect();
            self.audit_stragglers.retain(|&(at, _)| at >= cutoff);
            self.audit_log.retain(|r| !due.contains(&r.id));
            for id in due {
                self.record(Change::DeleteAudit(id));
            }
        }
    }

    /// Answers a page of records, newest first, with ids below `before`
    /// (0: from the newest). `limit` 0 means the default page; more than
    /// the maximum is capped.
    pub(super) fn list_audit(&self, limit: u32, before: u64, reply: Responder) {
        let limit = match limit as usize {
            0 => DEFAULT_AUDIT_PAGE,
            n => n.min(MAX_AUDIT_PAGE),
        };
        let entries = self
            .audit_log
            .iter()
            .rev()
            .filter(|r| before == 0 || r.id < before)
            .take(limit)
            .map(AuditRecord::to_entry)
            .collect();
        reply.reply(AuditList { entries });
    }
}
