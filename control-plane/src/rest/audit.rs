//! `GET /api/audit`: the audit log ([`crate::audit`]), newest first, a page
//! at a time. Admin only.

use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use valkyrie::message::{AuditEntry, Message};

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody};
use super::{unexpected, ApiQuery, AppState};
use crate::audit::{DEFAULT_AUDIT_PAGE, MAX_AUDIT_PAGE};
use crate::core::Command;

/// Which page of the audit log.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// At most this many records, 1 to 1000. Default 100.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Only records with an id below this: the `next_before` of the
    /// previous page. Default: from the newest.
    #[param(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub before: Option<u64>,
}

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditRecordJson {
    /// Increasing id.
    pub id: u64,
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// How the actor was authenticated: jwt, api_token, runner, local or server.
    pub actor_kind: String,
    /// Who: JWT subject, client software, runner name or local user.
    pub actor: String,
    /// What: submit_job, submit_pipeline, create_pipeline, trigger_pipeline,
    /// cancel_job, cancel_run, drain_runner, register_runner or mint_token.
    pub action: String,
    /// What it was done to, e.g. `run 3`.
    pub target: String,
    /// Names and settings for a reader; never a secret value.
    pub detail: String,
}

impl From<AuditEntry> for AuditRecordJson {
    fn from(e: AuditEntry) -> Self {
        Self {
            id: e.id,
            at_ms: e.at_ms,
            actor_kind: e.actor_kind,
            actor: e.actor,
            action: e.action,
            target: e.target,
            detail: e.detail,
        }
    }
}

/// A page of the audit log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AuditPage {
    /// Records, newest first.
    pub records: Vec<AuditRecordJson>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next_before: Option<u64>,
}

/// The audit log: who did what, and when, newest first.
#[utoipa::path(get, path = "/api/audit", tag = "audit", operation_id = "list_audit",
    params(AuditQuery),
    responses((status = 200, body = AuditPage),
              (status = 400, description = "`limit` or `before` out of range", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>, ApiError> {
    caller.require(Role::Admin)?;
    let limit = query.limit.unwrap_or(DEFAULT_AUDIT_PAGE as u32);
    if limit == 0 || limit as usize > MAX_AUDIT_PAGE {
        return Err(
            ApiError::bad_request(format!("limit {limit} is out of range")).suggest(format!(
                "pass a limit from 1 to {MAX_AUDIT_PAGE}, and page with `before`"
            )),
        );
    }
    let before = super::page::check_cursor("before", query.before)?.unwrap_or(0);
    match state
        .ask(|reply| Command::ListAudit { limit, before, reply })
        .await?
    {
        Message::AuditList(list) => {
            let full = list.entries.len() == limit as usize;
            let next_before = list.entries.last().filter(|_| full).map(|e| e.id);
            Ok(Json(AuditPage {
                records: list.entries.into_iter().map(AuditRecordJson::from).collect(),
                next_before,
            }))
        }
        other => Err(unexpected(&other)),
    }
}
