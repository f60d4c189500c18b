//! Arbitrary text against the pipeline parser and validator
//! (`valkyrie_pipeline::parse`), the code `vk validate` runs and the
//! server runs on every `POST /api/ci/pipelines`.
//!
//! It runs the parser on a thread with the stack a tokio thread gets
//! (2 MiB, worker or blocking), so input nested deep enough to overflow the
//! server's stack overflows here too (on the fuzzer's 8 MiB main thread it
//! would take four times the depth to show).
//!
//! Beyond "never panics, never overflows the stack", every answer is checked:
//! an error list is never empty and each error names the file and a
//! position inside the text; a valid pipeline has jobs with unique names,
//! stages it declares, and dependencies that point at other jobs.
//!
//! Seeds: `fuzz/seed_corpus.sh` (examples/*.yaml, the YAML examples of
//! spec/pipeline.md, and deep-nesting inputs).

#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use valkyrie_pipeline::parse;

/// Tokio's default thread stack (`thread_stack_size`), the stack the server
/// parses pipelines on.
const SERVER_STACK_BYTES: usize = 2 << 20;

const FILE: &str = "fuzz.yaml";

fn check(text: &str) {
    match parse(FILE, text) {
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an Err with no errors in it");
            // YAML breaks lines at \n, \r\n and a lone \r; counting each
            // \r and \n gives an upper bound on the line count.
            let breaks = text.bytes().filter(|&b| b == b'\n' || b == b'\r').count();
            for e in &errors.0 {
                assert_eq!(e.file, FILE);
                assert!(e.line >= 1 && e.column >= 1, "position 0 in {e}");
                assert!(
                    e.line <= breaks + 2,
                    "line {} of a {breaks}-break text: {e}",
                    e.line
                );
                assert!(!e.message.is_empty());
            }
            let shown = errors.to_string();
            assert!(shown.starts_with(FILE));
        }
        Ok(pipeline) => {
            assert!(!pipeline.jobs.is_empty(), "a valid pipeline without jobs");
            let mut names = HashSet::new();
            for (i, job) in pipeline.jobs.iter().enumerate() {
                assert!(names.insert(job.name.as_str()), "job `{}` twice", job.name);
                assert!(
                    pipeline.stages.contains(&job.stage),
                    "job `{}` in undeclared stage `{}`",
                    job.name,
                    job.stage
                );
                for &d in &job.depends_on {
                    assert!(d < pipeline.jobs.len() && d != i, "job {i} depends on {d}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The server refuses non-UTF-8 bodies before parsing; lossy decoding
    // keeps every input useful instead of dropping most of them.
    let text = String::from_utf8_lossy(data);
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .stack_size(SERVER_STACK_BYTES)
            .spawn_scoped(scope, || check(&text))
            .expect("spawn the parser thread")
            .join()
            .expect("the parser panicked");
    });
});
