//! Encode and decode speed of the main messages, and the incremental
//! decoder's throughput over a buffer of many frames.
//!
//! `cargo bench -p valkyrie-benches --bench codec`

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use valkyrie::frame::{decode_exact, encode_frame, encode_to_vec, FrameDecoder, DEFAULT_MAX_FRAME_BYTES};
use valkyrie::message::*;
use valkyrie::{Flags, Message};

fn pair(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

/// A CI job as a pipeline would submit it: four steps, env, a secret.
fn job_spec() -> JobSpec {
    JobSpec {
        name: "build-and-test".into(),
        project: "valkyrie".into(),
        priority: 5,
        tags: vec!["linux".into(), "x86_64".into()],
        steps: vec![
            StepSpec::shell("git checkout --detach 3f9a2c1"),
            StepSpec {
                name: "build".into(),
                command: StepCommand::Shell("cargo build --release --locked".into()),
                env: vec![pair("RUSTFLAGS", "-D warnings")],
                working_directory: Some("valkyrie".into()),
                continue_on_error: false,
                condition: StepCondition::OnSuccess,
            },
            StepSpec::shell("cargo test --workspace --locked"),
            StepSpec::shell("cargo clippy --workspace -- -D warnings"),
        ],
        env: vec![pair("CI", "true"), pair("CARGO_TERM_COLOR", "never")],
        secrets: vec![pair("REGISTRY_TOKEN", "s3cr3t-t0ken")],
        timeout_ms: 3_600_000,
        retry: RetryPolicy::default(),
        shell: vec!["bash".into(), "-euo".into(), "pipefail".into(), "-c".into()],
        container: None,
        trigger: None,
        artifacts: None,
        cache: Vec::new(),
    }
}

fn log_data() -> Bytes {
    let line = b"   Compiling valkyrie v0.1.0 (/work/main/valkyrie) warning: unused variable\n";
    Bytes::from(line.iter().copied().cycle().take(4096).collect::<Vec<u8>>())
}

fn cases() -> Vec<(&'static str, Message)> {
    vec![
        (
            "assign",
            Assign {
                job_id: 1042,
                attempt: 2,
                lease_ms: 5000,
                spec: job_spec(),
            }
            .into(),
        ),
        (
            "log_chunk_4k",
            LogChunk {
                job_id: 1042,
                attempt: 2,
                seq: 17,
                stream: OutputStream::Stdout,
                data: log_data(),
            }
            .into(),
        ),
        (
            "event_log_4k",
            Event {
                job_id: 1042,
                body: EventBody::Log {
                    stream: OutputStream::Stdout,
                    seq: 17,
                    data: log_data(),
                },
            }
            .into(),
        ),
        ("submit_job", SubmitJob { spec: job_spec() }.into()),
        ("heartbeat", Heartbeat { running: 3 }.into()),
    ]
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    for (name, message) in cases() {
        let len = encode_to_vec(&message, 1, Flags::NONE).len();
        group.throughput(Throughput::Bytes(len as u64));
        // The transport appends to a reused buffer, so the bench does too.
        let mut buf = BytesMut::with_capacity(64 * 1024);
        group.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                encode_frame(
                    black_box(&message),
                    1,
                    Flags::NONE,
                    DEFAULT_MAX_FRAME_BYTES,
                    &mut buf,
                )
                .unwrap();
                black_box(buf.len())
            })
        });
    }
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, message) in cases() {
        let bytes = encode_to_vec(&message, 1, Flags::NONE);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter(|| decode_exact(black_box(&bytes), DEFAULT_MAX_FRAME_BYTES).unwrap())
        });
    }
    group.finish();
}

/// 1000 frames of a realistic mix (mostly log chunks, some heartbeats and
/// dispatch reports) in one buffer, cut into frames and decoded.
fn decoder_throughput(c: &mut Criterion) {
    let mut stream = Vec::new();
    for i in 0..1000u64 {
        let message: Message = match i % 10 {
            0 => Heartbeat { running: 2 }.into(),
            1 => StepResult {
                job_id: 1042,
                attempt: 2,
                step: (i % 4) as u32,
                outcome: StepOutcome::Succeeded,
                exit_code: Some(0),
                duration_ms: 1200,
            }
            .into(),
            _ => LogChunk {
                job_id: 1042,
                attempt: 2,
                seq: i,
                stream: OutputStream::Stdout,
                data: Bytes::from_static(
                    b"test result: ok. 12 passed; 0 failed; 0 ignored; finished in 0.03s\n",
                ),
            }
            .into(),
        };
        stream.extend_from_slice(&encode_to_vec(&message, 0, Flags::NONE));
    }
    let mut group = c.benchmark_group("frame_decoder");
    group.throughput(Throughput::Bytes(stream.len() as u64));
    group.bench_function("1000_frames_framing_only", |b| {
        b.iter_batched_ref(
            || FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
            |decoder| {
                decoder.extend(&stream);
                let mut n = 0;
                while let Some(frame) = decoder.next_frame().unwrap() {
                    black_box(&frame);
                    n += 1;
                }
                assert_eq!(n, 1000);
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("1000_frames_with_messages", |b| {
        b.iter_batched_ref(
            || FrameDecoder::new(DEFAULT_MAX_FRAME_BYTES),
            |decoder| {
                decoder.extend(&stream);
                let mut n = 0;
                while let Some(frame) = decoder.next_frame().unwrap() {
                    black_box(frame.message().unwrap());
                    n += 1;
                }
                assert_eq!(n, 1000);
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, encode, decode, decoder_throughput);
criterion_main!(benches);
