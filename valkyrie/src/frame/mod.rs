//! Frames: the header, the wire codes, encoding, and the incremental decoder.
//! No I/O here: bytes in, frames out.

mod codes;
mod header;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use codes::{ErrorCode, Flags, FrameKind, Lane};
pub use header::{FrameHeader, RawHeader, HEADER_LEN, PROTOCOL_VERSION};

use crate::error::{DecodeError, SendError};
use crate::message::Message;

/// Default largest payload a peer accepts: 1 MiB.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1 << 20;
/// The smallest `max_frame_bytes` a peer may announce.
pub const MIN_MAX_FRAME_BYTES: u32 = 4096;

/// One frame: header fields and the undecoded payload, a zero-copy slice of
/// the receive buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Message kind.
    pub kind: FrameKind,
    /// Flags.
    pub flags: Flags,
    /// Lane.
    pub lane: Lane,
    /// Correlation id.
    pub correlation: u64,
    /// The payload bytes.
    pub payload: Bytes,
}

impl Frame {
    /// Decodes the payload into a [`Message`].
    pub fn message(&self) -> Result<Message, DecodeError> {
        Message::decode_payload(self.kind, self.payload.clone())
    }
}

/// Appends one complete frame (header and payload) for `message` to `buf`.
///
/// Fails without writing anything if the payload would exceed `peer_limit`
/// (the peer's announced `max_frame_bytes`).
pub fn encode_frame(
    message: &Message,
    correlation: u64,
    flags: Flags,
    peer_limit: u32,
    buf: &mut BytesMut,
) -> Result<(), SendError> {
    let start = buf.len();
    buf.put_bytes(0, HEADER_LEN);
    message.encode_payload(buf);
    let size = buf.len() - start - HEADER_LEN;
    if size > peer_limit as usize {
        buf.truncate(start);
        return Err(SendError::TooLarge {
            size,
            limit: peer_limit,
        });
    }
    let header = FrameHeader {
        kind: message.kind(),
        flags,
        lane: message.lane(),
        length: size as u32,
        correlation,
    };
    buf[start..start + HEADER_LEN].copy_from_slice(&header.to_bytes());
    Ok(())
}

/// Encodes one frame into a fresh buffer, without a size limit (tests, vectors).
pub fn encode_to_vec(message: &Message, correlation: u64, flags: Flags) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_frame(message, correlation, flags, u32::MAX, &mut buf).expect("no limit");
    buf.to_vec()
}

/// Decodes exactly one frame from `bytes`: truncation and trailing bytes are
/// errors. For datagram-like uses and the spec's test vectors.
pub fn decode_exact(bytes: &[u8], max_payload_bytes: u32) -> Result<(Frame, Message), DecodeError> {
    let mut decoder = FrameDecoder::new(max_payload_bytes);
    decoder.extend(bytes);
    let frame = match decoder.next_frame()? {
        Some(frame) => frame,
        // Empty input has nothing buffered, so `finish` cannot name the fault.
        None => {
            return Err(decoder
                .finish()
                .err()
                .unwrap_or(DecodeError::TruncatedHeader { available: 0 }))
        }
    };
    if decoder.buffered() != 0 {
        return Err(DecodeError::TrailingBytes {
            count: decoder.buffered(),
        });
    }
    let message = frame.message()?;
    check_lane(&frame, &message)?;
    Ok((frame, message))
}

/// spec §4: a frame MUST travel on its kind's lane. Checked once the
/// payload has decoded (so payload errors come first).
pub fn check_lane(frame: &Frame, message: &Message) -> Result<(), DecodeError> {
    if frame.lane != message.lane() {
        return Err(DecodeError::WrongLane {
            kind: frame.kind,
            lane: frame.lane,
            expected: message.lane(),
        });
    }
    Ok(())
}

/// An incremental frame decoder. Feed it bytes in any split (one byte at a
/// time works); take frames out with [`next_frame`](Self::next_frame).
///
/// `Ok(None)` means "need more bytes"; `Err` means the stream is corrupt and
/// the connection must close. The declared length is checked against the
/// limit from the header alone, before the payload is read or buffered.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: BytesMut,
    max_payload_bytes: u32,
    failed: Option<DecodeError>,
}

impl FrameDecoder {
    /// A decoder refusing payloads over `max_payload_bytes`.
    pub fn new(max_payload_bytes: u32) -> Self {
        Self {
            // Grown as input arrives: an idle connection holds no buffer.
            buf: BytesMut::new(),
            max_payload_bytes,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The internal buffer, for transports that read straight into it
    /// (avoids a copy). Call [`next_frame`](Self::next_frame) after filling.
    pub fn buffer_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes received but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The limit in force.
    pub fn max_payload_bytes(&self) -> u32 {
        self.max_payload_bytes
    }

    /// Takes the next complete frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let header = match FrameHeader::parse(&self.buf, self.max_payload_bytes) {
            Ok(h) => h,
            Err(err) => {
                self.failed = Some(err.clone());
                return Err(err);
            }
        };
        let total = HEADER_LEN + header.length as usize;
        if self.buf.len() < total {
            // The length is within the limit, so reserving it is bounded.
            self.buf.reserve(total - self.buf.len());
            return Ok(None);
        }
        let mut bytes = self.buf.split_to(total).freeze();
        bytes.advance(HEADER_LEN);
        Ok(Some(Frame {
            kind: header.kind,
            flags: header.flags,
            lane: header.lane,
            correlation: header.correlation,
            payload: bytes,
        }))
    }

    /// Call at end of input: leftover bytes are a truncated frame.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        match self.buf.len() {
            0 => Ok(()),
            n if n < HEADER_LEN => Err(DecodeError::TruncatedHeader { available: n }),
            n => {
                let header = FrameHeader::parse(&self.buf, self.max_payload_bytes)?;
                Err(DecodeError::TruncatedPayload {
                    kind: header.kind,
                    declared: header.length,
                    available: n - HEADER_LEN,
                })
            }
        }
    }
}
