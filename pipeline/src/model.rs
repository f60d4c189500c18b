//! The validated pipeline: jobs after matrix expansion, with their
//! dependencies resolved to indices.

use valkyrie::message::JobSpec;

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
    /// Index of `stage` in [`Pipeline::stages`].
    pub stage_index: usize,
    /// Indices of the jobs its `needs` name (every expansion of a needed
    /// matrix job), in order, without repeats.
    pub depends_on: Vec<usize>,
    /// It has no `needs`, so it waits for every job of the earlier stages.
    /// Those jobs are not listed in `depends_on`: listing them would make a
    /// pipeline's size quadratic in its job count.
    pub waits_for_earlier_stages: bool,
    /// When it runs: `on_success`, `on_failure` or `always`. A job with
    /// an expression in `if:` has `Always` when the expression names
    /// `always()` or `failure()` (fail-fast then leaves it to its
    /// expression), `OnSuccess` otherwise.
    pub condition: Condition,
    /// `if:` as an expression (`$VALKYRIE_BRANCH == "main"`), decided
    /// instead of `condition`; `None` for the plain conditions.
    pub rule: Option<crate::Expr>,
    /// `when: manual`: once it could start, it waits for someone to play
    /// it (`vk play`).
    pub manual: bool,
    /// Its failure does not fail the run nor skip its dependents.
    pub allow_failure: bool,
    /// The legs of one matrix job with `fail_fast` (the default) share a
    /// group, the index of the job as written: a leg that fails (or times
    /// out, or is lost) without `allow_failure` cancels the other legs.
    pub fail_fast_group: Option<usize>,
    /// `checkout:` (default true): in a run started from a commit, the
    /// agent checks the commit out into the workspace before the first
    /// step; `false` leaves the workspace empty.
    pub checkout: bool,
    /// `checkout: {depth: N}`: commits of history to fetch (0: all);
    /// `None`: the trigger's default (1).
    pub checkout_depth: Option<u32>,
    /// `dependencies:`: the jobs whose artifacts it downloads, as indices
    /// (every expansion of a named matrix job). `None`: every job it
    /// waits for ([`Pipeline::dependencies`]).
    pub artifacts_from: Option<Vec<usize>>,
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
    /// `fail_fast: true`: the first job that fails (without
    /// `allow_failure`) cancels the run's other running jobs and skips the
    /// waiting ones, except those with `if: always` or `if: on_failure`.
    pub fail_fast: bool,
    /// Jobs in file order (matrix expansions in place).
    pub jobs: Vec<PipelineJob>,
    /// `workflow: if`: a run is created only when it is true.
    pub workflow_rule: Option<crate::Expr>,
    /// The pipeline-level `env`, which `if:` expressions can read (under
    /// the run's variables).
    pub env: Vec<(String, String)>,
}

impl Pipeline {
    /// Every job index, each after everything it depends on (its `needs`,
    /// or every job of the earlier stages). Linear in the pipeline's size.
    pub fn dependency_order(&self) -> Vec<usize> {
        let deps: Vec<super::graph::Deps<'_>> = self
            .jobs
            .iter()
            .map(|j| super::graph::Deps {
                stage: j.stage_index,
                needs: (!j.waits_for_earlier_stages).then_some(j.depends_on.as_slice()),
            })
            .collect();
        // A validated pipeline has no cycle; should one be built by hand,
        // the jobs left out of the order go last, in file order.
        super::graph::order(&deps, self.stages.len()).unwrap_or_else(|_| (0..self.jobs.len()).collect())
    }

    /// The jobs whose artifacts pipeline job `index` downloads before its
    /// first step: those of its `dependencies:`, or else every job it
    /// waits for; in both cases only those that upload artifacts.
    pub fn artifact_sources(&self, index: usize) -> Vec<usize> {
        let from = match &self.jobs[index].artifacts_from {
            Some(from) => from.clone(),
            None => self.dependencies(index),
        };
        from.into_iter()
            .filter(|&i| {
                self.jobs[i]
                    .spec
                    .artifacts
                    .as_ref()
                    .is_some_and(|a| !a.paths.is_empty())
            })
            .collect()
    }

    /// The jobs pipeline job `index` waits for, listed one by one (its
    /// `depends_on`, or every job of the earlier stages). Linear in the
    /// number of jobs.
    pub fn dependencies(&self, index: usize) -> Vec<usize> {
        let job = &self.jobs[index];
        if job.waits_for_earlier_stages {
            (0..self.jobs.len())
                .filter(|&i| self.jobs[i].stage_index < job.stage_index)
                .collect()
        } else {
            job.depends_on.clone()
        }
    }
}
