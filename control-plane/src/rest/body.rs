//! Request bodies: a size limit per route, checked against the declared
//! `Content-Length` before anything is read (and enforced again while
//! reading, for bodies sent without one), so a request can never make the
//! server hold more than its route's limit.
//!
//! | route | limit |
//! |---|---|
//! | `POST /api/ci/pipelines`, `POST /api/ci/pipelines/upload` | [`MAX_PIPELINE_BODY_BYTES`] (10 MiB) |
//! | every other route | [`MAX_OTHER_BODY_BYTES`] (64 KiB) |

use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// Largest pipeline file (created or uploaded), with its multipart or JSON wrapping.
pub const MAX_PIPELINE_BODY_BYTES: usize = 10 << 20;

/// Largest body on every other route (none of them reads one).
pub const MAX_OTHER_BODY_BYTES: usize = 64 << 10;

/// The body limit of the route at `path`.
pub fn limit_for(path: &str) -> usize {
    match path {
        "/api/ci/pipelines" | "/api/ci/pipelines/upload" => MAX_PIPELINE_BODY_BYTES,
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
