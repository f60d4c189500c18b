//! Payload field encoding: little-endian fixed-width integers, `u32`-length
//! prefixed strings and byte strings, `u32`-count prefixed lists, `u8`-tagged
//! options. Strict: every read names its field, counts are checked against
//! the bytes left before anything is allocated, and `finish` refuses
//! trailing bytes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::frame::FrameKind;

/// Reads one payload. Holds the payload as [`Bytes`] so byte-string fields
/// are handed out as zero-copy slices of the receive buffer.
pub struct Reader {
    kind: FrameKind,
    buf: Bytes,
    pos: usize,
}

impl Reader {
    pub(crate) fn new(kind: FrameKind, buf: Bytes) -> Self {
        Self { kind, buf, pos: 0 }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&[u8], DecodeError> {
        if self.buf.len() - self.pos < n {
            return Err(DecodeError::PayloadTruncated {
                kind: self.kind,
                field,
            });
        }
        let start = self.pos;
        self.pos += n;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, field)?);
        Ok(out)
    }

    pub(crate) fn invalid(&self, field: &'static str, value: u64) -> DecodeError {
        DecodeError::InvalidValue {
            kind: self.kind,
            field,
            value,
        }
    }

    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(self.array(field)?))
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8(field)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.invalid(field, other.into())),
        }
    }

    /// A byte string, as a zero-copy slice of the payload.
    pub(crate) fn bytes(&mut self, field: &'static str) -> Result<Bytes, DecodeError> {
        let len = self.u32(field)? as usize;
        if self.buf.len() - self.pos < len {
            return Err(DecodeError::PayloadTruncated {
                kind: self.kind,
                field,
            });
        }
        let out = self.buf.slice(self.pos..self.pos + len);
        self.pos += len;
        Ok(out)
    }

    pub(crate) fn string(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let len = self.u32(field)? as usize;
        let raw = self.take(len, field)?;
        match std::str::from_utf8(raw) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 {
                kind: self.kind,
                field,
            }),
        }
    }

    pub(crate) fn option<T>(
        &mut self,
        field: &'static str,
        read: impl FnOnce(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Option<T>, DecodeError> {
        match self.u8(field)? {
            0 => Ok(None),
            1 => read(self).map(Some),
            other => Err(self.invalid(field, other.into())),
        }
    }

    /// A list: `u32` count, then the items. The count is checked against
    /// the bytes left (every item takes at least `min_item_bytes`) before
    /// the vector is allocated, so a lying count cannot force an allocation.
    pub(crate) fn list<T>(
        &mut self,
        field: &'static str,
        min_item_bytes: usize,
        mut read: impl FnMut(&mut Self) -> Result<T, DecodeError>,
    ) -> Result<Vec<T>, DecodeError> {
        let count = self.u32(field)? as usize;
        let left = self.buf.len() - self.pos;
        if count.saturating_mul(min_item_bytes.max(1)) > left {
            return Err(self.invalid(field, count as u64));
        }
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            out.push(read(self)?);
        }
        Ok(out)
    }

    pub(crate) fn strings(&mut self, field: &'static str) -> Result<Vec<String>, DecodeError> {
        self.list(field, 4, |r| r.string(field))
    }

    pub(crate) fn pairs(&mut self, field: &'static str) -> Result<Vec<(String, String)>, DecodeError> {
        self.list(field, 8, |r| Ok((r.string(field)?, r.string(field)?)))
    }

    /// Ends the payload: trailing bytes are an error.
    pub(crate) fn finish(self) -> Result<(), DecodeError> {
        let count = self.buf.len() - self.pos;
        if count != 0 {
            return Err(DecodeError::PayloadTrailingBytes {
                kind: self.kind,
                count,
            });
        }
        Ok(())
    }
}

/// Appends payload fields to a buffer.
pub struct Writer<'a> {
    buf: &'a mut BytesMut,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut BytesMut) -> Self {
        Self { buf }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.buf.put_u8(v);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.buf.put_u16_le(v);
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.buf.put_u32_le(v);
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.buf.put_u64_le(v);
    }
    pub(crate) fn i32(&mut self, v: i32) {
        self.buf.put_i32_le(v);
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.buf.put_u8(v as u8);
    }
    pub(crate) fn bytes(&mut self, v: &[u8]) {
        self.u32(len_u32(v.len()));
        self.buf.put_slice(v);
    }
    pub(crate) fn string(&mut self, v: &str) {
        self.bytes(v.as_bytes());
    }
    pub(crate) fn option<T>(&mut self, v: &Option<T>, write: impl FnOnce(&mut Self, &T)) {
        match v {
            None => self.u8(0),
            Some(inner) => {
                self.u8(1);
                write(self, inner);
            }
        }
    }
    pub(crate) fn list<T>(&mut self, items: &[T], mut write: impl FnMut(&mut Self, &T)) {
        self.u32(len_u32(items.len()));
        for item in items {
            write(self, item);
        }
    }
    pub(crate) fn strings(&mut self, items: &[String]) {
        self.list(items, |w, s| w.string(s));
    }
    pub(crate) fn pairs(&mut self, items: &[(String, String)]) {
        self.list(items, |w, (k, v)| {
            w.string(k);
            w.string(v);
        });
    }
}

fn len_u32(len: usize) -> u32 {
    // A payload is bounded by the u32 frame length, so a longer field could
    // never be sent anyway; saturate and let the frame limit refuse it.
    u32::try_from(len).unwrap_or(u32::MAX)
}
