//! `/api/webhooks/{github,gitlab}/{project}`: the forges' push and merge
//! request events start runs. Authenticated by the project's webhook
//! secret (the signature or token the forge sends), not by a bearer token;
//! see [`crate::source::webhook`] for what each forge sends and what runs.
//!
//! | answer | when |
//! |---|---|
//! | 201 `started` | a run was started at the event's commit |
//! | 200 `duplicate` | the delivery id was seen before: the run it started, nothing new |
//! | 200 `pong` | GitHub's `ping` |
//! | 202 `ignored` | an event or action that does not run, or a pipeline whose rules (`workflow: if`, every job's `if:`) start no run for it, with the reason |
//! | 401 | no, or a wrong, signature or token: nothing is read or started |
//! | 404 | no such project |
//! | 400 | a payload that is not the event's JSON |
//! | 422 | the commit or its pipeline file is not usable (the reason says which) |

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::Caller;
use super::error::{ApiError, ErrorBody};
use super::projects::ProjectRun;
use super::{ApiPath, AppState};
use crate::core::{Command, ProjectCommand};
use crate::source::webhook::{self, Event, Forge};
use crate::source::{start_run, StartError};
use crate::source::{Project, Trigger};

/// Longest delivery id remembered; a longer one is not remembered at all.
const MAX_DELIVERY_ID_BYTES: usize = 200;

/// What a webhook request did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebhookAnswer {
    /// `started`, `duplicate`, `pong` or `ignored`.
    pub status: String,
    /// The run started (or, for a duplicate, started before).
    pub run_id: Option<u64>,
    /// The commit.
    pub sha: Option<String>,
    /// The ref.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Why nothing was started, for `ignored`.
    pub reason: Option<String>,
}

impl WebhookAnswer {
    fn plain(status: &str, reason: Option<String>) -> Self {
        Self {
            status: status.into(),
            run_id: None,
            sha: None,
            git_ref: None,
            reason,
        }
    }
}

impl From<ProjectRun> for WebhookAnswer {
    fn from(run: ProjectRun) -> Self {
        Self {
            status: if run.duplicate { "duplicate" } else { "started" }.into(),
            run_id: Some(run.run_id),
            sha: Some(run.sha),
            git_ref: Some(run.git_ref),
            reason: None,
        }
    }
}

/// Reads the pipeline file at the trigger's commit, validates it off the
/// core, and has the core start the run (or find the one the same
/// delivery started). `Ok(Err(why))`: the pipeline's rules create no run
/// for this trigger.
pub(super) async fn start(
    state: &AppState,
    caller: Option<&Caller>,
    project: &Project,
    trigger: Trigger,
) -> Result<Result<ProjectRun, String>, ApiError> {
    let (git_ref, sha) = (trigger.git_ref.clone(), trigger.sha.clone());
    let actor = caller.map(Caller::actor);
    let started = match start_run(&state.core, state.core.mirrors(), actor, project, trigger).await {
        Ok(started) => started,
        Err(StartError::Read(e)) => return Err(ApiError::unprocessable(e.to_string())),
        Err(StartError::Invalid(e)) => {
            return Err(
                ApiError::from_validate(e).suggest(format!("fix {} at {sha} and push again", project.file))
            )
        }
        Err(StartError::NoProject(why)) => return Err(ApiError::not_found(why)),
        Err(StartError::Rules(why)) => return Ok(Err(why)),
        Err(err @ StartError::CoreStopped) => return Err(ApiError::unavailable(err.to_string())),
    };
    Ok(Ok(ProjectRun {
        run_id: started.run_id,
        project: project.name.clone(),
        git_ref,
        sha,
        duplicate: started.duplicate,
        status_url: format!("/api/ci/executions/{}", started.run_id),
    }))
}

fn header<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h [u8]> {
    headers.get(name).map(|v| v.as_bytes())
}

async fn handle(
    state: AppState,
    forge: Forge,
    name: String,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    let received = std::time::Instant::now();
    let project = state
        .call(|reply| Command::Project(ProjectCommand::Get(name.clone(), reply)))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project `{name}`")))?;
    let auth_header = match forge {
        Forge::GitHub => "x-hub-signature-256",
        Forge::GitLab => "x-gitlab-token",
    };
    if let Err(err) = webhook::verify(
        forge,
        &project.name,
        &project.webhook_secret,
        header(&headers, auth_header),
        &body,
    ) {
        tracing::warn!(project = %project.name, forge = forge.as_str(), %err, "webhook refused");
        return Err(ApiError::bad_webhook_signature(err.to_string()));
    }
    let event = headers
        .get(forge.event_header())
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let parsed = match forge {
        Forge::GitHub => webhook::github_event(&event, &body),
        Forge::GitLab => webhook::gitlab_event(&event, &body),
    }
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let push = match parsed {
        Event::Ping => return Ok((StatusCode::OK, Json(WebhookAnswer::plain("pong", None)))),
        Event::Ignored(reason) => {
            tracing::info!(project = %project.name, forge = forge.as_str(), %reason, "webhook ignored");
            return Ok((
                StatusCode::ACCEPTED,
                Json(WebhookAnswer::plain("ignored", Some(reason))),
            ));
        }
        Event::Run(push) => push,
    };
    let delivery = headers
        .get(forge.delivery_header())
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= MAX_DELIVERY_ID_BYTES)
        .map(|id| format!("{}:{}:{id}", forge.as_str(), project.name))
        .unwrap_or_default();
    if !delivery.is_empty() {
        let seen = state
            .call(|reply| Command::Project(ProjectCommand::Delivered(delivery.clone(), reply)))
            .await?;
        if let Some(run_id) = seen {
            return Ok((
                StatusCode::OK,
                Json(WebhookAnswer {
                    status: "duplicate".into(),
                    run_id: Some(run_id),
                    sha: Some(push.sha),
                    git_ref: Some(push.git_ref),
                    reason: None,
                }),
            ));
        }
    }
    let trigger = Trigger {
        project: project.name.clone(),
        repository: project.repo.clone(),
        event: push.event.into(),
        git_ref: push.git_ref,
        sha: push.sha,
        branch: push.branch,
        tag: push.tag,
        pr_number: push.pr_number,
        variables: Vec::new(),
        depth: 1,
        delivery,
    };
    let run = match start(&state, None, &project, trigger).await? {
        Ok(run) => run,
        Err(why) => {
            tracing::info!(project = %project.name, %why, "webhook started no run");
            return Ok((
                StatusCode::ACCEPTED,
                Json(WebhookAnswer::plain("ignored", Some(why))),
            ));
        }
    };
    tracing::info!(
        project = %project.name,
        run_id = run.run_id,
        sha = %run.sha,
        elapsed_ms = received.elapsed().as_millis() as u64,
        "webhook started a run"
    );
    let status = if run.duplicate {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(run.into())))
}

/// A GitHub webhook (`push`, `pull_request`, `ping`), authenticated by
/// `X-Hub-Signature-256` (HMAC-SHA256 of the body with the project's
/// webhook secret). A delivery (`X-GitHub-Delivery`) seen before starts
/// nothing.
#[utoipa::path(post, path = "/api/webhooks/github/{project}", tag = "webhooks", operation_id = "github_webhook",
    params(("project" = String, Path, description = "Project name"),
           ("X-GitHub-Event" = Option<String>, Header, description = "push, pull_request or ping"),
           ("X-GitHub-Delivery" = Option<String>, Header, description = "The delivery's id"),
           ("X-Hub-Signature-256" = Option<String>, Header, description = "sha256=HEX")),
    request_body(content = Object, content_type = "application/json", description = "The event's payload, as GitHub sends it"),
    responses((status = 201, description = "A run was started", body = WebhookAnswer),
              (status = 200, description = "A ping, or a delivery seen before", body = WebhookAnswer),
              (status = 202, description = "Ignored (an event that starts nothing, or the pipeline's rules start no run), with the reason", body = WebhookAnswer),
              (status = 400, description = "Not the event's payload", body = ErrorBody),
              (status = 401, description = "No signature, or a wrong one", body = ErrorBody),
              (status = 404, description = "No such project", body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 422, description = "The commit or its pipeline file is not usable", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn github(
    State(state): State<AppState>,
    ApiPath(project): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    handle(state, Forge::GitHub, project, headers, body).await
}

/// A GitLab webhook (`Push Hook`, `Tag Push Hook`, `Merge Request Hook`),
/// authenticated by `X-Gitlab-Token` (the project's webhook secret). A
/// delivery (`X-Gitlab-Event-UUID`) seen before starts nothing.
#[utoipa::path(post, path = "/api/webhooks/gitlab/{project}", tag = "webhooks", operation_id = "gitlab_webhook",
    params(("project" = String, Path, description = "Project name"),
           ("X-Gitlab-Event" = Option<String>, Header, description = "Push Hook, Tag Push Hook or Merge Request Hook"),
           ("X-Gitlab-Event-UUID" = Option<String>, Header, description = "The delivery's id"),
           ("X-Gitlab-Token" = Option<String>, Header, description = "The webhook secret")),
    request_body(content = Object, content_type = "application/json", description = "The event's payload, as GitLab sends it"),
    responses((status = 201, description = "A run was started", body = WebhookAnswer),
              (status = 200, description = "A delivery seen before", body = WebhookAnswer),
              (status = 202, description = "Ignored (an event that starts nothing, or the pipeline's rules start no run), with the reason", body = WebhookAnswer),
              (status = 400, description = "Not the event's payload", body = ErrorBody),
              (status = 401, description = "No token, or a wrong one", body = ErrorBody),
              (status = 404, description = "No such project", body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 422, description = "The commit or its pipeline file is not usable", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
pub async fn gitlab(
    State(state): State<AppState>,
    ApiPath(project): ApiPath<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    handle(state, Forge::GitLab, project, headers, body).await
}
