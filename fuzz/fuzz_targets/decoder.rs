//! Arbitrary bytes against the frame decoder and the message decoder.
//!
//! Beyond "never panics", it checks two properties every input must keep:
//! the decoder gives the same frames and the same error however the input
//! is split, and whatever decodes re-encodes to exactly the bytes it came
//! from (the encoding is canonical, so a lenient decoder shows up here).
//!
//! Seeds: `fuzz/seed_corpus.sh` (the spec's test vectors).

#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie::frame::{decode_exact, encode_to_vec, Frame, FrameDecoder, HEADER_LEN};
use valkyrie::{DecodeError, Message};

/// A small limit as well as the default, so the limit check is reached.
const LIMITS: [u32; 2] = [4096, 1 << 20];

/// Frames out, then the error (or end-of-input verdict) that stopped them.
fn decode_stream(parts: &[&[u8]], limit: u32) -> (Vec<Frame>, Result<(), DecodeError>) {
    let mut decoder = FrameDecoder::new(limit);
    let mut frames = Vec::new();
    for part in parts {
        decoder.extend(part);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return (frames, Err(err)),
            }
        }
    }
    let end = decoder.finish();
    (frames, end)
}

fuzz_target!(|data: &[u8]| {
    for limit in LIMITS {
        let (frames, end) = decode_stream(&[data], limit);

        // Same result under a split chosen by the input, and byte by byte.
        let at = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
        let (a, b) = data.split_at(at);
        assert_eq!(decode_stream(&[a, b], limit), (frames.clone(), end.clone()));
        if data.len() <= 512 {
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(decode_stream(&bytes, limit), (frames.clone(), end.clone()));
        }

        // Whatever decodes re-encodes to the same bytes.
        let mut offset = 0;
        for frame in &frames {
            let len = HEADER_LEN + frame.payload.len();
            assert!(frame.payload.len() <= limit as usize);
            // (A frame on the wrong lane decodes here; the connection refuses it.)
            let message = Message::decode_payload(frame.kind, frame.payload.clone());
            if let Some(message) = message.ok().filter(|m| m.lane() == frame.lane) {
                assert_eq!(message.kind(), frame.kind);
                let again = encode_to_vec(&message, frame.correlation, frame.flags);
                assert_eq!(&again[..], &data[offset..offset + len]);
            }
            offset += len;
        }

        // decode_exact agrees with the stream decoder.
        if let Ok((frame, message)) = decode_exact(data, limit) {
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0], frame);
            assert!(end.is_ok());
            assert_eq!(
                Message::decode_payload(frame.kind, frame.payload.clone()),
                Ok(message)
            );
        }
    }
});
