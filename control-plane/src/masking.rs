//! Secret values never leave the server in what it shows: the pipeline
//! text served back (`GET /api/ci/pipelines[/{id}]`) has every value of a
//! `secrets:` mapping replaced with [`MASK`], and the `Debug` form of a job
//! spec prints `***` for them (the protocol crate sees to that).
//!
//! Secrets are write-only: the text as submitted (with its secrets) is
//! kept, sealed, for runs, and never shown; the masked text is what every
//! read path gets. Values shorter than [`MIN_MASKED_BYTES`] are not
//! searched for (masking `1` would garble every number), the same rule the
//! agent applies to job output.

use valkyrie_pipeline::Pipeline;

/// What a secret value is replaced with.
pub const MASK: &str = "***";

/// Secret values shorter than this are not masked (as in the agent's log
/// masking): they would match everywhere.
pub const MIN_MASKED_BYTES: usize = 3;

/// Every secret value of `pipeline` (all jobs, after merging).
pub fn secret_values(pipeline: &Pipeline) -> Vec<String> {
    let mut values: Vec<String> = pipeline
        .jobs
        .iter()
        .flat_map(|job| job.spec.secrets.iter().map(|(_, value)| value.clone()))
        .collect();
    values.sort();
    values.dedup();
    values
}

/// `text` with every occurrence of a secret value replaced by [`MASK`]:
/// the value itself, each line of a multi-line value (a block scalar is
/// indented in the file), and its escaped form (a double-quoted scalar).
pub fn mask(text: &str, values: &[String]) -> String {
    let mut needles: Vec<String> = Vec::new();
    for value in values {
        needles.push(value.clone());
        needles.extend(value.lines().map(|line| line.trim().to_owned()));
        // A double-quoted YAML scalar writes `"`, `\` and control
        // characters escaped, as JSON does.
        let escaped = serde_json::to_string(value).unwrap_or_default();
        if escaped.len() >= 2 {
            needles.push(escaped[1..escaped.len() - 1].to_owned());
        }
    }
    needles.retain(|n| n.len() >= MIN_MASKED_BYTES);
    // Longest first, so a secret that contains another is masked whole.
    needles.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
    needles.dedup();
    let mut out = text.to_owned();
    for needle in &needles {
        if out.contains(needle.as_str()) {
            out = out.replace(needle.as_str(), MASK);
        }
    }
    out
}

/// The pipeline text as shown: parsed to find its secrets, then masked.
/// A text that does not parse (stored before a format change) is not shown
/// at all rather than shown unmasked.
pub fn masked_pipeline_text(file_name: &str, text: &str) -> String {
    match valkyrie_pipeline::parse(file_name, text) {
        Ok(pipeline) => mask(text, &secret_values(&pipeline)),
        Err(_) => {
            "# this pipeline text no longer parses, so it is not shown (its secrets could not be masked)\n"
                .into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_value_is_masked_in_the_pipeline_text() {
        let text = "name: p\nsecrets:\n  TOKEN: tok-pipeline-123\njobs:\n  a:\n    secrets:\n      KEY: \"quo\\\"ted-456\"\n      CERT: |\n        line-one-789\n        line-two-abc\n      SHORT: ab\n    steps:\n      - run: echo hi\n";
        let shown = masked_pipeline_text("p.yaml", text);
        for leaked in [
            "tok-pipeline-123",
            "quo",
            "ted-456",
            "line-one-789",
            "line-two-abc",
        ] {
            assert!(!shown.contains(leaked), "{leaked} in {shown}");
        }
        assert!(shown.contains("TOKEN: ***"), "{shown}");
        assert!(shown.contains("echo hi"), "the rest is kept: {shown}");
        // Too short to mask without garbling the file (documented).
        assert!(shown.contains("SHORT: ab"), "{shown}");
    }

    #[test]
    fn a_text_that_does_not_parse_is_not_shown() {
        let shown = masked_pipeline_text("p.yaml", "secrets: {A: s3cret-value}\njobs: [");
        assert!(!shown.contains("s3cret"), "{shown}");
    }
}
