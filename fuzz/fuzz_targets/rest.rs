//! Arbitrary request bodies (and paths, queries and bearer tokens) against
//! the real REST router, in process: no socket, but every extractor,
//! deserializer and validator a request goes through, and the core that
//! answers it.
//!
//! Input layout: byte 0 picks the route, byte 1 the Content-Type, byte 2
//! the credentials; the rest is the body. Routes marked `raw` take the
//! body's first line as the path and query, and the `token` credential
//! takes the (remaining) body's first line as the bearer token. Each input
//! gets a fresh core and router, so an input's answer never depends on the
//! inputs before it (a saved crash replays alone).
//!
//! Checked for every request: no panic, no stack overflow (the request runs
//! on a thread with a tokio worker's 2 MiB stack), no 500, and every error
//! answer is a JSON `ErrorBody` with a message.
//!
//! Seeds: `fuzz/seed_corpus.sh`.

#![no_main]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{header, Method, Request, StatusCode};
use libfuzzer_sys::fuzz_target;
use tower::ServiceExt;
use valkyrie_control_plane::auth::Tokens;
use valkyrie_control_plane::rest::auth::{JwtKeys, Role};
use valkyrie_control_plane::rest::error::ErrorBody;
use valkyrie_control_plane::rest::{self, RestConfig};
use valkyrie_control_plane::{spawn_core, CoreConfig};

/// Tokio's default worker thread stack (`thread_stack_size`).
const SERVER_STACK_BYTES: usize = 2 << 20;
const API_TOKEN: &str = "fuzz-api-token";
const JWT_SECRET: &[u8] = b"fuzz-jwt-secret";
const BOUNDARY: &str = "FUZZBOUNDARY";

/// (method, path); an empty path means `raw`.
const ROUTES: &[(Method, &str)] = &[
    (Method::POST, "/api/ci/pipelines"),
    (Method::POST, "/api/ci/pipelines?file_name=fuzz.yaml"),
    (Method::POST, "/api/ci/pipelines/upload"),
    (Method::POST, "/api/ci/pipelines/1/trigger"),
    (Method::POST, "/api/ci/executions/1/cancel"),
    (Method::POST, "/api/runners/1/drain"),
    (Method::GET, ""),
    (Method::POST, ""),
];

/// `None`: no Content-Type header.
const CONTENT_TYPES: &[Option<&str>] = &[
    Some("application/json"),
    Some("application/yaml"),
    Some("text/plain; charset=utf-8"),
    Some("multipart/form-data; boundary=FUZZBOUNDARY"),
    None,
    Some("application/octet-stream"),
];

enum Credentials {
    ApiToken,
    None,
    /// A valid JWT with the viewer role (refused for anything that writes).
    Viewer,
    /// The body's first line.
    Token,
}

const CREDENTIALS: &[Credentials] = &[
    Credentials::ApiToken,
    Credentials::None,
    Credentials::Viewer,
    Credentials::Token,
];

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}

/// Splits off the first line (without its `\n`).
fn first_line(body: &[u8]) -> (&[u8], &[u8]) {
    match body.iter().position(|&b| b == b'\n') {
        Some(at) => (&body[..at], &body[at + 1..]),
        None => (body, &[]),
    }
}

fn request(data: &[u8]) -> Option<Request<Body>> {
    let [route, content_type, credentials, body @ ..] = data else {
        return None;
    };
    let (method, path) = &ROUTES[*route as usize % ROUTES.len()];
    let content_type = CONTENT_TYPES[*content_type as usize % CONTENT_TYPES.len()];
    let credentials = &CREDENTIALS[*credentials as usize % CREDENTIALS.len()];
    let (path, body) = if path.is_empty() {
        let (line, rest) = first_line(body);
        (std::str::from_utf8(line).ok()?.to_owned(), rest)
    } else {
        ((*path).to_owned(), body)
    };
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(content_type) = content_type {
        debug_assert!(!content_type.starts_with("multipart") || content_type.ends_with(BOUNDARY));
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    let body = match credentials {
        Credentials::ApiToken => {
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {API_TOKEN}"));
            body
        }
        Credentials::None => body,
        Credentials::Viewer => {
            let jwt =
                JwtKeys::new(JWT_SECRET).mint("fuzz", Role::Viewer, std::time::Duration::from_secs(3600));
            builder = builder.header(header::AUTHORIZATION, format!("Bearer {jwt}"));
            body
        }
        Credentials::Token => {
            let (line, rest) = first_line(body);
            let mut value = b"Bearer ".to_vec();
            value.extend_from_slice(line);
            builder = builder.header(header::AUTHORIZATION, value);
            rest
        }
    };
    builder.body(Body::from(body.to_vec())).ok()
}

async fn serve_one(request: Request<Body>) {
    let tokens = Arc::new(Tokens::new(API_TOKEN.into(), "fuzz-runner-token".into()));
    let core = spawn_core(CoreConfig::default(), tokens.clone(), Default::default());
    let config = RestConfig::new(JwtKeys::new(JWT_SECRET)).rate_limit(0.0, 0.0);
    let router = rest::router(core, tokens, config);
    let response = router.oneshot(request).await.expect("the router is infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a response body reads");
    assert_ne!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "500: {}",
        String::from_utf8_lossy(&body)
    );
    if status.is_client_error() || status.is_server_error() {
        let error: ErrorBody = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status} without an ErrorBody ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        assert!(!error.message.is_empty(), "{status} with an empty message");
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(request) = request(data) else {
        return;
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(SERVER_STACK_BYTES)
            .spawn_scoped(scope, || runtime().block_on(serve_one(request)))
            .expect("spawn the request thread")
            .join()
            .expect("the request panicked");
    });
});
