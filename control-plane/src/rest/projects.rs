//! `/api/projects`: git repositories whose pushes start runs, and a
//! trigger of a project's pipeline at a ref or commit. A project's webhook
//! secret, token, status token and notify secret are write-only: no answer
//! ever carries them.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{Caller, Role};
use super::body::{json_body, json_or_default};
use super::error::{ApiError, ErrorBody};
use super::{ApiPath, AppState};
use crate::core::{Command, ProjectCommand};
use crate::source::project::check_variables;
use crate::source::status::{self, NotifyConfig, StatusConfig, StatusForge};
use crate::source::{Project, Trigger};

/// Where a project's runs post commit statuses, as shown: without the token.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StatusJson {
    /// `github` or `gitlab`.
    pub forge: StatusForge,
    /// The forge's API base URL.
    pub api_url: String,
    /// The repository on the forge (`owner/repo`; GitLab: its path or id).
    pub repository: String,
    /// Whether a token of its own is set (otherwise the project's `token`
    /// is used; its value is never shown).
    pub has_token: bool,
}

impl From<StatusConfig> for StatusJson {
    fn from(s: StatusConfig) -> Self {
        Self {
            forge: s.forge,
            has_token: !s.token.is_empty(),
            api_url: s.api_url,
            repository: s.repository,
        }
    }
}

/// Commit statuses to post when a project's runs start and end.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStatus {
    /// `github` (statuses API) or `gitlab` (commit status API).
    pub forge: StatusForge,
    /// The API's base URL. Default `https://api.github.com` or
    /// `https://gitlab.com/api/v4`; GitHub Enterprise is
    /// `https://HOST/api/v3`, a self-hosted GitLab `https://HOST/api/v4`.
    #[serde(default)]
    pub api_url: Option<String>,
    /// The repository on the forge: `owner/repo` on GitHub, the project's
    /// path (`group/app`) or numeric id on GitLab. Default: read from `repo`.
    #[serde(default)]
    pub repository: Option<String>,
    /// The API token (GitHub: `repo:status` or a fine-grained token with
    /// commit statuses write; GitLab: `api` scope). Default: the project's `token`.
    #[serde(default)]
    pub token: Option<String>,
}

/// A project as shown: without its secrets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProjectJson {
    /// Unique name.
    pub name: String,
    /// Clone URL.
    pub repo: String,
    /// Default branch.
    pub branch: String,
    /// Pipeline file path in the repository.
    pub file: String,
    /// Whether a webhook secret is set (its value is never shown).
    pub has_webhook_secret: bool,
    /// Whether a token is set (its value is never shown).
    pub has_token: bool,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Where GitHub sends this project's webhooks (relative to the server).
    pub github_webhook: String,
    /// Where GitLab sends this project's webhooks (relative to the server).
    pub gitlab_webhook: String,
    /// Where its runs post commit statuses, if they do.
    pub status: Option<StatusJson>,
    /// Where its runs send the run-end webhook, if they do.
    pub notify_url: Option<String>,
    /// Whether the run-end webhook is signed (the secret is never shown).
    pub has_notify_secret: bool,
}

impl From<Project> for ProjectJson {
    fn from(p: Project) -> Self {
        Self {
            github_webhook: format!("/api/webhooks/github/{}", p.name),
            gitlab_webhook: format!("/api/webhooks/gitlab/{}", p.name),
            has_webhook_secret: !p.webhook_secret.is_empty(),
            has_token: !p.token.is_empty(),
            has_notify_secret: p.notify.as_ref().is_some_and(|n| !n.secret.is_empty()),
            notify_url: p.notify.map(|n| n.url),
            status: p.status.map(StatusJson::from),
            name: p.name,
            repo: p.repo,
            branch: p.branch,
            file: p.file,
            created_at_ms: p.created_at_ms,
        }
    }
}

/// A project to create.
#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Unique name: letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Clone URL, without credentials (`https://…`, `git://…`, `ssh://…`).
    pub repo: String,
    /// Default branch. Default `main`.
    #[serde(default)]
    pub branch: Option<String>,
    /// Pipeline file path in the repository. Default `.valkyrie.yml`.
    #[serde(default)]
    pub file: Option<String>,
    /// Webhook secret: GitHub's HMAC key, GitLab's token. Without one,
    /// webhooks are refused.
    #[serde(default)]
    pub webhook_secret: Option<String>,
    /// HTTPS token for a private repository (and the forge's API).
    #[serde(default)]
    pub token: Option<String>,
    /// Post a commit status to the forge when a run starts and ends.
    #[serde(default)]
    pub status: Option<CreateStatus>,
    /// POST a JSON summary here when a run ends (`http://` or `https://`;
    /// shown in answers, so put no secret in it).
    #[serde(default)]
    pub notify_url: Option<String>,
    /// Key of the run-end webhook's `X-Valkyrie-Signature-256` header
    /// (`sha256=` and the hex HMAC-SHA256 of the body). Never shown.
    #[serde(default)]
    pub notify_secret: Option<String>,
}

/// The commit status settings of a new project on `repo`: defaults filled
/// (the API URL, the repository read from the clone URL).
fn status_config(request: CreateStatus, repo: &str) -> Result<StatusConfig, ApiError> {
    let forge = request.forge;
    let api_url = match request.api_url.filter(|u| !u.is_empty()) {
        Some(url) => status::check_url("status.api_url", &url).map_err(ApiError::bad_request)?,
        None => forge.default_api_url().to_owned(),
    };
    let repository = match request.repository.filter(|r| !r.is_empty()) {
        Some(repository) => repository,
        None => status::repository_from_url(forge, repo).ok_or_else(|| {
            ApiError::bad_request(format!(
                "cannot tell the {} repository from `{repo}`",
                forge.as_str()
            ))
            .suggest(match forge {
                StatusForge::Github => "give `status.repository` as `owner/repo`",
                StatusForge::Gitlab => {
                    "give `status.repository` as the project's path (`group/app`) or numeric id"
                }
            })
        })?,
    };
    Ok(StatusConfig {
        forge,
        api_url,
        repository,
        token: request.token.unwrap_or_default(),
    })
}

/// The run-end webhook of a new project.
fn notify_config(url: Option<String>, secret: Option<String>) -> Result<Option<NotifyConfig>, ApiError> {
    let secret = secret.unwrap_or_default();
    match url.filter(|u| !u.is_empty()) {
        Some(url) => Ok(Some(NotifyConfig {
            url: status::check_url("notify_url", &url).map_err(ApiError::bad_request)?,
            secret,
        })),
        None if !secret.is_empty() => Err(ApiError::bad_request(
            "`notify_secret` is given without `notify_url`".to_owned(),
        )
        .suggest("give the URL the run-end webhook goes to with `notify_url`")),
        None => Ok(None),
    }
}

/// A trigger of a project's pipeline.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerProject {
    /// Branch, tag or full ref (`refs/heads/x`). Default: the project's branch.
    #[serde(default, rename = "ref")]
    pub git_ref: Option<String>,
    /// The commit; default: the ref's tip.
    #[serde(default)]
    pub sha: Option<String>,
    /// Variables for every job (names of letters, digits and `_`; not `VALKYRIE_*`).
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
}

/// The run a trigger or webhook started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProjectRun {
    /// The run (execution) id.
    pub run_id: u64,
    /// The project.
    pub project: String,
    /// The ref.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// The commit.
    pub sha: String,
    /// An earlier delivery with the same id started it (nothing new was started).
    pub duplicate: bool,
    /// Where to follow it.
    pub status_url: String,
}

/// A removed project.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RemovedProject {
    /// Its name.
    pub name: String,
}

fn no_project(name: &str) -> ApiError {
    ApiError::not_found(format!("no project `{name}`")).suggest("list projects with GET /api/projects")
}

/// Creates a project. Its `webhook_secret`, `token`, `status.token` and
/// `notify_secret` are stored encrypted and never shown again.
#[utoipa::path(post, path = "/api/projects", tag = "projects", operation_id = "create_project",
    request_body(content = CreateProject, content_type = "application/json"),
    responses((status = 201, body = ProjectJson),
              (status = 400, description = "Not the JSON object, or a field is not valid", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 409, description = "The name is taken", body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<ProjectJson>), ApiError> {
    caller.require(Role::Admin)?;
    let request: CreateProject = json_body(&body)?;
    let status = request
        .status
        .map(|s| status_config(s, &request.repo))
        .transpose()?;
    let notify = notify_config(request.notify_url, request.notify_secret)?;
    let project = Project {
        status,
        notify,
        ..Project::new(
            request.name,
            request.repo,
            request.branch.unwrap_or_default(),
            request.file.unwrap_or_default(),
            request.webhook_secret.unwrap_or_default(),
            request.token.unwrap_or_default(),
        )
    };
    project
        .check()
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let created = state
        .call_as(&caller, |reply| {
            Command::Project(ProjectCommand::Create(Box::new(project), reply))
        })
        .await?
        .map_err(|m| ApiError::from(m).suggest("pick another name, or remove the project first"))?;
    Ok((StatusCode::CREATED, Json(created.into())))
}

/// Every project, by name.
#[utoipa::path(get, path = "/api/projects", tag = "projects", operation_id = "list_projects",
    responses((status = 200, body = Vec<ProjectJson>),
              (status = 401, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ProjectJson>>, ApiError> {
    caller.require(Role::Viewer)?;
    let projects = state
        .call(|reply| Command::Project(ProjectCommand::List(reply)))
        .await?;
    Ok(Json(projects.into_iter().map(ProjectJson::from).collect()))
}

/// One project.
#[utoipa::path(get, path = "/api/projects/{name}", tag = "projects", operation_id = "get_project",
    params(("name" = String, Path, description = "Project name")),
    responses((status = 200, body = ProjectJson),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProjectJson>, ApiError> {
    caller.require(Role::Viewer)?;
    state
        .call(|reply| Command::Project(ProjectCommand::Get(name.clone(), reply)))
        .await?
        .map(|p| Json(p.into()))
        .ok_or_else(|| no_project(&name))
}

/// Removes a project (its runs stay).
#[utoipa::path(delete, path = "/api/projects/{name}", tag = "projects", operation_id = "remove_project",
    params(("name" = String, Path, description = "Project name")),
    responses((status = 200, body = RemovedProject),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<RemovedProject>, ApiError> {
    caller.require(Role::Admin)?;
    let existed = state
        .call_as(&caller, |reply| {
            Command::Project(ProjectCommand::Remove(name.clone(), reply))
        })
        .await?;
    if !existed {
        return Err(no_project(&name));
    }
    state.core.mirrors().remove(&name).await;
    Ok(Json(RemovedProject { name }))
}

/// Starts a run of the project's pipeline file at a ref (default: the
/// project's branch) or commit, with variables for every job.
#[utoipa::path(post, path = "/api/projects/{name}/trigger", tag = "projects", operation_id = "trigger_project",
    params(("name" = String, Path, description = "Project name")),
    request_body(content = TriggerProject, content_type = "application/json"),
    responses((status = 201, body = ProjectRun),
              (status = 400, description = "Not the JSON object, or a variable is not valid", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 413, body = ErrorBody),
              (status = 422, description = "The ref, commit or pipeline file is not usable, or the pipeline's rules start no run for it", body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<ProjectRun>), ApiError> {
    caller.require(Role::Submitter)?;
    let request: TriggerProject = json_or_default(&body)?;
    let variables: Vec<(String, String)> = request.variables.into_iter().collect();
    check_variables(&variables).map_err(ApiError::bad_request)?;
    let project = state
        .call(|reply| Command::Project(ProjectCommand::Get(name.clone(), reply)))
        .await?
        .ok_or_else(|| no_project(&name))?;
    let git_ref = match request.git_ref.filter(|r| !r.is_empty()) {
        None => format!("refs/heads/{}", project.branch),
        Some(r) if r.starts_with("refs/") => r,
        Some(r) if r.starts_with('-') || r.contains("..") || r.contains(':') => {
            return Err(ApiError::bad_request(format!("ref `{r}` is not valid")))
        }
        Some(r) => format!("refs/heads/{r}"),
    };
    let sha = match request.sha.filter(|s| !s.is_empty()) {
        Some(sha) if matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit()) => {
            sha.to_ascii_lowercase()
        }
        Some(sha) => {
            return Err(ApiError::bad_request(format!(
                "`{sha}` is not a full commit id (40 or 64 hex digits)"
            )))
        }
        None => state
            .core
            .mirrors()
            .resolve(&project, &git_ref)
            .await
            .map_err(|e| ApiError::unprocessable(e.to_string()))?,
    };
    let (branch, tag) = match (
        git_ref.strip_prefix("refs/heads/"),
        git_ref.strip_prefix("refs/tags/"),
    ) {
        (Some(b), _) => (b.to_owned(), String::new()),
        (_, Some(t)) => (String::new(), t.to_owned()),
        _ => (String::new(), String::new()),
    };
    let trigger = Trigger {
        project: project.name.clone(),
        repository: project.repo.clone(),
        event: "api".into(),
        git_ref,
        sha,
        branch,
        tag,
        pr_number: None,
        variables,
        depth: 1,
        delivery: String::new(),
    };
    let run = super::webhooks::start(&state, Some(&caller), &project, trigger)
        .await?
        .map_err(|why| {
            ApiError::unprocessable(why).suggest(
                "the pipeline's `workflow: if` or its jobs' `if:` rules decide which triggers start a run",
            )
        })?;
    Ok((StatusCode::CREATED, Json(run)))
}
