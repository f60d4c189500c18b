//! The validated pipeline: jobs after matrix expansion, with their
//! dependencies resolved to indices.

use crate::message::JobSpec;

/// When a job runs, given the outcome of the jobs it depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// Every dependency succeeded (or failed with `allow_failure`). The default.
    OnSuccess,
    /// At least one dependency failed (and was not allowed to).
    OnFailure,
    /// Once the dependencies finished, whatever their outcome (cleanup jobs).
    Always,
}

/// One job of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PipelineJob {
    /// Unique name (matrix jobs get `name [key=value, …]`).
    pub name: String,
    /// Stage it belongs to.
    pub stage: String,
    /// Indices of the jobs it waits for: its `needs`, or else every job of
    /// the earlier stages.
    pub depends_on: Vec<usize>,
    /// When it runs.
    pub condition: Condition,
    /// Its failure does not fail the run nor skip its dependents.
    pub allow_failure: bool,
    /// What to run.
    pub spec: JobSpec,
}

/// A validated pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline {
    /// Name.
    pub name: String,
    /// Description, if given.
    pub description: String,
    /// Stage names in order.
    pub stages: Vec<String>,
    /// Run-level timeout in milliseconds; 0 means none.
    pub timeout_ms: u64,
    /// Jobs in file order (matrix expansions in place).
    pub jobs: Vec<PipelineJob>,
}
