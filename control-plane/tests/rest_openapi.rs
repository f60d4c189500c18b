//! The OpenAPI document against the server it describes: schemathesis
//! (`pip install schemathesis`) generates requests for every documented
//! operation and checks every response against the document
//! (`--checks all`: status codes, content types, schemas, headers,
//! authentication, undocumented methods, …).

mod rest_support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rest_support::*;

/// How long schemathesis may run (it is bounded by `--max-examples` too).
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// What schemathesis is told beyond the document: ids that exist (so the
/// `{id}` routes, jobs' artifacts included, are tested past their 404), and that a pipeline file
/// which is a well-formed request but not a valid pipeline gets 422 (a
/// YAML body is "any string" to a schema; what makes a valid pipeline is
/// checked by the validator and answered 422, as the document says);
/// likewise a project whose name, URL or file is not acceptable gets 400,
/// a trigger whose ref cannot be fetched 422, and a webhook for a project
/// that does not exist 404 (or, unsigned, 401); a trigger's variables may
/// be refused (400) or start no run (409), and a run's manual job may not
/// exist (404) or the run not be finished for a rerun (409).
const CONFIG: &str = r#"
[[operations]]
include-operation-id = ["create_pipeline", "upload_pipeline"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-path-regex = "^/api/ci/(pipelines|executions|jobs|runs)/\\{id\\}"
parameters = { id = 1 }
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-operation-id = ["create_project", "trigger_project"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-operation-id = ["github_webhook", "gitlab_webhook"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "422"]
"#;

#[tokio::test]
async fn schemathesis_finds_nothing_against_the_openapi_document() {
    let version = Command::new("schemathesis")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .expect(
            "schemathesis is not installed: run `python3 -m pip install schemathesis==4.32.5` (scripts/test does)",
        );
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let server = ServerProcess::start(&["--rate-limit", "0"], &[]);
    let auth = format!("Authorization: Bearer {}", server.api_token);
    // Pipeline 1 and execution 1 exist before the run.
    let http = http_client();
    let created = http
        .post(server.url("/api/ci/pipelines"))
        .bearer_auth(&server.api_token)
        .header("content-type", "application/yaml")
        .body(HELLO_YAML)
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let triggered = http
        .post(server.url("/api/ci/pipelines/1/trigger"))
        .bearer_auth(&server.api_token)
        .send()
        .await
        .unwrap();
    assert_eq!(triggered.status(), reqwest::StatusCode::CREATED);
    let config_path = server.dir.path().join("schemathesis.toml");
    std::fs::write(&config_path, CONFIG).unwrap();
    let out_path = server.dir.path().join("schemathesis.out");
    let err_path = server.dir.path().join("schemathesis.err");
    let mut child = Command::new("schemathesis")
        .arg("--config-file")
        .arg(&config_path)
        .arg("run")
        .arg(server.url("/api/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "30",
            // Deterministic, and so without an example database.
            "--generation-deterministic",
        ])
        .args(["--request-timeout", "30", "--no-color", "--workers", "1"])
        .args(["-H", &auth])
        // A log stream of a running execution never ends by design.
        .args(["--exclude-path", "/api/ci/executions/{id}/logs"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .current_dir(server.dir.path())
        // Files, not pipes: nobody reads a pipe until it exits, and a full
        // pipe would block it.
        .stdout(Stdio::from(std::fs::File::create(&out_path).unwrap()))
        .stderr(Stdio::from(std::fs::File::create(&err_path).unwrap()))
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "schemathesis did not finish within {RUN_DEADLINE:?}:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    eprintln!("{stdout}");
    assert!(
        status.success(),
        "schemathesis failed ({status}):\n{stdout}\n{stderr}"
    );
    // It did test something: every operation it loaded but the excluded
    // log stream.
    let number_after = |label: &str| -> Vec<usize> {
        let at = stdout
            .find(label)
            .unwrap_or_else(|| panic!("no `{label}` in:\n{stdout}"));
        stdout[at + label.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .filter(|n| !n.is_empty())
            .take(2)
            .map(|n| n.parse().unwrap())
            .collect()
    };
    let selected = number_after("Selected:");
    let tested = number_after("Tested:")[0];
    assert_eq!(
        selected[0] + 1,
        selected[1],
        "only the log stream is excluded:\n{stdout}"
    );
    assert_eq!(
        tested, selected[0],
        "not every selected operation was tested:\n{stdout}"
    );
    assert!(tested > 10, "{stdout}");
}
