//! Byte-level misbehaviour and bursts over real sockets on every transport:
//! an oversized frame, garbage before Hello, many frames in one write.

mod support;

use bytes::Bytes;
use support::{hello, hello_frame, within, Fixture, RawConn, ALL};
use valkyrie::frame::{encode_to_vec, Flags, HEADER_LEN};
use valkyrie::message::{Heartbeat, LogChunk, Message, OutputStream};
use valkyrie::transport::{connect, Listener};
use valkyrie::{ConnectionConfig, ErrorCode};

/// Reads until the server's Close, asserts its code, then asserts EOF.
async fn expect_close_then_eof(raw: &mut RawConn, codes: &[ErrorCode], what: &str) -> String {
    let close = match raw.message().await {
        Some(Message::Close(close)) => close,
        other => panic!("{what}: expected a Close frame, got {other:?}"),
    };
    assert!(
        codes.contains(&close.code),
        "{what}: Close {} ({})",
        close.code,
        close.reason
    );
    assert!(
        raw.frame().await.is_none(),
        "{what}: nothing may follow the Close"
    );
    close.reason
}

/// The listener still serves a well-behaved client.
async fn still_serves(listener: &mut Listener, fx: &Fixture, what: &str) {
    let client = within(
        "connect",
        connect(
            listener.local_endpoint(),
            hello("ok"),
            &fx.client_options(ConnectionConfig::default()),
        ),
    )
    .await
    .unwrap_or_else(|e| panic!("{what}: the listener stopped serving: {e}"));
    let session = within("accept", listener.accept()).await.expect("session");
    assert_eq!(session.hello().unwrap().token, "ok");
    drop(client);
}

#[tokio::test]
async fn oversized_frame_is_refused_with_frame_too_large() {
    let fx = Fixture::new();
    for t in ALL {
        let what = format!("{t:?}");
        let mut listener = fx
            .bind(
                t,
                fx.listener_options(ConnectionConfig::default().max_frame_bytes(4096)),
            )
            .await;
        let mut raw = fx.raw(&listener, &hello_frame("raw", 1000)).await;
        match raw.message().await {
            Some(Message::Welcome(w)) => assert_eq!(w.max_frame_bytes, 4096, "{what}"),
            other => panic!("{what}: expected Welcome, got {other:?}"),
        }
        let _session = within("accept", listener.accept()).await.expect("session");
        // A LogChunk header declaring 64 KiB, over the server's 4 KiB, and the
        // start of its payload: the server must not wait for the rest.
        let chunk = Message::LogChunk(LogChunk {
            job_id: 1,
            attempt: 1,
            seq: 0,
            stream: OutputStream::Stdout,
            data: Bytes::from(vec![b'a'; 64 * 1024]),
        });
        let bytes = encode_to_vec(&chunk, 0, Flags::NONE);
        raw.write(&bytes[..HEADER_LEN + 100]).await;
        let reason = expect_close_then_eof(&mut raw, &[ErrorCode::FRAME_TOO_LARGE], &what).await;
        assert!(reason.contains("4096"), "{what}: {reason}");
        still_serves(&mut listener, &fx, &what).await;
    }
}

#[tokio::test]
async fn garbage_before_hello_is_refused_and_others_are_served() {
    let fx = Fixture::new();
    for t in ALL {
        let what = format!("{t:?}");
        let mut listener = fx.bind(t, fx.listener_options(ConnectionConfig::default())).await;
        // Not a frame at all: the version byte is wrong.
        let mut raw = fx.raw(&listener, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        expect_close_then_eof(
            &mut raw,
            &[
                ErrorCode::PROTOCOL_ERROR,
                ErrorCode::UNEXPECTED_MESSAGE,
                ErrorCode::UNSUPPORTED_VERSION,
            ],
            &what,
        )
        .await;
        // Well-formed header, garbage payload where a Hello must be.
        let mut frame = hello_frame("x", 100);
        let n = frame.len();
        frame[HEADER_LEN..n].fill(0xff);
        let mut raw = fx.raw(&listener, &frame).await;
        expect_close_then_eof(&mut raw, &[ErrorCode::PROTOCOL_ERROR], &what).await;
        // A valid frame, but not a Hello.
        let beat = encode_to_vec(&Message::Heartbeat(Heartbeat { running: 0 }), 0, Flags::NONE);
        let mut raw = fx.raw(&listener, &beat).await;
        expect_close_then_eof(&mut raw, &[ErrorCode::UNEXPECTED_MESSAGE], &what).await;
        still_serves(&mut listener, &fx, &what).await;
    }
}

#[tokio::test]
async fn many_small_messages_arrive_complete_and_in_order() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, client, mut server) = fx.connected(t, "x").await;
        let sender = client.sender();
        let send = tokio::spawn(async move {
            for running in 0..1000u32 {
                sender.send(Heartbeat { running }).await.unwrap();
            }
            sender
        });
        for expected in 0..1000u32 {
            match within("a heartbeat", server.recv()).await.map(|m| m.message) {
                Some(Message::Heartbeat(Heartbeat { running })) => assert_eq!(running, expected, "{t:?}"),
                other => panic!("{t:?}: expected Heartbeat {expected}, got {other:?}"),
            }
        }
        within("sender", send).await.unwrap();
    }
}

#[tokio::test]
async fn many_frames_are_coalesced_into_few_writes() {
    // Stream transports: 1000 frames queued at once leave in far fewer writes
    // than frames. A raw reader counts how many reads it takes to get them.
    let fx = Fixture::new();
    for t in [support::Transport::Unix, support::Transport::Tcp] {
        let mut listener = fx.bind(t, fx.listener_options(ConnectionConfig::default())).await;
        let mut raw = fx.raw(&listener, &hello_frame("raw", 1000)).await;
        assert!(matches!(raw.message().await, Some(Message::Welcome(_))));
        let server = within("accept", listener.accept()).await.unwrap();
        let sender = server.sender();
        // Queue everything before the driver gets to run (current-thread
        // runtime: try_reply does not yield).
        for running in 0..200u32 {
            sender.try_reply(0, Heartbeat { running }).unwrap();
        }
        let frame_len = encode_to_vec(&Message::Heartbeat(Heartbeat { running: 0 }), 0, Flags::NONE).len();
        let mut got = 0u32;
        while got < 200 {
            match raw.message().await {
                Some(Message::Heartbeat(Heartbeat { running })) => {
                    assert_eq!(running, got, "{t:?}");
                    got += 1;
                }
                other => panic!("{t:?}: {other:?}"),
            }
        }
        let reads = raw.reads();
        assert!(
            reads < 20,
            "{t:?}: 200 frames of {frame_len} bytes took {reads} reads; frames are not coalesced"
        );
        drop(server);
    }
}
