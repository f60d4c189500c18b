//! The sans-I/O connection state machine, two endpoints against each other on
//! a virtual clock: a base `Instant` plus offsets the test controls. Bytes are
//! shuttled by hand with `poll_transmit` / `handle_bytes`.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use valkyrie::connection::{Connection, ConnectionConfig, Event};
use valkyrie::error::{ConnectionError, DecodeError, SendError};
use valkyrie::frame::{encode_to_vec, ErrorCode, Flags, FrameDecoder, Lane, HEADER_LEN};
use valkyrie::message::{GetJob, Hello, LogChunk, Message, OutputStream, Ping, Redirect, Role};

/// A clock that only moves when the test says so.
struct Clock(Instant);

impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

fn hello(token: &str) -> Hello {
    valkyrie::transport::hello(Role::Client, token, "connection-state-test")
}

fn config() -> ConnectionConfig {
    ConnectionConfig::default()
        .heartbeat_interval(Duration::from_millis(100))
        .idle_timeout(Duration::from_millis(300))
        .handshake_timeout(Duration::from_millis(500))
}

/// Moves every queued byte from `from` to `to`; returns how many bytes moved.
fn pump(from: &mut Connection, to: &mut Connection, now: Instant) -> usize {
    let mut out = BytesMut::new();
    while from.has_pending_output() {
        from.poll_transmit(&mut out, usize::MAX);
    }
    to.handle_bytes(0, &out, now);
    out.len()
}

/// Shuttles bytes both ways until neither side has anything to say.
fn settle(a: &mut Connection, b: &mut Connection, now: Instant) {
    while pump(a, b, now) + pump(b, a, now) > 0 {}
}

fn events(conn: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| conn.poll_event()).collect()
}

/// Decodes whatever frames `conn` has queued (with no limit worth hitting).
fn drain_frames(conn: &mut Connection, max_bytes: usize) -> Vec<Message> {
    let mut out = BytesMut::new();
    conn.poll_transmit(&mut out, max_bytes);
    let mut decoder = FrameDecoder::new(u32::MAX);
    decoder.extend(&out);
    std::iter::from_fn(|| decoder.next_frame().unwrap())
        .map(|f| f.message().unwrap())
        .collect()
}

/// A client and a server with the handshake done, at time 0.
fn established(clock: &Clock) -> (Connection, Connection) {
    let now = clock.at(0);
    let mut client = Connection::client(config(), hello("good"), 1, now);
    let mut server = Connection::server(config(), 1, now);
    pump(&mut client, &mut server, now);
    match events(&mut server).as_slice() {
        [Event::HelloReceived(h)] => assert_eq!(h.token, "good"),
        other => panic!("expected HelloReceived, got {other:?}"),
    }
    server.accept("srv-1", now);
    pump(&mut server, &mut client, now);
    match events(&mut client).as_slice() {
        [Event::Established(w)] => assert_eq!(w.server_id, "srv-1"),
        other => panic!("expected Established, got {other:?}"),
    }
    assert!(client.is_open() && server.is_open());
    (client, server)
}

fn closed_with(conn: &mut Connection) -> ConnectionError {
    let evs = events(conn);
    match evs.last() {
        Some(Event::Closed(Err(err))) => err.clone(),
        other => panic!("expected Closed(Err), got {other:?} (all: {evs:?})"),
    }
}

fn log_chunk(seq: u64, len: usize) -> Message {
    Message::LogChunk(LogChunk {
        job_id: 7,
        attempt: 1,
        seq,
        stream: OutputStream::Stdout,
        data: Bytes::from(vec![b'x'; len]),
    })
}

#[test]
fn handshake_completes() {
    let clock = Clock(Instant::now());
    let (client, server) = established(&clock);
    assert_eq!(client.peer_max_frame_bytes(), server.peer_max_frame_bytes());
}

#[test]
fn request_and_response_flow() {
    let clock = Clock(Instant::now());
    let (mut client, mut server) = established(&clock);
    let now = clock.at(10);
    client
        .send(5, Flags::NONE, &Message::GetJob(GetJob { job_id: 42 }))
        .unwrap();
    pump(&mut client, &mut server, now);
    match events(&mut server).as_slice() {
        [Event::Message {
            correlation: 5,
            flags,
            message: Message::GetJob(GetJob { job_id: 42 }),
        }] => assert!(!flags.contains(Flags::REPLY)),
        other => panic!("expected GetJob, got {other:?}"),
    }
    server
        .send(5, Flags::REPLY, &Message::Ack(valkyrie::message::Ack {}))
        .unwrap();
    pump(&mut server, &mut client, now);
    match events(&mut client).as_slice() {
        [Event::Message {
            correlation: 5,
            flags,
            message: Message::Ack(_),
        }] => assert!(flags.contains(Flags::REPLY)),
        other => panic!("expected Ack reply, got {other:?}"),
    }
}

#[test]
fn refused_hello_reaches_the_client_with_code_and_reason() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut client = Connection::client(config(), hello("wrong"), 1, now);
    let mut server = Connection::server(config(), 1, now);
    pump(&mut client, &mut server, now);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::HelloReceived(_)]
    ));
    server.refuse(ErrorCode::UNAUTHENTICATED, "bad token");
    pump(&mut server, &mut client, now);
    assert!(server.is_drained());
    assert_eq!(
        closed_with(&mut client),
        ConnectionError::ClosedByPeer {
            code: ErrorCode::UNAUTHENTICATED,
            reason: "bad token".into()
        }
    );
    assert!(client.is_closed());
}

#[test]
fn a_standby_answers_hello_with_redirect_and_closes() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut client = Connection::client(config(), hello("good"), 1, now);
    let mut server = Connection::server(config(), 1, now);
    pump(&mut client, &mut server, now);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::HelloReceived(_)]
    ));
    let redirect = Redirect {
        leader: "cp-b".into(),
        epoch: 4,
        uris: vec!["tcp://cp-b:7700".into()],
    };
    server.redirect(redirect.clone());
    // A Redirect is the server's last frame: nothing queued after it leaves.
    assert!(server
        .send(1, Flags::NONE, &Message::Ping(Ping { nonce: 1 }))
        .is_err());
    assert_eq!(
        drain_frames(&mut server, usize::MAX),
        [Message::Redirect(redirect.clone())]
    );
    assert!(server.is_drained());
    assert!(matches!(events(&mut server).as_slice(), [Event::Closed(Ok(()))]));
    client.handle_bytes(
        0,
        &encode_to_vec(&Message::Redirect(redirect.clone()), 0, Flags::NONE),
        now,
    );
    assert_eq!(
        closed_with(&mut client),
        ConnectionError::Redirected(redirect.clone())
    );
    assert!(client.is_closed());

    // After the handshake a Redirect is out of place.
    let (mut client, _server) = established(&clock);
    client.handle_bytes(
        0,
        &encode_to_vec(&Message::Redirect(redirect), 0, Flags::NONE),
        now,
    );
    assert!(matches!(
        closed_with(&mut client),
        ConnectionError::UnexpectedMessage { .. }
    ));
}

#[test]
fn server_refuses_anything_but_hello_first() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut server = Connection::server(config(), 1, now);
    server.handle_bytes(
        0,
        &encode_to_vec(&Message::Ping(Ping { nonce: 1 }), 0, Flags::NONE),
        now,
    );
    let err = closed_with(&mut server);
    assert_eq!(err.code(), ErrorCode::UNEXPECTED_MESSAGE, "{err}");
    match drain_frames(&mut server, usize::MAX).as_slice() {
        [Message::Close(c)] => assert_eq!(c.code, ErrorCode::UNEXPECTED_MESSAGE),
        other => panic!("expected one Close, got {other:?}"),
    }
    assert!(server.is_drained());
}

#[test]
fn frames_pipelined_behind_hello_wait_for_the_verdict() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut server = Connection::server(config(), 1, now);
    let mut bytes = encode_to_vec(&Message::Hello(hello_with_limits()), 0, Flags::NONE);
    bytes.extend(encode_to_vec(
        &Message::GetJob(GetJob { job_id: 1 }),
        3,
        Flags::NONE,
    ));
    server.handle_bytes(0, &bytes, now);
    // Only the Hello is judged before the application decides.
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::HelloReceived(_)]
    ));
    server.accept("srv", now);
    assert!(matches!(
        events(&mut server).as_slice(),
        [Event::Message {
            correlation: 3,
            message: Message::GetJob(_),
            ..
        }]
    ));
}

fn hello_with_limits() -> Hello {
    let mut h = hello("good");
    h.max_frame_bytes = 1 << 20;
    h.heartbeat_interval_ms = 100;
    h
}

#[test]
fn unknown_version_hello_is_refused_with_unsupported_version() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut server = Connection::server(config(), 1, now);
    let mut h = hello_with_limits();
    h.min_version = 7;
    h.max_version = 9;
    server.handle_bytes(0, &encode_to_vec(&Message::Hello(h), 0, Flags::NONE), now);
    let err = closed_with(&mut server);
    assert_eq!(err.code(), ErrorCode::UNSUPPORTED_VERSION, "{err}");
    match drain_frames(&mut server, usize::MAX).as_slice() {
        [Message::Close(c)] => {
            assert_eq!(c.code, ErrorCode::UNSUPPORTED_VERSION);
            assert!(c.reason.contains("7..=9"), "{}", c.reason);
        }
        other => panic!("expected one Close, got {other:?}"),
    }
}

#[test]
fn handshake_timeout_closes_both_sides() {
    let clock = Clock(Instant::now());
    let mut server = Connection::server(config(), 1, clock.at(0));
    let mut client = Connection::client(config(), hello("x"), 1, clock.at(0));
    // Nothing is shuttled: neither side hears from the other.
    let deadline = server.poll_timeout().expect("a handshake deadline");
    assert_eq!(deadline, clock.at(500));
    server.handle_timeout(clock.at(499));
    assert!(!server.is_closed());
    server.handle_timeout(deadline);
    assert_eq!(closed_with(&mut server), ConnectionError::HandshakeTimeout);
    match drain_frames(&mut server, usize::MAX).as_slice() {
        [Message::Close(c)] => assert_eq!(c.code, ErrorCode::HANDSHAKE_TIMEOUT),
        other => panic!("expected one Close, got {other:?}"),
    }
    client.handle_timeout(client.poll_timeout().unwrap());
    assert_eq!(closed_with(&mut client), ConnectionError::HandshakeTimeout);
}

#[test]
fn heartbeats_keep_both_sides_open() {
    let clock = Clock(Instant::now());
    let (mut client, mut server) = established(&clock);
    let mut pings = [0usize; 2];
    // Ten seconds of virtual time, far beyond the 300 ms idle timeout, in
    // steps that follow the connections' own timers.
    let mut now = clock.at(0);
    while now < clock.at(10_000) {
        now = client.poll_timeout().unwrap().min(server.poll_timeout().unwrap());
        for (i, conn) in [&mut client, &mut server].into_iter().enumerate() {
            if conn.poll_timeout() <= Some(now) {
                conn.handle_timeout(now);
                if conn.has_pending_lane(Lane::Control) {
                    pings[i] += 1;
                }
            }
        }
        settle(&mut client, &mut server, now);
    }
    assert!(client.is_open() && server.is_open());
    assert!(events(&mut client).is_empty() && events(&mut server).is_empty());
    // The client pings once per 100 ms interval of silence, each answered
    // (else the peer would close); the server, which waits two intervals,
    // always hears the client's Ping first and never pings: one Ping and
    // one Pong per interval.
    assert!(pings[0] >= 90, "{pings:?}");
    assert_eq!(pings[1], 0, "{pings:?}");
}

#[test]
fn silent_peer_is_detected_dead_after_the_idle_timeout() {
    let clock = Clock(Instant::now());
    let (_client, mut server) = established(&clock);
    // The client never answers again. The server pings after two silent
    // intervals, at 200 ms...
    let mut now = clock.at(0);
    let mut pinged_at = Vec::new();
    while !server.is_closed() {
        now = server.poll_timeout().unwrap();
        assert!(now <= clock.at(300), "still open at {:?}", now - clock.0);
        server.handle_timeout(now);
        if drain_frames(&mut server, usize::MAX)
            .iter()
            .any(|m| matches!(m, Message::Ping(_)))
        {
            pinged_at.push(now - clock.0);
        }
    }
    assert_eq!(pinged_at, [Duration::from_millis(200)]);
    // ...and gives up exactly at the idle timeout (3 heartbeats = 300 ms).
    assert_eq!(now, clock.at(300));
    assert_eq!(closed_with(&mut server), ConnectionError::IdleTimeout);
}

#[test]
fn control_frame_overtakes_queued_bulk_frames() {
    let clock = Clock(Instant::now());
    let (mut client, mut server) = established(&clock);
    for seq in 0..100 {
        client.send(0, Flags::NONE, &log_chunk(seq, 1000)).unwrap();
    }
    client
        .send(9, Flags::NONE, &Message::GetJob(GetJob { job_id: 1 }))
        .unwrap();
    // A small write budget: the control frame goes first.
    let first = drain_frames(&mut client, 2500);
    assert!(matches!(first.first(), Some(Message::GetJob(_))), "{first:?}");
    assert!(first.len() < 5, "budget ignored: {} frames", first.len());
    let mut rest = Vec::new();
    while client.has_pending_output() {
        rest.extend(drain_frames(&mut client, 2500));
    }
    let seqs: Vec<u64> = first
        .iter()
        .chain(&rest)
        .filter_map(|m| match m {
            Message::LogChunk(c) => Some(c.seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (0..100).collect::<Vec<_>>());
    let _ = &mut server;
}

#[test]
fn one_poll_overshoots_its_budget_by_one_frame_at_most() {
    let clock = Clock(Instant::now());
    let (mut client, _server) = established(&clock);
    client.send(0, Flags::NONE, &log_chunk(0, 3000)).unwrap();
    client
        .send(1, Flags::NONE, &Message::GetJob(GetJob { job_id: 1 }))
        .unwrap();
    let mut out = BytesMut::new();
    // 100 bytes fit neither frame: only the first (the control one) goes.
    assert_eq!(client.poll_transmit(&mut out, 100), 1);
    assert!(out.len() < 100 && out.len() > HEADER_LEN);
}

#[test]
fn bounded_lane_queue_reports_queue_full() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let cfg = config().lane_queue(3, 1 << 20);
    let mut client = Connection::client(cfg.clone(), hello("good"), 1, now);
    let mut server = Connection::server(cfg, 1, now);
    pump(&mut client, &mut server, now);
    events(&mut server);
    server.accept("s", now);
    pump(&mut server, &mut client, now);
    events(&mut client);
    for seq in 0..3 {
        client.send(0, Flags::NONE, &log_chunk(seq, 10)).unwrap();
    }
    assert!(!client.can_send(Lane::Bulk));
    assert_eq!(
        client.send(0, Flags::NONE, &log_chunk(3, 10)),
        Err(SendError::QueueFull(Lane::Bulk))
    );
    // Other lanes have their own bound.
    client
        .send(1, Flags::NONE, &Message::GetJob(GetJob { job_id: 1 }))
        .unwrap();
    drain_frames(&mut client, usize::MAX);
    client.send(0, Flags::NONE, &log_chunk(3, 10)).unwrap();
}

#[test]
fn message_over_the_peer_limit_is_refused_before_sending() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut client = Connection::client(config(), hello("good"), 1, now);
    let mut server = Connection::server(config().max_frame_bytes(4096), 1, now);
    pump(&mut client, &mut server, now);
    events(&mut server);
    server.accept("s", now);
    pump(&mut server, &mut client, now);
    events(&mut client);
    assert_eq!(client.peer_max_frame_bytes(), 4096);
    match client.send(0, Flags::NONE, &log_chunk(0, 5000)) {
        Err(SendError::TooLarge { size, limit: 4096 }) => assert!(size > 5000),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert!(!client.has_pending_output());
    assert!(client.is_open());
}

#[test]
fn oversized_incoming_frame_closes_with_frame_too_large() {
    let clock = Clock(Instant::now());
    let (mut client, mut server) = established(&clock);
    let _ = &mut client;
    // A header declaring 2 MiB (the server accepts 1 MiB); no payload needed.
    let mut header = encode_to_vec(&log_chunk(0, 0), 0, Flags::NONE);
    header.truncate(HEADER_LEN);
    header[4..8].copy_from_slice(&(2u32 << 20).to_le_bytes());
    server.handle_bytes(0, &header, clock.at(1));
    match closed_with(&mut server) {
        ConnectionError::Decode(DecodeError::FrameTooLarge { declared, limit }) => {
            assert_eq!((declared, limit), (2 << 20, 1 << 20));
        }
        other => panic!("expected FrameTooLarge, got {other:?}"),
    }
    match drain_frames(&mut server, usize::MAX).as_slice() {
        [Message::Close(c)] => assert_eq!(c.code, ErrorCode::FRAME_TOO_LARGE),
        other => panic!("expected one Close, got {other:?}"),
    }
}

#[test]
fn close_is_flushed_even_after_the_peer_shut_its_write_half() {
    let clock = Clock(Instant::now());
    let now = clock.at(0);
    let mut server = Connection::server(config(), 1, now);
    server.handle_bytes(
        0,
        &encode_to_vec(&Message::Ping(Ping { nonce: 1 }), 0, Flags::NONE),
        now,
    );
    server.handle_eof(0);
    assert!(!server.is_drained(), "the Close frame is not written yet");
    match drain_frames(&mut server, usize::MAX).as_slice() {
        [Message::Close(c)] => assert_eq!(c.code, ErrorCode::UNEXPECTED_MESSAGE),
        other => panic!("expected one Close, got {other:?}"),
    }
    assert!(server.is_drained());
}
