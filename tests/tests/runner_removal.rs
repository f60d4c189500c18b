//! Removing runner records: `vk runners rm` refuses a connected runner,
//! removes a stopped one, `--force` removes a connected one once it
//! disconnects, and the server removes runners gone for longer than
//! `--runner-retention` on its own. Every removal is audited.

mod support;

use nix::sys::signal::Signal;
use support::{runner, text, wait_until, Harness};
use valkyrie_sdk::{Client, RunnerState};

async fn wait_state(client: &Client, name: &str, state: Option<RunnerState>) {
    wait_until(&format!("runner {name} to be {state:?}"), || async move {
        (runner(client, name).await.map(|r| r.state) == state).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_runners_rm_refuses_a_connected_runner_and_removes_a_stopped_one() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let mut agent = h.agent(&server).name("builder-1").start(&client).await;

    let out = server.vk(&["runners", "rm", "builder-1"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("runner `builder-1` is connected (idle)"),
        "{stderr}"
    );
    assert!(stderr.contains("--force"), "{stderr}");
    assert!(runner(&client, "builder-1").await.is_some(), "still listed");

    let out = server.vk(&["runners", "rm", "no-such-runner"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no runner named `no-such-runner`"),
        "{}",
        text(&out.stderr)
    );

    agent.process.signal(Signal::SIGTERM);
    assert!(agent.process.exited().await.success());
    wait_until("builder-1 to be listed as not connected", || async {
        runner(&client, "builder-1")
            .await
            .is_some_and(|r| matches!(r.state, RunnerState::Stopped | RunnerState::Lost))
            .then_some(())
    })
    .await;
    let out = server.vk(&["runners", "rm", "builder-1"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("runner `builder-1` removed"),
        "{}",
        text(&out.stderr)
    );
    assert!(runner(&client, "builder-1").await.is_none(), "no longer listed");

    // --force on a connected runner drains it; it goes once it disconnects.
    let mut agent = h.agent(&server).name("builder-2").start(&client).await;
    let out = server.vk(&["runners", "rm", "builder-2", "--force"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("draining"), "{}", text(&out.stderr));
    wait_state(&client, "builder-2", Some(RunnerState::Draining)).await;
    agent.process.signal(Signal::SIGTERM);
    assert!(agent.process.exited().await.success());
    wait_state(&client, "builder-2", None).await;

    let audit = text(&server.vk(&["audit", "--json"]).await.stdout);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("JSON");
    let removals: Vec<&serde_json::Value> = entries
        .iter()
        .filter(|e| e["action"] == "remove_runner")
        .collect();
    assert_eq!(removals.len(), 2, "{audit}");
    assert!(
        removals
            .iter()
            .any(|e| e["detail"].as_str().unwrap().starts_with("builder-2: draining")),
        "{audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runners_gone_longer_than_the_retention_are_removed_by_the_server() {
    let h = Harness::new();
    let server = h.server().args(&["--runner-retention", "2s"]).start();
    let client = server.client().await;
    let mut agent = h.agent(&server).name("short-lived").start(&client).await;
    // A connected runner is never removed, however long it stays.
    let mut keeper = h.agent(&server).name("keeper").start(&client).await;
    agent.process.signal(Signal::SIGTERM);
    assert!(agent.process.exited().await.success());
    wait_state(&client, "short-lived", None).await;
    assert!(
        runner(&client, "keeper")
            .await
            .is_some_and(|r| r.state == RunnerState::Idle),
        "the connected runner stays"
    );
    let audit = text(&server.vk(&["audit", "--json"]).await.stdout);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit).expect("JSON");
    let removal = entries
        .iter()
        .find(|e| e["action"] == "remove_runner")
        .unwrap_or_else(|| panic!("no removal audited: {audit}"));
    assert_eq!(removal["actor_kind"], "server", "{removal}");
    assert!(
        removal["detail"]
            .as_str()
            .unwrap()
            .contains("short-lived: not seen for over 2s"),
        "{removal}"
    );
    keeper.process.signal(Signal::SIGTERM);
    assert!(keeper.process.exited().await.success());
}
