//! Errors, grouped by whose fault they are (after rustls): bytes that do not
//! decode, a peer speaking something we do not, a valid message at the wrong
//! time, and the local caller's mistakes. Each maps to the [`ErrorCode`] sent
//! on the wire when it ends a connection.

use crate::frame::{ErrorCode, FrameKind, Lane};

/// Why a byte sequence is not a valid frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended inside a frame header.
    #[error("input ends inside a frame header ({available} of 16 bytes)")]
    TruncatedHeader {
        /// Bytes that were there.
        available: usize,
    },
    /// The input ended inside a frame's payload.
    #[error("input ends inside the payload of a {kind} frame ({available} of {declared} bytes)")]
    TruncatedPayload {
        /// Kind of the frame.
        kind: FrameKind,
        /// Payload length the header declared.
        declared: u32,
        /// Bytes that were there.
        available: usize,
    },
    /// Bytes follow the last complete frame where exactly one frame was expected.
    #[error("{count} bytes follow the frame")]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The declared payload length is over the receiver's limit.
    #[error("frame declares a {declared}-byte payload, over the limit of {limit} bytes")]
    FrameTooLarge {
        /// Declared payload length.
        declared: u32,
        /// The receiver's limit.
        limit: u32,
    },
    /// The frame's version is not one this implementation speaks.
    #[error("unsupported protocol version {0} (this peer speaks version 1)")]
    UnsupportedVersion(u8),
    /// The frame kind is not defined in this version.
    #[error("unknown frame kind {0}")]
    UnknownKind(FrameKind),
    /// A required flag bit this implementation does not understand is set.
    #[error("unknown required flag bits {0:#04x}")]
    UnknownRequiredFlags(u8),
    /// The lane byte names no lane.
    #[error("unknown lane {0}")]
    UnknownLane(u8),
    /// A frame of a known kind travels on another lane than its kind's
    /// (spec §4). Checked after the payload decodes.
    #[error("{kind} frame sent on the {lane:?} lane; it belongs on the {expected:?} lane")]
    WrongLane {
        /// Kind of the frame.
        kind: FrameKind,
        /// The lane in its header.
        lane: Lane,
        /// The lane of its kind.
        expected: Lane,
    },
    /// The payload ended before a field was complete.
    #[error("{kind} payload ends inside field `{field}`")]
    PayloadTruncated {
        /// Kind of the frame.
        kind: FrameKind,
        /// The field being read.
        field: &'static str,
    },
    /// The payload has bytes after its last field.
    #[error("{kind} payload has {count} bytes after its last field")]
    PayloadTrailingBytes {
        /// Kind of the frame.
        kind: FrameKind,
        /// How many.
        count: usize,
    },
    /// A text field is not valid UTF-8.
    #[error("{kind} field `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        /// Kind of the frame.
        kind: FrameKind,
        /// The field.
        field: &'static str,
    },
    /// A field holds a value outside its domain (an unknown enum value, a
    /// bool other than 0 or 1, a count larger than the payload could hold).
    #[error("{kind} field `{field}` has invalid value {value}")]
    InvalidValue {
        /// Kind of the frame.
        kind: FrameKind,
        /// The field.
        field: &'static str,
        /// The value found.
        value: u64,
    },
}

/// The broad cause of a [`DecodeError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeCause {
    /// The byte stream cannot be cut into frames (truncation, trailing bytes).
    Framing,
    /// A limit was exceeded.
    Limit,
    /// The peer speaks a version or extension we do not.
    Incompatible,
    /// A frame's payload is malformed.
    Payload,
}

impl DecodeError {
    /// Which group of faults this error belongs to.
    pub fn cause(&self) -> DecodeCause {
        match self {
            Self::TruncatedHeader { .. } | Self::TruncatedPayload { .. } | Self::TrailingBytes { .. } => {
                DecodeCause::Framing
            }
            Self::FrameTooLarge { .. } => DecodeCause::Limit,
            Self::UnsupportedVersion(_)
            | Self::UnknownKind(_)
            | Self::UnknownRequiredFlags(_)
            | Self::UnknownLane(_)
            | Self::WrongLane { .. } => DecodeCause::Incompatible,
            Self::PayloadTruncated { .. }
            | Self::PayloadTrailingBytes { .. }
            | Self::InvalidUtf8 { .. }
            | Self::InvalidValue { .. } => DecodeCause::Payload,
        }
    }

    /// The code a receiver sends in its Close frame for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
            Self::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            _ => ErrorCode::PROTOCOL_ERROR,
        }
    }

    /// A stable snake_case name, used by the spec's test vectors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TruncatedHeader { .. } => "truncated_header",
            Self::TruncatedPayload { .. } => "truncated_payload",
            Self::TrailingBytes { .. } => "trailing_bytes",
            Self::FrameTooLarge { .. } => "frame_too_large",
            Self::UnsupportedVersion(_) => "unsupported_version",
            Self::UnknownKind(_) => "unknown_kind",
            Self::UnknownRequiredFlags(_) => "unknown_required_flags",
            Self::UnknownLane(_) => "unknown_lane",
            Self::WrongLane { .. } => "wrong_lane",
            Self::PayloadTruncated { .. } => "payload_truncated",
            Self::PayloadTrailingBytes { .. } => "payload_trailing_bytes",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::InvalidValue { .. } => "invalid_value",
        }
    }
}

/// Why a connection ended with an error, as the connection state machine
/// reports it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer sent bytes that do not decode.
    #[error("peer sent an invalid frame: {0}")]
    Decode(#[from] DecodeError),
    /// The peer sent a valid message at the wrong time.
    #[error("peer sent {kind} {when}")]
    UnexpectedMessage {
        /// What it sent.
        kind: FrameKind,
        /// When, in words (e.g. "before the handshake").
        when: &'static str,
    },
    /// The peer closed the connection with a Close frame.
    #[error("peer closed the connection: {code}: {reason}")]
    ClosedByPeer {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's reason.
        reason: String,
    },
    /// This side closed the connection (refusal, shutdown, limit).
    #[error("connection closed locally: {code}: {reason}")]
    ClosedLocally {
        /// Our code.
        code: ErrorCode,
        /// Our reason.
        reason: String,
    },
    /// The handshake did not finish in time.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Nothing was heard from the peer within the idle timeout.
    #[error("peer silent for longer than the idle timeout; presumed dead")]
    IdleTimeout,
    /// The byte stream ended without a Close frame.
    #[error("connection reset: the stream ended without a Close frame")]
    Reset,
    /// The server is a standby of a group and named its leader instead of
    /// answering Welcome (spec §6.4).
    #[error("{}", redirect_text(.0))]
    Redirected(crate::message::Redirect),
}

fn redirect_text(r: &crate::message::Redirect) -> String {
    if r.uris.is_empty() {
        "the server is a standby and knows no leader yet".to_owned()
    } else {
        format!(
            "the server is a standby; server {} leads (epoch {}) at {}",
            r.leader,
            r.epoch,
            r.uris.join(", ")
        )
    }
}

impl ConnectionError {
    /// The code describing this end of the connection.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Decode(e) => e.code(),
            Self::UnexpectedMessage { .. } => ErrorCode::UNEXPECTED_MESSAGE,
            Self::ClosedByPeer { code, .. } | Self::ClosedLocally { code, .. } => *code,
            Self::HandshakeTimeout => ErrorCode::HANDSHAKE_TIMEOUT,
            Self::IdleTimeout => ErrorCode::IDLE_TIMEOUT,
            Self::Reset => ErrorCode::INTERNAL,
            Self::Redirected(_) => ErrorCode::NORMAL,
        }
    }
}

/// Why a message could not be queued for sending.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The lane's send queue is full: the peer reads slower than we write.
    #[error("send queue for the {0:?} lane is full")]
    QueueFull(crate::frame::Lane),
    /// The encoded payload is over the peer's frame limit.
    #[error("message of {size} bytes is over the peer's frame limit of {limit} bytes")]
    TooLarge {
        /// Encoded payload size.
        size: usize,
        /// The peer's limit.
        limit: u32,
    },
    /// The connection is closed or closing.
    #[error("connection is closed")]
    Closed,
    /// The handshake has not completed yet.
    #[error("handshake not complete")]
    NotEstablished,
}
