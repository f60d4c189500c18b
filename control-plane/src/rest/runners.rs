//! `/api/runners`: the runner registry, and draining a runner.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use valkyrie::message::{Message, RunnerInfo};

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody};
use super::page::{Page, PageQuery};
use super::{unexpected, ApiPath, ApiQuery, AppState};
use crate::core::Command;

/// A registered runner.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Runner {
    /// Runner id.
    pub runner_id: u64,
    /// Name, unique per server.
    pub name: String,
    /// idle, busy, draining or lost.
    pub state: String,
    /// Tags it matches.
    pub tags: Vec<String>,
    /// Operating system.
    pub os: String,
    /// CPU architecture.
    pub arch: String,
    /// Concurrent job slots.
    pub slots: u32,
    /// Slots in use.
    pub busy: u32,
    /// Time since it was last heard from, ms.
    pub last_seen_ms_ago: u64,
    /// Agent version.
    pub version: String,
}

impl From<RunnerInfo> for Runner {
    fn from(r: RunnerInfo) -> Self {
        Self {
            runner_id: r.runner_id,
            name: r.name,
            state: r.state.as_str().into(),
            tags: r.tags,
            os: r.os,
            arch: r.arch,
            slots: r.slots,
            busy: r.busy,
            last_seen_ms_ago: r.last_seen_ms_ago,
            version: r.version,
        }
    }
}

/// An accepted drain.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Draining {
    /// The runner.
    pub runner_id: u64,
    /// Always `draining`: it takes no new jobs and finishes its own.
    pub state: String,
}

/// Registered runners, by id (paged: see `limit` and `cursor`; the next
/// page is in the `Link` and `X-Next-Cursor` headers).
#[utoipa::path(get, path = "/api/runners", tag = "runners", operation_id = "list_runners",
    params(PageQuery),
    responses((status = 200, body = Vec<Runner>,
                headers(("link" = String, description = "`<next page URL>; rel=\"next\"` when there is more"),
                        ("x-next-cursor" = u64, description = "The next page's cursor, when there is more"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Page<Runner>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, after) = (query.limit()?, query.cursor()?.unwrap_or(0));
    match state.ask(Command::ListRunners).await? {
        Message::RunnerList(list) => {
            // Runners are few (one per agent): paged here, ascending by id.
            let items = list
                .runners
                .into_iter()
                .filter(|r| r.runner_id > after)
                .take(limit + 1)
                .map(Runner::from)
                .collect();
            Ok(Page::new(items, limit, "/api/runners", |r: &Runner| r.runner_id))
        }
        other => Err(unexpected(&other)),
    }
}

/// Drains a runner: it takes no new jobs and finishes the ones it has.
#[utoipa::path(post, path = "/api/runners/{id}/drain", tag = "runners", operation_id = "drain_runner",
    params(("id" = u64, Path, description = "Runner id")),
    responses((status = 202, body = Draining),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn drain(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<(StatusCode, Json<Draining>), ApiError> {
    caller.require(Role::Admin)?;
    state
        .call_as(&caller, |reply| Command::DrainRunner(id, reply))
        .await?
        .map_err(|err| ApiError::from(err).suggest("list runners with GET /api/runners"))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Draining {
            runner_id: id,
            state: "draining".into(),
        }),
    ))
}

/// How to remove a runner.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RemoveQuery {
    /// `true`: drain a connected runner and remove it once it disconnects.
    pub force: Option<bool>,
}

/// A removed (or, with `force`, draining) runner.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Removed {
    /// The runner.
    pub name: String,
    /// `removed`, or `draining` when a connected runner is removed once it
    /// disconnects.
    pub state: String,
}

/// Removes the record of a runner that is not connected. A connected one
/// is refused (409) unless `force=true`: it is then drained and removed
/// once it disconnects.
#[utoipa::path(delete, path = "/api/runners/{name}", tag = "runners", operation_id = "remove_runner",
    params(("name" = String, Path, description = "Runner name"), RemoveQuery),
    responses((status = 200, body = Removed),
              (status = 400, description = "A malformed query", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody),
              (status = 409, description = "The runner is connected (use force=true)", body = ErrorBody),
              (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn remove(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(name): ApiPath<String>,
    ApiQuery(query): ApiQuery<RemoveQuery>,
) -> Result<Json<Removed>, ApiError> {
    caller.require(Role::Admin)?;
    let force = query.force.unwrap_or(false);
    let connected = match state.ask(Command::ListRunners).await? {
        Message::RunnerList(list) => list
            .runners
            .iter()
            .any(|r| r.name == name && !matches!(r.state.as_str(), "lost" | "stopped")),
        other => return Err(unexpected(&other)),
    };
    state
        .ask_as(&caller, |reply| Command::RemoveRunner {
            name: name.clone(),
            force,
            reply,
        })
        .await
        .map_err(|e| e.suggest("list runners with GET /api/runners"))?;
    let state = if connected && force { "draining" } else { "removed" };
    Ok(Json(Removed {
        name,
        state: state.into(),
    }))
}
