//! The incremental frame decoder: any split of the input gives the same
//! frames, many frames in one buffer come out in order, every
//! [`DecodeError`] is reachable, and a declared length over the limit is
//! refused from the header alone.

use bytes::Bytes;
use serde::Deserialize;
use valkyrie::error::DecodeCause;
use valkyrie::frame::{
    decode_exact, encode_to_vec, Frame, FrameDecoder, DEFAULT_MAX_FRAME_BYTES, HEADER_LEN,
};
use valkyrie::message::*;
use valkyrie::{DecodeError, ErrorCode, Flags, FrameKind, Lane, Message};

// ---- test data ----

#[derive(Deserialize)]
struct VectorFile {
    vectors: Vec<Vector>,
}

#[derive(Deserialize)]
struct Vector {
    hex: String,
}

/// Every valid frame of the spec's vectors, concatenated: one of each kind.
fn vector_stream() -> Vec<u8> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../spec/vectors/messages.json");
    let file: VectorFile = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    file.vectors
        .iter()
        .flat_map(|v| hex::decode(&v.hex).unwrap())
        .collect()
}

/// Drains every complete frame; panics on a decode error.
fn drain(decoder: &mut FrameDecoder, out: &mut Vec<Frame>) {
    while let Some(frame) = decoder.next_frame().expect("valid stream") {
        out.push(frame);
    }
}

fn decode_in_parts(parts: &[&[u8]]) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    let mut frames = Vec::new();
    for part in parts {
        decoder.extend(part);
        drain(&mut decoder, &mut frames);
    }
    assert_eq!(decoder.buffered(), 0);
    decoder.finish().expect("no leftover bytes");
    frames
}

fn log_chunk(seq: u64, len: usize) -> Message {
    LogChunk {
        job_id: 1042,
        attempt: 2,
        seq,
        stream: OutputStream::Stdout,
        data: Bytes::from(vec![b'x'; len]),
    }
    .into()
}

// ---- splits ----

#[test]
fn every_two_part_split_gives_the_same_frames() {
    let stream = vector_stream();
    let whole = decode_in_parts(&[&stream]);
    assert!(whole.len() >= 29, "one frame per vector");
    for at in 0..=stream.len() {
        let (a, b) = stream.split_at(at);
        assert_eq!(decode_in_parts(&[a, b]), whole, "split at byte {at}");
    }
}

#[test]
fn one_byte_at_a_time_gives_the_same_frames() {
    let stream = vector_stream();
    let whole = decode_in_parts(&[&stream]);
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode_in_parts(&bytes), whole);
}

#[test]
fn every_chunk_size_gives_the_same_frames() {
    let stream = vector_stream();
    let whole = decode_in_parts(&[&stream]);
    for size in [2, 3, 7, 15, 16, 17, 31, 64, 1000] {
        let chunks: Vec<&[u8]> = stream.chunks(size).collect();
        assert_eq!(decode_in_parts(&chunks), whole, "chunks of {size}");
    }
}

#[test]
fn frames_decode_to_the_messages_of_the_vectors() {
    let stream = vector_stream();
    for frame in decode_in_parts(&[&stream]) {
        let message = frame.message().expect("valid payload");
        assert_eq!(message.kind(), frame.kind);
        assert_eq!(message.lane(), frame.lane);
    }
}

#[test]
fn many_frames_in_one_buffer_decode_in_order() {
    let mut buf = Vec::new();
    let mut expected = Vec::new();
    for i in 0..5000u64 {
        let message = match i % 4 {
            0 => log_chunk(i, (i % 300) as usize),
            1 => Heartbeat { running: i as u32 }.into(),
            2 => Ack {}.into(),
            _ => JobStarted {
                job_id: i,
                attempt: 1,
            }
            .into(),
        };
        buf.extend_from_slice(&encode_to_vec(&message, i, Flags::NONE));
        expected.push((i, message));
    }
    let frames = decode_in_parts(&[&buf]);
    assert_eq!(frames.len(), expected.len());
    for (frame, (correlation, message)) in frames.iter().zip(&expected) {
        assert_eq!(frame.correlation, *correlation);
        assert_eq!(&frame.message().unwrap(), message);
    }
}

#[test]
fn payloads_are_slices_of_the_receive_buffer() {
    // A log chunk's data is handed out without a copy: the Bytes of the
    // message points into the frame's payload.
    let bytes = encode_to_vec(&log_chunk(0, 4096), 0, Flags::NONE);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.extend(&bytes);
    let frame = decoder.next_frame().unwrap().unwrap();
    let Message::LogChunk(chunk) = frame.message().unwrap() else {
        panic!("not a LogChunk")
    };
    let payload = frame.payload.as_ptr_range();
    let data = chunk.data.as_ptr_range();
    assert!(payload.start <= data.start && data.end <= payload.end);
}

// ---- the limit ----

fn header(version: u8, kind: u8, flags: u8, lane: u8, length: u32, correlation: u64) -> Vec<u8> {
    let mut h = vec![version, kind, flags, lane];
    h.extend_from_slice(&length.to_le_bytes());
    h.extend_from_slice(&correlation.to_le_bytes());
    h
}

#[test]
fn a_4_gib_length_is_refused_after_16_bytes_without_allocating() {
    let h = header(1, FrameKind::LOG_CHUNK.0, 0, Lane::Bulk as u8, u32::MAX, 0);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    decoder.extend(&h[..HEADER_LEN - 1]);
    assert_eq!(
        decoder.next_frame(),
        Ok(None),
        "15 bytes: still reading the header"
    );
    decoder.extend(&h[HEADER_LEN - 1..]);
    let expected = DecodeError::FrameTooLarge {
        declared: u32::MAX,
        limit: DEFAULT_MAX_FRAME_BYTES,
    };
    assert_eq!(decoder.next_frame(), Err(expected.clone()));
    assert!(
        decoder.buffer_mut().capacity() < DEFAULT_MAX_FRAME_BYTES as usize,
        "nothing near the declared size was reserved"
    );
    // The stream is corrupt from here on: the error sticks.
    decoder.extend(&[0; 64]);
    assert_eq!(decoder.next_frame(), Err(expected.clone()));
    assert_eq!(decoder.finish(), Err(expected));
}

#[test]
fn a_payload_of_exactly_the_limit_is_accepted() {
    let limit = 4096;
    let probe = encode_to_vec(&log_chunk(0, 0), 0, Flags::NONE).len() - HEADER_LEN;
    let exact = encode_to_vec(&log_chunk(0, limit as usize - probe), 0, Flags::NONE);
    assert_eq!(exact.len(), HEADER_LEN + limit as usize);
    assert!(decode_exact(&exact, limit).is_ok());
    assert_eq!(
        decode_exact(&exact, limit - 1).unwrap_err(),
        DecodeError::FrameTooLarge {
            declared: limit,
            limit: limit - 1
        }
    );
}

// ---- one case per DecodeError variant ----

fn frame_bytes(kind: FrameKind, lane: Lane, payload: &[u8]) -> Vec<u8> {
    let mut f = header(1, kind.0, 0, lane as u8, payload.len() as u32, 0);
    f.extend_from_slice(payload);
    f
}

fn lp(s: &[u8]) -> Vec<u8> {
    [&(s.len() as u32).to_le_bytes()[..], s].concat()
}

#[test]
fn every_decode_error_is_reachable() {
    let ping = encode_to_vec(&Ping { nonce: 7 }.into(), 0, Flags::NONE);
    let nonce = 7u64.to_le_bytes();
    let with = |h: Vec<u8>, rest: &[u8]| [h.as_slice(), rest].concat();
    // (case, input, payload limit, error, cause, Close code)
    type Case = (&'static str, Vec<u8>, u32, DecodeError, DecodeCause, ErrorCode);
    let cases: Vec<Case> = vec![
        (
            "truncated header",
            ping[..10].to_vec(),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::TruncatedHeader { available: 10 },
            DecodeCause::Framing,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "empty input",
            vec![],
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::TruncatedHeader { available: 0 },
            DecodeCause::Framing,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "truncated payload",
            ping[..HEADER_LEN + 4].to_vec(),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::TruncatedPayload {
                kind: FrameKind::PING,
                declared: 8,
                available: 4,
            },
            DecodeCause::Framing,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "trailing bytes",
            with(ping.clone(), &[0, 0, 0]),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::TrailingBytes { count: 3 },
            DecodeCause::Framing,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "frame too large",
            header(1, 0x03, 0, 0, 4097, 0),
            4096,
            DecodeError::FrameTooLarge {
                declared: 4097,
                limit: 4096,
            },
            DecodeCause::Limit,
            ErrorCode::FRAME_TOO_LARGE,
        ),
        (
            "unsupported version",
            with(header(2, 0x03, 0, 0, 8, 0), &nonce),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::UnsupportedVersion(2),
            DecodeCause::Incompatible,
            ErrorCode::UNSUPPORTED_VERSION,
        ),
        (
            "unknown kind",
            header(1, 0x7F, 0, 0, 0, 0),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::UnknownKind(FrameKind(0x7F)),
            DecodeCause::Incompatible,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "unknown required flags",
            with(header(1, 0x03, 0x21, 0, 8, 0), &nonce),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::UnknownRequiredFlags(0x20),
            DecodeCause::Incompatible,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "unknown lane",
            with(header(1, 0x03, 0, 3, 8, 0), &nonce),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::UnknownLane(3),
            DecodeCause::Incompatible,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "payload truncated",
            frame_bytes(FrameKind::HEARTBEAT, Lane::Control, &[2, 0]),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::PayloadTruncated {
                kind: FrameKind::HEARTBEAT,
                field: "running",
            },
            DecodeCause::Payload,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "payload trailing bytes",
            frame_bytes(FrameKind::PING, Lane::Control, &[&nonce[..], &[0xAA]].concat()),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::PayloadTrailingBytes {
                kind: FrameKind::PING,
                count: 1,
            },
            DecodeCause::Payload,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "invalid utf-8",
            frame_bytes(
                FrameKind::CLOSE,
                Lane::Control,
                &[&[0, 0][..], &lp(&[0xC3, 0x28])].concat(),
            ),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::InvalidUtf8 {
                kind: FrameKind::CLOSE,
                field: "reason",
            },
            DecodeCause::Payload,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "invalid enum value",
            frame_bytes(
                FrameKind::JOB_RESULT,
                Lane::Dispatch,
                &[&1u64.to_le_bytes()[..], &1u32.to_le_bytes(), &[4]].concat(),
            ),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::InvalidValue {
                kind: FrameKind::JOB_RESULT,
                field: "outcome",
                value: 4,
            },
            DecodeCause::Payload,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "invalid bool",
            frame_bytes(
                FrameKind::ASSIGN_ACK,
                Lane::Dispatch,
                &[&1u64.to_le_bytes()[..], &1u32.to_le_bytes(), &[0xFF], &lp(b"")].concat(),
            ),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::InvalidValue {
                kind: FrameKind::ASSIGN_ACK,
                field: "accepted",
                value: 0xFF,
            },
            DecodeCause::Payload,
            ErrorCode::PROTOCOL_ERROR,
        ),
        (
            "list count larger than the payload",
            frame_bytes(FrameKind::JOB_LIST, Lane::Control, &u32::MAX.to_le_bytes()),
            DEFAULT_MAX_FRAME_BYTES,
            DecodeError::InvalidValue {
                kind: FrameKind::JOB_LIST,
                field: "jobs",
                value: u64::from(u32::MAX),
            },
            DecodeCause::Payload,
            ErrorCode::PROTOCOL_ERROR,
        ),
    ];
    for (name, input, limit, expected, cause, code) in cases {
        let err = decode_exact(&input, limit).expect_err(name);
        assert_eq!(err, expected, "{name}");
        assert_eq!(err.cause(), cause, "{name}: cause");
        assert_eq!(err.code(), code, "{name}: close code");
        assert!(!err.to_string().is_empty());
    }
}

#[test]
fn finish_reports_a_truncated_frame() {
    let bytes = encode_to_vec(&Heartbeat { running: 1 }.into(), 0, Flags::NONE);
    let mut decoder = FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES);
    assert_eq!(decoder.finish(), Ok(()), "nothing buffered");
    decoder.extend(&bytes[..5]);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(
        decoder.finish(),
        Err(DecodeError::TruncatedHeader { available: 5 })
    );
    decoder.extend(&bytes[5..bytes.len() - 1]);
    assert_eq!(decoder.next_frame(), Ok(None));
    assert_eq!(
        decoder.finish(),
        Err(DecodeError::TruncatedPayload {
            kind: FrameKind::HEARTBEAT,
            declared: 4,
            available: 3
        })
    );
    decoder.extend(&bytes[bytes.len() - 1..]);
    assert!(decoder.next_frame().unwrap().is_some());
    assert_eq!(decoder.finish(), Ok(()));
}

#[test]
fn an_unknown_kind_is_framed_and_refused_by_the_message_decoder() {
    // Framing does not judge the kind, so a receiver can report it by name
    // (and the stream stays in sync if a future version chooses to skip it).
    let mut stream = header(1, 0x7E, 0, 0, 3, 5);
    stream.extend_from_slice(&[1, 2, 3]);
    stream.extend_from_slice(&encode_to_vec(&Ping { nonce: 1 }.into(), 0, Flags::NONE));
    let frames = decode_in_parts(&[&stream]);
    assert_eq!(frames.len(), 2);
    assert_eq!(
        frames[0].message(),
        Err(DecodeError::UnknownKind(FrameKind(0x7E)))
    );
    assert_eq!(frames[1].message(), Ok(Ping { nonce: 1 }.into()));
}

#[test]
fn unknown_optional_flags_are_ignored() {
    for bits in 0u8..16 {
        let mut bytes = encode_to_vec(&Ping { nonce: 3 }.into(), 0, Flags::NONE);
        bytes[2] = bits;
        let (frame, message) = decode_exact(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap();
        assert_eq!(frame.flags.bits(), bits);
        assert_eq!(message, Ping { nonce: 3 }.into());
    }
    for bits in 0x10..=0xFFu8 {
        let mut bytes = encode_to_vec(&Ping { nonce: 3 }.into(), 0, Flags::NONE);
        bytes[2] = bits;
        assert_eq!(
            decode_exact(&bytes, DEFAULT_MAX_FRAME_BYTES).unwrap_err(),
            DecodeError::UnknownRequiredFlags(bits & 0xF0)
        );
    }
}
