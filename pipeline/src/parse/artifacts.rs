//! `artifacts:` (what a job hands on to later jobs) and `dependencies:`
//! (whose artifacts a job downloads), see `spec/pipeline.md`, "Artifacts".

use marked_yaml::Node;

use super::Ctx;
use valkyrie::message::{ArtifactWhen, ArtifactsSpec};

/// Patterns in `paths` or `exclude`.
pub const MAX_ARTIFACT_PATTERNS: usize = 64;
/// Length of one pattern.
pub const MAX_PATTERN_BYTES: usize = 1024;

const ARTIFACTS_KEYS: &[&str] = &["paths", "exclude", "expire_in", "when"];

/// Parses a job's `artifacts:` mapping; `what` names the job in errors.
pub(super) fn parse(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<ArtifactsSpec> {
    let what = format!("{what} artifacts");
    let map = cx.mapping(node, &what)?;
    cx.check_keys(map, ARTIFACTS_KEYS, &what);
    let paths = match map.get_node("paths") {
        Some(n) => patterns(cx, n, &format!("{what} paths")),
        None => {
            cx.error(
                map.span(),
                format!("{what} has no `paths`"),
                Some("add `paths:` with the files to keep, e.g. `paths: [dist/]`".into()),
            );
            Vec::new()
        }
    };
    let written_empty = match map.get_node("paths") {
        Some(Node::Sequence(seq)) => seq.is_empty(),
        Some(Node::Scalar(s)) => s.as_str().is_empty(),
        _ => false,
    };
    if written_empty {
        let span = *map.get_node("paths").expect("checked above").span();
        cx.error(
            &span,
            format!("{what} paths is empty"),
            Some("name at least one path".into()),
        );
    }
    let exclude = map
        .get_node("exclude")
        .map(|n| patterns(cx, n, &format!("{what} exclude")))
        .unwrap_or_default();
    let expire_in_ms = map
        .get_node("expire_in")
        .and_then(|n| cx.duration_ms(n, &format!("{what} expire_in")))
        .unwrap_or(0);
    let when = match map.get_node("when") {
        None => ArtifactWhen::OnSuccess,
        Some(n) => {
            let s = cx.scalar(n, &format!("{what} when"))?;
            match ArtifactWhen::from_name(s.as_str().trim()) {
                Some(when) => when,
                None => {
                    cx.error(
                        s.span(),
                        format!("{what} has an unknown `when` `{}`", s.as_str()),
                        Some("use on_success, on_failure or always".into()),
                    );
                    ArtifactWhen::OnSuccess
                }
            }
        }
    };
    Some(ArtifactsSpec {
        paths,
        exclude,
        when,
        expire_in_ms,
        download_from: Vec::new(),
    })
}

/// Glob patterns relative to the workspace: never absolute, never `..`.
pub(super) fn patterns(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Vec<String> {
    if let Node::Sequence(seq) = node {
        if !cx.few_enough(seq.span(), seq.len(), MAX_ARTIFACT_PATTERNS, what) {
            return Vec::new();
        }
    }
    let mut out = Vec::new();
    for (pattern, span) in cx.strings(node, what) {
        if !cx.fits(&span, &pattern, MAX_PATTERN_BYTES, what) {
            continue;
        }
        if pattern.starts_with('/') || pattern.split('/').any(|part| part == "..") {
            cx.error(
                &span,
                format!("{what} `{pattern}` leaves the workspace"),
                Some("write paths relative to the job's workspace, without `..`".into()),
            );
            continue;
        }
        out.push(pattern);
    }
    out
}
