//! Lane priority over real sockets: a bulk flood queued in front of a control
//! message does not delay it. Checked by order of arrival, not by time.

mod support;

use bytes::Bytes;
use support::{within, Fixture, ALL};
use valkyrie::error::SendError;
use valkyrie::message::{Heartbeat, LogChunk, Message, OutputStream};
use valkyrie::Lane;

const CHUNKS: u64 = 3000;
const CHUNK_BYTES: usize = 16 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_flood_does_not_delay_a_control_message() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, mut client, server) = fx.connected(t, "x").await;
        let sender = server.sender();
        let (backed_up_tx, backed_up) = tokio::sync::oneshot::channel();
        // The flood: 3000 x 16 KiB on the bulk lane. The client reads nothing
        // yet, so the pipeline fills; a QueueFull past the halfway mark says
        // it has.
        let flood = tokio::spawn(async move {
            let mut backed_up_tx = Some(backed_up_tx);
            let data = Bytes::from(vec![b'l'; CHUNK_BYTES]);
            for seq in 0..CHUNKS {
                let chunk = LogChunk {
                    job_id: 1,
                    attempt: 1,
                    seq,
                    stream: OutputStream::Stdout,
                    data: data.clone(),
                };
                match sender.try_reply(0, chunk.clone()) {
                    Ok(()) => {}
                    Err(SendError::QueueFull(Lane::Bulk)) => {
                        // Past the halfway mark, a full queue means the whole
                        // pipeline (client, sockets, server queues) is full.
                        if seq >= CHUNKS / 2 {
                            if let Some(tx) = backed_up_tx.take() {
                                let _ = tx.send(seq);
                            }
                        }
                        sender.send(chunk).await.unwrap();
                    }
                    Err(e) => panic!("flood: {e}"),
                }
            }
        });
        let stuck_at = within("the flood to back up", backed_up)
            .await
            .expect("flood backed up");
        assert!(
            stuck_at < CHUNKS - 1,
            "{t:?}: the pipeline absorbed the whole flood"
        );
        // Chunks from `stuck_at` on are still on the server. Now the control
        // message (Heartbeat travels on the control lane).
        server.sender().send(Heartbeat { running: 77 }).await.unwrap();

        let mut seen_chunks = 0u64;
        let mut control_after = None;
        while seen_chunks < CHUNKS {
            match within("flood and control message", client.recv())
                .await
                .map(|m| m.message)
            {
                Some(Message::LogChunk(c)) => {
                    assert_eq!(c.seq, seen_chunks, "{t:?}: bulk frames stay in order");
                    seen_chunks += 1;
                }
                Some(Message::Heartbeat(Heartbeat { running: 77 })) => control_after = Some(seen_chunks),
                other => panic!("{t:?}: unexpected {other:?}"),
            }
        }
        let control_after = control_after
            .unwrap_or_else(|| panic!("{t:?}: control message never arrived before the last chunk"));
        // It even overtook bulk frames the server had queued before it.
        assert!(
            control_after < stuck_at,
            "{t:?}: control message arrived after chunk {control_after}, behind all {stuck_at} queued before it"
        );
        eprintln!("{t:?}: flood backed up at chunk {stuck_at}; control message overtook it after chunk {control_after} of {CHUNKS}");
        within("flood task", flood).await.unwrap();
        drop(client);
    }
}

/// A request keeps its place on its own lane: a JobResult (a dispatch-lane
/// request) sent after StepResults arrives after them. It used to go
/// through the control lane's queue, which the writer serves first, so it
/// overtook the reports queued before it and the server refused those as
/// stale. On one thread the writer runs only once both queues hold frames,
/// so the old order shows every time.
#[tokio::test(flavor = "current_thread")]
async fn a_request_keeps_its_place_behind_earlier_frames_of_its_lane() {
    use valkyrie::message::{Ack, JobOutcome, JobResult, StepOutcome, StepResult};
    const STEPS: u32 = 50;
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, client, mut server) = fx.connected(t, "x").await;
        let sender = client.sender();
        for step in 0..STEPS {
            let report = StepResult {
                job_id: 1,
                attempt: 1,
                step,
                outcome: StepOutcome::Succeeded,
                exit_code: Some(0),
                duration_ms: 1,
            };
            sender.send(report).await.unwrap();
        }
        let result = JobResult {
            job_id: 1,
            attempt: 1,
            outcome: JobOutcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 1,
            message: String::new(),
            log_chunks: 0,
            steps: Vec::new(),
        };
        let request = sender.request(result);
        tokio::pin!(request);
        // Queue the request without yielding to the connection's driver.
        tokio::select! {
            biased;
            answer = &mut request => panic!("{t:?}: answered before it was sent: {answer:?}"),
            () = std::future::ready(()) => {}
        }
        let serve = async {
            let mut steps = 0;
            loop {
                let incoming = server.recv().await.expect("client connected");
                match incoming.message {
                    Message::StepResult(s) => {
                        assert_eq!(s.step, steps, "{t:?}: step results stay in order");
                        steps += 1;
                    }
                    Message::JobResult(_) => {
                        assert_eq!(steps, STEPS, "{t:?}: the JobResult overtook step results");
                        server.sender().reply(incoming.correlation, Ack {}).await.unwrap();
                        return;
                    }
                    other => panic!("{t:?}: unexpected {other:?}"),
                }
            }
        };
        let (answer, ()) = within("the exchange", async { tokio::join!(&mut request, serve) }).await;
        assert!(matches!(answer, Ok(Message::Ack(_))), "{t:?}: {answer:?}");
    }
}
