//! Request bodies: a size limit per route, checked against the declared
//! `Content-Length` before anything is read (and enforced again while
//! reading, for bodies sent without one), so a request can never make the
//! server hold more than its route's limit.
//!
//! | route | limit |
//! |---|---|
//! | `POST /api/ci/pipelines`, `POST /api/ci/pipelines/upload` | [`MAX_PIPELINE_BODY_BYTES`] (10 MiB) |
//! | `POST /api/webhooks/…` | [`MAX_WEBHOOK_BODY_BYTES`] (5 MiB) |
//! | every other route | [`MAX_OTHER_BODY_BYTES`] (64 KiB) |
//!
//! Routes that create pipelines parse only the content types of
//! [`BodyKind`] and answer 415 to any other.

use axum::extract::Request;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Largest pipeline file (created or uploaded), with its multipart or JSON wrapping.
pub const MAX_PIPELINE_BODY_BYTES: usize = 10 << 20;

/// Largest webhook payload (a push of many commits lists each of them).
pub const MAX_WEBHOOK_BODY_BYTES: usize = 5 << 20;

/// Largest body on every other route.
pub const MAX_OTHER_BODY_BYTES: usize = 64 << 10;

/// The body limit of the route at `path`.
pub fn limit_for(path: &str) -> usize {
    match path {
        "/api/ci/pipelines" | "/api/ci/pipelines/upload" => MAX_PIPELINE_BODY_BYTES,
        p if p.starts_with("/api/webhooks/") => MAX_WEBHOOK_BODY_BYTES,
        _ => MAX_OTHER_BODY_BYTES,
    }
}

/// Refuses with 413 a request whose declared `Content-Length` is over its
/// route's limit, before the body is read.
pub async fn check_length(request: Request, next: Next) -> Response {
    let limit = limit_for(request.uri().path());
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(limit).into_response();
    }
    next.run(request).await
}

/// What a pipeline-creating route's body is, from its Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    /// YAML text: `application/yaml`, `application/x-yaml`, `text/yaml`,
    /// `text/x-yaml`, `text/plain`, or no Content-Type at all.
    Yaml,
    /// `application/json` (or `application/*+json`).
    Json,
    /// `multipart/form-data`.
    Multipart,
}

/// The types [`BodyKind::of`] accepts, for error messages.
const ACCEPTED: &str = "application/yaml, application/x-yaml, text/yaml, text/x-yaml, text/plain, application/json or multipart/form-data";

impl BodyKind {
    /// The kind of the body `headers` describe; 415 for any other type.
    pub fn of(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(value) = headers.get(header::CONTENT_TYPE) else {
            return Ok(Self::Yaml);
        };
        let essence = value
            .to_str()
            .ok()
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .unwrap_or_default();
        match essence.as_str() {
            "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" | "text/plain" => {
                Ok(Self::Yaml)
            }
            "application/json" => Ok(Self::Json),
            "multipart/form-data" => Ok(Self::Multipart),
            t if t.starts_with("application/") && t.ends_with("+json") => Ok(Self::Json),
            _ => Err(Self::unsupported(headers, ACCEPTED)),
        }
    }

    /// 415 naming the Content-Type sent and the `accepted` ones.
    pub fn unsupported(headers: &HeaderMap, accepted: &str) -> ApiError {
        let sent = headers
            .get(header::CONTENT_TYPE)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_else(|| "none".into());
        ApiError::unsupported_media_type(format!("Content-Type `{sent}` is not accepted here"))
            .suggest(format!("send the pipeline as {accepted}"))
    }
}

/// The JSON object of a route's body.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &axum::body::Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request("the body is not the JSON object this route takes")
            .details(e.to_string())
            .suggest("see /api/openapi.json for its fields")
    })
}

/// The JSON object of a route whose body is optional: an empty (or blank)
/// body is the default.
pub fn json_or_default<T: serde::de::DeserializeOwned + Default>(
    body: &axum::body::Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        json_body(body)
    }
}
