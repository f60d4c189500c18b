//! Recovery from agents that die or misbehave: attempts are retried
//! elsewhere, and whatever the old attempt says afterwards is refused.

mod support;

use support::{raw_agent, sh_path, text, wait_file, wait_final, within, Harness};
use valkyrie::message::{JobOutcome, JobResult, Message};
use valkyrie::transport::RequestError;
use valkyrie::ErrorCode;
use valkyrie_sdk::{JobSpec, JobState};

/// An agent killed with SIGKILL mid-job: the job is retried on the other
/// agent and succeeds as attempt 2; a late result for attempt 1 is refused
/// as stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_agent_job_is_retried_elsewhere_and_late_report_refused() {
    let h = Harness::new();
    let started = h.path().join("started");
    let server = h.server().start();
    let client = server.client().await;
    let mut a = h.agent(&server).name("agent-a").start(&client).await;

    let line = format!(
        "if [ \"$VALKYRIE_JOB_ATTEMPT\" = 1 ]; then touch {s}; while :; do sleep 0.05; done; fi; \
         echo attempt $VALKYRIE_JOB_ATTEMPT",
        s = sh_path(&started)
    );
    let id = client
        .submit(JobSpec::shell("survivor", line))
        .await
        .expect("submit");
    wait_file(&started).await;
    let b = h.agent(&server).name("agent-b").start(&client).await;

    a.process.kill_now();
    // The step's process group survives its agent: end it as a crash would.
    let job_env = format!("VALKYRIE_JOB_ID={id}");
    h.kill_processes_with_env(&[&job_env, "VALKYRIE_JOB_ATTEMPT=1"]);

    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2, "{job:?}");
    assert_eq!(job.runner.as_deref(), Some(b.name.as_str()), "{job:?}");
    let out = server.vk(&["logs", &id.to_string()]).await;
    assert!(text(&out.stdout).contains("attempt 2"), "{}", text(&out.stdout));

    // The dead agent's attempt reports late, under its old name and under
    // a name the server has never seen.
    for name in [a.name.as_str(), "impostor"] {
        let late = raw_agent(&server, name, &[], &[]).await;
        let answer = within(
            "the answer to a late JobResult",
            late.sender().request(JobResult {
                job_id: id,
                attempt: 1,
                outcome: JobOutcome::Failed,
                exit_code: Some(1),
                duration_ms: 10,
                message: "late".into(),
                log_chunks: 0,
                steps: Vec::new(),
            }),
        )
        .await;
        match answer {
            Err(RequestError::Failed { code, message }) => {
                assert_eq!(code, ErrorCode::STALE_ATTEMPT, "from {name}: {message}")
            }
            other => {
                panic!("a late result for attempt 1 from {name} must be refused as stale, got {other:?}")
            }
        }
    }
    let job = client.job(id).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "the stale report changed nothing: {job:?}"
    );
    assert_eq!(job.attempt, 2);
}

/// An agent that never acknowledges its assignment loses it when the lease
/// runs out, and the job is assigned again as a new attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_assignment_is_reassigned_after_lease() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let mut fake = raw_agent(&server, "fake-agent", &["fake"], &[]).await;

    let mut spec = JobSpec::shell("never-acked", "true");
    spec.tags = vec!["fake".into()];
    let id = client.submit(spec).await.expect("submit");

    let mut attempts = Vec::new();
    within("two Assign frames", async {
        while attempts.len() < 2 {
            let incoming = fake.recv().await.expect("fake agent session open");
            if let Message::Assign(assign) = incoming.message {
                assert_eq!(assign.job_id, id);
                attempts.push(assign.attempt);
            }
        }
    })
    .await;
    assert_eq!(
        attempts,
        [1, 2],
        "the job is reassigned with a new attempt number"
    );
    let job = client.job(id).await.unwrap();
    assert!(job.attempt >= 2, "{job:?}");
    assert!(!job.state.is_terminal(), "{job:?}");
}
