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

#[test]
fn schemathesis_finds_nothing_against_the_openapi_document() {
    let version = Command::new("schemathesis").arg("--version").output();
    let Ok(version) = version.filter(|o| o.status.success()) else {
        panic!(
            "schemathesis is not installed: run `python3 -m pip install schemathesis==4.32.5` (scripts/test does)"
        );
    };
    eprintln!("{}", String::from_utf8_lossy(&version.stdout).trim());
    let server = ServerProcess::start(&["--rate-limit", "0"], &[]);
    let auth = format!("Authorization: Bearer {}", server.api_token);
    let mut child = Command::new("schemathesis")
        .arg("run")
        .arg(server.url("/api/openapi.json"))
        .args([
            "--checks",
            "all",
            "--max-examples",
            "15",
            "--generation-deterministic",
        ])
        .args(["--request-timeout", "30", "--no-color", "--workers", "1"])
        .args(["-H", &auth])
        // A log stream of a running execution never ends by design.
        .args(["--exclude-path", "/api/ci/executions/{id}/logs"])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        .env("NO_COLOR", "1")
        .current_dir(server.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_DEADLINE {
            let _ = child.kill();
            panic!("schemathesis did not finish within {RUN_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(
        status.success(),
        "schemathesis found problems ({status}):\n{stdout}\n{stderr}"
    );
}
