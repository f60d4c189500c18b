//! spec §4: a transfer on the bulk lane never holds up the control lane.
//! An agent queues a 128 MiB upload and a log flood, then asks a question
//! on the control lane: the answer comes back while most of the upload is
//! still unacknowledged. Ordering, not timing, is asserted.

mod support;

use bytes::Bytes;
use support::{raw_agent, within, Harness};
use valkyrie::message::{ArtifactChunk, AssignAck, JobSpec, ListArtifacts, LogChunk, Message, OutputStream};

/// Chunks of the upload (512 KiB each: 128 MiB in all).
const CHUNKS: u64 = 256;
const CHUNK_BYTES: usize = 512 << 10;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_request_overtakes_a_queued_upload_and_log_flood() {
    let h = Harness::new();
    let socket = h.path().join("lanes.sock");
    let server = h
        .server()
        .listen(&[&format!("unix://{}", socket.display())])
        .start();
    let mut session = raw_agent(&server, "lanes", &["lanes"], &[]).await;
    let sender = session.sender();
    // Only the runner holding an attempt may upload: take one.
    let client = server.client().await;
    let mut spec = JobSpec::shell("upload", "true");
    spec.tags = vec!["lanes".into()];
    client.submit(spec).await.expect("submit");
    let assign = loop {
        match within("an Assign", session.recv())
            .await
            .expect("session open")
            .message
        {
            Message::Assign(a) => break a,
            _ => continue,
        }
    };
    sender
        .send(AssignAck {
            job_id: assign.job_id,
            attempt: assign.attempt,
            accepted: true,
            reason: String::new(),
        })
        .await
        .unwrap();
    let (job_id, attempt) = (assign.job_id, assign.attempt);
    // Keep reading (and dropping) what the server sends.
    tokio::spawn(async move { while session.recv().await.is_some() {} });
    let data = Bytes::from(vec![7u8; CHUNK_BYTES]);

    // The upload: every chunk a request, all queued at once in order (no
    // window); a second task awaits their answers in order.
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel();
    let (pending_tx, mut pending_rx) = tokio::sync::mpsc::unbounded_channel();
    let upload = {
        let sender = sender.clone();
        tokio::spawn(async move {
            for i in 0..CHUNKS {
                let chunk = ArtifactChunk {
                    job_id,
                    attempt,
                    name: "big.tar".into(),
                    offset: i * CHUNK_BYTES as u64,
                    data: data.clone(),
                };
                let pending = sender.request_queued(chunk).await.expect("queued");
                let _ = pending_tx.send(pending);
            }
        })
    };
    let answers = tokio::spawn(async move {
        let mut answers = Vec::new();
        while let Some(pending) = pending_rx.recv().await {
            answers.push(pending.answer().await);
            let _ = acked_tx.send(());
        }
        answers
    });
    // A log flood on the same lane.
    let flood = {
        let sender = sender.clone();
        tokio::spawn(async move {
            for seq in 0..2000u64 {
                let line = LogChunk {
                    job_id,
                    attempt,
                    seq,
                    stream: OutputStream::Stdout,
                    data: Bytes::from_static(&[b'x'; 4096]),
                };
                if sender.send(line).await.is_err() {
                    return;
                }
            }
        })
    };
    // Wait until the bulk lane is busy: the first chunk is acknowledged.
    within("the first chunk's Ack", acked_rx.recv()).await;

    let answer = within(
        "the control-lane answer",
        sender.request(ListArtifacts { job_id }),
    )
    .await;
    assert!(matches!(answer, Ok(Message::ArtifactList(_))), "{answer:?}");
    let mut acked_before = 1;
    while acked_rx.try_recv().is_ok() {
        acked_before += 1;
    }
    assert!(
        acked_before < CHUNKS / 2,
        "the control answer came after {acked_before} of {CHUNKS} upload chunks were acknowledged"
    );

    // The upload itself completes, every chunk acknowledged.
    within("the upload to be queued", upload).await.unwrap();
    let answers = tokio::time::timeout(std::time::Duration::from_secs(300), answers)
        .await
        .expect("every chunk answered within 300 s")
        .unwrap();
    assert_eq!(answers.len(), CHUNKS as usize);
    for (i, answer) in answers.iter().enumerate() {
        assert!(matches!(answer, Ok(Message::Ack(_))), "chunk {i}: {answer:?}");
    }
    within("the log flood to be sent", flood).await.unwrap();
}
