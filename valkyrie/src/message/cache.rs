//! What a job keeps between runs: the `cache` field of a JobSpec (`cache:`
//! in a pipeline). A cache is saved under a key, per project, and restored
//! by later jobs asking for that key or a fallback.

use serde::{Deserialize, Serialize};

use super::artifacts::ArtifactWhen;
use super::field::WireField;
use super::wire::{Reader, Writer};
use crate::error::DecodeError;

/// Whether a job restores a cache before its steps, saves it after them, or both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum CachePolicy {
    /// Restore before the first step, save after the last (the default).
    #[default]
    PullPush = 0,
    /// Restore only.
    Pull = 1,
    /// Save only.
    Push = 2,
}

impl CachePolicy {
    /// The spelling used in pipeline files.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PullPush => "pull-push",
            Self::Pull => "pull",
            Self::Push => "push",
        }
    }

    /// Parses the pipeline-file spelling.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pull-push" => Some(Self::PullPush),
            "pull" => Some(Self::Pull),
            "push" => Some(Self::Push),
            _ => None,
        }
    }

    /// Whether the cache is restored before the first step.
    pub fn pulls(self) -> bool {
        self != Self::Push
    }

    /// Whether the cache is saved after the last step.
    pub fn pushes(self) -> bool {
        self != Self::Pull
    }
}

/// One cache of a job: where its files are, and the key it is kept under.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheSpec {
    /// The key, as written: `$VAR`, `${VAR}` and `${{ hashFiles(…) }}` are
    /// evaluated by the agent in the checked-out workspace.
    pub key: String,
    /// Glob patterns, relative to the workspace, of what the cache holds.
    pub paths: Vec<String>,
    /// Restore, save, or both.
    pub policy: CachePolicy,
    /// Keys tried in order when `key` has no entry, each matching the
    /// newest entry whose key starts with it; evaluated like `key`.
    pub fallback_keys: Vec<String>,
    /// After which outcomes the cache is saved.
    pub when: ArtifactWhen,
}

impl WireField for CacheSpec {
    const MIN_BYTES: usize = 4 + 4 + 1 + 4 + 1;
    fn read(r: &mut Reader, _field: &'static str) -> Result<Self, DecodeError> {
        Ok(Self {
            key: r.string("cache.key")?,
            paths: r.strings("cache.paths")?,
            policy: match r.u8("cache.policy")? {
                0 => CachePolicy::PullPush,
                1 => CachePolicy::Pull,
                2 => CachePolicy::Push,
                other => return Err(r.invalid("cache.policy", other.into())),
            },
            fallback_keys: r.strings("cache.fallback_keys")?,
            when: ArtifactWhen::read(r, "cache.when")?,
        })
    }
    fn write(&self, w: &mut Writer) {
        w.string(&self.key);
        w.strings(&self.paths);
        w.u8(self.policy as u8);
        w.strings(&self.fallback_keys);
        w.u8(self.when as u8);
    }
}

/// Reads a JobSpec's trailing `cache` field: absent (option 0) for none.
pub(crate) fn read_caches(r: &mut Reader) -> Result<Vec<CacheSpec>, DecodeError> {
    Ok(r.option("job.cache", |r| {
        r.list("job.cache", CacheSpec::MIN_BYTES, |r| {
            CacheSpec::read(r, "job.cache")
        })
    })?
    .unwrap_or_default())
}

/// Writes a JobSpec's `cache` field: option 0 when there is none.
pub(crate) fn write_caches(caches: &[CacheSpec], w: &mut Writer) {
    if caches.is_empty() {
        w.u8(0);
    } else {
        w.u8(1);
        w.list(caches, |w, c| c.write(w));
    }
}

/// The longest cache key after evaluation and sanitising, in bytes.
pub const MAX_KEY_BYTES: usize = 200;
/// Fallback keys of one cache.
pub const MAX_FALLBACK_KEYS: usize = 8;
/// Patterns in one `hashFiles(…)`.
pub const MAX_HASH_PATTERNS: usize = 16;

/// A piece of a cache key template ([`parse_key`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// Text, with its `$VAR`s and `${VAR}`s still to expand.
    Text(String),
    /// `${{ hashFiles('a', 'b/**') }}`: the SHA-256 of the contents of the
    /// files these patterns match in the workspace, in path order.
    HashFiles(Vec<String>),
    /// `${{ matrix.NAME }}` left over: a name the job's matrix lacks.
    Matrix(String),
}

/// Why a cache key template does not parse: where (a byte offset in the
/// key), what, and a hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyError {
    /// Byte offset in the key.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Parses a cache key template: text with `$VAR`/`${VAR}` (kept in the
/// text, expanded by the agent like env values) and `${{ EXPR }}` where
/// EXPR is `hashFiles('PATTERN'[, 'PATTERN']…)` (single or double
/// quotes) or `matrix.NAME`.
pub fn parse_key(key: &str) -> Result<Vec<KeyPart>, KeyError> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let mut rest = key;
    while let Some(start) = rest.find("${{") {
        text.push_str(&rest[..start]);
        let offset = key.len() - rest.len() + start;
        let after = &rest[start + 3..];
        let Some(end) = after.find("}}") else {
            return Err(KeyError {
                offset,
                message: "`${{` is not closed".into(),
                hint: Some("close the expression with `}}`".into()),
            });
        };
        let expr = &after[..end];
        let inner_offset = offset + 3 + (expr.len() - expr.trim_start().len());
        if !text.is_empty() {
            parts.push(KeyPart::Text(std::mem::take(&mut text)));
        }
        parts.push(parse_expr(expr.trim(), inner_offset)?);
        rest = &after[end + 2..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        parts.push(KeyPart::Text(text));
    }
    Ok(parts)
}

fn parse_expr(expr: &str, offset: usize) -> Result<KeyPart, KeyError> {
    if let Some(name) = expr.strip_prefix("matrix.") {
        return Ok(KeyPart::Matrix(name.trim().to_owned()));
    }
    let err = |at: usize, message: String, hint: Option<String>| KeyError {
        offset: offset + at,
        message,
        hint,
    };
    let Some(open) = expr.find('(') else {
        return Err(err(
            0,
            format!("unknown expression `{expr}` in a cache key"),
            Some("use `hashFiles('PATTERN', …)` or `matrix.NAME`".into()),
        ));
    };
    let function = expr[..open].trim();
    if function != "hashFiles" {
        let hint = if function.eq_ignore_ascii_case("hashfiles")
            || function.eq_ignore_ascii_case("hash_files")
            || function.eq_ignore_ascii_case("hashfile")
        {
            "did you mean `hashFiles`?".to_owned()
        } else {
            "the one function of a cache key is `hashFiles('PATTERN', …)`".to_owned()
        };
        return Err(err(
            0,
            format!("unknown function `{function}` in a cache key"),
            Some(hint),
        ));
    }
    let Some(args) = expr[open + 1..].strip_suffix(')') else {
        return Err(err(
            open,
            "`hashFiles(` is not closed by `)` at the end of the expression".into(),
            None,
        ));
    };
    let mut patterns = Vec::new();
    let mut at = open + 1;
    let mut rest = args;
    loop {
        let trimmed = rest.trim_start();
        at += rest.len() - trimmed.len();
        let quote = trimmed.chars().next();
        let Some(quote @ ('\'' | '"')) = quote else {
            return Err(err(
                at,
                "`hashFiles` takes quoted patterns".into(),
                Some("write `hashFiles('Cargo.lock')`".into()),
            ));
        };
        let Some(close) = trimmed[1..].find(quote) else {
            return Err(err(at, "a pattern's quote is not closed".into(), None));
        };
        let pattern = &trimmed[1..1 + close];
        if pattern.is_empty() || pattern.starts_with('/') || pattern.split('/').any(|p| p == "..") {
            return Err(err(
                at,
                format!("`hashFiles` pattern `{pattern}` is empty or leaves the workspace"),
                Some("write patterns relative to the job's workspace, without `..`".into()),
            ));
        }
        patterns.push(pattern.to_owned());
        let after = trimmed[close + 2..].trim_start();
        at += trimmed.len() - after.len();
        match after.strip_prefix(',') {
            Some(next) => {
                at += 1;
                rest = next;
            }
            None if after.is_empty() => break,
            None => return Err(err(at, "expected `,` or `)` after a pattern".into(), None)),
        }
    }
    if patterns.len() > MAX_HASH_PATTERNS {
        return Err(err(
            open,
            format!("`hashFiles` takes at most {MAX_HASH_PATTERNS} patterns"),
            None,
        ));
    }
    Ok(KeyPart::HashFiles(patterns))
}

/// A cache key as stored: every character outside `A-Z a-z 0-9 . _ -`
/// becomes `_`, and a `.` right after a `.` becomes `_` (so no `/` and no
/// `..`). `None` when the result is empty or over [`MAX_KEY_BYTES`].
pub fn sanitize_key(key: &str) -> Option<String> {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        let keep = c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        out.push(if !keep || (c == '.' && out.ends_with('.')) {
            '_'
        } else {
            c
        });
    }
    (!out.is_empty() && out.len() <= MAX_KEY_BYTES).then_some(out)
}

/// Whether `key` is a stored key: what [`sanitize_key`] leaves unchanged.
pub fn valid_key(key: &str) -> bool {
    sanitize_key(key).as_deref() == Some(key)
}

/// The artifact name a cache entry of `key` is stored under, in the job
/// that saved it.
pub fn artifact_name(key: &str) -> String {
    format!("{CACHE_NAME_PREFIX}{key}{CACHE_NAME_SUFFIX}")
}

/// The key of a cache artifact `name`, if it is one with a valid key.
pub fn key_of_artifact(name: &str) -> Option<&str> {
    let key = name
        .strip_prefix(CACHE_NAME_PREFIX)?
        .strip_suffix(CACHE_NAME_SUFFIX)?;
    valid_key(key).then_some(key)
}

const CACHE_NAME_PREFIX: &str = "cache.";
const CACHE_NAME_SUFFIX: &str = ".tar";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_template_parses_into_text_and_expressions() {
        let parts = parse_key("cargo-$OS-${{ hashFiles('Cargo.lock', \"x/**/*.lock\") }}-v1").unwrap();
        assert_eq!(
            parts,
            [
                KeyPart::Text("cargo-$OS-".into()),
                KeyPart::HashFiles(vec!["Cargo.lock".into(), "x/**/*.lock".into()]),
                KeyPart::Text("-v1".into()),
            ]
        );
        assert_eq!(
            parse_key("${{matrix.os}}").unwrap(),
            [KeyPart::Matrix("os".into())]
        );
    }

    #[test]
    fn bad_templates_say_where() {
        let err = parse_key("k-${{ hashfiles('a') }}").unwrap_err();
        assert_eq!(err.offset, 6);
        assert_eq!(err.hint.as_deref(), Some("did you mean `hashFiles`?"));
        assert!(parse_key("k-${{ hashFiles('a') ")
            .unwrap_err()
            .message
            .contains("not closed"));
        let err = parse_key("${{ hashFiles('../x') }}").unwrap_err();
        assert_eq!(err.offset, 14);
        assert!(parse_key("${{ hashFiles(a) }}").is_err());
        assert!(parse_key("${{ hashFiles('a' 'b') }}").is_err());
    }

    #[test]
    fn keys_are_sanitised_and_names_round_trip() {
        assert_eq!(sanitize_key("a/b/../c d").as_deref(), Some("a_b_.__c_d"));
        assert_eq!(sanitize_key(""), None);
        assert_eq!(sanitize_key(&"k".repeat(MAX_KEY_BYTES + 1)), None);
        assert!(valid_key("cargo-linux-0f3a"));
        assert!(!valid_key("a/b"));
        assert_eq!(key_of_artifact(&artifact_name("cargo-1")), Some("cargo-1"));
        assert_eq!(key_of_artifact("artifacts.tar"), None);
        assert_eq!(key_of_artifact("cache.a..b.tar"), None);
    }
}
