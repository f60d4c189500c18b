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

/// The first line the server prints on stdout, once it listens; and stderr.
fn first_line_and_stderr(mut command: Command) -> (String, KillOnDrop) {
    let mut child = KillOnDrop(
        command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let first = BufReader::new(stdout)
        .lines()
        .next()
        .map(|l| l.unwrap())
        .unwrap_or_default();
    (first, child)
}

#[test]
fn a_config_file_sets_flags_and_flags_and_environment_override_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("server.toml");
    let from_file = dir.path().join("file.sock");
    std::fs::write(
        &file,
        format!(
            "listen = [\"unix://{}\"]\ndata_dir = \"{}\"\nassign_lease = \"3s\"\nlog_format = \"json\"\n",
            from_file.display(),
            data.display()
        ),
    )
    .unwrap();
    // The file alone: its listen address and data directory are used, and
    // logs are JSON lines.
    let mut command = server();
    command.arg("--config").arg(&file);
    let (first, mut child) = first_line_and_stderr(command);
    assert_eq!(first, format!("listening on unix://{}", from_file.display()));
    assert!(data.join("api-token").is_file(), "data_dir from the file");
    let _ = child.0.kill();
    let _ = child.0.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.0.stderr.take().unwrap(), &mut stderr).unwrap();
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        serde_json::from_str::<serde_json::Value>(line).expect("JSON log line");
    }
    assert!(!stderr.contains('\u{1b}'), "no colour when redirected: {stderr}");

    // A flag beats the file; so does the environment (VALKYRIE_CONFIG names the file).
    let from_flag = dir.path().join("flag.sock");
    let mut command = server();
    command
        .env("VALKYRIE_CONFIG", &file)
        .arg("--listen")
        .arg(format!("unix://{}", from_flag.display()));
    let (first, child) = first_line_and_stderr(command);
    assert_eq!(first, format!("listening on unix://{}", from_flag.display()));
    // The next server uses the same data directory: this one must be gone.
    drop(child);
    let from_env = dir.path().join("env.sock");
    let mut command = server();
    command
        .arg("--config")
        .arg(&file)
        .env("VALKYRIE_LISTEN", format!("unix://{}", from_env.display()));
    let (first, _child) = first_line_and_stderr(command);
    assert_eq!(first, format!("listening on unix://{}", from_env.display()));
}

#[test]
fn a_config_file_with_an_unknown_key_or_a_bad_value_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("server.toml");
    for (text, expected) in [
        (
            "data_dri = \"/x\"\n",
            "unknown key `data_dri`; did you mean `data_dir`?",
        ),
        ("assign_lease = \"soon\"\n", "`assign_lease`"),
        ("max_connections = \"many\"\n", "`max_connections`"),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = server()
            .arg("--config")
            .arg(&file)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{text}: {stderr}");
        assert!(
            stderr.contains(&file.display().to_string()),
            "names the file: {stderr}"
        );
    }
}

#[test]
fn version_names_the_binary() {
    let out = server().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("valkyrie-server {}", env!("CARGO_PKG_VERSION"))
    );
}
