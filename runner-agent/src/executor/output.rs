//! Shaping a step's raw pipe bytes into output events: secret masking,
//! line-aligned chunking, the job-wide output limit and sequence numbers.
//!
//! Everything here is pure (no I/O, no clock), so it can be tested by feeding
//! bytes in any split, down to one byte at a time.
//!
//! Per stream the pipeline is `raw reads -> Masker -> LineChunker`, and per
//! job every chunk then passes through one [`OutputLog`]:
//!
//! * [`Masker`] replaces every occurrence of a secret value with `***`, even
//!   when the occurrence is split across reads. It holds back only a tail that
//!   could still become a secret (fewer bytes than the longest secret), so
//!   masking is exact regardless of how the child's writes were split,
//!   including lines longer than a chunk. The held tail is shorter than the
//!   longest secret, so a secret longer than [`MAX_CHUNK_BYTES`] is the one
//!   case where a stream holds back more than a chunk.
//! * [`LineChunker`] cuts the masked bytes into chunks of at most
//!   [`MAX_CHUNK_BYTES`], at the last newline when there is one, so a line is
//!   only cut when it is longer than a chunk. It never holds more than
//!   [`MAX_CHUNK_BYTES`].
//! * [`OutputLog`] numbers events without gaps across the whole job and
//!   enforces the job's output limit: the part that fits is emitted, then one
//!   truncation marker on the System stream, then nothing more.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::{ExecEvent, OutputStream};

/// Largest `data` payload of one `Output` event.
pub const MAX_CHUNK_BYTES: usize = 32 * 1024;

/// Secret values shorter than this are not masked: masking `a` or `10`
/// would garble ordinary output while protecting nothing.
pub const MIN_SECRET_BYTES: usize = 3;

/// What every occurrence of a secret value is replaced with.
pub const SECRET_MASK: &[u8] = b"***";

/// The set of secret values to mask, longest first so that when two secrets
/// match at the same position the longer one wins and nothing of it leaks.
#[derive(Clone, Default)]
pub(crate) struct Secrets {
    values: Arc<[Box<[u8]>]>,
    longest: usize,
}

impl Secrets {
    pub(crate) fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Self {
        let mut values: Vec<Box<[u8]>> = values
            .into_iter()
            .filter(|v| v.len() >= MIN_SECRET_BYTES)
            .map(|v| v.as_bytes().into())
            .collect();
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let longest = values.first().map_or(0, |v| v.len());
        Secrets {
            values: values.into(),
            longest,
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Length of the (longest) secret that starts at the beginning of `rest`.
    fn match_at(&self, rest: &[u8]) -> Option<usize> {
        let first = *rest.first()?;
        self.values
            .iter()
            .find(|s| s[0] == first && rest.starts_with(s))
            .map(|s| s.len())
    }

    /// Whether `rest` is the beginning of some secret but not a whole one,
    /// i.e. more input could turn it into a match.
    fn could_become_match(&self, rest: &[u8]) -> bool {
        rest.len() < self.longest
            && self
                .values
                .iter()
                .any(|s| s.len() > rest.len() && s.starts_with(rest))
    }

    /// Masks a complete text in one go (used for the agent's own messages).
    pub(crate) fn mask_all(&self, text: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(text.len());
        let mut masker = Masker::new(self.clone());
        masker.push(text, &mut out);
        masker.finish(&mut out);
        out
    }
}

/// Streaming secret masker for one output stream.
pub(crate) struct Masker {
    secrets: Secrets,
    /// Tail of the input that could still be the start of a secret.
    /// Invariant: shorter than the longest secret.
    held: Vec<u8>,
}

impl Masker {
    pub(crate) fn new(secrets: Secrets) -> Self {
        Masker {
            secrets,
            held: Vec::new(),
        }
    }

    /// Appends to `out` the masked bytes that can no longer change.
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.secrets.is_empty() {
            out.extend_from_slice(data);
            return;
        }
        let mut input = std::mem::take(&mut self.held);
        input.extend_from_slice(data);
        let consumed = self.scan(&input, false, out);
        self.held = input[consumed..].to_vec();
    }

    /// End of stream: nothing more can complete a secret, release the tail.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) {
        let input = std::mem::take(&mut self.held);
        // The tail may still contain a shorter secret in full.
        self.scan(&input, true, out);
    }

    /// Masks `input` into `out` and returns how many bytes were consumed;
    /// unless `at_end`, stops early at a tail that could still become a secret.
    fn scan(&self, input: &[u8], at_end: bool, out: &mut Vec<u8>) -> usize {
        let mut plain_from = 0;
        let mut i = 0;
        while i < input.len() {
            // Checked before a match: `hunt` may still grow into `hunter2`,
            // and masking the short one now would leak `er2`.
            if !at_end && self.secrets.could_become_match(&input[i..]) {
                break;
            } else if let Some(len) = self.secrets.match_at(&input[i..]) {
                out.extend_from_slice(&input[plain_from..i]);
                out.extend_from_slice(SECRET_MASK);
                i += len;
                plain_from = i;
            } else {
                i += 1;
            }
        }
        out.extend_from_slice(&input[plain_from..i]);
        i
    }
}

/// Cuts one stream into line-aligned chunks of at most [`MAX_CHUNK_BYTES`].
///
/// Complete lines are released as soon as they arrive; an unterminated last
/// line is held until its newline arrives, the buffer reaches
/// [`MAX_CHUNK_BYTES`], or the caller flushes it (idle prompt, end of stream).
#[derive(Default)]
pub(crate) struct LineChunker {
    pending: BytesMut,
}

impl LineChunker {
    pub(crate) fn push(&mut self, data: &[u8], out: &mut Vec<Bytes>) {
        self.pending.extend_from_slice(data);
        loop {
            if self.pending.len() >= MAX_CHUNK_BYTES {
                // A full chunk's worth: cut at its last newline, or mid-line if
                // the line itself is longer than a chunk.
                let cut = last_newline(&self.pending[..MAX_CHUNK_BYTES]).unwrap_or(MAX_CHUNK_BYTES);
                out.push(self.pending.split_to(cut).freeze());
            } else {
                if let Some(cut) = last_newline(&self.pending) {
                    out.push(self.pending.split_to(cut).freeze());
                }
                return;
            }
        }
    }

    /// Releases the unterminated last line, if any.
    pub(crate) fn flush(&mut self, out: &mut Vec<Bytes>) {
        if !self.pending.is_empty() {
            out.push(self.pending.split().freeze());
        }
    }

    pub(crate) fn has_partial_line(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Index just past the last `\n` in `bytes`.
fn last_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().rposition(|&b| b == b'\n').map(|i| i + 1)
}

/// Masker and chunker of one stream (stdout or stderr) of one step.
pub(crate) struct StreamShaper {
    masker: Masker,
    chunker: LineChunker,
    masked: Vec<u8>,
}

impl StreamShaper {
    pub(crate) fn new(secrets: Secrets) -> Self {
        StreamShaper {
            masker: Masker::new(secrets),
            chunker: LineChunker::default(),
            masked: Vec::new(),
        }
    }

    /// Raw bytes read from the pipe in, ready chunks out.
    pub(crate) fn push(&mut self, data: &[u8]) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        self.masked.clear();
        self.masker.push(data, &mut self.masked);
        self.chunker.push(&self.masked, &mut chunks);
        chunks
    }

    /// The stream went quiet: release an unterminated line (a prompt, a
    /// progress bar) so it is seen live. Bytes that could still be the start
    /// of a secret stay held, so masking stays exact.
    pub(crate) fn flush_partial_line(&mut self) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        self.chunker.flush(&mut chunks);
        chunks
    }

    /// End of stream: release everything.
    pub(crate) fn finish(&mut self) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        self.masked.clear();
        self.masker.finish(&mut self.masked);
        self.chunker.push(&self.masked, &mut chunks);
        self.chunker.flush(&mut chunks);
        chunks
    }

    pub(crate) fn has_partial_line(&self) -> bool {
        self.chunker.has_partial_line()
    }
}

/// Job-wide numbering and output limit.
#[derive(Debug)]
pub(crate) struct OutputLog {
    next_seq: u64,
    emitted_bytes: u64,
    limit_bytes: u64,
    truncated: bool,
}

impl OutputLog {
    pub(crate) fn new(limit_bytes: u64) -> Self {
        OutputLog {
            next_seq: 0,
            emitted_bytes: 0,
            limit_bytes,
            truncated: false,
        }
    }

    pub(crate) fn truncated(&self) -> bool {
        self.truncated
    }

    /// Turns one chunk of process output into the events to send: the chunk,
    /// the part of it that fits under the limit plus the truncation marker,
    /// or nothing once the job has been truncated.
    pub(crate) fn admit(&mut self, stream: OutputStream, mut chunk: Bytes, out: &mut Vec<ExecEvent>) {
        if self.truncated || chunk.is_empty() {
            return;
        }
        let room = self.limit_bytes - self.emitted_bytes;
        if chunk.len() as u64 <= room {
            self.emitted_bytes += chunk.len() as u64;
            out.push(self.event(stream, chunk));
            return;
        }
        // `room < chunk.len()`, so it fits in usize.
        chunk.truncate(room as usize);
        self.emitted_bytes += chunk.len() as u64;
        if !chunk.is_empty() {
            out.push(self.event(stream, chunk));
        }
        self.truncated = true;
        let marker = format!(
            "\n[valkyrie] output truncated: job exceeded its {} output limit\n",
            human_bytes(self.limit_bytes)
        );
        out.push(self.event(OutputStream::System, Bytes::from(marker)));
    }

    /// A message from the agent itself. It bypasses the limit: there is at
    /// most one per step, and it explains a failure the user must see.
    pub(crate) fn system(&mut self, text: Bytes) -> ExecEvent {
        self.event(OutputStream::System, text)
    }

    fn event(&mut self, stream: OutputStream, data: Bytes) -> ExecEvent {
        let seq = self.next_seq;
        self.next_seq += 1;
        ExecEvent::Output { seq, stream, data }
    }
}

/// `64 MiB`, `512 KiB`, `1000 bytes`: the limit as a user would configure it.
fn human_bytes(n: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * KIB;
    if n >= MIB && n.is_multiple_of(MIB) {
        format!("{} MiB", n / MIB)
    } else if n >= KIB && n.is_multiple_of(KIB) {
        format!("{} KiB", n / KIB)
    } else {
        format!("{n} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_in_pieces(secrets: &[&str], input: &[u8], piece: usize) -> Vec<u8> {
        let mut masker = Masker::new(Secrets::new(secrets.iter().copied()));
        let mut out = Vec::new();
        for part in input.chunks(piece) {
            masker.push(part, &mut out);
        }
        masker.finish(&mut out);
        out
    }

    #[test]
    fn masking_is_exact_for_every_split_of_the_input() {
        let secrets = ["hunter2", "hunt", "s3cr3t-value", "ab"];
        let input = b"user hunter2 hunted hunt s3cr3t-value s3cr3t-valu hunter2hunter2 ab\nend hunt";
        let expected = b"user *** ***ed *** *** s3cr3t-valu ****** ab\nend ***".to_vec();
        for piece in 1..=input.len() {
            assert_eq!(
                String::from_utf8_lossy(&mask_in_pieces(&secrets, input, piece)),
                String::from_utf8_lossy(&expected),
                "split into pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn masker_only_holds_back_a_possible_secret_prefix() {
        let mut masker = Masker::new(Secrets::new(["password"]));
        let mut out = Vec::new();
        masker.push(b"login: pass", &mut out);
        assert_eq!(out, b"login: ");
        masker.push(b"port\n", &mut out);
        assert_eq!(out, b"login: passport\n");
    }

    #[test]
    fn short_and_empty_secrets_are_ignored() {
        assert_eq!(mask_in_pieces(&["", "a", "10"], b"a 10 b", 1), b"a 10 b");
    }

    #[test]
    fn chunker_splits_at_last_newline_and_caps_chunk_size() {
        let line = b"0123456789abcdef0123456789abcde\n"; // 32 bytes
        let input: Vec<u8> = line
            .iter()
            .copied()
            .cycle()
            .take(3 * MAX_CHUNK_BYTES + 7)
            .collect();
        for piece in [1, 1000, 4096, MAX_CHUNK_BYTES, input.len()] {
            let mut chunker = LineChunker::default();
            let mut chunks = Vec::new();
            for part in input.chunks(piece) {
                chunker.push(part, &mut chunks);
                assert!(chunker.pending.len() < MAX_CHUNK_BYTES);
            }
            chunker.flush(&mut chunks);
            let (last, whole) = chunks.split_last().unwrap();
            for chunk in whole {
                assert!(chunk.len() <= MAX_CHUNK_BYTES);
                assert_eq!(chunk.last(), Some(&b'\n'), "chunk cut mid-line");
            }
            assert_eq!(last.as_ref(), b"0123456");
            assert_eq!(chunks.concat(), input);
        }
    }

    #[test]
    fn chunker_cuts_a_line_longer_than_a_chunk() {
        let mut input = vec![b'x'; MAX_CHUNK_BYTES + 10];
        input.push(b'\n');
        let mut chunker = LineChunker::default();
        let mut chunks = Vec::new();
        chunker.push(&input, &mut chunks);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), MAX_CHUNK_BYTES);
        assert_eq!(chunks[1].len(), 11);
        assert!(!chunker.has_partial_line());
    }

    #[test]
    fn output_log_emits_what_fits_then_one_marker_then_nothing() {
        let mut log = OutputLog::new(10);
        let mut events = Vec::new();
        log.admit(OutputStream::Stdout, Bytes::from_static(b"123456"), &mut events);
        log.admit(OutputStream::Stderr, Bytes::from_static(b"abcdef"), &mut events);
        log.admit(OutputStream::Stdout, Bytes::from_static(b"more"), &mut events);
        assert!(log.truncated());
        let marker = "\n[valkyrie] output truncated: job exceeded its 10 bytes output limit\n";
        assert_eq!(
            events,
            vec![
                ExecEvent::Output {
                    seq: 0,
                    stream: OutputStream::Stdout,
                    data: Bytes::from_static(b"123456")
                },
                ExecEvent::Output {
                    seq: 1,
                    stream: OutputStream::Stderr,
                    data: Bytes::from_static(b"abcd")
                },
                ExecEvent::Output {
                    seq: 2,
                    stream: OutputStream::System,
                    data: Bytes::from(marker)
                },
            ]
        );
    }

    #[test]
    fn limit_is_named_in_the_unit_it_was_configured_in() {
        assert_eq!(human_bytes(64 * 1024 * 1024), "64 MiB");
        assert_eq!(human_bytes(512 * 1024), "512 KiB");
        assert_eq!(human_bytes(1000), "1000 bytes");
    }
}
