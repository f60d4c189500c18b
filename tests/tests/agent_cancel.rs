//! Stopping running steps: a cancel or a timeout ends every process of the
//! job, including children of a shell that ignores SIGTERM.

mod support;

use support::{text, wait_state, wait_until, within, Harness};
use valkyrie_sdk::{EventBody, JobState};

/// A step that traps SIGTERM and leaves background children: after a
/// cancel the job ends as cancelled and none of its processes survive the
/// grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_step_children_that_ignore_sigterm() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let id = server
        .vk_detach(&[
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 1000 & sleep 1000 & echo ready; wait",
        ])
        .await;
    let mut events = client.watch(Some(id), true, true).await.expect("watch");
    within("`ready` in the job's output", async {
        let mut output = Vec::new();
        while !text(&output).contains("ready") {
            let event = events.recv().await.expect("subscription open").expect("event");
            if let EventBody::Log { data, .. } = event.body {
                output.extend_from_slice(&data);
            }
        }
    })
    .await;
    let job_env = format!("VALKYRIE_JOB_ID={id}");
    let before = h.processes_with_env(&[&job_env]);
    assert!(
        before.len() >= 3,
        "the shell and its two sleeps run before the cancel: {before:?}"
    );

    let out = server.vk(&["cancel", &id.to_string()]).await;
    assert!(out.status.success(), "vk cancel failed: {}", text(&out.stderr));
    let job = wait_state(&client, id, JobState::Cancelled).await;
    assert!(job.state.is_terminal());
    wait_until("every process of the cancelled job to be gone", || {
        let left = h.processes_with_env(&[&job_env]);
        std::future::ready(left.is_empty().then_some(()))
    })
    .await;
}

/// A job over its timeout ends with `vk exec` exiting 124, and none of its
/// processes remain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_step_children_and_exits_124() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let out = server
        .vk(&[
            "exec",
            "--timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "trap '' TERM; sleep 1000 & echo ready; wait",
        ])
        .await;
    assert_eq!(text(&out.stdout), "ready\n");
    assert_eq!(out.status.code(), Some(124), "stderr: {}", text(&out.stderr));

    let jobs = client.jobs(10).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].state, JobState::TimedOut, "{:?}", jobs[0]);
    let job_env = format!("VALKYRIE_JOB_ID={}", jobs[0].job_id);
    wait_until("every process of the timed-out job to be gone", || {
        let left = h.processes_with_env(&[&job_env]);
        std::future::ready(left.is_empty().then_some(()))
    })
    .await;
}

/// `vk exec -- sh -c '…'` runs its argv directly (no shell wrapped around
/// it), so a cancel's SIGTERM reaches the command's own trap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_trap_of_an_exec_command() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let id = server
        .vk_detach(&[
            "--",
            "sh",
            "-c",
            "trap 'echo got TERM; exit 0' TERM; echo ready; sleep 1000 & wait",
        ])
        .await;
    let mut events = client.watch(Some(id), true, true).await.expect("watch");
    let mut output = Vec::new();
    within("`ready` in the job's output", async {
        while !text(&output).contains("ready") {
            let event = events.recv().await.expect("subscription open").expect("event");
            if let EventBody::Log { data, .. } = event.body {
                output.extend_from_slice(&data);
            }
        }
    })
    .await;
    let out = server.vk(&["cancel", &id.to_string()]).await;
    assert!(out.status.success(), "vk cancel failed: {}", text(&out.stderr));
    within("`got TERM` in the job's output", async {
        while !text(&output).contains("got TERM") {
            let event = events.recv().await.expect("subscription open").expect("event");
            if let EventBody::Log { data, .. } = event.body {
                output.extend_from_slice(&data);
            }
        }
    })
    .await;
    wait_state(&client, id, JobState::Cancelled).await;
}
