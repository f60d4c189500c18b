//! Hand-offs that fail are not the job's fault: a refused assignment (no
//! free slot, draining) or an expired lease sends the job back to the
//! queue without spending a retry, even with `retry: 0`; only a cap on
//! failed hand-offs in a row ends it (`lost`, naming the cap). Raw agents
//! over a real socket play the runners, so each refusal is exact.

mod protocol_support;

use std::time::Duration;

use protocol_support::{job, next, next_assign, start, submit, wait_job, within};
use valkyrie::message::{
    AssignAck, CancelAssignment, Event, EventBody, GetRun, JobOutcome, JobResult, JobState, Message,
    RunState, SubmitPipeline, Subscribe,
};
use valkyrie::Session;
use valkyrie_control_plane::core::Command;
use valkyrie_control_plane::CoreConfig;

async fn ack(agent: &Session, job_id: u64, attempt: u32, refusal: Option<&str>) {
    let ack = AssignAck {
        job_id,
        attempt,
        accepted: refusal.is_none(),
        reason: refusal.unwrap_or_default().into(),
    };
    agent.sender().send(ack).await.expect("send AssignAck");
}

/// Reports success for the attempt; the server acknowledges the result.
async fn succeed(agent: &Session, job_id: u64, attempt: u32) {
    let result = JobResult {
        job_id,
        attempt,
        outcome: JobOutcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 1,
        message: "ok".into(),
        log_chunks: 0,
        steps: Vec::new(),
    };
    let answer = within("the result's Ack", agent.sender().request(result)).await;
    assert!(matches!(answer, Ok(Message::Ack(_))), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_assignment_is_queued_again_without_spending_a_retry() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let (mut agent, _) = server.agent("busy", &["x"], 1).await;
    // retry: 0, and `on` without lost: before the fix this ended `lost`.
    let id = submit(&client, job("no-retries", "x", 0)).await;

    let first = next_assign(&mut agent).await;
    assert_eq!((first.job_id, first.attempt), (id, 1));
    ack(&agent, id, 1, Some("all 1 slots busy")).await;
    let second = next_assign(&mut agent).await;
    assert_eq!(
        (second.job_id, second.attempt),
        (id, 2),
        "offered again as a new attempt"
    );
    ack(&agent, id, 2, None).await;
    succeed(&agent, id, 2).await;
    let job = wait_job(&client, id, "the job to finish", |j| j.state.is_terminal()).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.attempt, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_queued_again_and_the_late_acceptance_is_cancelled() {
    let config = CoreConfig {
        assign_lease: Duration::from_millis(300),
        ..CoreConfig::default()
    };
    let server = start(config).await;
    let client = server.client().await;
    let (mut agent, _) = server.agent("slow", &["x"], 2).await;
    let id = submit(&client, job("slow-ack", "x", 0)).await;

    // Attempt 1 is never acknowledged in time.
    let first = next_assign(&mut agent).await;
    assert_eq!(first.attempt, 1);
    let second = next_assign(&mut agent).await;
    assert_eq!(
        (second.job_id, second.attempt),
        (id, 2),
        "queued again after the lease"
    );
    ack(&agent, id, 2, None).await;
    // The acceptance of attempt 1 arrives late: the server stops that attempt.
    ack(&agent, id, 1, None).await;
    let cancel = next(&mut agent, "CancelAssignment of attempt 1", |m| match m {
        Message::CancelAssignment(c) => Some(c),
        _ => None,
    })
    .await;
    let CancelAssignment { job_id, attempt, .. } = cancel;
    assert_eq!((job_id, attempt), (id, 1));
    succeed(&agent, id, 2).await;
    let job = wait_job(&client, id, "the job to finish", |j| j.state.is_terminal()).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handoff_limit_ends_the_job_lost_and_says_why() {
    let config = CoreConfig {
        handoff_limit: 3,
        ..CoreConfig::default()
    };
    let server = start(config).await;
    let client = server.client().await;
    let (mut agent, _) = server.agent("refuser", &["x"], 1).await;
    let id = submit(&client, job("refused", "x", 5)).await;
    for attempt in 1..=3 {
        let assign = next_assign(&mut agent).await;
        assert_eq!(assign.attempt, attempt);
        ack(&agent, id, attempt, Some("all 1 slots busy")).await;
    }
    let job = wait_job(&client, id, "the job to end", |j| j.state.is_terminal()).await;
    assert_eq!(job.state, JobState::Lost, "{job:?}");
    assert!(
        job.reason.contains("3 hand-offs"),
        "names the cap: {}",
        job.reason
    );
    assert!(
        job.reason
            .contains("runner `refuser` refused it: all 1 slots busy"),
        "names the last refusal: {}",
        job.reason
    );
}

/// Issue 14: draining a runner while a job is being handed to it used to
/// end the job `lost` and fail its run. The runner, drained while the
/// Assign is in flight, refuses it as the agent does; the job goes back to
/// the queue, another runner runs it, and the run succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_runner_during_a_handoff_requeues_the_job_and_its_run_succeeds() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let (mut first, registered) = server.agent("drained", &["x"], 1).await;
    let yaml = "name: drain\njobs:\n  build:\n    tags: [x]\n    steps:\n      - run: make\n";
    let run_id = match within(
        "RunAccepted",
        client.sender().request(SubmitPipeline {
            file_name: "ci.yaml".into(),
            yaml: yaml.into(),
            variables: Vec::new(),
        }),
    )
    .await
    {
        Ok(Message::RunAccepted(a)) => a.run_id,
        other => panic!("SubmitPipeline answered with {other:?}"),
    };
    let assign = next_assign(&mut first).await;
    // The operator drains the runner while the Assign is in flight.
    let (tx, rx) = tokio::sync::oneshot::channel();
    assert!(
        server
            .core
            .send(Command::DrainRunner(registered.runner_id, tx))
            .await
    );
    within("the drain", rx).await.unwrap().expect("drain accepted");
    next(&mut first, "the Drain", |m| {
        matches!(m, Message::Drain(_)).then_some(())
    })
    .await;
    ack(&first, assign.job_id, assign.attempt, Some("agent is draining")).await;

    let (mut second, _) = server.agent("healthy", &["x"], 1).await;
    let again = next_assign(&mut second).await;
    assert_eq!((again.job_id, again.attempt), (assign.job_id, assign.attempt + 1));
    ack(&second, again.job_id, again.attempt, None).await;
    succeed(&second, again.job_id, again.attempt).await;

    let run = within("the run to end", async {
        loop {
            match client.sender().request(GetRun { run_id }).await {
                Ok(Message::RunDetails(details)) if details.run.state.is_terminal() => return details.run,
                Ok(Message::RunDetails(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("GetRun answered with {other:?}"),
            }
        }
    })
    .await;
    assert_eq!(run.state, RunState::Succeeded, "{run:?}");
    let job = wait_job(&client, assign.job_id, "the job", |j| j.state.is_terminal()).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
}

/// What one no-op job costs on the wire when its agent reports as the
/// reference agent does (AssignAck, then a JobResult that carries its
/// step): the client's SubmitJob and JobAccepted; the agent's Assign,
/// AssignAck, JobResult and Ack; and two or three state events for the
/// subscriber (queued and assigned coalesce in the turn of the submission;
/// running may coalesce with the end). Eight or nine frames in all; about
/// thirteen before the fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noop_job_costs_eight_or_nine_frames() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let subscribe = Subscribe {
        job_id: None,
        logs: true,
        replay: false,
    };
    let mut events = client.sender().stream(subscribe, 64).await.expect("subscribed");
    let (mut agent, _) = server.agent("frugal", &["x"], 1).await;
    let id = submit(&client, job("frugal", "x", 0)).await;
    let assign = next_assign(&mut agent).await;
    ack(&agent, id, assign.attempt, None).await;
    succeed(&agent, id, assign.attempt).await;
    let mut states = Vec::new();
    within("the final state", async {
        while let Some(message) = events.recv().await {
            let Message::Event(Event { job_id, body }) = message else {
                panic!("unexpected {message:?} on the subscription");
            };
            match body {
                EventBody::State { state, .. } if job_id == id => {
                    states.push(state);
                    if state.is_terminal() {
                        return;
                    }
                }
                other => panic!("unexpected event {other:?} of job {job_id}"),
            }
        }
    })
    .await;
    assert!(
        matches!(
            states.as_slice(),
            [JobState::Assigned, JobState::Running, JobState::Succeeded]
                | [JobState::Assigned, JobState::Succeeded]
        ),
        "{states:?}"
    );
}
