//! Liveness and readiness: `/healthz` answers while the process serves
//! HTTP; `/readyz` also needs the core to answer a snapshot and the
//! protocol listeners to be bound. `/api/healthchecker` is the original
//! design's health route, kept for its clients.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorBody};
use super::AppState;

/// A health answer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// `ok` (or `success` on `/api/healthchecker`).
    pub status: String,
    /// What was checked.
    pub message: String,
}

/// How long the core has to answer a readiness check.
const CORE_DEADLINE: Duration = Duration::from_secs(2);

/// The original design's health check.
#[utoipa::path(get, path = "/api/healthchecker", tag = "health",
    responses((status = 200, description = "Serving", body = Health)))]
pub async fn healthchecker() -> Json<Health> {
    Json(Health {
        status: "success".into(),
        message: "Valkyrie control plane is running".into(),
    })
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "health",
    responses((status = 200, description = "Alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        message: "alive".into(),
    })
}

/// Readiness: the core answers and the listeners are bound.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, description = "Ready", body = Health),
               (status = 503, description = "Not ready", body = ErrorBody)))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if !state.ready.load(Ordering::Acquire) {
        return Err(ApiError::unavailable("the protocol listeners are not bound yet"));
    }
    match tokio::time::timeout(CORE_DEADLINE, state.core.snapshot()).await {
        Ok(Some(_)) => Ok(Json(Health {
            status: "ok".into(),
            message: "core answering, listeners bound".into(),
        })),
        Ok(None) => Err(ApiError::core_stopped()),
        Err(_) => Err(ApiError::unavailable(format!(
            "the core did not answer within {} s",
            CORE_DEADLINE.as_secs()
        ))
        .suggest("the core may be overloaded; check valkyrie_queue_depth_jobs")),
    }
}
