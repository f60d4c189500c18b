//! Starting a run from a project's repository, for every way a run starts
//! from one (a webhook, the REST trigger, a schedule): read the pipeline
//! file at the commit, validate it off the core, and have the core start
//! the run (or find the one the same delivery started).

use super::mirror::{Mirrors, ReadPipelineError};
use super::{Project, Trigger};
use crate::audit::Actor;
use crate::core::{Command, CoreHandle, NotStarted, ProjectCommand, Started, ValidatePipelineError};

/// Why no run started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The pipeline file could not be read at the commit.
    #[error(transparent)]
    Read(#[from] ReadPipelineError),
    /// The pipeline file is not valid (or could not be validated in time).
    #[error(transparent)]
    Invalid(#[from] ValidatePipelineError),
    /// The project is gone.
    #[error("{0}")]
    NoProject(String),
    /// The pipeline's rules (`workflow: if`, or every job's `if:`) start no
    /// run for this trigger; says why.
    #[error("{0}")]
    Rules(String),
    /// The core has stopped.
    #[error("the server is stopping")]
    CoreStopped,
}

/// Starts a run of `project`'s pipeline file at `trigger`'s commit, on
/// behalf of `actor` (recorded in the audit log).
pub async fn start_run(
    core: &CoreHandle,
    mirrors: &Mirrors,
    actor: Option<Actor>,
    project: &Project,
    trigger: Trigger,
) -> Result<Started, StartError> {
    let yaml = mirrors
        .pipeline_file(project, &trigger.git_ref, &trigger.sha)
        .await?;
    let pipeline = core.validate_pipeline(project.file.clone(), yaml).await?;
    let started = core
        .call(|reply| {
            let command = Command::Project(ProjectCommand::Start {
                trigger: Box::new(trigger),
                pipeline: Box::new(pipeline),
                reply,
            });
            match actor {
                Some(actor) => Command::As {
                    actor,
                    command: Box::new(command),
                },
                None => command,
            }
        })
        .await
        .ok_or(StartError::CoreStopped)?;
    started.map_err(|not| match not {
        NotStarted::NoProject(why) => StartError::NoProject(why),
        NotStarted::Rules(why) => StartError::Rules(why),
    })
}
