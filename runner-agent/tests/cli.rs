//! The `valkyrie-agent` command line. (Being an integration test of this
//! package also makes `cargo test --workspace` build the binary before the
//! scenario tests in `tests/` run.)

use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use valkyrie::transport::{Listener, ListenerOptions};
use valkyrie::{Endpoint, ErrorCode};

fn agent() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_valkyrie-agent"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VALKYRIE_") {
            command.env_remove(key);
        }
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

fn agent_sync(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_valkyrie-agent"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VALKYRIE_") {
            command.env_remove(key);
        }
    }
    command.args(args).stdin(Stdio::null()).output().unwrap()
}

#[test]
fn help_shows_an_example() {
    let out = agent_sync(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Example ("), "{help}");
    assert!(
        help.contains("VALKYRIE_RUNNER_TOKEN=$(cat runner-token) valkyrie-agent --server tls://"),
        "{help}"
    );
}

#[test]
fn invalid_server_uri_is_refused_with_the_expected_forms() {
    let out = agent_sync(&["--server", "ftp://ci:21", "--token", "t"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ftp://ci:21"), "names the URI: {stderr}");
    assert!(
        stderr.contains("unix:///path"),
        "names the expected forms: {stderr}"
    );
}

/// A server that refuses the token: the agent gives up at once (retrying
/// would not help), exits non-zero and shows the server's reason.
#[tokio::test]
async fn refused_token_exits_non_zero_with_the_servers_reason() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint: Endpoint = format!("unix://{}", dir.path().join("s.sock").display())
        .parse()
        .unwrap();
    let options = ListenerOptions {
        authenticate: Some(Arc::new(|_| {
            Err((
                ErrorCode::UNAUTHENTICATED,
                "invalid runner registration token (test server)".into(),
            ))
        })),
        ..ListenerOptions::default()
    };
    let _listener = Listener::bind(&endpoint, options).await.unwrap();
    let out = agent()
        .arg("--server")
        .arg(endpoint.to_string())
        .args(["--token", "wrong", "--name", "cli-test"])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("the agent gives up instead of retrying")
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid runner registration token (test server)"),
        "{stderr}"
    );
}

/// Executor settings that cannot work are refused before connecting:
/// the executor's reserved tag, Docker options on a shell runner, a
/// relative volume, an unreachable Docker Engine.
#[test]
fn bad_executor_settings_are_refused_naming_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_str().unwrap();
    let base = ["--token", "t", "--work-dir", work];
    for (extra, needle) in [
        (
            &["--tags", "linux,executor:docker"][..],
            "set by the agent from --executor",
        ),
        (
            &["--docker-privileged"][..],
            "--docker-* options need --executor docker",
        ),
        (
            &["--executor", "docker", "--docker-volume", "cache:/cache"][..],
            "write it as /host/path:/container/path[:ro]",
        ),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        let out = agent_sync(&args);
        assert!(!out.status.success(), "{extra:?} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_valkyrie-agent"));
    let out = command
        .args(base)
        .args(["--executor", "docker"])
        .env("DOCKER_HOST", format!("unix://{work}/no-such.sock"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot reach the Docker Engine"), "{stderr}");
}
