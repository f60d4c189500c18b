//! The fixed 16-byte frame header, read in place with `zerocopy`.
//!
//! ```text
//!  0       1       2       3       4               8                              16
//!  +-------+-------+-------+-------+---------------+------------------------------+
//!  |version| kind  | flags | lane  | length (u32)  | correlation id (u64)         |
//!  +-------+-------+-------+-------+---------------+------------------------------+
//! ```
//! All integers are little-endian. `length` counts the payload bytes that
//! follow the header, not the header itself.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Flags, FrameKind, Lane};
use crate::error::DecodeError;

/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 16;

/// The only protocol version this implementation speaks.
pub const PROTOCOL_VERSION: u8 = 1;

/// The header exactly as it lies on the wire; `FrameHeader::parse` validates it.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct RawHeader {
    /// Protocol version of this frame.
    pub version: u8,
    /// Message kind.
    pub kind: u8,
    /// Flag bits.
    pub flags: u8,
    /// Priority lane.
    pub lane: u8,
    /// Payload length in bytes.
    pub length: U32,
    /// Correlation id tying replies to requests.
    pub correlation: U64,
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_LEN);

/// A validated frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Message kind.
    pub kind: FrameKind,
    /// Flag bits (only known required bits can be set after validation).
    pub flags: Flags,
    /// Priority lane the frame travels on.
    pub lane: Lane,
    /// Payload length in bytes.
    pub length: u32,
    /// Correlation id: non-zero on requests, echoed on their replies.
    pub correlation: u64,
}

impl FrameHeader {
    /// Validates a header read in place from `bytes` (at least [`HEADER_LEN`] long).
    ///
    /// Checks run in the order the spec lists them, so a frame with several
    /// faults reports the first one: version, length, lane, flags. The kind is
    /// checked later, by the message decoder, so an unknown kind still lets the
    /// reader skip the frame's payload if it wants to.
    pub fn parse(bytes: &[u8], max_payload_bytes: u32) -> Result<Self, DecodeError> {
        let (raw, _) = RawHeader::ref_from_prefix(bytes).map_err(|_| DecodeError::TruncatedHeader {
            available: bytes.len(),
        })?;
        // spec: a receiver MUST reject a frame whose version it does not speak.
        if raw.version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(raw.version));
        }
        // spec: a receiver MUST reject a declared length over its limit before
        // reading or allocating the payload.
        let length = raw.length.get();
        if length > max_payload_bytes {
            return Err(DecodeError::FrameTooLarge {
                declared: length,
                limit: max_payload_bytes,
            });
        }
        let lane = Lane::from_wire(raw.lane)?;
        let flags = Flags::from_wire(raw.flags)?;
        Ok(Self {
            kind: FrameKind(raw.kind),
            flags,
            lane,
            length,
            correlation: raw.correlation.get(),
        })
    }

    /// Writes the header's 16 bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let raw = RawHeader {
            version: PROTOCOL_VERSION,
            kind: self.kind.0,
            flags: self.flags.bits(),
            lane: self.lane as u8,
            length: U32::new(self.length),
            correlation: U64::new(self.correlation),
        };
        let mut out = [0u8; HEADER_LEN];
        out.copy_from_slice(raw.as_bytes());
        out
    }
}
