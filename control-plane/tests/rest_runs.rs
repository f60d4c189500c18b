//! Run variables, manual jobs and reruns over real HTTP, with a real agent
//! running real processes: `POST /api/ci/pipelines/{id}/trigger` with
//! `variables`, `POST /api/ci/runs/{id}/jobs/{name}/play` and
//! `POST /api/ci/runs/{id}/rerun`.

mod rest_support;

use reqwest::StatusCode;
use rest_support::*;
use serde_json::{json, Value};
use valkyrie_control_plane::rest::auth::Role;

/// `build` succeeds only when the run's variable `MODE` overrides the
/// file's `env`; `deploy` is manual.
const YAML: &str = "name: rr\nenv:\n  MODE: from-env\njobs:\n  build:\n    steps: ['test \"$MODE\" = from-var']\n  deploy:\n    needs: [build]\n    when: manual\n    steps: [echo deploying]\n";

async fn post_json(server: &TestServer, path: &str, token: &str, body: Value) -> reqwest::Response {
    server
        .http
        .post(server.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Waits until `check` holds for the execution's JSON; returns it.
async fn wait_execution(server: &TestServer, run: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let token = server.token(Role::Viewer);
    eventually(what, || async {
        let body: Value = server
            .get(&format!("/api/ci/executions/{run}"), &token)
            .await
            .json()
            .await
            .unwrap();
        check(&body).then_some(body)
    })
    .await
}

fn job<'a>(execution: &'a Value, name: &str) -> &'a Value {
    execution["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no job {name} in {execution}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn variables_manual_play_and_rerun_over_rest() {
    let server = start_with_agent().await;
    let submitter = server.token(Role::Submitter);
    let response = server
        .post_yaml("/api/ci/pipelines", &server.api_token, YAML)
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let pipeline = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let trigger = format!("/api/ci/pipelines/{pipeline}/trigger");

    // A bad variable name is refused before anything starts.
    let bad = post_json(
        &server,
        &trigger,
        &submitter,
        json!({"variables": {"VALKYRIE_X": "1"}}),
    )
    .await;
    expect_error(bad, StatusCode::BAD_REQUEST, "BadRequest").await;

    // With the variable, build passes; the manual job waits and does not
    // hold the run.
    let response = post_json(
        &server,
        &trigger,
        &submitter,
        json!({"variables": {"MODE": "from-var"}}),
    )
    .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let run = response.json::<Value>().await.unwrap()["run_id"]
        .as_u64()
        .unwrap();
    let ended = wait_execution(&server, run, "the run ends with deploy manual", |e| {
        e["state"] == "succeeded"
    })
    .await;
    assert_eq!(
        job(&ended, "build")["state"],
        "succeeded",
        "the variable beat the env"
    );
    let deploy = job(&ended, "deploy");
    assert_eq!(deploy["state"], "manual");
    assert_eq!(deploy["reason"], format!("manual: run `vk play r{run} deploy`"));

    // Play it: the run runs again and ends with it.
    let missing = server
        .post(&format!("/api/ci/runs/{run}/jobs/nope/play"), &submitter)
        .await;
    let body = expect_error(missing, StatusCode::NOT_FOUND, "NotFound").await;
    assert!(
        body.message.contains("its manual jobs: `deploy`"),
        "{}",
        body.message
    );
    let viewer = server.token(Role::Viewer);
    let forbidden = server
        .post(&format!("/api/ci/runs/{run}/jobs/deploy/play"), &viewer)
        .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    let played = server
        .post(&format!("/api/ci/runs/{run}/jobs/deploy/play"), &submitter)
        .await;
    assert_eq!(played.status(), StatusCode::ACCEPTED);
    let done = wait_execution(&server, run, "deploy runs", |e| {
        e["state"] == "succeeded" && job(e, "deploy")["state"] == "succeeded"
    })
    .await;
    assert!(job(&done, "deploy")["job_id"].is_u64());
    let again = server
        .post(&format!("/api/ci/runs/{run}/jobs/deploy/play"), &submitter)
        .await;
    expect_error(again, StatusCode::CONFLICT, "Conflict").await;

    // Without the variable build fails; a rerun of the failed jobs keeps
    // the run's (absent) variables and fails again, while a full rerun of
    // the first run keeps its variable and succeeds.
    let response = server.post(&trigger, &submitter).await;
    let failing = response.json::<Value>().await.unwrap()["run_id"]
        .as_u64()
        .unwrap();
    let failed = wait_execution(&server, failing, "the run fails", |e| e["state"] == "failed").await;
    assert_eq!(job(&failed, "deploy")["state"], "skipped");
    let nothing = post_json(
        &server,
        &format!("/api/ci/runs/{run}/rerun"),
        &submitter,
        json!({"failed": true}),
    )
    .await;
    let body = expect_error(nothing, StatusCode::CONFLICT, "Conflict").await;
    assert!(
        body.message.contains("no failed or cancelled job"),
        "{}",
        body.message
    );
    let rerun = post_json(
        &server,
        &format!("/api/ci/runs/{failing}/rerun"),
        &submitter,
        json!({"failed": true}),
    )
    .await;
    assert_eq!(rerun.status(), StatusCode::CREATED);
    let rerun: Value = rerun.json().await.unwrap();
    assert_eq!(rerun["rerun_of"], failing);
    let second = rerun["run_id"].as_u64().unwrap();
    assert!(second > failing);
    let failed_again = wait_execution(&server, second, "the rerun fails", |e| e["state"] == "failed").await;
    assert_ne!(
        job(&failed_again, "build")["job_id"],
        job(&failed, "build")["job_id"],
        "build ran again"
    );
    let full = server
        .post(&format!("/api/ci/runs/{run}/rerun"), &submitter)
        .await;
    assert_eq!(full.status(), StatusCode::CREATED);
    let full = full.json::<Value>().await.unwrap()["run_id"].as_u64().unwrap();
    let rerun_ok = wait_execution(&server, full, "the full rerun ends", |e| e["state"] != "running").await;
    assert_eq!(rerun_ok["state"], "succeeded", "{rerun_ok}");
    assert_eq!(
        job(&rerun_ok, "deploy")["state"],
        "manual",
        "a rerun starts manual jobs as manual"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_workflow_rule_that_is_false_creates_no_run() {
    let server = start(|c| c).await;
    let yaml = "workflow:\n  if: $GO == \"yes\"\njobs:\n  a:\n    steps: [x]\n";
    let response = server
        .post_yaml("/api/ci/pipelines", &server.api_token, yaml)
        .await;
    let pipeline = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let trigger = format!("/api/ci/pipelines/{pipeline}/trigger");
    let refused = server.post(&trigger, &server.api_token).await;
    let body = expect_error(refused, StatusCode::CONFLICT, "Conflict").await;
    assert!(
        body.message
            .contains("no run created: `workflow: if` is false: $GO == \"yes\""),
        "{}",
        body.message
    );
    let runs: Value = server
        .get("/api/ci/executions", &server.api_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(runs.as_array().map(Vec::len), Some(0), "{runs}");
    let ok = post_json(
        &server,
        &trigger,
        &server.api_token,
        json!({"variables": {"GO": "yes"}}),
    )
    .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
}
