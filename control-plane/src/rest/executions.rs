//! `/api/ci/executions`: pipeline runs, their jobs and timings, cancelling
//! them, and following their logs over Server-Sent Events.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use utoipa::ToSchema;
use valkyrie::message::{EventBody, Message, RunInfo, RunJobInfo, StepInfo};

use super::auth::{Caller, Role};
use super::error::{ApiError, ErrorBody};
use super::page::{Page, PageQuery};
use super::{unexpected, ApiPath, ApiQuery, AppState, Shared};
use crate::core::Command;
use crate::responder::EventSink;

/// A pipeline run.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Execution {
    /// Run id (`vk` shows it as `r12`).
    pub run_id: u64,
    /// Pipeline name.
    pub name: String,
    /// running, succeeded, failed, cancelled or timed_out.
    pub state: String,
    /// Why it ended, for people.
    pub message: String,
    /// Creation, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// End, ms since the Unix epoch.
    pub finished_at_ms: Option<u64>,
    /// `finished_at_ms - created_at_ms`, once finished.
    pub duration_ms: Option<u64>,
    /// Its jobs, in pipeline order.
    pub jobs: Vec<ExecutionJob>,
}

/// One job of an execution.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionJob {
    /// Name within the pipeline (matrix jobs: `name [key=value]`).
    pub name: String,
    /// Stage.
    pub stage: String,
    /// waiting, queued, assigned, running, succeeded, failed, cancelled, timed_out, lost or skipped.
    pub state: String,
    /// The job's id once released to the scheduler.
    pub job_id: Option<u64>,
    /// The runner that ran it.
    pub runner: Option<String>,
    /// Exit code, once finished.
    pub exit_code: Option<i32>,
    /// Start, ms since the Unix epoch.
    pub started_at_ms: Option<u64>,
    /// End, ms since the Unix epoch.
    pub finished_at_ms: Option<u64>,
    /// `finished_at_ms - started_at_ms`, once finished.
    pub duration_ms: Option<u64>,
    /// Whether its failure does not fail the run.
    pub allow_failure: bool,
    /// Why it is where it is.
    pub reason: String,
    /// Its steps, in order (the current attempt's), in
    /// `GET /api/ci/executions/{id}` only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<ExecutionStep>,
}

/// One step of a job.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ExecutionStep {
    /// Display name.
    pub name: String,
    /// pending, running, succeeded, failed, failed_allowed, cancelled, timed_out or skipped.
    pub state: String,
    /// Exit code, when its process exited.
    pub exit_code: Option<i32>,
    /// Run time, once it ended.
    pub duration_ms: Option<u64>,
}

impl From<RunJobInfo> for ExecutionJob {
    fn from(job: RunJobInfo) -> Self {
        Self {
            duration_ms: job
                .started_at_ms
                .zip(job.finished_at_ms)
                .map(|(s, f)| f.saturating_sub(s)),
            name: job.name,
            stage: job.stage,
            state: job.state.as_str().into(),
            job_id: job.job_id,
            runner: job.runner,
            exit_code: job.exit_code,
            started_at_ms: job.started_at_ms,
            finished_at_ms: job.finished_at_ms,
            allow_failure: job.allow_failure,
            reason: job.reason,
            steps: Vec::new(),
        }
    }
}

impl From<RunInfo> for Execution {
    fn from(run: RunInfo) -> Self {
        Self {
            run_id: run.run_id,
            name: run.name,
            state: run.state.as_str().into(),
            message: run.message,
            created_at_ms: run.created_at_ms,
            duration_ms: run.finished_at_ms.map(|f| f.saturating_sub(run.created_at_ms)),
            finished_at_ms: run.finished_at_ms,
            jobs: run.jobs.into_iter().map(ExecutionJob::from).collect(),
        }
    }
}

/// An accepted cancel.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Cancelled {
    /// The execution (run).
    pub run_id: u64,
    /// Always `cancelling`: its jobs are being stopped.
    pub state: String,
}

impl Shared {
    async fn run(&self, id: u64) -> Result<RunInfo, ApiError> {
        match self.ask(|reply| Command::GetRun(id, reply)).await {
            Ok(Message::RunDetails(details)) => Ok(details.run),
            Ok(other) => Err(unexpected(&other)),
            Err(err) => Err(err.suggest("list executions with GET /api/ci/executions")),
        }
    }
}

/// Executions, newest first (paged: see `limit` and `cursor`; the next
/// page is in the `Link` and `X-Next-Cursor` headers).
#[utoipa::path(get, path = "/api/ci/executions", tag = "executions", operation_id = "list_executions",
    params(PageQuery),
    responses((status = 200, body = Vec<Execution>,
                headers(("link" = String, description = "`<next page URL>; rel=\"next\"` when there is more"),
                        ("x-next-cursor" = u64, description = "The next page's cursor, when there is more"))),
              (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Page<Execution>, ApiError> {
    caller.require(Role::Viewer)?;
    let (limit, before) = (query.limit()?, query.cursor()?);
    let runs = state
        .call(|reply| Command::ListRunsPage {
            before,
            limit: limit + 1,
            reply,
        })
        .await?;
    let items = runs.into_iter().map(Execution::from).collect();
    Ok(Page::new(items, limit, "/api/ci/executions", |e: &Execution| {
        e.run_id
    }))
}

/// One execution: status, jobs and timings.
#[utoipa::path(get, path = "/api/ci/executions/{id}", tag = "executions", operation_id = "get_execution",
    params(("id" = u64, Path, description = "Execution id")),
    responses((status = 200, body = Execution),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Json<Execution>, ApiError> {
    caller.require(Role::Viewer)?;
    let mut execution: Execution = state.run(id).await?.into();
    for job in &mut execution.jobs {
        let Some(job_id) = job.job_id else { continue };
        // A job forgotten past the retention keeps no steps.
        if let Ok(Message::JobDetails(details)) = state.ask(|reply| Command::GetJob(job_id, reply)).await {
            let states = StepInfo::states(details.job.state, &details.steps);
            job.steps = details
                .steps
                .into_iter()
                .zip(states)
                .map(|(step, state)| ExecutionStep {
                    name: step.name,
                    state: state.into(),
                    exit_code: step.exit_code,
                    duration_ms: step.duration_ms,
                })
                .collect();
        }
    }
    Ok(Json(execution))
}

/// Cancels every unfinished job of an execution.
#[utoipa::path(post, path = "/api/ci/executions/{id}/cancel", tag = "executions", operation_id = "cancel_execution",
    params(("id" = u64, Path, description = "Execution id")),
    responses((status = 202, body = Cancelled), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<(axum::http::StatusCode, Json<Cancelled>), ApiError> {
    caller.require(Role::Submitter)?;
    state
        .ask_as(&caller, |reply| Command::CancelRun(id, reply))
        .await?;
    Ok((
        axum::http::StatusCode::ACCEPTED,
        Json(Cancelled {
            run_id: id,
            state: "cancelling".into(),
        }),
    ))
}

/// How often a log follower looks for newly released jobs.
const RELEASE_POLL: Duration = Duration::from_millis(200);
/// How long a follower waits, once the run has ended, for its jobs' last events.
const END_GRACE: Duration = Duration::from_secs(5);

/// Follows an execution's logs as Server-Sent Events: one `log` event per
/// chunk of output (`id` = job id/seq, event name = job name, data = the
/// text lines), `state` events as jobs change state, and a final `end`
/// event with the execution's status. History is replayed first.
#[utoipa::path(get, path = "/api/ci/executions/{id}/logs", tag = "executions", operation_id = "follow_execution_logs",
    params(("id" = u64, Path, description = "Execution id")),
    responses((status = 200, content_type = "text/event-stream",
        description = "Events: `<job name>` (data: output lines), `state` (JSON), `end` (JSON)"),
              (status = 400, description = "The id is not a number", body = ErrorBody),
              (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 405, description = "Method not allowed", body = ErrorBody), (status = 429, body = ErrorBody)),
    security(("bearer" = [])))]
pub async fn logs(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<u64>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    caller.require(Role::Viewer)?;
    let run = state.run(id).await?;
    let (out_tx, out_rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(follow(state, run, out_tx));
    let stream = futures_util::stream::unfold(out_rx, |mut rx| async move {
        rx.recv().await.map(|event| (Ok(event), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Subscribes to each job of the run as it is released and forwards its
/// events until the run has ended and every subscribed job has reported a
/// final state (or the client went away).
async fn follow(state: AppState, mut run: RunInfo, out: mpsc::Sender<SseEvent>) {
    let run_id = run.run_id;
    let (events_tx, mut events) = mpsc::channel(1024);
    let mut names: HashMap<u64, String> = HashMap::new();
    let mut open: HashSet<u64> = HashSet::new();
    let mut poll = tokio::time::interval(RELEASE_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ended_at: Option<Instant> = None;
    loop {
        for job in &run.jobs {
            let Some(job_id) = job.job_id else { continue };
            if names.contains_key(&job_id) {
                continue;
            }
            // An SSE event name is one line.
            names.insert(job_id, job.name.replace(['\r', '\n'], " "));
            open.insert(job_id);
            let sink = EventSink::Channel(events_tx.clone());
            let subscribe = Command::Subscribe {
                job: Some(job_id),
                logs: true,
                replay: true,
                sink,
                resume_from: None,
            };
            if !state.core.send(subscribe).await {
                return;
            }
        }
        if run.state.is_terminal() && ended_at.is_none() {
            ended_at = Some(Instant::now());
        }
        if let Some(at) = ended_at {
            if open.is_empty() || at.elapsed() > END_GRACE {
                let end = serde_json::json!({
                    "run_id": run_id,
                    "state": run.state.as_str(),
                    "message": run.message,
                });
                let _ = out
                    .send(SseEvent::default().event("end").data(end.to_string()))
                    .await;
                return;
            }
        }
        tokio::select! {
            event = events.recv() => {
                // `events_tx` is held here, so the channel never closes.
                let Some(event) = event else { return };
                let name = names.get(&event.job_id).cloned().unwrap_or_default();
                let sse = match event.body {
                    EventBody::Log { seq, data, .. } => {
                        let text = String::from_utf8_lossy(&data);
                        SseEvent::default()
                            .event(if name.is_empty() { "log" } else { name.as_str() })
                            .id(format!("{}/{seq}", event.job_id))
                            .data(text.trim_end_matches('\n'))
                    }
                    EventBody::State { state: job_state, exit_code, message, .. } => {
                        if job_state.is_terminal() {
                            open.remove(&event.job_id);
                        }
                        let body = serde_json::json!({
                            "job_id": event.job_id, "job": name, "state": job_state.as_str(),
                            "exit_code": exit_code, "message": message,
                        });
                        SseEvent::default().event("state").data(body.to_string())
                    }
                    EventBody::Skipped { missed } => SseEvent::default()
                        .event("skipped")
                        .data(serde_json::json!({"job_id": event.job_id, "missed": missed}).to_string()),
                    EventBody::ReplayDone => continue,
                };
                if out.send(sse).await.is_err() {
                    return;
                }
            }
            _ = poll.tick() => {
                if out.is_closed() {
                    return;
                }
                match state.run(run_id).await {
                    Ok(fresh) => run = fresh,
                    Err(_) => return,
                }
            }
        }
    }
}
