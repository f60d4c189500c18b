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
    assert!(
        stderr(&out).contains(&format!("cannot connect to {uri}")),
        "{}",
        stderr(&out)
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
