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
/// itself non-dumpable, which gives its /proc files to root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cannot_read_the_agents_environment_through_proc() {
    if nix::unistd::geteuid().is_root() {
        // Root reads every process's /proc files (CAP_SYS_PTRACE), so a job
        // run as root shows nothing about this protection.
        eprintln!("skipped: running as root, which bypasses the protection under test");
        return;
    }
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let agent = h
        .agent(&server)
        .env("VALKYRIE_RUNNER_TOKEN", &server.runner_token)
        .env("AGENT_HOST_SECRET", "not-for-jobs")
        .start(&client)
        .await;
    let pid = agent.process.pid();
    let script = format!("cat /proc/{pid}/environ; echo \"cat exited $?\"");
    let out = server.vk(&["exec", "--", "sh", "-c", &script]).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains("cat exited 1"),
        "the job read /proc/{pid}/environ:\n{stdout}\n{stderr}"
    );
    for leaked in ["not-for-jobs", &server.runner_token] {
        assert!(!stdout.contains(leaked), "the job sees `{leaked}`:\n{stdout}");
    }
    assert!(stderr.contains("Permission denied"), "{stderr}");
}
