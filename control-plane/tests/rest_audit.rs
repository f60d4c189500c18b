//! The audit log through the REST API: actions taken over REST are
//! recorded under the caller's JWT subject (or the API token), runner
//! registrations under the runner; `GET /api/audit` is for admins only,
//! pages with `limit` and `before`, refuses out-of-range limits, and never
//! shows a secret value.

mod rest_support;

use std::time::Duration;

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::rest::auth::Role;

const SECRET: &str = "audit-secret-8812";

async fn audit_page(server: &TestServer, token: &str, query: &str) -> Value {
    let response = server.get(&format!("/api/audit{query}"), token).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// (actor_kind, actor, action, target) of every record, oldest first.
fn actions(page: &Value) -> Vec<(String, String, String, String)> {
    let mut out: Vec<_> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("actor_kind"), s("actor"), s("action"), s("target"))
        })
        .collect();
    out.reverse();
    out
}

fn has(
    records: &[(String, String, String, String)],
    kind: &str,
    actor: &str,
    action: &str,
    target: &str,
) -> bool {
    records
        .iter()
        .any(|r| r.0 == kind && r.1 == actor && r.2 == action && r.3 == target)
}

#[tokio::test]
async fn rest_actions_are_audited_under_their_caller() {
    let server = start_with_agent().await;
    let alice = server
        .jwt
        .mint("alice", Role::Submitter, Duration::from_secs(3600));
    let ops = server.jwt.mint("ops", Role::Admin, Duration::from_secs(3600));
    let yaml = format!(
        "name: audited\nsecrets: {{TOKEN: {SECRET}}}\njobs:\n  slow:\n    steps:\n      - run: sleep 30\n"
    );
    let response = server.post_yaml("/api/ci/pipelines", &alice, &yaml).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let pipeline = response.json::<Value>().await.unwrap()["id"].as_u64().unwrap();
    let triggered: Value = server
        .post(&format!("/api/ci/pipelines/{pipeline}/trigger"), &alice)
        .await
        .json()
        .await
        .unwrap();
    let run = triggered["run_id"].as_u64().unwrap();
    let response = server
        .post(&format!("/api/ci/executions/{run}/cancel"), &server.api_token)
        .await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let response = server.post("/api/runners/1/drain", &ops).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);

    let page = audit_page(&server, &ops, "").await;
    let records = actions(&page);
    let expected = [
        ("runner", "agent-1", "register_runner", "runner 1".to_owned()),
        ("jwt", "alice", "create_pipeline", format!("pipeline {pipeline}")),
        ("jwt", "alice", "trigger_pipeline", format!("pipeline {pipeline}")),
        ("api_token", "api-token", "cancel_run", format!("run {run}")),
        ("jwt", "ops", "drain_runner", "runner 1".to_owned()),
    ];
    for (kind, actor, action, target) in &expected {
        assert!(
            has(&records, kind, actor, action, target),
            "no {kind}:{actor} {action} {target} in {records:#?}"
        );
    }
    // In the order they happened.
    let order: Vec<&str> = records.iter().map(|r| r.2.as_str()).collect();
    assert_eq!(
        order,
        [
            "register_runner",
            "create_pipeline",
            "trigger_pipeline",
            "cancel_run",
            "drain_runner"
        ],
        "{records:#?}"
    );
    let text = page.to_string();
    assert!(!text.contains(SECRET), "the audit log shows a secret: {text}");
    assert!(text.contains("audited"), "records name the pipeline: {text}");

    // Admins only.
    for role in [Role::Viewer, Role::Submitter] {
        let response = server.get("/api/audit", &server.token(role)).await;
        expect_error(response, StatusCode::FORBIDDEN, "AuthorizationError").await;
    }
    let response = server.get("/api/audit", "not-a-token").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // Pages: newest first, `next_before` continues without overlap.
    let first = audit_page(&server, &ops, "?limit=2").await;
    let first_ids: Vec<u64> = first["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(first_ids.len(), 2);
    assert!(first_ids[0] > first_ids[1]);
    let before = first["next_before"].as_u64().expect("a next page");
    let second = audit_page(&server, &ops, &format!("?limit=10&before={before}")).await;
    let second_ids: Vec<u64> = second["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_u64().unwrap())
        .collect();
    assert_eq!(second_ids.len(), 3, "{second}");
    assert!(second_ids.iter().all(|id| *id < first_ids[1]));
    assert!(second["next_before"].is_null(), "the last page: {second}");

    // Out-of-range limits are refused, naming the bound.
    for limit in ["0", "1001"] {
        let response = server.get(&format!("/api/audit?limit={limit}"), &ops).await;
        let body = expect_error(response, StatusCode::BAD_REQUEST, "BadRequest").await;
        let suggestions = format!("{:?}", body.suggestions);
        assert!(suggestions.contains("1000"), "{suggestions}");
    }
}
