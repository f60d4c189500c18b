//! When a pipeline job is released: the jobs whose artifacts its agent
//! downloads before the first step.

use valkyrie::message::JobSpec;

use crate::run::Run;

/// The spec of pipeline job `index` of `run`, with `download_from` set to
/// the released jobs of [`Pipeline::artifact_sources`](valkyrie::pipeline::Pipeline::artifact_sources).
pub(crate) fn spec_with_downloads(run: &Run, index: usize) -> JobSpec {
    let pipeline = run.pipeline();
    let mut spec = pipeline.jobs[index].spec.clone();
    let sources = pipeline.artifact_sources(index);
    if sources.is_empty() {
        return spec;
    }
    let ids: Vec<u64> = run
        .released_jobs()
        .filter(|(i, _)| sources.contains(i))
        .map(|(_, job)| job.0)
        .collect();
    if !ids.is_empty() {
        spec.artifacts.get_or_insert_with(Default::default).download_from = ids;
    }
    spec
}
