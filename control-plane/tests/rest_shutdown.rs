//! Shutting `valkyrie-server` down: SIGTERM ends the process within its
//! grace whatever is in flight (pipelines being validated, a log stream
//! that never ends).

mod rest_support;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;

const GRACE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_within_the_grace_while_requests_are_in_flight() {
    let mut server = ServerProcess::start(
        &["--shutdown-grace", "2s"],
        &[("VALKYRIE_LOG", "info,valkyrie_control_plane::core=debug")],
    );
    let http = http_client();
    let token = server.api_token.clone();

    // A run whose jobs wait for a runner that never comes, followed over
    // Server-Sent Events: a request that never finishes by itself.
    let response = http
        .post(server.url("/api/ci/pipelines"))
        .bearer_auth(&token)
        .header("content-type", "application/yaml")
        .body(HELLO_YAML)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let id = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let response = http
        .post(server.url(&format!("/api/ci/pipelines/{id}/trigger")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let run = response.json::<Value>().await.unwrap()["run_id"]
        .as_u64()
        .unwrap();
    let logs = http
        .get(server.url(&format!("/api/ci/executions/{run}/logs")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logs.status(), StatusCode::OK);

    // Large pipelines being validated (more than there are validation slots).
    let yaml = large_pipeline(2000);
    let mut creates = Vec::new();
    for _ in 0..3 {
        let request = http
            .post(server.url("/api/ci/pipelines"))
            .bearer_auth(&token)
            .header("content-type", "application/yaml")
            .body(yaml.clone());
        creates.push(tokio::spawn(request.send()));
    }
    server.wait_for_stderr("validating a pipeline", DEADLINE);

    let pid = server.child.id().to_string();
    let signalled = Instant::now();
    let kill = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    // Generous: the grace, plus time for a loaded machine to schedule the exit.
    let deadline = GRACE + Duration::from_secs(8);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < deadline,
            "the server did not exit within {deadline:?} of SIGTERM (grace {GRACE:?})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    eprintln!("exited {:?} after SIGTERM with {status}", signalled.elapsed());
    assert!(status.success(), "exit status {status}");
    server.wait_for_stderr("shutting down", Duration::from_secs(1));
    drop(logs);
    for create in creates {
        let _ = create.await;
    }
}
