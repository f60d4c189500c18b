//! Stored pipeline definitions (the REST API's `/api/ci/pipelines`): a
//! validated YAML file kept under an id, from which runs are triggered.

use std::time::Instant;

use valkyrie::pipeline::PipelineErrors;

use super::{now_ms, Core};
use crate::run::Run;

/// A stored pipeline definition.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PipelineDef {
    /// Id.
    pub id: u64,
    /// Name from the file.
    pub name: String,
    /// Description from the file.
    pub description: String,
    /// File name it was submitted as.
    pub file_name: String,
    /// The YAML text as shown: as submitted, with every secret value
    /// replaced by `***` ([`crate::masking`]).
    pub yaml: String,
    /// The YAML text as submitted, secrets included: what runs are made
    /// from. Never shown; sealed in the store.
    #[serde(default)]
    pub source: String,
    /// Stage names.
    pub stages: Vec<String>,
    /// Jobs after matrix expansion.
    pub jobs: usize,
    /// Creation time (ms since the Unix epoch).
    pub created_at_ms: u64,
    /// Last update (ms since the Unix epoch).
    pub updated_at_ms: u64,
}

impl Core {
    pub(super) fn create_pipeline(
        &mut self,
        file_name: &str,
        yaml: &str,
    ) -> Result<PipelineDef, PipelineErrors> {
        let pipeline = valkyrie::pipeline::parse(file_name, yaml)?;
        let id = self.next_pipeline;
        self.next_pipeline += 1;
        let now = now_ms();
        let def = PipelineDef {
            id,
            name: pipeline.name.clone(),
            description: pipeline.description.clone(),
            file_name: file_name.to_owned(),
            yaml: crate::masking::mask(yaml, &crate::masking::secret_values(&pipeline)),
            source: yaml.to_owned(),
            stages: pipeline.stages.clone(),
            jobs: pipeline.jobs.len(),
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.pipelines.insert(id, def.clone());
        self.record(crate::store::Change::Pipeline(Box::new(def.clone())));
        let detail = crate::masking::mask(
            &format!("pipeline `{}` ({file_name})", def.name),
            &crate::masking::secret_values(&pipeline),
        );
        self.audit(
            crate::audit::AuditAction::CreatePipeline,
            format!("pipeline {id}"),
            detail,
        );
        self.counters_dirty = true;
        Ok(def)
    }

    /// Starts a run of a stored pipeline; returns the run id.
    pub(super) fn trigger_pipeline(&mut self, id: u64) -> Result<u64, String> {
        let def = self
            .pipelines
            .get(&id)
            .ok_or_else(|| format!("no pipeline {id}"))?;
        let (file_name, yaml) = (def.file_name.clone(), def.source.clone());
        // Stored definitions were validated when created; parse again to
        // get the plan (the format is pure and cheap to parse).
        let pipeline = valkyrie::pipeline::parse(&file_name, &yaml).map_err(|e| e.to_string())?;
        let run_id = self.next_run;
        self.next_run += 1;
        let mut run = Run::new(run_id, pipeline, now_ms(), Instant::now());
        run.set_source(&file_name, &yaml);
        self.runs.insert(run_id, run);
        self.dirty_runs.insert(run_id);
        self.audit(
            crate::audit::AuditAction::TriggerPipeline,
            format!("pipeline {id}"),
            format!("run {run_id}"),
        );
        self.counters_dirty = true;
        self.advance_run(run_id);
        Ok(run_id)
    }

    /// Asks a runner to drain: it takes no new jobs and finishes its own.
    pub(super) fn drain_runner(&mut self, id: u64) -> Result<(), String> {
        let runner_id = crate::scheduler::RunnerId(id);
        let runner = self
            .runners
            .get_mut(&runner_id)
            .ok_or_else(|| format!("no runner {id}"))?;
        runner.draining = true;
        if let Some(sender) = runner.sender() {
            let _ = sender.try_reply(
                0,
                valkyrie::message::Drain {
                    reason: "drain requested by an operator".into(),
                },
            );
        }
        self.scheduler
            .set_availability(runner_id, crate::scheduler::Availability::Draining);
        Ok(())
    }
}
