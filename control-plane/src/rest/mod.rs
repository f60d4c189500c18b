//! The REST adapter: an HTTP/JSON face on the same core the Valkyrie
//! listeners drive. Every route turns into a [`Command`] and awaits the
//! core's answer; nothing here keeps state of its own apart from rate-limit
//! buckets, so REST and protocol clients always see the same jobs and runs.
//!
//! Routes (the OpenAPI document at `/api/openapi.json` lists them all):
//!
//! | route | role |
//! |---|---|
//! | `GET /api/healthchecker`, `/healthz`, `/readyz`, `/metrics`, `/api/openapi.json` | none |
//! | `GET /api/ci/pipelines[/{id}]`, `/api/ci/executions[/{id}[/logs]]`, `/api/runners`, `/api/ci/jobs/{id}/artifacts[/{name}]` | viewer |
//! | `POST /api/ci/pipelines[/upload]`, `/api/ci/pipelines/{id}/trigger`, `/api/ci/executions/{id}/cancel` | submitter |
//! | `POST /api/runners/{id}/drain`, `GET /api/audit` | admin |
//! | `GET /api/projects[/{name}]` | viewer |
//! | `POST /api/projects/{name}/trigger` | submitter |
//! | `POST /api/projects`, `DELETE /api/projects/{name}` | admin |
//! | `POST /api/webhooks/{github,gitlab}/{project}` | the project's webhook secret |
//!
//! Errors are [`error::ErrorBody`]; authentication and roles are in
//! [`auth`]; rate limiting in [`limits`].

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod body;
pub mod error;
pub mod executions;
pub mod health;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod page;
pub mod pipelines;
pub mod projects;
pub mod runners;
pub mod runs;
pub mod webhooks;

use std::ops::Deref;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method};
use axum::routing::{delete, get, post, MethodRouter};
use axum::Router;
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;
use valkyrie::message::Message;

use crate::auth::Tokens;
use crate::core::{Command, CoreHandle};
use crate::responder::Responder;
use auth::JwtKeys;
use error::ApiError;
use limits::{RateLimit, RateLimiter};

/// Configuration of the REST adapter.
#[derive(Debug)]
pub struct RestConfig {
    jwt: JwtKeys,
    cors_origins: Vec<String>,
    rate_limit: RateLimit,
    ready: Arc<AtomicBool>,
}

impl RestConfig {
    /// A configuration verifying JWTs with `jwt`. Defaults: no CORS, 100
    /// requests/s per token with a burst of 200, ready.
    pub fn new(jwt: JwtKeys) -> Self {
        Self {
            jwt,
            cors_origins: Vec::new(),
            rate_limit: RateLimit {
                per_second: 100.0,
                burst: 200.0,
            },
            ready: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Origins allowed cross-origin requests (`*` for any). Default none.
    pub fn cors_origins(mut self, origins: Vec<String>) -> Self {
        self.cors_origins = origins;
        self
    }

    /// Requests per second per token, and burst. Default 100/s, burst 200; 0/s disables.
    pub fn rate_limit(mut self, per_second: f64, burst: f64) -> Self {
        self.rate_limit = RateLimit { per_second, burst };
        self
    }

    /// The flag `/readyz` reports alongside the core (set once the
    /// protocol listeners are bound). Default: always ready.
    pub fn ready_flag(mut self, ready: Arc<AtomicBool>) -> Self {
        self.ready = ready;
        self
    }
}

/// What every handler shares.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

/// The shared parts of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    core: CoreHandle,
    tokens: Arc<Tokens>,
    jwt: JwtKeys,
    limiter: RateLimiter,
    ready: Arc<AtomicBool>,
}

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    /// Sends a protocol-shaped command and awaits its answer.
    async fn ask(&self, command: impl FnOnce(Responder) -> Command) -> Result<Message, ApiError> {
        let (reply, rx) = Responder::channel();
        if !self.core.send(command(reply)).await {
            return Err(ApiError::core_stopped());
        }
        match rx.await.map_err(|_| ApiError::core_stopped())? {
            Message::RequestFailed(failed) => Err(ApiError::from_code(failed.code, failed.message)),
            message => Ok(message),
        }
    }

    /// [`ask`](Self::ask), on behalf of `caller` (recorded in the audit log).
    async fn ask_as(
        &self,
        caller: &auth::Caller,
        command: impl FnOnce(Responder) -> Command,
    ) -> Result<Message, ApiError> {
        let actor = caller.actor();
        self.ask(|reply| Command::As {
            actor,
            command: Box::new(command(reply)),
        })
        .await
    }

    /// [`call`](Self::call), on behalf of `caller` (recorded in the audit log).
    async fn call_as<T>(
        &self,
        caller: &auth::Caller,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ApiError> {
        let actor = caller.actor();
        self.call(|reply| Command::As {
            actor,
            command: Box::new(command(reply)),
        })
        .await
    }

    /// Sends a command answered on a oneshot and awaits its answer.
    async fn call<T>(&self, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel();
        if !self.core.send(command(tx)).await {
            return Err(ApiError::core_stopped());
        }
        rx.await.map_err(|_| ApiError::core_stopped())
    }
}

fn unexpected(message: &Message) -> ApiError {
    ApiError::internal(format!(
        "the core answered with an unexpected {:?}",
        message.kind()
    ))
}

/// `Path`, with rejections in the API's error format.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(v)| ApiPath(v))
            .map_err(|e: PathRejection| {
                ApiError::bad_request("an id in the path is not valid")
                    .details(e.body_text())
                    .suggest("ids are positive integers, as returned by the list routes")
            })
    }
}

/// `Query`, with rejections in the API's error format.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request("the query string is not valid").details(e.body_text())
            })
    }
}

/// The REST router over `core`.
pub fn router(core: CoreHandle, tokens: Arc<Tokens>, config: RestConfig) -> Router {
    let state = AppState(Arc::new(Shared {
        core,
        tokens,
        jwt: config.jwt,
        limiter: RateLimiter::new(config.rate_limit),
        ready: config.ready,
    }));
    let upload_limit = DefaultBodyLimit::max(body::MAX_PIPELINE_BODY_BYTES);
    // Each route records the HTTP metrics under its own template.
    let timed = |route: &'static str, methods: MethodRouter<AppState>| {
        methods.layer(axum::middleware::from_fn_with_state(
            (state.clone(), route),
            metrics::record_http,
        ))
    };
    let mut router = Router::new()
        .route(
            "/api/healthchecker",
            timed("/api/healthchecker", get(health::healthchecker)),
        )
        .route("/healthz", timed("/healthz", get(health::healthz)))
        .route("/readyz", timed("/readyz", get(health::readyz)))
        .route("/metrics", timed("/metrics", get(metrics::metrics)))
        .route(
            "/api/openapi.json",
            timed("/api/openapi.json", get(openapi::openapi_json)),
        )
        .route(
            "/api/ci/pipelines",
            timed(
                "/api/ci/pipelines",
                get(pipelines::list).post(pipelines::create).layer(upload_limit),
            ),
        )
        .route(
            "/api/ci/pipelines/upload",
            timed(
                "/api/ci/pipelines/upload",
                post(pipelines::upload).layer(upload_limit),
            ),
        )
        .route(
            "/api/ci/pipelines/{id}",
            timed("/api/ci/pipelines/{id}", get(pipelines::get_one)),
        )
        .route(
            "/api/ci/pipelines/{id}/trigger",
            timed("/api/ci/pipelines/{id}/trigger", post(pipelines::trigger)),
        )
        .route(
            "/api/ci/executions",
            timed("/api/ci/executions", get(executions::list)),
        )
        .route(
            "/api/ci/executions/{id}",
            timed("/api/ci/executions/{id}", get(executions::get_one)),
        )
        .route(
            "/api/ci/executions/{id}/cancel",
            timed("/api/ci/executions/{id}/cancel", post(executions::cancel)),
        )
        .route(
            "/api/ci/executions/{id}/logs",
            timed("/api/ci/executions/{id}/logs", get(executions::logs)),
        )
        .route(
            "/api/ci/runs/{id}/jobs/{name}/play",
            timed("/api/ci/runs/{id}/jobs/{name}/play", post(runs::play)),
        )
        .route(
            "/api/ci/runs/{id}/rerun",
            timed("/api/ci/runs/{id}/rerun", post(runs::rerun)),
        )
        .route("/api/runners", timed("/api/runners", get(runners::list)))
        .route(
            "/api/runners/{name}",
            timed("/api/runners/{name}", delete(runners::remove)),
        )
        .route(
            "/api/runners/{id}/drain",
            timed("/api/runners/{id}/drain", post(runners::drain)),
        )
        .route("/api/audit", timed("/api/audit", get(audit::list)))
        .route(
            "/api/projects",
            timed("/api/projects", get(projects::list).post(projects::create)),
        )
        .route(
            "/api/projects/{name}",
            timed(
                "/api/projects/{name}",
                get(projects::get_one).delete(projects::remove),
            ),
        )
        .route(
            "/api/projects/{name}/trigger",
            timed("/api/projects/{name}/trigger", post(projects::trigger)),
        )
        .route(
            "/api/webhooks/github/{project}",
            timed("/api/webhooks/github/{project}", post(webhooks::github)),
        )
        .route(
            "/api/webhooks/gitlab/{project}",
            timed("/api/webhooks/gitlab/{project}", post(webhooks::gitlab)),
        )
        .route(
            "/api/ci/jobs/{id}/artifacts",
            timed("/api/ci/jobs/{id}/artifacts", get(artifacts::list)),
        )
        .route(
            "/api/ci/jobs/{id}/artifacts/{name}",
            timed("/api/ci/jobs/{id}/artifacts/{name}", get(artifacts::download)),
        )
        .fallback(|| async {
            ApiError::not_found("no such route").suggest("see /api/openapi.json for the routes")
        })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body::MAX_OTHER_BODY_BYTES))
        .layer(axum::middleware::from_fn(body::check_length))
        .with_state(state);
    if !config.cors_origins.is_empty() {
        router = router.layer(cors(&config.cors_origins));
    }
    router
}

fn cors(origins: &[String]) -> tower_http::cors::CorsLayer {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
        ])
        .expose_headers([axum::http::header::RETRY_AFTER])
        .max_age(std::time::Duration::from_secs(600))
}

/// Serves `router` on `listener` until the process ends.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}

/// Serves `router` on `listener` until `stop` completes, then stops
/// accepting and returns once the requests in flight have finished (the
/// caller bounds how long it waits for that).
pub async fn serve_until(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(stop).await
}
