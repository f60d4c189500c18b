//! A subscriber that falls behind may miss intermediate events, but never a
//! terminal state: after its `Skipped` marker it gets the current state of
//! every job whose state events it missed (issue 9).

mod protocol_support;

use std::collections::{BTreeMap, BTreeSet};

use protocol_support::{job, start, submit, within};
use tokio::sync::mpsc;
use valkyrie::message::{AssignAck, EventBody, JobOutcome, JobResult, JobState, ListJobs, Message};
use valkyrie_control_plane::core::Command;
use valkyrie_control_plane::responder::EventSink;
use valkyrie_control_plane::CoreConfig;

const JOBS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_gets_every_terminal_state() {
    let server = start(CoreConfig::default()).await;
    let client = server.client().await;
    // A subscriber with room for 16 events that reads nothing until every
    // job has finished: most of the ~800 events cannot reach it in time.
    let (tx, mut rx) = mpsc::channel(16);
    let subscribe = Command::Subscribe {
        job: None,
        logs: false,
        replay: false,
        sink: EventSink::Channel(tx),
        resume_from: None,
    };
    assert!(server.core.send(subscribe).await);

    // An agent that takes and finishes every job at once.
    let (mut agent, _) = server.agent("fast", &["x"], 8).await;
    let sender = agent.sender();
    tokio::spawn(async move {
        while let Some(incoming) = agent.recv().await {
            let Message::Assign(assign) = incoming.message else {
                continue;
            };
            let ack = AssignAck {
                job_id: assign.job_id,
                attempt: assign.attempt,
                accepted: true,
                reason: String::new(),
            };
            let sender = sender.clone();
            tokio::spawn(async move {
                let _ = sender.send(ack).await;
                let result = JobResult {
                    job_id: assign.job_id,
                    attempt: assign.attempt,
                    outcome: JobOutcome::Succeeded,
                    exit_code: Some(0),
                    duration_ms: 1,
                    message: String::new(),
                    log_chunks: 0,
                    steps: Vec::new(),
                };
                let _ = sender.request(result).await;
            });
        }
    });
    let mut ids = BTreeSet::new();
    for i in 0..JOBS {
        ids.insert(submit(&client, job(&format!("j{i}"), "x", 0)).await);
    }
    within("every job to finish", async {
        loop {
            if let Ok(Message::JobList(l)) = client.sender().request(ListJobs { limit: JOBS as u32 }).await {
                if l.jobs.len() == JOBS && l.jobs.iter().all(|j| j.state == JobState::Succeeded) {
                    return;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await;

    // Now read: the last state seen of every job must be its final one.
    let mut last: BTreeMap<u64, JobState> = BTreeMap::new();
    let mut skipped = 0;
    within("a terminal state for every job", async {
        while last.len() < JOBS || last.values().any(|s| !s.is_terminal()) {
            let event = rx.recv().await.expect("the subscription stays open");
            match event.body {
                EventBody::State { state, .. } => {
                    last.insert(event.job_id, state);
                }
                EventBody::Skipped { missed } => skipped += missed,
                _ => {}
            }
        }
    })
    .await;
    assert!(
        skipped > 0,
        "the subscriber never fell behind: the test proves nothing"
    );
    assert_eq!(last.keys().copied().collect::<BTreeSet<_>>(), ids);
    assert!(
        last.values().all(|s| *s == JobState::Succeeded),
        "{:?}",
        last.iter()
            .filter(|(_, s)| **s != JobState::Succeeded)
            .collect::<Vec<_>>()
    );
}
