//! `/api/ci/runs/{id}/…`: play a manual job of a run, rerun a run.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use valkyrie::message::Message;

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody};
use super::{unexpected, ApiPath, AppState};
use crate::core::{Command, RunCommand};

/// A manual job was started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Played {
    /// The run.
    pub run_id: u64,
    /// The job.
    pub job: String,
    /// Where to follow the run.
    pub status_url: String,
}

/// What to rerun.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunRequest {
    /// Only the jobs that failed or were cancelled, and those that wait for
    /// them; the others keep their results. Default: every job.
    #[serde(default)]
    pub failed: bool,
}

/// The run a rerun started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Rerun {
    /// The new run.
    pub run_id: u64,
    /// The run it reruns.
    pub rerun_of: u64,
    /// Where to follow it.
    pub status_url: String,
}

/// Starts a manual job (`when: manual`) of a run. Jobs that need it start
/// once it succeeds; a run that had ended with it waiting runs again.
#[utoipa::path(post, path = "/api/ci/runs/{id}/jobs/{name}/play", tag = "executions", operation_id = "play_job",
    params(("id" = u64, Path, description = "Run (execution) id"),
           ("name" = String, Path, description = "The job's name in the run")),
    responses((status = 202, body = Played),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 404, description = "No such run, or no such job in it", body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 409, description = "The job is not manual, not ready yet, or was played already", body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn play(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, name)): ApiPath<(u64, String)>,
) -> Result<(StatusCode, Json<Played>), ApiError> {
    caller.require(Role::Submitter)?;
    state
        .ask_as(&caller, |reply| {
            Command::Run(RunCommand::Play {
                run_id: id,
                job: name.clone(),
                reply,
            })
        })
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Played {
            run_id: id,
            job: name,
            status_url: format!("/api/ci/executions/{id}"),
        }),
    ))
}

/// Starts a new run of a finished run's pipeline, with the same commit and
/// variables: every job, or (`{"failed": true}`) only the jobs that failed
/// or were cancelled and those that wait for them.
#[utoipa::path(post, path = "/api/ci/runs/{id}/rerun", tag = "executions", operation_id = "rerun",
    params(("id" = u64, Path, description = "Run (execution) id")),
    request_body(content = RerunRequest, content_type = "application/json", description = "Optional; default: every job"),
    responses((status = 201, body = Rerun),
              (status = 400, description = "The id is not a number, or not the JSON object", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 409, description = "The run is still running, or has nothing failed to rerun", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn rerun(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
    body: Bytes,
) -> Result<(StatusCode, Json<Rerun>), ApiError> {
    caller.require(Role::Submitter)?;
    let request: RerunRequest = super::body::json_or_default(&body)?;
    let answer = state
        .ask_as(&caller, |reply| {
            Command::Run(RunCommand::Rerun {
                run_id: id,
                failed_only: request.failed,
                reply,
            })
        })
        .await?;
    let Message::RunAccepted(accepted) = answer else {
        return Err(unexpected(&answer));
    };
    Ok((
        StatusCode::CREATED,
        Json(Rerun {
            run_id: accepted.run_id,
            rerun_of: id,
            status_url: format!("/api/ci/executions/{}", accepted.run_id),
        }),
    ))
}
