//! Executions that really run: a core, its protocol listener and an
//! in-process agent behind the REST API. Following logs over SSE,
//! execution details, cancelling, and draining runners.

mod rest_support;

use std::collections::BTreeMap;

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::rest::auth::Role;

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    data: String,
}

/// Reads `path` as an event stream until an `end` event (or the deadline).
async fn read_sse(server: &TestServer, path: &str, token: &str) -> Vec<Sse> {
    let response = server.get(path, token).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    let mut events = Vec::new();
    let read = async {
        while let Some(chunk) = stream.next().await {
            buffer.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut event = Sse {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.event = name.trim_start().to_owned();
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push(d.strip_prefix(' ').unwrap_or(d).to_owned());
                    }
                }
                if data.is_empty() {
                    continue; // keep-alive comment
                }
                event.data = data.join("\n");
                let done = event.event == "end";
                events.push(event);
                if done {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the log stream ends with an `end` event");
    events
}

/// The output of each job, by job name.
fn logs_by_job(events: &[Sse]) -> BTreeMap<String, String> {
    let mut logs = BTreeMap::<String, String>::new();
    for e in events
        .iter()
        .filter(|e| !["state", "end", "skipped"].contains(&e.event.as_str()))
    {
        let out = logs.entry(e.event.clone()).or_default();
        out.push_str(&e.data);
        out.push('\n');
    }
    logs
}

#[tokio::test]
async fn sse_follows_an_execution_live_then_replays_it() {
    let server = start_with_agent().await;
    let viewer = server.token(Role::Viewer);
    let id = server.create_hello().await;
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &server.api_token)
        .await;
    let run = response.json::<Value>().await.unwrap()["run_id"]
        .as_u64()
        .unwrap();

    // Live: opened right after the trigger, before `unit` is released.
    let live = read_sse(&server, &format!("/api/ci/executions/{run}/logs"), &viewer).await;
    let logs = logs_by_job(&live);
    assert_eq!(
        logs.get("compile").map(String::as_str),
        Some("compiling\ncompiled\n"),
        "{live:#?}"
    );
    assert_eq!(
        logs.get("unit").map(String::as_str),
        Some("unit-1\nunit-2\n"),
        "{live:#?}"
    );
    let end: Value = serde_json::from_str(&live.last().unwrap().data).unwrap();
    assert_eq!(end["state"], "succeeded");
    let finals: Vec<Value> = live
        .iter()
        .filter(|e| e.event == "state")
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .filter(|s: &Value| s["state"] == "succeeded")
        .collect();
    assert_eq!(finals.len(), 2, "each job's final state is sent: {live:#?}");

    // The execution's details: status, jobs, timings.
    let execution: Value = server
        .get(&format!("/api/ci/executions/{run}"), &viewer)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(execution["state"], "succeeded");
    assert!(execution["duration_ms"].is_u64());
    for job in execution["jobs"].as_array().unwrap() {
        assert_eq!(job["state"], "succeeded");
        assert_eq!(job["runner"], "agent-1");
        assert_eq!(job["exit_code"], 0);
        assert!(job["duration_ms"].is_u64(), "{job}");
        let steps = job["steps"].as_array().expect("each job lists its steps");
        assert!(!steps.is_empty(), "{job}");
        for step in steps {
            assert!(step["name"].is_string(), "{step}");
            assert_eq!(step["state"], "succeeded", "{step}");
            assert_eq!(step["exit_code"], 0, "{step}");
            assert!(step["duration_ms"].is_u64(), "{step}");
        }
    }

    // Replay: the finished execution's logs, then the end.
    let replay = read_sse(&server, &format!("/api/ci/executions/{run}/logs"), &viewer).await;
    assert_eq!(logs_by_job(&replay), logs);
    assert_eq!(replay.last().unwrap().event, "end");

    let response = server.get("/api/ci/executions/999/logs", &viewer).await;
    expect_error(response, StatusCode::NOT_FOUND, "NotFound").await;
}

#[tokio::test]
async fn a_running_execution_is_cancelled() {
    let server = start_with_agent().await;
    let submitter = server.token(Role::Submitter);
    let yaml = "name: slow\njobs:\n  sleep:\n    steps:\n      - run: echo started; sleep 60\n";
    let response = server.post_yaml("/api/ci/pipelines", &submitter, yaml).await;
    let id = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &submitter)
        .await;
    let run = response.json::<Value>().await.unwrap()["run_id"]
        .as_u64()
        .unwrap();
    let path = format!("/api/ci/executions/{run}");
    eventually("the job runs", || async {
        let execution: Value = server.get(&path, &submitter).await.json().await.unwrap();
        (execution["jobs"][0]["state"] == "running").then_some(())
    })
    .await;
    let response = server.post(&format!("{path}/cancel"), &submitter).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let execution = eventually("the job is cancelled", || async {
        let execution: Value = server.get(&path, &submitter).await.json().await.unwrap();
        (execution["jobs"][0]["state"] == "cancelled").then_some(execution)
    })
    .await;
    assert_eq!(execution["state"], "cancelled");
}

#[tokio::test]
async fn runners_are_listed_and_drained_by_admins() {
    let server = start_with_agent().await;
    let viewer = server.token(Role::Viewer);
    let runners: Vec<Value> = server.get("/api/runners", &viewer).await.json().await.unwrap();
    assert_eq!(runners.len(), 1);
    let runner = &runners[0];
    assert_eq!(runner["name"], "agent-1");
    assert_eq!(runner["state"], "idle");
    assert_eq!(runner["slots"], 2);
    assert_eq!(runner["tags"], serde_json::json!(["linux"]));
    let id = runner["runner_id"].as_u64().unwrap();

    // A connected runner is not removed, unless forced (then drained).
    let admin = server.token(Role::Admin);
    let response = server
        .request(Method::DELETE, "/api/runners/agent-1", &admin)
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("is connected"),
        "{body}"
    );
    let response = server
        .request(Method::DELETE, "/api/runners/nobody", &admin)
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = server
        .request(
            Method::DELETE,
            "/api/runners/agent-1?force=true",
            &server.token(Role::Viewer),
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let response = server
        .post(
            &format!("/api/runners/{id}/drain"),
            &server.token(Role::Submitter),
        )
        .await;
    expect_error(response, StatusCode::FORBIDDEN, "AuthorizationError").await;
    let response = server
        .post(&format!("/api/runners/{id}/drain"), &server.token(Role::Admin))
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    eventually("the runner is draining", || async {
        let runners: Vec<Value> = server.get("/api/runners", &viewer).await.json().await.unwrap();
        // A drained agent with no work may also leave at once.
        (runners.is_empty() || ["draining", "lost"].contains(&runners[0]["state"].as_str().unwrap_or("")))
            .then_some(())
    })
    .await;
}
