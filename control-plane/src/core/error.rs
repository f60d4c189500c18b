//! Why the core refuses a request, grouped by who is at fault (as rustls
//! groups its errors): each kind maps to the code a session sends in
//! RequestFailed and to the REST status, so no caller reads a message to
//! decide what went wrong.

use valkyrie::ErrorCode;

/// A request the core refused. All are the caller's to fix; the kind says
/// how: name something that exists, send something valid, or wait for
/// the state to allow it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CoreError {
    /// It names something that does not exist (a run, a job of a run, a
    /// pipeline, a runner, a project): `NOT_FOUND`, HTTP 404.
    #[error("{0}")]
    NotFound(String),
    /// It is not valid whatever the state (a job without steps, a runner
    /// without slots): `INVALID_REQUEST`, HTTP 400.
    #[error("{0}")]
    Invalid(String),
    /// It is valid but the state does not allow it (a name in use, a job
    /// that is not manual, a run still running, rules that start no run):
    /// `CONFLICT`, HTTP 409.
    #[error("{0}")]
    Conflict(String),
}

impl CoreError {
    /// The code sent on the wire in RequestFailed.
    pub fn code(&self) -> ErrorCode {
        match self {
            CoreError::NotFound(_) => ErrorCode::NOT_FOUND,
            CoreError::Invalid(_) => ErrorCode::INVALID_REQUEST,
            CoreError::Conflict(_) => ErrorCode::CONFLICT,
        }
    }
}
