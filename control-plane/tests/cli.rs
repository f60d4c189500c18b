//! The `valkyrie-server` command line. (Being an integration test of this
//! package also makes `cargo test --workspace` build the binary before the
//! scenario tests in `tests/` run.)

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

const SERVER: &str = env!("CARGO_BIN_EXE_valkyrie-server");

fn server() -> Command {
    let mut command = Command::new(SERVER);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VALKYRIE_") {
            command.env_remove(key);
        }
    }
    command.stdin(Stdio::null());
    command
}

/// Kills the server when the test ends, passing or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn help_shows_examples() {
    let out = server().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("valkyrie-server --listen tcp://"), "{help}");
    assert!(help.contains("--runner-lost-after"), "{help}");
}

#[test]
fn invalid_listen_uri_is_refused_with_the_expected_forms() {
    let dir = tempfile::tempdir().unwrap();
    let out = server()
        .args(["--listen", "htp://127.0.0.1:7700", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("htp://127.0.0.1:7700"), "names the URI: {stderr}");
    for form in [
        "unix:///path",
        "tcp://host:port",
        "tls://host:port",
        "quic://host:port",
    ] {
        assert!(stderr.contains(form), "names the form {form}: {stderr}");
    }
}

/// Started with nothing but a socket and a data directory, the server
/// reports where it listens, writes private tokens, and exits 0 on SIGTERM.
#[test]
fn starts_generates_private_tokens_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("s.sock");
    let data = dir.path().join("data");
    let mut child = KillOnDrop(
        server()
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-dir")
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let first = BufReader::new(stdout).lines().next().expect("a line").unwrap();
    assert_eq!(first, format!("listening on unix://{}", socket.display()));
    for name in ["api-token", "runner-token"] {
        let path = data.join(name);
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.trim().len(), 64, "{name} is 32 random bytes in hex");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{name} is private");
    }
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // wait() returns once the server exits; the test harness's own timeout
    // bounds a server that would not.
    let status = child.0.wait().unwrap();
    assert!(status.success(), "exits 0 on SIGTERM: {status}");
}
