//! The REST API under hostile or heavy input: large pipelines are
//! validated off the core, bodies are bounded per route, tokens are
//! checked in time, and only known content types are parsed.

mod rest_support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::rest::auth::Role;

/// How long a GET may take while a large pipeline is being created (it
/// takes milliseconds when the core is free; the old core stalled for
/// tens of seconds).
const GET_DEADLINE: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_large_pipeline_does_not_stall_other_requests() {
    let server = start(|c| c).await;
    let submitter = server.token(Role::Submitter);
    let viewer = server.token(Role::Viewer);
    let yaml = large_pipeline(2000);
    let bytes = yaml.len();
    let create = tokio::spawn({
        let http = server.http.clone();
        let url = server.url("/api/ci/pipelines");
        let token = submitter.clone();
        async move {
            let started = Instant::now();
            let response = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", "application/yaml")
                .body(yaml)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body, started.elapsed())
        }
    });
    let mut answered_during_create = 0;
    let mut slowest = Duration::ZERO;
    // At least one round, then as long as the create is in flight.
    loop {
        let started = Instant::now();
        let ready = server.http.get(server.url("/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "/readyz while creating");
        let list = server.get("/api/ci/executions", &viewer).await;
        assert_eq!(list.status(), StatusCode::OK, "a GET while creating");
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < GET_DEADLINE,
            "/readyz and a GET took {took:?} while a {bytes}-byte pipeline was being created"
        );
        if create.is_finished() {
            break;
        }
        answered_during_create += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, body, create_took) = create.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["jobs"], 2000);
    eprintln!(
        "create of {bytes} bytes took {create_took:?}; {answered_during_create} rounds of /readyz + GET answered meanwhile, slowest {slowest:?}"
    );
}
