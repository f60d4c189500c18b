//! Stored pipeline definitions (the REST API's `/api/ci/pipelines`): a
//! validated YAML file kept under an id, from which runs are triggered.
//!
//! Pipeline files are parsed and validated *before* they reach the core,
//! on a blocking thread ([`CoreHandle::validate_pipeline`]): the core only
//! ever receives a [`ValidatedPipeline`], so a large file never stalls the
//! task that serves every other request. Validation is bounded: at most
//! [`CONCURRENT_VALIDATIONS`] files are validated at once (which bounds the
//! memory they take), and a caller gets an answer within
//! [`VALIDATE_TIMEOUT`] whatever the file.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use valkyrie_pipeline::{Pipeline, PipelineErrors};

use super::{Core, CoreError, CoreHandle};
use crate::run::Run;

/// Longest a caller waits for a pipeline file to be validated (including
/// the wait for a free validation slot).
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(10);

/// Pipeline files validated at once, server-wide; more wait their turn.
pub const CONCURRENT_VALIDATIONS: usize = 2;

/// A pipeline file that parsed and validated, with its source. Only
/// [`CoreHandle::validate_pipeline`] makes one, so the core can trust it.
#[derive(Debug, Clone)]
pub struct ValidatedPipeline {
    file_name: String,
    yaml: String,
    pipeline: Pipeline,
}

impl ValidatedPipeline {
    /// Parses `yaml` on the caller's thread (tests of the core).
    #[cfg(test)]
    pub(super) fn parse_now(file_name: &str, yaml: &str) -> Self {
        Self {
            file_name: file_name.to_owned(),
            yaml: yaml.to_owned(),
            pipeline: valkyrie_pipeline::parse(file_name, yaml).expect("a valid pipeline"),
        }
    }

    /// The validated plan.
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }

    /// The file name it was submitted as.
    pub fn file_name(&self) -> &str {
        &self.file_name
    }
}

/// Why a pipeline file was not validated.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ValidatePipelineError {
    /// The submitter's file has errors (each with its position).
    #[error("{0}")]
    Invalid(PipelineErrors),
    /// The file took longer than [`VALIDATE_TIMEOUT`] to validate: it is too
    /// large or too complex (the submitter's to split).
    #[error("validating {file} took longer than the limit of {} s; split the pipeline into smaller files", limit.as_secs())]
    TooSlow {
        /// The file.
        file: String,
        /// The limit.
        limit: Duration,
    },
    /// Every validation slot stayed busy for [`VALIDATE_TIMEOUT`] (the
    /// server is overloaded; retry later).
    #[error("the server is busy validating other pipelines; retry later")]
    Busy,
    /// The validator failed (a bug: it panicked).
    #[error("the pipeline validator failed: {0}")]
    Internal(String),
}

/// The validation slots shared by every session and REST request.
#[derive(Debug, Clone)]
pub(super) struct Validations(Arc<Semaphore>);

impl Default for Validations {
    fn default() -> Self {
        Self(Arc::new(Semaphore::new(CONCURRENT_VALIDATIONS)))
    }
}

impl CoreHandle {
    /// Parses and validates a pipeline file on a blocking thread, off the
    /// core, within [`VALIDATE_TIMEOUT`]. A file still being validated at
    /// the deadline keeps its slot until its thread is done, so slow files
    /// can never pile up beyond [`CONCURRENT_VALIDATIONS`].
    pub async fn validate_pipeline(
        &self,
        file_name: String,
        yaml: String,
    ) -> Result<ValidatedPipeline, ValidatePipelineError> {
        let deadline = tokio::time::Instant::now() + VALIDATE_TIMEOUT;
        let permit = tokio::time::timeout_at(deadline, self.validations.0.clone().acquire_owned())
            .await
            .map_err(|_| ValidatePipelineError::Busy)?
            .map_err(|_| ValidatePipelineError::Internal("the validation slots are closed".into()))?;
        let file = file_name.clone();
        tracing::debug!(file = %file, bytes = yaml.len(), "validating a pipeline");
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let pipeline = valkyrie_pipeline::parse(&file_name, &yaml)?;
            Ok(ValidatedPipeline {
                file_name,
                yaml,
                pipeline,
            })
        });
        match tokio::time::timeout_at(deadline, task).await {
            Ok(Ok(result)) => result.map_err(ValidatePipelineError::Invalid),
            Ok(Err(join)) => Err(ValidatePipelineError::Internal(join.to_string())),
            Err(_) => Err(ValidatePipelineError::TooSlow {
                file,
                limit: VALIDATE_TIMEOUT,
            }),
        }
    }
}

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

impl PipelineDef {
    /// A copy with empty `yaml` and `source` (for listings).
    pub fn without_yaml(&self) -> Self {
        Self {
            id: self.id,
            name: self.name.clone(),
            description: self.description.clone(),
            file_name: self.file_name.clone(),
            yaml: String::new(),
            source: String::new(),
            stages: self.stages.clone(),
            jobs: self.jobs,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }
}

impl Core {
    /// Stores a validated pipeline under a new id.
    pub(super) fn create_pipeline(&mut self, valid: ValidatedPipeline) -> PipelineDef {
        let ValidatedPipeline {
            file_name,
            yaml,
            pipeline,
        } = valid;
        let id = self.next_pipeline;
        self.next_pipeline += 1;
        let now = self.now.wall_ms;
        let def = PipelineDef {
            id,
            name: pipeline.name.clone(),
            description: pipeline.description.clone(),
            file_name: file_name.clone(),
            yaml: crate::masking::mask(&yaml, &crate::masking::secret_values(&pipeline)),
            source: yaml,
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
        def
    }

    /// Starts a run of stored pipeline `id` from its plan (validated off
    /// the core from the stored text) with `variables` for every job;
    /// returns the run id.
    pub(super) fn trigger_pipeline(
        &mut self,
        id: u64,
        valid: ValidatedPipeline,
        variables: Vec<(String, String)>,
    ) -> Result<u64, CoreError> {
        if !self.pipelines.contains_key(&id) {
            return Err(CoreError::NotFound(format!("no pipeline {id}")));
        }
        let run_id = self.start_run(valid, crate::source::Trigger::plain("api", variables))?;
        self.audit(
            crate::audit::AuditAction::TriggerPipeline,
            format!("pipeline {id}"),
            format!("run {run_id}"),
        );
        self.advance_run(run_id);
        Ok(run_id)
    }

    /// Starts a run of a validated pipeline, started by `trigger` (its
    /// jobs are released by [`Core::advance_run`], which the caller calls);
    /// returns its id, or why its rules (`workflow: if`, or every job's
    /// `if:`) create no run.
    pub(super) fn start_run(
        &mut self,
        valid: ValidatedPipeline,
        trigger: crate::source::Trigger,
    ) -> Result<u64, CoreError> {
        let ValidatedPipeline {
            file_name,
            yaml,
            pipeline,
        } = valid;
        let run_id = self.next_run;
        let name = pipeline.name.clone();
        let mut run = Run::new(run_id, pipeline, self.now.wall_ms, self.now.at);
        run.set_source(&file_name, &yaml);
        run.set_trigger(trigger);
        if let Err(why) = run.apply_rules() {
            tracing::info!(pipeline = %name, %why, "no run created");
            return Err(CoreError::Conflict(format!("no run created: {why}")));
        }
        self.next_run += 1;
        tracing::info!(run_id, pipeline = %name, jobs = run.pipeline().jobs.len(), "run created");
        self.runs.insert(run_id, run);
        self.dirty_runs.insert(run_id);
        self.counters_dirty = true;
        self.notify_run(run_id);
        Ok(run_id)
    }

    /// Asks a runner to drain: it takes no new jobs and finishes its own.
    pub(super) fn drain_runner(&mut self, id: u64) -> Result<(), CoreError> {
        let runner_id = crate::scheduler::RunnerId(id);
        let runner = self
            .runners
            .get_mut(&runner_id)
            .ok_or_else(|| CoreError::NotFound(format!("no runner {id}")))?;
        runner.drain();
        if let Some(sender) = runner.sender() {
            let _ = sender.push(
                0,
                valkyrie::message::Drain {
                    reason: "drain requested by an operator".into(),
                },
            );
        }
        self.scheduler.set_availability(runner_id, runner.availability());
        Ok(())
    }
}
