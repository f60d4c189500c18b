//! `/api/ci/jobs/{id}/artifacts`: a job's artifacts, listed and downloaded
//! (streamed from the blob, on disk or in S3, with its `Content-Length`, never read into
//! memory whole).

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use utoipa::ToSchema;
use valkyrie::message::ArtifactInfo;

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody};
use super::{ApiPath, AppState};
use crate::artifacts::{ArtifactError, ArtifactStore};

/// One stored artifact.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Artifact {
    /// Its name within the job (`artifacts.tar` for what `artifacts:` uploads).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// When it was stored, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// When it expires, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl From<ArtifactInfo> for Artifact {
    fn from(a: ArtifactInfo) -> Self {
        Self {
            name: a.name,
            size: a.size,
            sha256: a.sha256,
            created_at_ms: a.created_at_ms,
            expires_at_ms: a.expires_at_ms,
        }
    }
}

fn store(state: &AppState) -> Result<&ArtifactStore, ApiError> {
    state
        .core
        .artifacts()
        .map(|s| s.as_ref())
        .ok_or_else(|| ApiError::not_found("this server keeps no artifacts"))
}

fn api_error(err: ArtifactError) -> ApiError {
    match err {
        ArtifactError::NotFound { .. } => {
            ApiError::not_found(err.to_string()).suggest("list them with GET /api/ci/jobs/{id}/artifacts")
        }
        other => ApiError::from_code(other.code(), other.to_string()),
    }
}

/// A job's artifacts, by name (an unknown job has none).
#[utoipa::path(get, path = "/api/ci/jobs/{id}/artifacts", tag = "artifacts", operation_id = "list_artifacts",
    params(("id" = u64, Path, description = "Job id")),
    responses((status = 200, body = Vec<Artifact>),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Vec<Artifact>>, ApiError> {
    caller.require(Role::Viewer)?;
    let listed = store(&state)?.list(id).map_err(api_error)?;
    Ok(Json(listed.into_iter().map(Artifact::from).collect()))
}

/// Bytes read from the blob per body chunk.
const BODY_CHUNK_BYTES: usize = 256 << 10;

/// One artifact's content, streamed, with its `Content-Length` and its
/// SHA-256 in `X-Checksum-Sha256`.
#[utoipa::path(get, path = "/api/ci/jobs/{id}/artifacts/{name}", tag = "artifacts", operation_id = "download_artifact",
    params(("id" = u64, Path, description = "Job id"), ("name" = String, Path, description = "Artifact name")),
    responses((status = 200, description = "The artifact's bytes", content_type = "application/octet-stream",
                headers(("content-length" = u64, description = "Its size"),
                        ("x-checksum-sha256" = String, description = "Its SHA-256, lowercase hex"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath((id, name)): ApiPath<(u64, String)>,
) -> Result<Response, ApiError> {
    caller.require(Role::Viewer)?;
    let (info, file) = store(&state)?.open_at(id, &name, 0).await.map_err(api_error)?;
    let body = futures_util::stream::unfold((file, info.size), |(mut file, left)| async move {
        if left == 0 {
            return None;
        }
        let n = left.min(BODY_CHUNK_BYTES as u64);
        let mut buf = vec![0u8; n as usize];
        match file.read_exact(&mut buf).await {
            Ok(_) => Some((Ok(bytes::Bytes::from(buf)), (file, left - n))),
            Err(err) => Some((Err::<bytes::Bytes, _>(err), (file, 0))),
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(sha) = HeaderValue::from_str(&info.sha256) {
        headers.insert("x-checksum-sha256", sha);
    }
    if let Ok(disposition) = HeaderValue::from_str(&format!("attachment; filename=\"{}\"", info.name)) {
        headers.insert(header::CONTENT_DISPOSITION, disposition);
    }
    Ok(response)
}
