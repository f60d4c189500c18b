//! `/api/ci/pipelines`: store validated pipeline files and trigger runs.

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::{Caller, Role};
use super::body::{BodyKind, MAX_PIPELINE_BODY_BYTES};
use super::error::{ApiError, ErrorBody};
use super::page::{Page, PageQuery};
use super::{ApiPath, ApiQuery, AppState};
use crate::core::{Command, PipelineDef};

/// A stored pipeline definition.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Pipeline {
    /// Id.
    pub id: u64,
    /// Name from the file.
    pub name: String,
    /// Description from the file.
    pub description: String,
    /// File name it was submitted as.
    pub file_name: String,
    /// Stage names, in order.
    pub stages: Vec<String>,
    /// Jobs after matrix expansion.
    pub jobs: usize,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Last update, ms since the Unix epoch.
    pub updated_at_ms: u64,
    /// The YAML text, as submitted.
    pub yaml: String,
}

impl From<PipelineDef> for Pipeline {
    fn from(def: PipelineDef) -> Self {
        Self {
            id: def.id,
            name: def.name,
            description: def.description,
            file_name: def.file_name,
            stages: def.stages,
            jobs: def.jobs,
            created_at_ms: def.created_at_ms,
            updated_at_ms: def.updated_at_ms,
            yaml: def.yaml,
        }
    }
}

/// A stored pipeline in a listing (without its YAML; fetch one pipeline for that).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PipelineSummary {
    /// Id.
    pub id: u64,
    /// Name from the file.
    pub name: String,
    /// Description from the file.
    pub description: String,
    /// File name it was submitted as.
    pub file_name: String,
    /// Stage names, in order.
    pub stages: Vec<String>,
    /// Jobs after matrix expansion.
    pub jobs: usize,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Last update, ms since the Unix epoch.
    pub updated_at_ms: u64,
}

impl From<PipelineDef> for PipelineSummary {
    fn from(def: PipelineDef) -> Self {
        Self {
            id: def.id,
            name: def.name,
            description: def.description,
            file_name: def.file_name,
            stages: def.stages,
            jobs: def.jobs,
            created_at_ms: def.created_at_ms,
            updated_at_ms: def.updated_at_ms,
        }
    }
}

/// A JSON create request: the YAML text and, optionally, its file name.
/// (A JSON body without a `yaml` field is taken as the pipeline itself,
/// written in JSON.)
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatePipeline {
    /// The pipeline file's text.
    pub yaml: String,
    /// File name, for error positions. Default `pipeline.yaml`.
    #[serde(default)]
    pub file_name: Option<String>,
}

/// Where to say a YAML body came from.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FileNameQuery {
    /// File name, for error positions. Default `pipeline.yaml`.
    pub file_name: Option<String>,
}

/// The form `/upload` takes: one part, `file`; any other part is refused.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UploadForm {
    /// The pipeline file (UTF-8 YAML); its part's file name names it in
    /// error positions.
    pub file: String,
}

/// The run a trigger started.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Triggered {
    /// The new execution's id.
    pub run_id: u64,
    /// The pipeline it runs.
    pub pipeline_id: u64,
    /// Where to follow it.
    pub status_url: String,
}

const DEFAULT_FILE_NAME: &str = "pipeline.yaml";

fn body_error(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::too_large(MAX_PIPELINE_BODY_BYTES)
    } else {
        ApiError::bad_request("the request body could not be read").details(rejection.body_text())
    }
}

/// Validates a pipeline file off the core, then has the core store it.
async fn store(
    state: &AppState,
    caller: &Caller,
    file_name: String,
    yaml: String,
) -> Result<(StatusCode, Json<Pipeline>), ApiError> {
    let pipeline = state
        .core
        .validate_pipeline(file_name, yaml)
        .await
        .map_err(ApiError::from_validate)?;
    let def = state
        .call_as(caller, |reply| Command::CreatePipeline {
            pipeline: Box::new(pipeline),
            reply,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(def.into())))
}

/// Creates a pipeline from a YAML body (`application/yaml`,
/// `application/x-yaml`, `text/yaml`, `text/plain`), a JSON body
/// (`{"yaml": ..., "file_name": ...}`, or the pipeline in JSON), or a
/// multipart form (as `/upload`). Any other Content-Type gets 415.
#[utoipa::path(post, path = "/api/ci/pipelines", tag = "pipelines", operation_id = "create_pipeline",
    params(FileNameQuery),
    request_body(description = "YAML text (application/yaml), or JSON: `{yaml, file_name}` or the pipeline itself",
        content((CreatePipeline = "application/json"), (String = "application/yaml"))),
    responses((status = 201, body = Pipeline),
              (status = 400, description = "The body or query string is malformed", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 413, description = "Over 10 MiB", body = ErrorBody),
              (status = 415, description = "Not YAML, JSON nor multipart", body = ErrorBody),
              (status = 422, description = "Validation errors with file positions", body = ErrorBody),
              (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<FileNameQuery>,
    request: Request,
) -> Result<(StatusCode, Json<Pipeline>), ApiError> {
    caller.require(Role::Submitter)?;
    let kind = BodyKind::of(request.headers())?;
    if kind == BodyKind::Multipart {
        let multipart = Multipart::from_request(request, &state)
            .await
            .map_err(multipart_error)?;
        return from_form(&state, &caller, multipart).await;
    }
    let body = Bytes::from_request(request, &state).await.map_err(body_error)?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::bad_request("the pipeline file is not UTF-8 text"))?;
    let default_name = query.file_name.unwrap_or_else(|| DEFAULT_FILE_NAME.into());
    let (file_name, yaml) = if kind == BodyKind::Json {
        match serde_json::from_str::<CreatePipeline>(&text) {
            Ok(request) => (request.file_name.unwrap_or(default_name), request.yaml),
            // JSON is YAML: a JSON pipeline goes to the same validator.
            Err(_) => (default_name.replace(".yaml", ".json"), text),
        }
    } else {
        (default_name, text)
    };
    store(&state, &caller, file_name, yaml).await
}

fn multipart_error(e: MultipartRejection) -> ApiError {
    ApiError::bad_request("the body is not a multipart form").details(e.body_text())
}

/// Creates a pipeline from an uploaded file (multipart, field `file`, up to 10 MiB).
#[utoipa::path(post, path = "/api/ci/pipelines/upload", tag = "pipelines", operation_id = "upload_pipeline",
    request_body(content = UploadForm, content_type = "multipart/form-data", description = "A form with a `file` part holding the YAML"),
    responses((status = 201, body = Pipeline),
              (status = 400, description = "Not a readable form, or no file in it", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 413, description = "Over 10 MiB", body = ErrorBody),
              (status = 415, description = "Not multipart/form-data", body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn upload(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<(StatusCode, Json<Pipeline>), ApiError> {
    caller.require(Role::Submitter)?;
    if BodyKind::of(request.headers())? != BodyKind::Multipart {
        return Err(BodyKind::unsupported(request.headers(), "multipart/form-data"));
    }
    let multipart = Multipart::from_request(request, &state)
        .await
        .map_err(multipart_error)?;
    from_form(&state, &caller, multipart).await
}

async fn from_form(
    state: &AppState,
    caller: &Caller,
    mut multipart: Multipart,
) -> Result<(StatusCode, Json<Pipeline>), ApiError> {
    let read_error = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(MAX_PIPELINE_BODY_BYTES)
        } else {
            ApiError::bad_request("the multipart form could not be read").details(e.body_text())
        }
    };
    let mut file = None;
    while let Some(field) = multipart.next_field().await.map_err(read_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        if name != "file" {
            return Err(
                ApiError::bad_request(format!("the form has a part `{name}`, which is not known"))
                    .suggest("send only the YAML, in a part named `file`"),
            );
        }
        if file.is_some() {
            return Err(ApiError::bad_request("the form has more than one `file` part")
                .suggest("send one pipeline file per request"));
        }
        let file_name = field
            .file_name()
            .filter(|n| !n.is_empty())
            .unwrap_or(DEFAULT_FILE_NAME)
            .to_owned();
        let data = field.bytes().await.map_err(read_error)?;
        let yaml = String::from_utf8(data.to_vec())
            .map_err(|_| ApiError::bad_request(format!("{file_name} is not UTF-8 text")))?;
        file = Some((file_name, yaml));
    }
    if let Some((file_name, yaml)) = file {
        return store(state, caller, file_name, yaml).await;
    }
    Err(ApiError::bad_request("the form has no file").suggest("send the YAML in a part named `file`"))
}

/// Stored pipelines, newest first, without their YAML (paged: see `limit`
/// and `cursor`; the next page is in the `Link` and `X-Next-Cursor` headers).
#[utoipa::path(get, path = "/api/ci/pipelines", tag = "pipelines", operation_id = "list_pipelines",
    params(PageQuery),
    responses((status = 200, body = Vec<PipelineSummary>,
                headers(("link" = String, description = "`<next page URL>; rel=\"next\"` when there is more"),
                        ("x-next-cursor" = u64, description = "The next page's cursor, when there is more"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Page<PipelineSummary>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, before) = (query.limit()?, query.cursor()?);
    let defs = state
        .call(|reply| Command::ListPipelines {
            before,
            limit: limit + 1,
            reply,
        })
        .await?;
    let items = defs.into_iter().map(PipelineSummary::from).collect();
    Ok(Page::new(
        items,
        limit,
        "/api/ci/pipelines",
        |p: &PipelineSummary| p.id,
    ))
}

/// One stored pipeline.
#[utoipa::path(get, path = "/api/ci/pipelines/{id}", tag = "pipelines", operation_id = "get_pipeline",
    params(("id" = u64, Path, description = "Pipeline id")),
    responses((status = 200, body = Pipeline),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Pipeline>, ApiError> {
    caller.require(Role::Viewer)?;
    state
        .call(|reply| Command::GetPipeline(id, reply))
        .await?
        .map(|def| Json(def.into()))
        .ok_or_else(|| no_pipeline(id))
}

fn no_pipeline(id: u64) -> ApiError {
    ApiError::not_found(format!("no pipeline {id}")).suggest("list pipelines with GET /api/ci/pipelines")
}

/// What a trigger of a stored pipeline gives its run.
#[derive(Debug, Default, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerPipeline {
    /// Variables for every job (names of letters, digits and `_`; not
    /// `VALKYRIE_*`); they override the pipeline file's `env`.
    #[serde(default)]
    pub variables: std::collections::BTreeMap<String, String>,
}

/// Starts a run (an execution) of a stored pipeline, with variables for
/// every job (the body is optional).
#[utoipa::path(post, path = "/api/ci/pipelines/{id}/trigger", tag = "pipelines", operation_id = "trigger_pipeline",
    params(("id" = u64, Path, description = "Pipeline id")),
    request_body(content = Option<TriggerPipeline>, content_type = "application/json", description = "Optional"),
    responses((status = 201, body = Triggered),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 422, body = ErrorBody), (status = 429, body = ErrorBody), (status = 503, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn trigger(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
    body: Bytes,
) -> Result<(StatusCode, Json<Triggered>), ApiError> {
    caller.require(Role::Submitter)?;
    let request: TriggerPipeline = super::body::json_or_default(&body)?;
    let variables: Vec<(String, String)> = request.variables.into_iter().collect();
    crate::source::check_variables(&variables).map_err(ApiError::bad_request)?;
    let def = state
        .call(|reply| Command::GetPipeline(id, reply))
        .await?
        .ok_or_else(|| no_pipeline(id))?;
    // The stored text is parsed again for the plan, off the core.
    let pipeline = state
        .core
        .validate_pipeline(def.file_name, def.source)
        .await
        .map_err(ApiError::from_validate)?;
    let execution_id = state
        .call_as(&caller, |reply| Command::TriggerPipeline {
            id,
            pipeline: Box::new(pipeline),
            variables,
            reply,
        })
        .await?
        .map_err(ApiError::from)?;
    Ok((
        StatusCode::CREATED,
        Json(Triggered {
            run_id: execution_id,
            pipeline_id: id,
            status_url: format!("/api/ci/executions/{execution_id}"),
        }),
    ))
}
