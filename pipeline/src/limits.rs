//! Bounds on what a pipeline file can make the validator (and the runs made
//! from it) do. Every limit is checked before the work it bounds, and an
//! input over one is refused with an error that names the limit.
//! `spec/pipeline.md` ("Limits") lists them; keep the two in step.
//!
//! The document-level bounds (bytes, nesting depth, node count, one
//! document, no anchors) are checked by `check_document` with the YAML
//! parser's own event stream, which is iterative: the tree loader is
//! recursive, so a 5,000-deep document must never reach it.

use yaml_rust2::parser::{Event, Parser};

use super::error::PipelineError;

/// Largest pipeline file, in bytes.
pub const MAX_PIPELINE_BYTES: usize = 1024 * 1024;
/// Deepest nesting of lists and mappings (the document itself is depth 1).
pub const MAX_DEPTH: usize = 32;
/// Most YAML nodes (scalars, lists and mappings) in one file.
pub const MAX_NODES: usize = 200_000;
/// Most jobs in a pipeline, after matrix expansion.
pub const MAX_JOBS: usize = 2_000;
/// Most stages.
pub const MAX_STAGES: usize = 100;
/// Most jobs one matrix expands into (the product of its values, less
/// `exclude`, plus `include`).
pub const MAX_MATRIX_COMBINATIONS: usize = 256;
/// Most keys in one matrix.
pub const MAX_MATRIX_KEYS: usize = 16;
/// Most steps in one job.
pub const MAX_STEPS_PER_JOB: usize = 256;
/// Largest `run:` text of one step, in bytes.
pub const MAX_RUN_BYTES: usize = 64 * 1024;
/// Most variables in one `env` or `secrets` mapping.
pub const MAX_ENV_VARS: usize = 256;
/// Largest value of one variable, in bytes.
pub const MAX_ENV_VALUE_BYTES: usize = 32 * 1024;
/// Most runner tags of one job.
pub const MAX_TAGS: usize = 32;
/// Deepest `checkout: {depth: N}` (0 means the whole history).
pub const MAX_CHECKOUT_DEPTH: u32 = 1_000_000;
/// Longest name (job, display name, stage, step, variable, tag, matrix key
/// or value, project), in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Largest total size of the jobs after matrix expansion (their step
/// commands, environment and secrets), in bytes: a matrix multiplies its
/// job's size by the number of combinations.
pub const MAX_EXPANDED_BYTES: usize = 16 * 1024 * 1024;
/// Most dependencies between jobs after matrix expansion: a job that needs
/// a matrix job depends on each of its expansions, once per expansion of
/// its own.
pub const MAX_DEPENDENCIES: usize = 200_000;
/// Longest `if:` expression, in bytes.
pub const MAX_EXPR_BYTES: usize = 4 * 1024;
/// Deepest nesting of an `if:` expression (parentheses and `!`).
pub const MAX_EXPR_DEPTH: usize = 32;
/// Most errors reported for one file; the rest are counted.
pub const MAX_ERRORS: usize = 100;

/// Checks the bounds that must hold before the file is loaded into a tree:
/// size, nesting depth, node count, a single document, no anchors, aliases
/// or tags. Runs in time linear in `text` and constant memory.
pub(crate) fn check_document(file: &str, text: &str) -> Result<(), PipelineError> {
    let error = |line: usize, column: usize, message: String, hint: Option<String>| PipelineError {
        file: file.to_owned(),
        line,
        column,
        message,
        hint,
    };
    if text.len() > MAX_PIPELINE_BYTES {
        return Err(error(
            1,
            1,
            format!(
                "the pipeline file is {} bytes, over the limit of {MAX_PIPELINE_BYTES} bytes",
                text.len()
            ),
            Some("split it into several pipelines".into()),
        ));
    }
    let mut parser = Parser::new_from_str(text);
    let mut depth = 0usize;
    let mut nodes = 0usize;
    let mut documents = 0usize;
    loop {
        let (event, mark) = match parser.next_token() {
            Ok(next) => next,
            Err(e) => {
                let m = e.marker();
                // The scanner reads ahead through open flow brackets (each
                // may start a key) and stops at its own nesting limit, deeper
                // than ours, before we see the events: the same refusal.
                let (message, hint) = if e.info().contains("recursion limit") {
                    (too_deep(), Some(too_deep_hint()))
                } else {
                    (format!("invalid YAML: {}", e.info()), None)
                };
                return Err(error(m.line().max(1), m.col() + 1, message, hint));
            }
        };
        let at =
            |message: String, hint: Option<String>| error(mark.line().max(1), mark.col() + 1, message, hint);
        let (anchor, tagged) = match &event {
            Event::StreamEnd => return Ok(()),
            Event::DocumentStart => {
                documents += 1;
                if documents > 1 {
                    return Err(at(
                        "the file holds more than one YAML document".into(),
                        Some("a pipeline file is one document: remove the `---` and what follows, or split it into several files".into()),
                    ));
                }
                continue;
            }
            Event::Alias(_) => {
                return Err(at(anchors_unsupported(), Some(anchors_hint())));
            }
            Event::Scalar(_, _, anchor, tag) => {
                nodes += 1;
                (*anchor, tag.is_some())
            }
            Event::SequenceStart(anchor, tag) | Event::MappingStart(anchor, tag) => {
                nodes += 1;
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(at(too_deep(), Some(too_deep_hint())));
                }
                (*anchor, tag.is_some())
            }
            Event::SequenceEnd | Event::MappingEnd => {
                depth = depth.saturating_sub(1);
                continue;
            }
            _ => continue,
        };
        if anchor != 0 {
            return Err(at(anchors_unsupported(), Some(anchors_hint())));
        }
        if tagged {
            return Err(at(
                "YAML tags (`!name`, `!!str`) are not supported".into(),
                Some("write the value without its tag; quote it to keep it a string".into()),
            ));
        }
        if nodes > MAX_NODES {
            return Err(at(
                format!("the file has more than {MAX_NODES} YAML values (scalars, lists and mappings)"),
                Some("split it into several pipelines".into()),
            ));
        }
    }
}

fn too_deep() -> String {
    format!("lists and mappings are nested more than {MAX_DEPTH} deep")
}

fn too_deep_hint() -> String {
    format!("a pipeline needs a few levels; the limit is {MAX_DEPTH}")
}

fn anchors_unsupported() -> String {
    "YAML anchors and aliases (`&name`, `*name`, `<<: *name`) are not supported".into()
}

pub(crate) fn anchors_hint() -> String {
    "put what jobs share in `defaults:` (shell, env, timeout, tags, retry) or the pipeline's `env:`; \
     anchors are refused because an alias can expand a small file into a huge one"
        .into()
}
