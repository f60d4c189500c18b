//! The `vk` command line. (Being an integration test of this package also
//! makes `cargo test --workspace` build the binary before the scenario tests
//! in `tests/` run.)

use std::process::{Command, Output, Stdio};

fn vk(args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vk"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("VALKYRIE_") {
            command.env_remove(key);
        }
    }
    command.args(args).stdin(Stdio::null()).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_commands_and_exec_help_shows_examples() {
    let out = vk(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["exec", "jobs", "runners", "logs", "cancel"] {
        assert!(help.contains(command), "lists `{command}`: {help}");
    }
    let out = vk(&["exec", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("vk exec -- cargo test"), "{help}");
}

#[test]
fn invalid_server_uri_is_refused_with_the_expected_forms() {
    let out = vk(&["--server", "127.0.0.1:7700", "jobs"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("127.0.0.1:7700"), "names the URI: {err}");
    assert!(err.contains("tcp://host:port"), "names the expected forms: {err}");
}

#[test]
fn unreachable_server_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("unix://{}", dir.path().join("nobody-here.sock").display());
    let out = vk(&["--server", &uri, "--token", "t", "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).matches(&format!("cannot connect to {uri}")).count(),
        1,
        "named once: {}",
        stderr(&out)
    );
}

#[test]
fn pointing_vk_at_an_http_port_says_it_answered_in_http() {
    // A real HTTP/1.1 server's answer to bytes it cannot parse.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 64];
        let _ = conn.read(&mut buf);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    });
    let out = vk(&["--server", &format!("tcp://{addr}"), "--token", "t", "jobs"]);
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("answered in HTTP"), "{err}");
    assert!(err.contains("--listen"), "says what to use instead: {err}");
    assert!(!err.contains("version 72"), "{err}");
}

#[test]
fn a_closed_stdout_pipe_ends_vk_quietly() {
    // The reader is gone before vk writes a byte: every write is EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_vk"))
        .args(["completions", "bash"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn unknown_exec_flags_are_usage_errors_not_part_of_the_command() {
    let out = vk(&["exec", "--tag", "gpu", "--", "echo", "hi"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--tag"), "{err}");
    assert!(
        err.contains("similar argument exists: '--tags'"),
        "did you mean: {err}"
    );
    // Flags after the command (or after `--`) are the command's: these parse
    // and go on to connect (and fail there, with no server).
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("unix://{}", dir.path().join("none.sock").display());
    for args in [
        vec!["exec", "--", "ls", "-la"],
        vec!["exec", "ls", "-la", "--tags", "x"],
        vec!["exec", "--tags", "gpu", "--", "echo", "--tag"],
    ] {
        let mut full = vec!["--server", uri.as_str(), "--token", "t"];
        full.extend(args.iter().copied());
        let out = vk(&full);
        assert!(
            stderr(&out).contains("cannot connect"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn version_names_the_tool() {
    let out = vk(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("vk {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn tls_without_ca_certificate_says_what_to_pass() {
    let out = vk(&["--server", "tls://127.0.0.1:9", "--token", "t", "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ca-cert"), "{}", stderr(&out));
}

#[test]
fn exec_without_a_command_is_a_usage_error() {
    let out = vk(&["exec"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("<COMMAND>"), "{}", stderr(&out));
}
