//! The server as `spec/protocol.md` describes it, checked with raw peers
//! that speak the wire format the way a peer written from the spec alone
//! would. Each test names the section it holds the server to.

mod protocol_support;

use std::time::Duration;

use bytes::Bytes;
use protocol_support::{accept, job, next_assign, register, start, submit, within};
use valkyrie::message::{
    AssignAck, EventBody, GetJob, Heartbeat, JobOutcome, JobResult, JobStarted, JobState, ListJobs,
    ListRunners, LogChunk, Message, OutputStream, Role, RunnerState, StepOutcome, StepResult, StepSpec,
    StepSummary, SubmitJob, Subscribe,
};
use valkyrie::transport::{ConnectError, RequestError};
use valkyrie::{ConnectionError, ErrorCode, Session};
use valkyrie_control_plane::CoreConfig;

fn refused(result: Result<Session, ConnectError>) -> (ErrorCode, String) {
    match result {
        Err(ConnectError::Refused { code, reason }) => (code, reason),
        Err(other) => panic!("expected a refusal, got {other}"),
        Ok(_) => panic!("expected a refusal, the connection was accepted"),
    }
}

fn failed<T: std::fmt::Debug>(answer: Result<T, RequestError>) -> (ErrorCode, String) {
    match answer {
        Err(RequestError::Failed { code, message }) => (code, message),
        other => panic!("expected RequestFailed, got {other:?}"),
    }
}

/// §5: RunnerRegistered is the reply to RegisterRunner: it carries the
/// request's correlation id and the REPLY flag (a peer that matches replies
/// by id gets it; `request` only resolves on exactly that).
#[tokio::test]
async fn runner_registered_echoes_the_requests_correlation_id() {
    let server = start(CoreConfig::default()).await;
    let agent = server.agent_session().await;
    let answer = within("RunnerRegistered", agent.sender().request(register("r1", &[], 1))).await;
    match answer {
        Ok(Message::RunnerRegistered(r)) => assert!(r.runner_id > 0, "{r:?}"),
        other => panic!("{other:?}"),
    }
}

/// §6.1.4: a wrong token is UNAUTHENTICATED; a valid token for a role it
/// does not grant is PERMISSION_DENIED, naming the token to use.
#[tokio::test]
async fn a_valid_token_for_the_wrong_role_is_permission_denied() {
    let server = start(CoreConfig::default()).await;
    let (code, reason) = refused(server.connect(Role::Client, &server.runner_token).await);
    assert_eq!(code, ErrorCode::PERMISSION_DENIED, "{reason}");
    assert!(reason.contains("API token"), "{reason}");
    let (code, reason) = refused(server.connect(Role::Agent, &server.api_token).await);
    assert_eq!(code, ErrorCode::PERMISSION_DENIED, "{reason}");
    assert!(reason.contains("runner token"), "{reason}");
    let (code, reason) = refused(server.connect(Role::Client, "not-a-token").await);
    assert_eq!(code, ErrorCode::UNAUTHENTICATED, "{reason}");
}

/// §6.2: Ping and Pong prove the connection, not the agent: a registered
/// agent that sends no Heartbeat (nor any report) for `runner_lost_after`
/// is closed as silent, while one that heartbeats stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_only_pings_is_lost_and_one_that_heartbeats_stays() {
    let config = CoreConfig {
        runner_lost_after: Duration::from_secs(2),
        ..CoreConfig::default()
    };
    let server = start(config).await;
    let (_beating, _) = server.agent("beating", &[], 1).await;
    let mut pinging = server.agent_session().await;
    let answer = within(
        "RunnerRegistered",
        pinging.sender().request(register("pinging", &[], 1)),
    )
    .await;
    assert!(matches!(answer, Ok(Message::RunnerRegistered(_))), "{answer:?}");
    // The session pings on its own (the transport's heartbeat); nothing else.
    within("the silent runner's session to close", async {
        while pinging.recv().await.is_some() {}
    })
    .await;
    match pinging.sender().close_reason() {
        Some(Err(ConnectionError::ClosedByPeer { code, reason })) => {
            assert_eq!(code, ErrorCode::IDLE_TIMEOUT, "{reason}");
            assert!(reason.contains("silent"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let client = server.client().await;
    let runners = match client.sender().request(ListRunners {}).await {
        Ok(Message::RunnerList(l)) => l.runners,
        other => panic!("{other:?}"),
    };
    let state = |name: &str| runners.iter().find(|r| r.name == name).map(|r| r.state);
    assert_eq!(state("pinging"), Some(RunnerState::Lost));
    assert_ne!(state("beating"), Some(RunnerState::Lost), "{runners:?}");
}

/// §3.2: a listing is truncated to fit the peer's frame limit (it used to
/// be dropped, the request never answered); a log Event over the limit
/// becomes a `skipped` marker instead of vanishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_are_truncated_and_oversized_events_become_skipped_markers() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let small = server
        .connect_limited(Role::Client, &server.api_token, 4096)
        .await;
    for i in 0..60 {
        submit(&client, job(&format!("{i:03}-{}", "x".repeat(100)), "nowhere", 0)).await;
    }
    let jobs = match within("JobList", small.sender().request(ListJobs { limit: 60 })).await {
        Ok(Message::JobList(l)) => l.jobs,
        other => panic!("{other:?}"),
    };
    assert!(!jobs.is_empty() && jobs.len() < 60, "{} jobs", jobs.len());
    assert!(jobs[0].name.starts_with("059-"), "newest first: {}", jobs[0].name);

    let (mut agent, _) = server.agent("logger", &["x"], 1).await;
    let id = submit(&client, job("loud", "x", 0)).await;
    let mut events = small
        .sender()
        .stream(
            Subscribe {
                job_id: Some(id),
                logs: true,
                replay: false,
            },
            64,
        )
        .await
        .unwrap();
    // The subscription is in place once the core has answered a later request.
    let _ = small.sender().request(ListJobs { limit: 1 }).await;
    let assign = next_assign(&mut agent).await;
    accept(&agent, &assign).await;
    let sender = agent.sender();
    for (seq, data) in [vec![b'a'; 10_000], b"small\n".to_vec()].into_iter().enumerate() {
        let chunk = LogChunk {
            job_id: id,
            attempt: assign.attempt,
            seq: seq as u64,
            stream: OutputStream::Stdout,
            data: Bytes::from(data),
        };
        sender.send(chunk).await.unwrap();
    }
    let result = JobResult {
        job_id: id,
        attempt: assign.attempt,
        outcome: JobOutcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 1,
        message: String::new(),
        log_chunks: 2,
        steps: Vec::new(),
    };
    assert!(matches!(sender.request(result).await, Ok(Message::Ack(_))));
    let mut seen = Vec::new();
    within("the subscription to end with the final state", async {
        while let Some(Message::Event(e)) = events.recv().await {
            let last = matches!(e.body, EventBody::State { state, .. } if state.is_terminal());
            seen.push(e.body);
            if last {
                return;
            }
        }
    })
    .await;
    let skipped = seen
        .iter()
        .position(|b| matches!(b, EventBody::Skipped { missed: 1 }));
    let small_log = seen
        .iter()
        .position(|b| matches!(b, EventBody::Log { data, .. } if data.as_ref() == b"small\n"));
    assert!(
        skipped.is_some() && small_log.is_some() && skipped < small_log,
        "a marker for the oversized chunk, then the small one: {seen:?}"
    );
}

/// §5: an agent report with a non-zero correlation id is answered: Ack
/// when applied, RequestFailed when refused. With id 0 nothing answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_reports_with_a_correlation_id_are_answered() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let (mut agent, _) = server.agent("reporter", &["x"], 1).await;
    let id = submit(&client, job("reported", "x", 0)).await;
    let assign = next_assign(&mut agent).await;
    let sender = agent.sender();
    let ack = AssignAck {
        job_id: id,
        attempt: assign.attempt,
        accepted: true,
        reason: String::new(),
    };
    assert!(matches!(sender.request(ack).await, Ok(Message::Ack(_))));
    let started = JobStarted {
        job_id: id,
        attempt: assign.attempt,
    };
    assert!(matches!(sender.request(started).await, Ok(Message::Ack(_))));
    let step = StepResult {
        job_id: id,
        attempt: assign.attempt,
        step: 0,
        outcome: StepOutcome::Succeeded,
        exit_code: None,
        duration_ms: 0,
    };
    assert!(matches!(sender.request(step).await, Ok(Message::Ack(_))));
    let stale = JobStarted {
        job_id: id,
        attempt: assign.attempt + 7,
    };
    let (code, message) = failed(sender.request(stale).await);
    assert_eq!(code, ErrorCode::STALE_ATTEMPT, "{message}");
}

/// §8 JobResult: the result carries every step's report, so a step whose
/// StepResult was never sent (the last one, as the reference agent does)
/// is known from the result alone; a step reported both ways counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_result_carries_the_steps_that_sent_no_step_result() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let (mut agent, _) = server.agent("summaries", &["x"], 1).await;
    let mut spec = job("three-steps", "x", 0);
    spec.steps = vec![
        StepSpec::shell("make"),
        StepSpec::shell("make test"),
        StepSpec::shell("make docs"),
    ];
    let id = submit(&client, spec).await;
    let assign = next_assign(&mut agent).await;
    accept(&agent, &assign).await;
    let sender = agent.sender();
    let first = StepResult {
        job_id: id,
        attempt: assign.attempt,
        step: 0,
        outcome: StepOutcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 12,
    };
    let steps = vec![
        first.summary(),
        StepSummary {
            step: 1,
            outcome: StepOutcome::Failed,
            exit_code: Some(3),
            duration_ms: 40,
        },
        StepSummary {
            step: 2,
            outcome: StepOutcome::Skipped,
            exit_code: None,
            duration_ms: 0,
        },
    ];
    sender.send(first).await.unwrap();
    let result = JobResult {
        job_id: id,
        attempt: assign.attempt,
        outcome: JobOutcome::Failed,
        exit_code: Some(3),
        duration_ms: 52,
        message: "step `make test` exited with code 3".into(),
        log_chunks: 0,
        steps,
    };
    assert!(matches!(sender.request(result).await, Ok(Message::Ack(_))));
    let answer = within("JobDetails", client.sender().request(GetJob { job_id: id })).await;
    let Ok(Message::JobDetails(details)) = answer else {
        panic!("GetJob answered with {answer:?}");
    };
    assert_eq!(details.job.state, JobState::Failed);
    let reported: Vec<(Option<StepOutcome>, Option<i32>, Option<u64>)> = details
        .steps
        .iter()
        .map(|s| (s.outcome, s.exit_code, s.duration_ms))
        .collect();
    assert_eq!(
        reported,
        [
            (Some(StepOutcome::Succeeded), Some(0), Some(12)),
            (Some(StepOutcome::Failed), Some(3), Some(40)),
            (Some(StepOutcome::Skipped), None, Some(0)),
        ]
    );
}

/// §6.1 and §7: a name belongs to one connected agent. Another agent is
/// refused (CONFLICT) instead of silently taking the record and credential;
/// a refused registration (also `slots = 0`) is a RequestFailed and the
/// connection stays open; the runner's own credential may replace its old
/// connection, keeping its id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_runners_name_cannot_be_taken_over() {
    let server = start(CoreConfig::default()).await;
    let (mut first, registered) = server.agent("dup", &[], 1).await;
    let second = server.agent_session().await;
    let (code, message) = failed(second.sender().request(register("dup", &[], 1)).await);
    assert_eq!(code, ErrorCode::CONFLICT, "{message}");
    assert!(message.contains("in use"), "{message}");
    let (code, message) = failed(second.sender().request(register("zero", &[], 0)).await);
    assert_eq!(code, ErrorCode::INVALID_REQUEST, "{message}");
    assert!(message.contains("slots"), "{message}");
    // Same connection, a valid registration now.
    let answer = second.sender().request(register("other", &[], 1)).await;
    assert!(matches!(answer, Ok(Message::RunnerRegistered(_))), "{answer:?}");
    // The first agent was not disturbed: it still answers.
    assert!(!first.sender().is_closed());

    // The same runner reconnecting with its credential replaces its old
    // connection and keeps its id.
    let again = server
        .connect(Role::Agent, &registered.credential)
        .await
        .expect("the credential is accepted");
    let answer = within(
        "RunnerRegistered",
        again.sender().request(register("dup", &[], 1)),
    )
    .await;
    match answer {
        Ok(Message::RunnerRegistered(r)) => assert_eq!(r.runner_id, registered.runner_id),
        other => panic!("{other:?}"),
    }
    within("the replaced connection to close", async {
        while first.recv().await.is_some() {}
    })
    .await;
}

/// §6.1: a Heartbeat before RegisterRunner is ignored (it used to close
/// the connection); registration then works.
#[tokio::test]
async fn a_heartbeat_before_registering_is_ignored() {
    let server = start(CoreConfig::default()).await;
    let agent = server.agent_session().await;
    agent.sender().send(Heartbeat { running: 0 }).await.unwrap();
    let answer = within(
        "RunnerRegistered",
        agent.sender().request(register("early", &[], 1)),
    )
    .await;
    assert!(matches!(answer, Ok(Message::RunnerRegistered(_))), "{answer:?}");
}

/// §6.2: a registered agent's correlated Heartbeat is answered with Ack
/// (its sign of the server's life); one with correlation 0 is not.
#[tokio::test]
async fn a_correlated_heartbeat_is_answered_with_ack() {
    let server = start(CoreConfig::default()).await;
    let agent = server.agent_session().await;
    let registered = within(
        "RunnerRegistered",
        agent.sender().request(register("beat", &[], 1)),
    )
    .await;
    assert!(
        matches!(registered, Ok(Message::RunnerRegistered(_))),
        "{registered:?}"
    );
    agent.sender().send(Heartbeat { running: 0 }).await.unwrap();
    let answer = within("Ack", agent.sender().request(Heartbeat { running: 1 })).await;
    assert!(matches!(answer, Ok(Message::Ack(_))), "{answer:?}");
}

/// §10: a Subscribe for every job with replay sends the current state of
/// each unfinished job, then `replay_done` (it never did), then live events.
#[tokio::test]
async fn subscribing_to_all_jobs_with_replay_ends_with_replay_done() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    let a = submit(&client, job("a", "nowhere", 0)).await;
    let b = submit(&client, job("b", "nowhere", 0)).await;
    let mut events = client
        .sender()
        .stream(
            Subscribe {
                job_id: None,
                logs: false,
                replay: true,
            },
            64,
        )
        .await
        .unwrap();
    let mut replayed = Vec::new();
    within("replay_done", async {
        while let Some(Message::Event(e)) = events.recv().await {
            match e.body {
                EventBody::ReplayDone => return,
                EventBody::State { state, .. } => replayed.push((e.job_id, state)),
                other => panic!("{other:?}"),
            }
        }
        panic!("the subscription ended before replay_done");
    })
    .await;
    assert_eq!(replayed, [(a, JobState::Queued), (b, JobState::Queued)]);
    // Live events follow.
    let c = submit(&client, job("c", "nowhere", 0)).await;
    let live = within("a live event", events.recv()).await;
    assert!(
        matches!(live, Some(Message::Event(ref e)) if e.job_id == c),
        "{live:?}"
    );
}

/// §5: a request with correlation id 0 can never be answered; it ends the
/// connection (PROTOCOL_ERROR) and is not executed (it used to be executed
/// with its reply dropped).
#[tokio::test]
async fn a_request_with_correlation_id_zero_is_refused_and_not_executed() {
    let server = start(CoreConfig::default()).await;
    let mut rogue = server.client().await;
    rogue
        .sender()
        .send(SubmitJob {
            spec: job("uncorrelated", "nowhere", 0),
        })
        .await
        .unwrap();
    within("the connection to close", async {
        while rogue.recv().await.is_some() {}
    })
    .await;
    match rogue.sender().close_reason() {
        Some(Err(ConnectionError::ClosedByPeer { code, reason })) => {
            assert_eq!(code, ErrorCode::PROTOCOL_ERROR, "{reason}");
            assert!(reason.contains("correlation id 0"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    let client = server.client().await;
    match client.sender().request(ListJobs { limit: 0 }).await {
        Ok(Message::JobList(l)) => assert!(l.jobs.is_empty(), "{:?}", l.jobs),
        other => panic!("{other:?}"),
    }
}

/// §8: `limit = 0` asks for the default: 100 jobs.
#[tokio::test]
async fn list_limit_zero_means_the_default_of_100() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    for i in 0..101 {
        submit(&client, job(&format!("j{i}"), "nowhere", 0)).await;
    }
    match client.sender().request(ListJobs { limit: 0 }).await {
        Ok(Message::JobList(l)) => assert_eq!(l.jobs.len(), 100),
        other => panic!("{other:?}"),
    }
}
