//! Secrets through the REST API: a stored pipeline's text is served with
//! its secret values masked (list and get), the run made from it still
//! gives its job the real values, and no response about the run, its jobs
//! or their output carries them.

mod rest_support;

use reqwest::StatusCode;
use rest_support::*;
use serde_json::Value;
use valkyrie_control_plane::rest::auth::Role;

const SECRET: &str = "rest-secret-5531";
const JOB_SECRET: &str = "job-level-secret-7710";

fn pipeline() -> String {
    format!(
        "name: masked\nsecrets:\n  TOKEN: {SECRET}\njobs:\n  check:\n    secrets: {{ OTHER: \"{JOB_SECRET}\" }}\n    steps:\n      - run: test \"$TOKEN\" = \"{SECRET}\" && test \"$OTHER\" = \"{JOB_SECRET}\" && echo \"saw $TOKEN\"\n"
    )
}

fn assert_no_secret(what: &str, body: &str) {
    assert!(
        !body.contains(SECRET) && !body.contains(JOB_SECRET),
        "{what} shows a secret: {body}"
    );
}

#[tokio::test]
async fn a_stored_pipeline_is_served_with_its_secrets_masked() {
    let server = start_with_agent().await;
    let admin = server.token(Role::Admin);
    let response = server.post_yaml("/api/ci/pipelines", &admin, &pipeline()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let created = response.text().await.unwrap();
    assert_no_secret("the create response", &created);
    let id = serde_json::from_str::<Value>(&created).unwrap()["id"]
        .as_u64()
        .unwrap();

    let one = server
        .get(&format!("/api/ci/pipelines/{id}"), &admin)
        .await
        .text()
        .await
        .unwrap();
    assert_no_secret("GET /api/ci/pipelines/{id}", &one);
    let yaml = serde_json::from_str::<Value>(&one).unwrap()["yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(yaml.contains("TOKEN: ***"), "{yaml}");
    assert!(yaml.contains("OTHER: \"***\""), "{yaml}");
    let list = server
        .get("/api/ci/pipelines", &admin)
        .await
        .text()
        .await
        .unwrap();
    assert!(list.contains("masked"), "{list}");
    assert_no_secret("GET /api/ci/pipelines", &list);

    // The run still gets the real values: its check succeeds.
    let response = server
        .post(&format!("/api/ci/pipelines/{id}/trigger"), &admin)
        .await;
    let triggered = response.text().await.unwrap();
    let run = serde_json::from_str::<Value>(&triggered).unwrap()["run_id"]
        .as_u64()
        .unwrap_or_else(|| panic!("a run id in {triggered}"));
    let execution = eventually("the run to end", || async {
        let body = server
            .get(&format!("/api/ci/executions/{run}"), &admin)
            .await
            .text()
            .await
            .unwrap();
        let value: Value = serde_json::from_str(&body).unwrap();
        (value["state"] != "running").then_some(body)
    })
    .await;
    assert!(execution.contains("\"succeeded\""), "{execution}");
    assert_no_secret("GET /api/ci/executions/{id}", &execution);
    let logs = server
        .get(&format!("/api/ci/executions/{run}/logs"), &admin)
        .await
        .text()
        .await
        .unwrap();
    assert!(logs.contains("saw ***"), "{logs}");
    assert_no_secret("the run's logs", &logs);
    let list = server
        .get("/api/ci/executions", &admin)
        .await
        .text()
        .await
        .unwrap();
    assert_no_secret("GET /api/ci/executions", &list);
}
