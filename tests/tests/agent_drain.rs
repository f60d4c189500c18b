//! Agent shutdown: SIGTERM drains running jobs before the agent exits.

mod support;

use nix::sys::signal::Signal;
use support::{sh_path, wait_file, wait_final, wait_until, Harness};
use valkyrie_sdk::{JobSpec, JobState, RunnerState};

/// SIGTERM while a job runs: the job finishes and succeeds, then the agent
/// exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_running_job_finish_then_exits_zero() {
    let h = Harness::new();
    let started = h.path().join("started");
    let server = h.server().start();
    let client = server.client().await;
    let mut agent = h.agent(&server).start(&client).await;

    let id = client
        .submit(JobSpec::shell(
            "drained",
            format!("touch {}; sleep 1; echo finished", sh_path(&started)),
        ))
        .await
        .expect("submit");
    wait_file(&started).await;
    agent.process.signal(Signal::SIGTERM);

    let status = agent.process.exited().await;
    assert!(status.success(), "the agent exits 0 after draining: {status}");
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let out = server.vk(&["logs", &id.to_string()]).await;
    assert_eq!(support::text(&out.stdout), "finished\n");
    // Drained and gone: listed as stopped, not lost.
    let (client, name) = (&client, agent.name.as_str());
    wait_until("the drained runner to be listed as stopped", || async move {
        let runners = client.runners().await.expect("runners");
        let state = runners.iter().find(|r| r.name == name).map(|r| r.state);
        (state == Some(RunnerState::Stopped)).then_some(())
    })
    .await;
}
