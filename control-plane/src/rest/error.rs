//! The error body every REST failure carries, in the original design's
//! format: `{"error", "message", "details", "suggestions", "timestamp"}`.
//! `error` names the category (who is at fault), `message` says what went
//! wrong, `details` gives context (for validation errors, one
//! `file:line:column: message` per line), and `suggestions` says what to do.

use std::time::{Duration, SystemTime};

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use valkyrie::ErrorCode;
use valkyrie_pipeline::PipelineErrors;

use crate::core::ValidatePipelineError;

/// The JSON body of every error response.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorBody {
    /// Category: ValidationError, AuthenticationError, AuthorizationError,
    /// NotFound, MethodNotAllowed, Conflict, RateLimited, PayloadTooLarge,
    /// UnsupportedMediaType, BadRequest, Unavailable, InternalError.
    pub error: String,
    /// What went wrong, for people.
    pub message: String,
    /// Additional context (validation errors: `file:line:column: message`, one per line).
    pub details: String,
    /// What to do about it.
    pub suggestions: Vec<String>,
    /// When it happened (RFC 3339 / ISO 8601, UTC).
    pub timestamp: String,
}

/// A failed request: a status code and the body that explains it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    error: &'static str,
    message: String,
    details: String,
    suggestions: Vec<String>,
    retry_after: Option<Duration>,
}

/// The core's refusals keep their kind: 404, 400 or 409.
impl From<crate::core::CoreError> for ApiError {
    fn from(err: crate::core::CoreError) -> Self {
        use crate::core::CoreError;
        match err {
            CoreError::NotFound(message) => Self::not_found(message),
            CoreError::Invalid(message) => Self::bad_request(message),
            CoreError::Conflict(message) => Self::conflict(message),
        }
    }
}

impl ApiError {
    fn new(status: StatusCode, error: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            error,
            message: message.into(),
            details: String::new(),
            suggestions: Vec::new(),
            retry_after: None,
        }
    }

    /// 400: the request itself is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    /// 401: no credentials, or credentials that are not valid.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthenticationError", message).suggest(
            "send `Authorization: Bearer <token>` with the server's API token or a JWT from `valkyrie-server token`",
        )
    }

    /// 401 to a webhook whose signature or token does not match.
    pub fn bad_webhook_signature(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "AuthenticationError", message)
            .suggest("set the same secret in the forge's webhook settings and in the project (`vk projects add … --webhook-secret`)")
    }

    /// 422: a well-formed request that cannot be acted on.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "ValidationError", message)
    }

    /// 403: valid credentials whose role may not do this.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "AuthorizationError", message)
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "NotFound", message)
    }

    /// 405: the route exists but not with this method.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "this route does not take this method",
        )
        .suggest("see /api/openapi.json for the routes and their methods")
    }

    /// 409: not possible in the current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "Conflict", message)
    }

    /// 413.
    pub fn too_large(limit_bytes: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLarge",
            format!("the request body is over the limit of {limit_bytes} bytes"),
        )
        .suggest("split the pipeline file, or remove generated content from it")
    }

    /// 415: a body of a type the route does not parse.
    pub fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            message,
        )
    }

    /// 422: a pipeline file that does not validate; every error keeps its position.
    pub fn invalid_pipeline(errors: &PipelineErrors) -> Self {
        let count = errors.0.len();
        let details = errors
            .0
            .iter()
            .map(|e| format!("{}:{}:{}: {}", e.file, e.line, e.column, e.message))
            .collect::<Vec<_>>()
            .join("\n");
        let mut err = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "ValidationError",
            format!(
                "the pipeline file has {count} error{}",
                if count == 1 { "" } else { "s" }
            ),
        )
        .details(details);
        err.suggestions = errors.0.iter().filter_map(|e| e.hint.clone()).collect();
        err
    }

    /// A pipeline file that could not be validated: 422 for the
    /// submitter's errors (and files too slow to validate), 503 when the
    /// validator is busy, 500 if it failed.
    pub fn from_validate(err: ValidatePipelineError) -> Self {
        match err {
            ValidatePipelineError::Invalid(errors) => Self::invalid_pipeline(&errors),
            ValidatePipelineError::TooSlow { .. } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "ValidationError",
                err.to_string(),
            )
            .suggest("split the pipeline into smaller files"),
            ValidatePipelineError::Busy => {
                let mut busy =
                    Self::unavailable(err.to_string()).suggest("retry after the Retry-After header's delay");
                busy.retry_after = Some(Duration::from_secs(1));
                busy
            }
            _ => Self::internal(err.to_string()),
        }
    }

    /// 429, with the time after which a retry will be admitted.
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut err = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimited",
            "too many requests for this token",
        )
        .suggest("wait for the time in the Retry-After header, or ask for a higher --rate-limit");
        err.retry_after = Some(retry_after);
        err
    }

    /// 503: the core or a listener is not available.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", message)
    }

    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "InternalError", message)
    }

    /// The core has stopped answering: only a restart helps.
    pub fn core_stopped() -> Self {
        Self::unavailable("the control plane's core has stopped").suggest("restart valkyrie-server")
    }

    /// Maps a protocol `RequestFailed` to the matching HTTP error.
    pub fn from_code(code: ErrorCode, message: String) -> Self {
        match code {
            ErrorCode::NOT_FOUND => Self::not_found(message),
            ErrorCode::INVALID_REQUEST => {
                Self::new(StatusCode::UNPROCESSABLE_ENTITY, "ValidationError", message)
            }
            ErrorCode::CONFLICT => Self::conflict(message),
            ErrorCode::UNAUTHENTICATED => Self::unauthenticated(message),
            ErrorCode::PERMISSION_DENIED => Self::forbidden(message),
            _ => Self::internal(format!("{code}: {message}")),
        }
    }

    /// Adds context.
    pub fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// Adds a suggestion.
    pub fn suggest(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestions.push(suggestion.into());
        self
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The body this error is sent as.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: self.error.to_owned(),
            message: self.message.clone(),
            details: self.details.clone(),
            suggestions: self.suggestions.clone(),
            timestamp: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        let headers = response.headers_mut();
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(wait) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long is admitted.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.error, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;
    use valkyrie_pipeline::PipelineError;

    #[test]
    fn validation_errors_keep_positions_and_hints() {
        let errors = PipelineErrors(vec![PipelineError {
            file: "ci.yaml".into(),
            line: 14,
            column: 7,
            message: "job `test` needs `buld`, which is not defined".into(),
            hint: Some("did you mean `build`?".into()),
        }]);
        let err = ApiError::invalid_pipeline(&errors);
        assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = err.body();
        assert_eq!(body.error, "ValidationError");
        assert_eq!(
            body.details,
            "ci.yaml:14:7: job `test` needs `buld`, which is not defined"
        );
        assert_eq!(body.suggestions, vec!["did you mean `build`?".to_owned()]);
        assert!(body.timestamp.ends_with('Z'), "{}", body.timestamp);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let response = ApiError::rate_limited(Duration::from_millis(1500)).into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    }
}
