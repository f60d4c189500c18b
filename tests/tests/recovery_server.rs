//! Recovery from a server restart: agents reconnect on their own.

mod support;

use support::{text, wait_until, Harness};

/// The server is killed and started again on the same socket and data
/// directory: the agent re-registers by itself and runs the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reconnects_after_server_restart() {
    let h = Harness::new();
    let socket = format!("unix://{}", h.path().join("restart.sock").display());
    let data = h.path().join("restart-data");
    let start = || {
        h.server()
            .listen(&[&socket])
            .data_dir(&data)
            .tokens("api-secret", "runner-secret")
            .start()
    };
    let mut server = start();
    let client = server.client().await;
    let agent = h.agent(&server).start(&client).await;
    let out = server.vk(&["exec", "--", "echo", "before"]).await;
    assert_eq!(text(&out.stdout), "before\n", "stderr: {}", text(&out.stderr));

    server.process.kill_now();
    drop(client);
    let server = start();

    wait_until("`vk runners` to list the reconnected agent", || async {
        let out = server.vk(&["runners", "--json"]).await;
        if !out.status.success() {
            return None;
        }
        let runners: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        runners
            .as_array()
            .expect("a JSON array")
            .iter()
            .any(|r| r["name"] == agent.name.as_str() && r["state"] != "lost")
            .then_some(())
    })
    .await;
    let out = server.vk(&["exec", "--", "echo", "ok"]).await;
    assert_eq!(text(&out.stdout), "ok\n", "stderr: {}", text(&out.stderr));
    assert!(out.status.success());
}

/// `vk exec` follows a job across a server restart: it says it lost the
/// connection and that the job keeps running, reconnects, and ends with
/// the job's output and exit code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_exec_follows_its_job_across_a_server_restart() {
    let h = Harness::new();
    let socket = format!("unix://{}", h.path().join("restart.sock").display());
    let data = h.path().join("restart-data");
    let start = || {
        h.server()
            .listen(&[&socket])
            .data_dir(&data)
            .tokens("api-secret", "runner-secret")
            .start()
    };
    let mut server = start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;
    let (started, release) = (h.path().join("started"), h.path().join("release"));
    let line = format!(
        "echo begin; touch {s}; while [ ! -e {r} ]; do sleep 0.05; done; echo end; exit 3",
        s = support::sh_path(&started),
        r = support::sh_path(&release)
    );
    let exec = tokio::process::Command::new(support::binary("vk"))
        .env("VKTEST_SCOPE", h.scope())
        .args([
            "--server",
            &socket,
            "--token",
            "api-secret",
            "exec",
            "--",
            "sh",
            "-c",
            &line,
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("vk exec starts");
    support::wait_file(&started).await;

    server.process.kill_now();
    drop(client);
    let _server = start();
    std::fs::write(&release, b"").unwrap();

    let out = support::within("vk exec to end", exec.wait_with_output())
        .await
        .expect("vk exec output");
    let stderr = text(&out.stderr);
    assert_eq!(text(&out.stdout), "begin\nend\n", "stderr: {stderr}");
    assert_eq!(out.status.code(), Some(3), "the job's own exit code: {stderr}");
    assert!(stderr.contains("lost the connection to the server"), "{stderr}");
    assert!(stderr.contains("keeps running there"), "{stderr}");
    assert!(stderr.contains("reconnected; following job"), "{stderr}");
}
