//! `cache:` on the agent's side: files a job keeps between runs under a
//! key, per project, stored by the control plane as an artifact of the
//! job that saved them (so every agent shares them).
//!
//! Before the first step (after the checkout), each cache's key and
//! fallback keys are evaluated in the job's environment and workspace
//! ([`evaluate_key`]), the server is asked which entry to restore
//! (CacheLookup), and that entry is downloaded and unpacked into the
//! workspace with the rules of artifacts (nothing lands outside it). After
//! the last step, the caches whose policy pushes, whose `when` matches the
//! outcome and whose exact key had no entry are packed and uploaded.
//!
//! A cache is an optimisation: when restoring or saving fails, the job's
//! log says why and the job goes on (or keeps its outcome).
//!
//! This is not [`crate::cache`], the per-agent `$VALKYRIE_CACHE_DIR`
//! directories that tools like `~/.cargo` use on one machine: those stay
//! on the agent and are never uploaded.

use std::path::Path;
use std::sync::{Arc, Mutex};

use ring::digest::{Context, SHA256};
use valkyrie::message::cache::{artifact_name, parse_key, sanitize_key, KeyPart, MAX_KEY_BYTES};
use valkyrie::message::{CacheEntry, CacheLookup, CacheSpec, JobOutcome, Message};

use super::{pack, scratch, transfer, wanted, ArtifactLink, LogLine, ScratchFile};
use crate::executor::env::{expand, Env};

/// A cache whose keys were evaluated before the first step.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The cache as the job names it.
    pub spec: CacheSpec,
    /// Its key, evaluated and sanitised.
    pub key: String,
    /// Whether an entry of exactly `key` exists (then it is not saved again).
    pub exact_exists: bool,
}

/// What the restore leaves for the save: the caches resolved.
pub type Resolutions = Arc<Mutex<Vec<Resolved>>>;

/// Evaluates a key template in `workspace` with the job's `env`: `$VAR`s
/// expand like env values, `hashFiles(…)` is the SHA-256 of the matching
/// files' contents, in path order (empty when none matches, as GitHub's);
/// then the key is sanitised (`valkyrie::message::cache::sanitize_key`).
/// Blocking (it reads files).
pub fn evaluate_key(template: &str, env: &Env, workspace: &Path) -> Result<String, String> {
    let parts = parse_key(template).map_err(|e| format!("cache key `{template}`: {}", e.message))?;
    let mut key = String::new();
    for part in parts {
        match part {
            KeyPart::Text(text) => {
                let expanded = expand(&text, |name| env.get(name)).ok_or_else(|| {
                    format!("cache key `{template}` is too long after expanding its variables")
                })?;
                key.push_str(&expanded);
            }
            KeyPart::HashFiles(patterns) => key.push_str(&hash_files(workspace, &patterns)?),
            KeyPart::Matrix(name) => {
                return Err(format!(
                    "cache key `{template}` names `matrix.{name}`, which the job's matrix lacks"
                ))
            }
        }
        if key.len() > 4 * MAX_KEY_BYTES {
            break;
        }
    }
    sanitize_key(&key).ok_or_else(|| {
        format!(
            "cache key `{template}` evaluates to `{}`, which is empty or over {MAX_KEY_BYTES} bytes",
            key.chars().take(MAX_KEY_BYTES + 8).collect::<String>()
        )
    })
}

/// SHA-256 over the contents of the regular files of `workspace` matching
/// `patterns`, in path order; the empty string when none matches.
/// Symbolic links are not followed.
pub fn hash_files(workspace: &Path, patterns: &[String]) -> Result<String, String> {
    let set = pack::globset(patterns).map_err(|e| e.to_string())?;
    let mut hasher = Context::new(&SHA256);
    let mut any = false;
    let mut buf = vec![0u8; 64 << 10];
    for entry in walkdir::WalkDir::new(workspace)
        .follow_links(false)
        .sort_by_file_name()
    {
        let entry = entry.map_err(|e| format!("hashFiles cannot read the workspace: {e}"))?;
        let rel = entry.path().strip_prefix(workspace).expect("under the root");
        if !entry.file_type().is_file() || !pack::matches(&set, rel) {
            continue;
        }
        let mut file = std::fs::File::open(entry.path())
            .map_err(|e| format!("hashFiles cannot read {}: {e}", rel.display()))?;
        loop {
            let n = std::io::Read::read(&mut file, &mut buf)
                .map_err(|e| format!("hashFiles cannot read {}: {e}", rel.display()))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        any = true;
    }
    Ok(if any {
        hex::encode(hasher.finish().as_ref())
    } else {
        String::new()
    })
}

/// Asks the server which entry matches `keys` (exact first).
async fn lookup(
    link: &mut ArtifactLink,
    job_id: u64,
    attempt: u32,
    keys: Vec<String>,
    restore: bool,
) -> Result<CacheEntry, String> {
    let request = CacheLookup {
        job_id,
        attempt,
        keys,
        restore,
    };
    match link.request(request).await {
        Ok(Message::CacheEntry(entry)) => Ok(entry),
        Ok(other) => Err(format!("unexpected answer {}", other.kind())),
        Err(err) => Err(err.to_string()),
    }
}

/// Evaluates one cache's keys; blocking.
fn keys_of(spec: &CacheSpec, env: &Env, workspace: &Path) -> Result<Vec<String>, String> {
    std::iter::once(&spec.key)
        .chain(&spec.fallback_keys)
        .map(|template| evaluate_key(template, env, workspace))
        .collect()
}

/// Before the first step: evaluates the keys of `caches` and restores
/// those that pull. Returns the caches resolved (for [`save`]); lines for
/// the job's log go to `log`.
pub async fn restore(
    link: &mut ArtifactLink,
    job_id: u64,
    attempt: u32,
    caches: &[CacheSpec],
    env: &Env,
    workspace: &Path,
    log: &mut Vec<LogLine>,
) -> Vec<Resolved> {
    let mut resolved = Vec::new();
    for spec in caches {
        let (s, e, w) = (spec.clone(), env.clone(), workspace.to_owned());
        let keys = match tokio::task::spawn_blocking(move || keys_of(&s, &e, &w)).await {
            Ok(Ok(keys)) => keys,
            Ok(Err(error)) => {
                log.push(format!("[valkyrie] cache not used: {error}\n"));
                continue;
            }
            Err(error) => {
                log.push(format!("[valkyrie] cache not used: {error}\n"));
                continue;
            }
        };
        let key = keys[0].clone();
        let entry = match lookup(link, job_id, attempt, keys, spec.policy.pulls()).await {
            Ok(entry) => entry,
            Err(error) => {
                log.push(format!(
                    "[valkyrie] cache `{key}`: cannot look it up ({error}); going on without it\n"
                ));
                resolved.push(Resolved {
                    spec: spec.clone(),
                    key,
                    exact_exists: false,
                });
                continue;
            }
        };
        let exact_exists = !entry.key.is_empty() && entry.exact;
        if spec.policy.pulls() {
            log.push(restore_one(link, &key, &entry, workspace).await);
        }
        resolved.push(Resolved {
            spec: spec.clone(),
            key,
            exact_exists,
        });
    }
    resolved
}

/// Downloads and unpacks `entry`; the line that says what happened.
async fn restore_one(link: &mut ArtifactLink, key: &str, entry: &CacheEntry, workspace: &Path) -> LogLine {
    if entry.key.is_empty() {
        return format!("[valkyrie] cache miss: no entry for key `{key}` or its fallback keys\n");
    }
    let started = std::time::Instant::now();
    let scratch_file = ScratchFile(scratch(workspace, "cache"));
    let archive = scratch_file.path().to_owned();
    let result = async {
        transfer::download(link, entry.job_id, &entry.name, &archive)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| "the entry's archive is gone".to_owned())?;
        let (from, to) = (archive.clone(), workspace.to_owned());
        tokio::task::spawn_blocking(move || pack::unpack(&from, &to))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }
    .await;
    drop(scratch_file);
    let how = if entry.exact {
        format!("cache hit: restored key `{}`", entry.key)
    } else {
        format!("cache fallback hit: restored key `{}` for key `{key}`", entry.key)
    };
    match result {
        Ok(files) => format!(
            "[valkyrie] {how}: {files} file(s), {} bytes in {}\n",
            entry.size,
            super::rate(entry.size, started.elapsed())
        ),
        Err(error) => format!("[valkyrie] {how} failed ({error}); going on without it\n"),
    }
}

/// After the last step: saves the resolved caches that push, whose `when`
/// matches `outcome` and whose key has no entry yet (entries are immutable).
/// Lines for the job's log go to `log`.
#[allow(clippy::too_many_arguments)]
pub async fn save(
    link: &mut ArtifactLink,
    job_id: u64,
    attempt: u32,
    resolved: &[Resolved],
    outcome: JobOutcome,
    workspace: &Path,
    max_bytes: u64,
    log: &mut Vec<LogLine>,
) {
    for cache in resolved {
        if !cache.spec.policy.pushes() || !wanted(cache.spec.when, outcome) {
            continue;
        }
        if cache.exact_exists {
            log.push(format!(
                "[valkyrie] cache `{}` not saved: an entry of that key exists (entries are never replaced)\n",
                cache.key
            ));
            continue;
        }
        log.push(save_one(link, job_id, attempt, cache, workspace, max_bytes).await);
    }
}

async fn save_one(
    link: &mut ArtifactLink,
    job_id: u64,
    attempt: u32,
    cache: &Resolved,
    workspace: &Path,
    max_bytes: u64,
) -> LogLine {
    let archive = scratch(workspace, "cache-save");
    let started = std::time::Instant::now();
    let result = async {
        let (ws, paths, out) = (workspace.to_owned(), cache.spec.paths.clone(), archive.clone());
        let packed = tokio::task::spawn_blocking(move || pack::pack(&ws, &paths, &[], &out, max_bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| match e {
                pack::PackError::TooLarge { limit } => {
                    format!("the cache is over the limit of {limit} bytes (agent flag --max-artifact-bytes)")
                }
                other => other.to_string(),
            })?;
        if packed.entries == 0 {
            return Ok(None);
        }
        let name = artifact_name(&cache.key);
        transfer::upload(
            link,
            transfer::UploadSpec {
                job_id,
                attempt,
                name: &name,
                path: &packed.path,
                size: packed.size,
                sha256: &packed.sha256,
                expire_in_ms: 0,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        // The server keeps the first save of a key and acknowledges a
        // later one without storing it: whose entry the key holds now
        // says whether this job saved it.
        let entry = lookup(link, job_id, attempt, vec![cache.key.clone()], false)
            .await
            .map_err(|e| format!("saved, but cannot confirm it ({e})"))?;
        if entry.key.is_empty() || entry.job_id != job_id {
            return Err(match entry.job_id {
                0 => "the server kept no entry of that key".to_owned(),
                other => format!("job {other} saved that key first (entries are never replaced)"),
            });
        }
        Ok::<_, String>(Some(packed))
    }
    .await;
    let _ = tokio::fs::remove_file(&archive).await;
    match result {
        Ok(Some(packed)) => format!(
            "[valkyrie] cache saved: key `{}`, {} file(s), {} bytes in {}\n",
            cache.key,
            packed.entries,
            packed.size,
            super::rate(packed.size, started.elapsed())
        ),
        Ok(None) => format!(
            "[valkyrie] cache `{}` not saved: no file matches {}\n",
            cache.key,
            cache.spec.paths.join(", ")
        ),
        Err(error) => format!("[valkyrie] cache `{}` not saved: {error}\n", cache.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_files_follows_the_contents_in_path_order() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("Cargo.lock"), "a").unwrap();
        std::fs::create_dir_all(ws.path().join("x/y")).unwrap();
        std::fs::write(ws.path().join("x/y/z.lock"), "b").unwrap();
        std::fs::write(ws.path().join("other"), "c").unwrap();
        let patterns = ["Cargo.lock".to_owned(), "x/**/*.lock".to_owned()];
        let first = hash_files(ws.path(), &patterns).unwrap();
        let expected = hex::encode(ring::digest::digest(&SHA256, b"ab").as_ref());
        assert_eq!(first, expected);
        std::fs::write(ws.path().join("other"), "changed").unwrap();
        assert_eq!(hash_files(ws.path(), &patterns).unwrap(), first);
        std::fs::write(ws.path().join("x/y/z.lock"), "B").unwrap();
        assert_ne!(hash_files(ws.path(), &patterns).unwrap(), first);
        assert_eq!(hash_files(ws.path(), &["none".into()]).unwrap(), "");
    }

    #[test]
    fn keys_expand_variables_and_are_sanitised() {
        let ws = tempfile::tempdir().unwrap();
        std::fs::write(ws.path().join("Cargo.lock"), "a").unwrap();
        let mut env = Env::default();
        env.set("OS", "linux/x86".into());
        let key = evaluate_key("cargo-${OS}-$OS-${{ hashFiles('Cargo.lock') }}", &env, ws.path()).unwrap();
        let hash = hex::encode(ring::digest::digest(&SHA256, b"a").as_ref());
        assert_eq!(key, format!("cargo-linux_x86-linux_x86-{hash}"));
        let err = evaluate_key("$NOTHING", &env, ws.path()).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let err = evaluate_key("${{ matrix.os }}", &env, ws.path()).unwrap_err();
        assert!(err.contains("matrix.os"), "{err}");
    }
}
