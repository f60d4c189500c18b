//! The REST API over real HTTP, without agents: routes, the error format,
//! authentication and roles, rate limiting, CORS, the upload limit,
//! metrics and health, and the OpenAPI document.

mod rest_support;

use reqwest::{Method, StatusCode};
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::rest::auth::{Claims, Role};

/// Every route of the API, as (method, path template, a concrete path).
const ROUTES: &[(&str, &str, &str)] = &[
    ("get", "/api/healthchecker", "/api/healthchecker"),
    ("get", "/healthz", "/healthz"),
    ("get", "/readyz", "/readyz"),
    ("get", "/metrics", "/metrics"),
    ("get", "/api/openapi.json", "/api/openapi.json"),
    ("post", "/api/ci/pipelines", "/api/ci/pipelines"),
    ("get", "/api/ci/pipelines", "/api/ci/pipelines"),
    ("post", "/api/ci/pipelines/upload", "/api/ci/pipelines/upload"),
    ("get", "/api/ci/pipelines/{id}", "/api/ci/pipelines/1"),
    (
        "post",
        "/api/ci/pipelines/{id}/trigger",
        "/api/ci/pipelines/1/trigger",
    ),
    ("get", "/api/ci/executions", "/api/ci/executions"),
    ("get", "/api/ci/executions/{id}", "/api/ci/executions/1"),
    (
        "post",
        "/api/ci/executions/{id}/cancel",
        "/api/ci/executions/1/cancel",
    ),
    ("get", "/api/ci/executions/{id}/logs", "/api/ci/executions/1/logs"),
    (
        "post",
        "/api/ci/runs/{id}/jobs/{name}/play",
        "/api/ci/runs/1/jobs/deploy/play",
    ),
    ("post", "/api/ci/runs/{id}/rerun", "/api/ci/runs/1/rerun"),
    ("get", "/api/runners", "/api/runners"),
    ("post", "/api/runners/{id}/drain", "/api/runners/1/drain"),
    ("delete", "/api/runners/{name}", "/api/runners/nobody"),
    ("get", "/api/audit", "/api/audit"),
    ("get", "/api/ci/jobs/{id}/artifacts", "/api/ci/jobs/1/artifacts"),
    ("post", "/api/projects", "/api/projects"),
    ("get", "/api/projects", "/api/projects"),
    ("get", "/api/projects/{name}", "/api/projects/nothing"),
    ("delete", "/api/projects/{name}", "/api/projects/nothing"),
    (
        "post",
        "/api/projects/{name}/trigger",
        "/api/projects/nothing/trigger",
    ),
    (
        "post",
        "/api/webhooks/github/{project}",
        "/api/webhooks/github/nothing",
    ),
    (
        "post",
        "/api/webhooks/gitlab/{project}",
        "/api/webhooks/gitlab/nothing",
    ),
    (
        "get",
        "/api/ci/jobs/{id}/artifacts/{name}",
        "/api/ci/jobs/1/artifacts/artifacts.tar",
    ),
];

#[tokio::test]
async fn openapi_lists_every_route_and_every_route_is_served() {
    let server = start(|c| c).await;
    let response = server
        .http
        .get(server.url("/api/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = 0;
    for (method, template, _) in ROUTES {
        assert!(
            paths.get(*template).and_then(|p| p.get(*method)).is_some(),
            "{method} {template} is not in the OpenAPI document"
        );
    }
    for item in paths.values() {
        documented += item.as_object().unwrap().len();
    }
    assert_eq!(
        documented,
        ROUTES.len(),
        "the document has routes this test does not know"
    );
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    // Operation ids are unique, and a parameter is in the path only if
    // the path template names it.
    let mut ids = std::collections::HashSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or_default();
            assert!(
                ids.insert(id.to_owned()),
                "operationId `{id}` repeats ({method} {path})"
            );
            for parameter in operation["parameters"].as_array().into_iter().flatten() {
                let name = parameter["name"].as_str().unwrap();
                let in_path = path.contains(&format!("{{{name}}}"));
                let place = parameter["in"].as_str().unwrap_or_default();
                // Webhooks document the forge's headers (event, signature, delivery id).
                let fits = if in_path {
                    place == "path"
                } else {
                    matches!(place, "query" | "header")
                };
                assert!(fits, "{method} {path} parameter `{name}` is in `{place}`");
            }
        }
    }

    // Every documented route is routed: nothing answers 404 "no such route" or 405.
    let admin = server.api_token.clone();
    for (method, _, path) in ROUTES {
        let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let response = server.request(method.clone(), path, &admin).await;
        let status = response.status();
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        if status == StatusCode::NOT_FOUND {
            let body: Value = response.json().await.unwrap();
            assert_ne!(body["message"], "no such route", "{method} {path} is not routed");
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_the_error_body() {
    let server = start(|c| c).await;
    let response = server.get("/api/nope", &server.api_token).await;
    expect_error(response, StatusCode::NOT_FOUND, "NotFound").await;
    let response = server
        .request(Method::DELETE, "/api/ci/pipelines", &server.api_token)
        .await;
    expect_error(response, StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed").await;
    let response = server.get("/api/ci/pipelines/abc", &server.api_token).await;
    expect_error(response, StatusCode::BAD_REQUEST, "BadRequest").await;
    let response = server
        .get("/api/ci/executions?limit=many", &server.api_token)
        .await;
    expect_error(response, StatusCode::BAD_REQUEST, "BadRequest").await;
}

#[tokio::test]
async fn pipelines_are_created_listed_fetched_and_triggered() {
    let server = start(|c| c).await;
    let submitter = server.token(Role::Submitter);

    // YAML body.
    let response = server
        .post_yaml("/api/ci/pipelines?file_name=hello.yaml", &submitter, HELLO_YAML)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(created["name"], "hello");
    assert_eq!(created["file_name"], "hello.yaml");
    assert_eq!(created["stages"], serde_json::json!(["build", "test"]));
    assert_eq!(created["jobs"], 2);
    let id = created["id"].as_u64().unwrap();

    // JSON body wrapping the YAML, and a pipeline written in JSON.
    let response = server
        .http
        .post(server.url("/api/ci/pipelines"))
        .bearer_auth(&submitter)
        .json(&serde_json::json!({"yaml": HELLO_YAML, "file_name": "wrapped.yaml"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.json::<Value>().await.unwrap()["file_name"],
        "wrapped.yaml"
    );
    let response = server
        .http
        .post(server.url("/api/ci/pipelines"))
        .bearer_auth(&submitter)
        .json(&serde_json::json!({"name": "json", "jobs": {"a": {"steps": ["echo a"]}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(response.json::<Value>().await.unwrap()["name"], "json");

    let viewer = server.token(Role::Viewer);
    let list: Vec<Value> = server
        .get("/api/ci/pipelines", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 3);
    let one: Value = server
        .get(&format!("/api/ci/pipelines/{id}"), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["yaml"], HELLO_YAML);
    let response = server.get("/api/ci/pipelines/999", &viewer).await;
    expect_error(response, StatusCode::NOT_FOUND, "NotFound").await;

    // Trigger: a run appears among the executions, its jobs waiting for a runner.
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &submitter)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let triggered: Value = response.json().await.unwrap();
    let run = triggered["run_id"].as_u64().unwrap();
    assert_eq!(triggered["status_url"], format!("/api/ci/executions/{run}"));
    let execution: Value = server
        .get(&format!("/api/ci/executions/{run}"), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(execution["run_id"], run);
    assert_eq!(execution["name"], "hello");
    assert_eq!(execution["state"], "running");
    assert_eq!(execution["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(execution["jobs"][0]["state"], "queued");
    assert_eq!(execution["jobs"][1]["state"], "waiting");
    let list: Vec<Value> = server
        .get("/api/ci/executions?limit=10", &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(list.len(), 1);
    let response = server.post("/api/ci/pipelines/999/trigger", &submitter).await;
    expect_error(response, StatusCode::NOT_FOUND, "NotFound").await;

    // Cancel ends the run.
    let response = server
        .post(&format!("/api/ci/executions/{run}/cancel"), &submitter)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let execution: Value = server
        .get(&format!("/api/ci/executions/{run}"), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(execution["state"], "cancelled");
    assert!(execution["duration_ms"].is_u64());
    let response = server.get("/api/ci/executions/999", &viewer).await;
    expect_error(response, StatusCode::NOT_FOUND, "NotFound").await;
}

#[tokio::test]
async fn validation_errors_carry_file_positions_and_hints() {
    let server = start(|c| c).await;
    let response = server
        .post_yaml(
            "/api/ci/pipelines?file_name=ci.yaml",
            &server.api_token,
            BROKEN_YAML,
        )
        .await;
    let body = expect_error(response, StatusCode::UNPROCESSABLE_ENTITY, "ValidationError").await;
    assert_eq!(
        body.details,
        "ci.yaml:5:13: job `test` needs `buld`, which is not defined"
    );
    assert_eq!(body.suggestions, vec!["did you mean `build`?".to_owned()]);

    // The same through an upload: the position names the uploaded file.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(BROKEN_YAML).file_name("broken.yaml"),
    );
    let response = server
        .http
        .post(server.url("/api/ci/pipelines/upload"))
        .bearer_auth(&server.api_token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = expect_error(response, StatusCode::UNPROCESSABLE_ENTITY, "ValidationError").await;
    assert!(body.details.starts_with("broken.yaml:5:13: "), "{}", body.details);
}

#[tokio::test]
async fn uploads_are_validated_and_limited_to_10_mib() {
    let server = start(|c| c).await;
    let submitter = server.token(Role::Submitter);
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::text(HELLO_YAML).file_name("hello.yaml"),
    );
    let response = server
        .http
        .post(server.url("/api/ci/pipelines/upload"))
        .bearer_auth(&submitter)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        (created["name"].as_str(), created["file_name"].as_str()),
        (Some("hello"), Some("hello.yaml"))
    );

    // Just over 10 MiB of YAML comment.
    let mut big = String::from(HELLO_YAML);
    big.push('#');
    big.push_str(&"x".repeat(10 << 20));
    let form = reqwest::multipart::Form::new()
        .part("file", reqwest::multipart::Part::text(big).file_name("big.yaml"));
    let response = server
        .http
        .post(server.url("/api/ci/pipelines/upload"))
        .bearer_auth(&submitter)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let body = expect_error(response, StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge").await;
    assert!(body.message.contains("10485760"), "{}", body.message);

    // A form with a part other than `file`, or with no file at all.
    let forms = [
        (
            reqwest::multipart::Form::new()
                .text("note", "no file here")
                .part("file", reqwest::multipart::Part::text(HELLO_YAML)),
            "`note`",
        ),
        (reqwest::multipart::Form::new(), "form"),
    ];
    for (form, named) in forms {
        let response = server
            .http
            .post(server.url("/api/ci/pipelines/upload"))
            .bearer_auth(&submitter)
            .multipart(form)
            .send()
            .await
            .unwrap();
        let body = expect_error(response, StatusCode::BAD_REQUEST, "BadRequest").await;
        assert!(body.message.contains(named), "{}", body.message);
    }
}

#[tokio::test]
async fn requests_without_valid_credentials_get_401() {
    let server = start(|c| c).await;
    let response = server
        .http
        .get(server.url("/api/ci/pipelines"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let body = expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;
    assert!(!body.suggestions.is_empty());

    let response = server
        .http
        .get(server.url("/api/ci/pipelines"))
        .header("authorization", "Basic dXNlcjpwYXNz")
        .send()
        .await
        .unwrap();
    expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;

    let response = server.get("/api/ci/pipelines", "not-a-token").await;
    expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;

    // Signed by another server.
    let foreign = valkyrie_control_plane::rest::auth::JwtKeys::new(b"another secret");
    let token = foreign.mint("mallory", Role::Admin, std::time::Duration::from_secs(60));
    let response = server.get("/api/ci/pipelines", &token).await;
    let body = expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;
    assert!(body.message.contains("signature"), "{}", body.message);

    // Expired.
    let expired = server.jwt.sign(&Claims {
        sub: "old".into(),
        role: Role::Admin,
        exp: 1,
        iat: 0,
        nbf: None,
    });
    let response = server.get("/api/ci/pipelines", &expired).await;
    let body = expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;
    assert!(body.message.contains("expired"), "{}", body.message);

    // Not valid yet (nbf in the future), or issued in the future.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let early = server.jwt.sign(&Claims {
        sub: "early".into(),
        role: Role::Admin,
        exp: now + 7200,
        iat: now,
        nbf: Some(now + 3600),
    });
    let response = server.get("/api/ci/pipelines", &early).await;
    let body = expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;
    assert!(body.message.contains("not valid yet"), "{}", body.message);
    let future = server.jwt.sign(&Claims {
        sub: "future".into(),
        role: Role::Admin,
        exp: now + 7200,
        iat: now + 3600,
        nbf: None,
    });
    let response = server.get("/api/ci/pipelines", &future).await;
    let body = expect_error(response, StatusCode::UNAUTHORIZED, "AuthenticationError").await;
    assert!(body.message.contains("issue time"), "{}", body.message);

    // The open routes need no token.
    for path in [
        "/healthz",
        "/readyz",
        "/api/healthchecker",
        "/metrics",
        "/api/openapi.json",
    ] {
        let response = server.http.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn roles_limit_what_a_token_may_do() {
    let server = start(|c| c).await;
    let id = server.create_hello().await;
    let viewer = server.token(Role::Viewer);
    let submitter = server.token(Role::Submitter);
    let admin = server.token(Role::Admin);

    // Viewers read, and nothing else.
    for path in ["/api/ci/pipelines", "/api/ci/executions", "/api/runners"] {
        assert_eq!(server.get(path, &viewer).await.status(), StatusCode::OK, "{path}");
    }
    let response = server.post_yaml("/api/ci/pipelines", &viewer, HELLO_YAML).await;
    let body = expect_error(response, StatusCode::FORBIDDEN, "AuthorizationError").await;
    assert!(
        body.message.contains("`viewer`") && body.message.contains("`submitter`"),
        "{}",
        body.message
    );
    for path in [
        format!("/api/ci/pipelines/{id}/trigger"),
        "/api/ci/executions/1/cancel".into(),
        "/api/ci/pipelines/upload".into(),
    ] {
        let response = server.post(&path, &viewer).await;
        expect_error(response, StatusCode::FORBIDDEN, "AuthorizationError").await;
    }

    // Submitters trigger and cancel, but do not drain runners.
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &submitter)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = server.post("/api/ci/executions/1/cancel", &submitter).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = server.post("/api/runners/1/drain", &submitter).await;
    expect_error(response, StatusCode::FORBIDDEN, "AuthorizationError").await;

    // Admins (and the plain API token) may drain: here there is no runner 1.
    for token in [&admin, &server.api_token] {
        let response = server.post("/api/runners/1/drain", token).await;
        expect_error(response, StatusCode::NOT_FOUND, "NotFound").await;
    }
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let server = start(|c| c.rate_limit(1.0, 3.0)).await;
    let viewer = server.token(Role::Viewer);
    for _ in 0..3 {
        assert_eq!(
            server.get("/api/ci/pipelines", &viewer).await.status(),
            StatusCode::OK
        );
    }
    let response = server.get("/api/ci/pipelines", &viewer).await;
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=1).contains(&retry_after), "{retry_after}");
    expect_error(response, StatusCode::TOO_MANY_REQUESTS, "RateLimited").await;
    // Another token has its own budget.
    let other = server
        .jwt
        .mint("other", Role::Viewer, std::time::Duration::from_secs(60));
    assert_eq!(
        server.get("/api/ci/pipelines", &other).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let server = start(|c| c.cors_origins(vec!["https://ci.example.com".into()])).await;
    let preflight = |origin: &'static str| {
        server
            .http
            .request(Method::OPTIONS, server.url("/api/ci/pipelines"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let response = preflight("https://ci.example.com").await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://ci.example.com"
    );
    let methods = response.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(methods.contains("POST"), "{methods}");
    let response = preflight("https://evil.example.com").await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn metrics_health_and_readiness() {
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = start({
        let ready = ready.clone();
        |c| c.ready_flag(ready)
    })
    .await;
    assert_eq!(
        server
            .http
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    let response = server.http.get(server.url("/readyz")).send().await.unwrap();
    let body = expect_error(response, StatusCode::SERVICE_UNAVAILABLE, "Unavailable").await;
    assert!(body.message.contains("listeners"), "{}", body.message);
    ready.store(true, std::sync::atomic::Ordering::Release);
    let response = server.http.get(server.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let legacy: Value = server
        .http
        .get(server.url("/api/healthchecker"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(legacy["status"], "success");

    // A queued run gives queued jobs at the default priority.
    let id = server.create_hello().await;
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &server.api_token)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let response = server
        .http
        .get(server.url("/metrics"))
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .await
        .unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("openmetrics-text"));
    let text = response.text().await.unwrap();
    for line in [
        "valkyrie_jobs_state_jobs{state=\"queued\"} 1",
        "valkyrie_runs_state_runs{state=\"running\"} 1",
        "valkyrie_jobs_submitted_jobs_total 1",
        "# TYPE valkyrie_dispatch_latency_seconds histogram",
        "# TYPE valkyrie_store_commit_latency_seconds histogram",
        "# TYPE valkyrie_logs_received_bytes counter",
        "# TYPE valkyrie_queue_depth_jobs gauge",
        "# TYPE valkyrie_runners_state_runners gauge",
        "# TYPE valkyrie_connections_open_connections gauge",
    ] {
        assert!(text.contains(line), "/metrics lacks `{line}`:\n{text}");
    }
    assert!(
        text.lines()
            .any(|l| l.starts_with("valkyrie_queue_depth_jobs{priority=")),
        "no queue depth by priority:\n{text}"
    );
    for name in text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
    {
        assert!(name.starts_with("valkyrie_"), "{name}");
    }
}
