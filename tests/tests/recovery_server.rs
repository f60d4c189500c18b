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
