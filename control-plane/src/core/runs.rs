//! What people do to a run besides cancelling it: play a manual job, and
//! rerun it (all of it, or only what failed).

use valkyrie::message::{Ack, RunAccepted};

use super::persist::AfterCommit;
use super::{Core, CoreError};
use crate::audit::AuditAction;
use crate::responder::Responder;
use crate::run::Run;

/// A request about one run.
#[derive(Debug)]
pub enum RunCommand {
    /// Start manual job `job` of run `run_id`; answered with Ack.
    Play {
        /// The run.
        run_id: u64,
        /// The job's name in the run.
        job: String,
        /// Where the answer goes.
        reply: Responder,
    },
    /// A new run of run `run_id`'s pipeline, commit and variables;
    /// answered with RunAccepted.
    Rerun {
        /// The run.
        run_id: u64,
        /// Only its failed and cancelled jobs and what waits for them.
        failed_only: bool,
        /// Where the answer goes.
        reply: Responder,
    },
}

impl Core {
    pub(super) fn handle_run(&mut self, command: RunCommand) {
        match command {
            RunCommand::Play { run_id, job, reply } => {
                let Some(run) = self.runs.get_mut(&run_id) else {
                    return reply.refuse(CoreError::NotFound(format!("no run {run_id}")));
                };
                let was_over = run.state().is_terminal();
                if let Err(why) = run.play(&job) {
                    return reply.refuse(why);
                }
                self.audit(
                    AuditAction::PlayJob,
                    format!("run {run_id}"),
                    format!("job `{job}`"),
                );
                if was_over {
                    // It runs again: the forge shows it pending again.
                    self.notify_run(run_id);
                }
                self.advance_run(run_id);
                self.after_commit(AfterCommit::Reply(reply, Ack {}.into()));
            }
            RunCommand::Rerun {
                run_id,
                failed_only,
                reply,
            } => match self.rerun(run_id, failed_only) {
                Ok(id) => self.after_commit(AfterCommit::Reply(reply, RunAccepted { run_id: id }.into())),
                Err(why) => reply.refuse(why),
            },
        }
    }

    /// Starts the rerun; returns its id.
    fn rerun(&mut self, run_id: u64, failed_only: bool) -> Result<u64, CoreError> {
        let old = self
            .runs
            .get(&run_id)
            .ok_or_else(|| CoreError::NotFound(format!("no run {run_id}")))?;
        let slots = old.rerun_slots(failed_only).map_err(CoreError::Conflict)?;
        // The old run's plan, given the trigger again under the new id.
        let pipeline = old.pipeline().clone();
        let (file_name, yaml) = old.source();
        let (file_name, yaml) = (file_name.to_owned(), yaml.to_owned());
        let trigger = old.trigger().cloned();
        let id = self.next_run;
        let mut run = Run::new(id, pipeline, self.now.wall_ms, self.now.at);
        run.set_source(&file_name, &yaml);
        if let Some(trigger) = trigger {
            run.set_trigger(trigger);
        }
        run.set_slots(slots);
        self.next_run += 1;
        self.runs.insert(id, run);
        self.dirty_runs.insert(id);
        self.counters_dirty = true;
        self.notify_run(id);
        let what = if failed_only { "failed jobs of " } else { "" };
        self.audit(
            AuditAction::RerunRun,
            format!("run {id}"),
            format!("{what}run {run_id}"),
        );
        tracing::info!(run_id = id, of = run_id, failed_only, "run rerun");
        self.advance_run(id);
        Ok(id)
    }
}
