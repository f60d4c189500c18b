//! `cache:` (files a job keeps between runs under a key, per project), see
//! `spec/pipeline.md`, "Caches".

use marked_yaml::Node;
use valkyrie::message::cache::{parse_key, MAX_FALLBACK_KEYS, MAX_KEY_BYTES};
use valkyrie::message::{ArtifactWhen, CachePolicy, CacheSpec};

use super::artifacts::patterns;
use super::Ctx;

/// Caches of one job.
pub const MAX_CACHES: usize = 4;
/// Length of a key template as written (its evaluated form is at most
/// [`MAX_KEY_BYTES`]).
pub const MAX_KEY_TEMPLATE_BYTES: usize = 1024;

const CACHE_KEYS: &[&str] = &["key", "paths", "policy", "fallback_keys", "when"];

/// Parses `cache:`, a mapping or a list of them; `what` names the job (or
/// `defaults`) in errors.
pub(super) fn parse(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Vec<CacheSpec> {
    match node {
        Node::Sequence(seq) => {
            let what = format!("{what} cache");
            if !cx.few_enough(seq.span(), seq.len(), MAX_CACHES, &what) {
                return Vec::new();
            }
            seq.iter().filter_map(|n| parse_one(cx, n, &what)).collect()
        }
        other => parse_one(cx, other, &format!("{what} cache"))
            .into_iter()
            .collect(),
    }
}

fn parse_one(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<CacheSpec> {
    let map = cx.mapping(node, what)?;
    cx.check_keys(map, CACHE_KEYS, what);
    let key = match map.get_node("key") {
        Some(n) => key_template(cx, n, &format!("{what} key")).unwrap_or_default(),
        None => {
            cx.error(
                map.span(),
                format!("{what} has no `key`"),
                Some("add `key:`, e.g. `key: cargo-${{ hashFiles('Cargo.lock') }}`".into()),
            );
            String::new()
        }
    };
    let paths = match map.get_node("paths") {
        Some(n) => {
            let written_empty = match n {
                Node::Sequence(seq) => seq.is_empty(),
                Node::Scalar(s) => s.as_str().is_empty(),
                Node::Mapping(_) => false,
            };
            if written_empty {
                cx.error(
                    n.span(),
                    format!("{what} paths is empty"),
                    Some("name at least one path".into()),
                );
            }
            patterns(cx, n, &format!("{what} paths"))
        }
        None => {
            cx.error(
                map.span(),
                format!("{what} has no `paths`"),
                Some("add `paths:` with what to keep, e.g. `paths: [target/]`".into()),
            );
            Vec::new()
        }
    };
    let fallback_keys = match map.get_node("fallback_keys") {
        None => Vec::new(),
        Some(n) => {
            let what = format!("{what} fallback_keys");
            if let Node::Sequence(seq) = n {
                if !cx.few_enough(seq.span(), seq.len(), MAX_FALLBACK_KEYS, &what) {
                    return None;
                }
            }
            match n {
                Node::Sequence(seq) => seq.iter().filter_map(|k| key_template(cx, k, &what)).collect(),
                other => key_template(cx, other, &what).into_iter().collect(),
            }
        }
    };
    let policy = match map.get_node("policy") {
        None => CachePolicy::default(),
        Some(n) => {
            let s = cx.scalar(n, &format!("{what} policy"))?;
            CachePolicy::from_name(s.as_str().trim()).unwrap_or_else(|| {
                let hint = super::did_you_mean(s.as_str().trim(), ["pull", "push", "pull-push"])
                    .unwrap_or_else(|| "use pull, push or pull-push".into());
                cx.error(
                    s.span(),
                    format!("{what} has an unknown `policy` `{}`", s.as_str()),
                    Some(hint),
                );
                CachePolicy::default()
            })
        }
    };
    let when = match map.get_node("when") {
        None => ArtifactWhen::OnSuccess,
        Some(n) => {
            let s = cx.scalar(n, &format!("{what} when"))?;
            ArtifactWhen::from_name(s.as_str().trim()).unwrap_or_else(|| {
                let hint = super::did_you_mean(s.as_str().trim(), ["on_success", "on_failure", "always"])
                    .unwrap_or_else(|| "use on_success, on_failure or always".into());
                cx.error(
                    s.span(),
                    format!("{what} has an unknown `when` `{}`", s.as_str()),
                    Some(hint),
                );
                ArtifactWhen::OnSuccess
            })
        }
    };
    Some(CacheSpec {
        key,
        paths,
        policy,
        fallback_keys,
        when,
    })
}

/// A key template: a single value that [`parse_key`] accepts.
fn key_template(cx: &mut Ctx<'_>, node: &Node, what: &str) -> Option<String> {
    let s = cx.scalar(node, what)?;
    let text = s.as_str().trim();
    if text.is_empty() {
        cx.error(s.span(), format!("{what} is empty"), None);
        return None;
    }
    if !cx.fits(s.span(), text, MAX_KEY_TEMPLATE_BYTES, what) {
        return None;
    }
    if let Err(err) = parse_key(text) {
        cx.error(
            s.span(),
            format!(
                "{what} `{text}`: {} (at character {})",
                err.message,
                err.offset + 1
            ),
            err.hint,
        );
        return None;
    }
    // A key without expressions or variables is known now: check its length.
    if !text.contains('$') && text.len() > MAX_KEY_BYTES {
        cx.error(
            s.span(),
            format!(
                "{what} is {} bytes long, over the limit of {MAX_KEY_BYTES} bytes",
                text.len()
            ),
            None,
        );
        return None;
    }
    Some(text.to_owned())
}
