//! What a job's environment holds: the agent's allow-listed variables and
//! the job's own, never the agent's credentials.

mod support;

use support::{text, Harness};

/// An agent started as `--help` suggests, with its registration token in
/// `VALKYRIE_RUNNER_TOKEN` (and a user's `VALKYRIE_TOKEN` and an unrelated
/// variable in its environment too): the job's `env` shows none of them,
/// nor the token's value, but does show `CI=true` and the agent's `PATH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_never_see_the_agents_credentials() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h
        .agent(&server)
        .env("VALKYRIE_RUNNER_TOKEN", &server.runner_token)
        .env("VALKYRIE_TOKEN", &server.api_token)
        .env("AGENT_HOST_SECRET", "not-for-jobs")
        .start(&client)
        .await;

    let out = server.vk(&["exec", "--", "env"]).await;
    assert!(out.status.success(), "vk exec env failed: {}", text(&out.stderr));
    let env = text(&out.stdout);
    for leaked in [
        "VALKYRIE_RUNNER_TOKEN",
        "VALKYRIE_TOKEN",
        "AGENT_HOST_SECRET",
        "not-for-jobs",
        &server.runner_token,
        &server.api_token,
    ] {
        assert!(!env.contains(leaked), "the job sees `{leaked}`:\n{env}");
    }
    let lines: Vec<&str> = env.lines().collect();
    assert!(lines.contains(&"CI=true"), "{env}");
    assert!(lines.iter().any(|l| l.starts_with("PATH=/")), "{env}");
    assert!(lines.iter().any(|l| l.starts_with("VALKYRIE_JOB_ID=")), "{env}");
}

/// `--pass-env` cannot hand an agent variable named `VALKYRIE_*` to jobs:
/// the agent refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_env_refuses_the_agents_own_variables() {
    let h = Harness::new();
    let server = h.server().start();
    let mut agent = h
        .agent(&server)
        .args(&["--pass-env", "HTTP_PROXY,VALKYRIE_RUNNER_TOKEN"])
        .spawn();
    let status = agent.process.exited().await;
    assert!(!status.success());
    let log = agent.process.log();
    assert!(log.contains("--pass-env VALKYRIE_RUNNER_TOKEN"), "{log}");
    assert!(log.contains("never passed to jobs"), "{log}");
}

/// A job runs as the agent's user, yet cannot read the agent's environment
/// (where `VALKYRIE_RUNNER_TOKEN` lives) through /proc: the agent makes
/// itself non-dumpable, which gives its /proc files to root. Root reads
/// every process's files, so when the tests run as root the agent (and so
/// its jobs) runs as `nobody` (uid 65534) through `setpriv`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cannot_read_the_agents_environment_through_proc() {
    const NOBODY: u32 = 65534;
    let h = Harness::new();
    let server = h.server().listen(&["tcp://127.0.0.1:0"]).start();
    let client = server.client().await;
    let root = nix::unistd::geteuid().is_root();
    // A work directory the agent's user owns, outside the (0700) harness
    // directory.
    let work = tempfile::Builder::new()
        .prefix("vkt-env")
        .tempdir()
        .expect("work directory");
    if root {
        std::os::unix::fs::chown(work.path(), Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let agent_binary = support::binary("valkyrie-agent");
    let mut command = if root {
        let mut command = h.command_of("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(&agent_binary);
        command
    } else {
        h.command("valkyrie-agent")
    };
    command
        .args(["--server", server.endpoint(), "--name", "env-probe", "--work-dir"])
        .arg(work.path().join("w"))
        .env("VALKYRIE_RUNNER_TOKEN", &server.runner_token)
        .env("AGENT_HOST_SECRET", "not-for-jobs");
    let agent = support::spawn_logged(
        command,
        "env-probe agent",
        h.path().join("env-probe.log"),
        std::process::Stdio::null(),
    );
    support::wait_until("the agent to register", || {
        let client = client.clone();
        async move {
            client
                .runners()
                .await
                .ok()
                .filter(|r| r.iter().any(|r| r.name == "env-probe"))
        }
    })
    .await;
    // setpriv execs the agent: the child's pid is the agent's.
    let pid = agent.pid();
    let script = format!("id -u; cat /proc/{pid}/environ; echo \"cat exited $?\"");
    let out = server.vk(&["exec", "--", "sh", "-c", &script]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    if root {
        assert!(
            stdout.starts_with("65534\n"),
            "the job runs as nobody:\n{stdout}\n{stderr}"
        );
    }
    assert!(
        stdout.contains("cat exited 1"),
        "the job read /proc/{pid}/environ:\n{stdout}\n{stderr}"
    );
    for leaked in ["not-for-jobs", &server.runner_token] {
        assert!(!stdout.contains(leaked), "the job sees `{leaked}`:\n{stdout}");
    }
    assert!(stderr.contains("Permission denied"), "{stderr}");
}
