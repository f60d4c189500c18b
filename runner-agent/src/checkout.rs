//! Checks a job's commit out into its workspace before the first step.
//!
//! The agent keeps one bare mirror per repository in
//! `<work dir>/git-mirrors/`, shared by every job of every project that
//! uses that repository. A job whose commit the mirror already has fetches
//! nothing; otherwise the mirror fetches the pushed ref (then, if the ref
//! has moved on, the commit itself), `depth` commits deep (1 unless the
//! job asks for more; 0 is the whole history). The workspace is then a
//! repository that borrows the mirror's objects (`objects/info/alternates`)
//! and checks the commit out: its own `.git` holds only the index and the
//! refs, so a second job on the same commit takes the time of writing its
//! files, not of a clone. Mirrors never run `gc` (it could drop objects a
//! workspace borrows); `git-mirrors` may be removed while the agent is
//! stopped to reclaim the space.
//!
//! Fetches of one repository are serialized; different repositories fetch
//! side by side.
//!
//! A token for a private repository reaches git only as an
//! `http.extraHeader` set through `GIT_CONFIG_*` variables in the
//! environment of the git processes: never in a URL (which git would
//! store in the workspace's config), a command line (which every local
//! user can read), the job's environment, or the log, where the token and
//! the header are masked like secrets.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::process::Command;
use tokio::sync::watch;
use tokio::time::Instant;
use valkyrie::message::CheckoutSpec;

/// The directory of the mirrors in the agent's work directory.
pub const MIRRORS_DIR: &str = "git-mirrors";

/// What a job checks out, and where the agent's mirrors are.
#[derive(Clone)]
pub struct CheckoutPlan {
    /// The commit.
    pub spec: CheckoutSpec,
    /// The directory of the mirrors (`<work dir>/git-mirrors`).
    pub mirrors_dir: PathBuf,
}

// Hand-written: the spec's Debug hides the token.
impl std::fmt::Debug for CheckoutPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckoutPlan")
            .field("spec", &self.spec)
            .field("mirrors_dir", &self.mirrors_dir)
            .finish()
    }
}

/// How a checkout ended, when it did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckoutError {
    /// git failed; what it said (masked by the caller).
    Failed(String),
    /// The job was cancelled meanwhile.
    Cancelled,
    /// The job's timeout passed meanwhile.
    TimedOut,
}

impl CheckoutPlan {
    /// The values to mask in the job's log: the token and the header that
    /// carries it.
    pub fn secret_values(&self) -> Vec<String> {
        if self.spec.token.is_empty() {
            return Vec::new();
        }
        vec![self.spec.token.clone(), basic_credentials(&self.spec.token)]
    }

    /// The mirror of this plan's repository.
    pub fn mirror_dir(&self) -> PathBuf {
        self.mirrors_dir.join(mirror_name(&self.spec.repository))
    }
}

/// `x-access-token:TOKEN`, base64: what GitHub and GitLab take as an
/// HTTPS login with a token.
fn basic_credentials(token: &str) -> String {
    base64(format!("x-access-token:{token}").as_bytes())
}

/// Standard base64 with padding (no crate for twenty lines' worth).
fn base64(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A directory name for a repository URL: readable, and unique by a hash
/// of the whole URL.
fn mirror_name(url: &str) -> String {
    let readable: String = url
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("repo")
        .trim_end_matches(".git")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(40)
        .collect();
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    url.hash(&mut hasher);
    format!(
        "{}-{:016x}.git",
        readable.trim_start_matches('.'),
        hasher.finish()
    )
}

/// One lock per mirror, for the agent's lifetime.
fn mirror_lock(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    static LOCKS: OnceLock<Mutex<HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> = OnceLock::new();
    LOCKS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(dir.to_owned())
        .or_default()
        .clone()
}

/// Runs git commands for one checkout, bounded by the job's deadline and
/// cancel flag.
struct Git<'a> {
    plan: &'a CheckoutPlan,
    deadline: Option<Instant>,
    cancel: &'a mut watch::Receiver<bool>,
}

impl Git<'_> {
    async fn run(&mut self, dir: &Path, args: &[&str], auth: bool) -> Result<String, CheckoutError> {
        let mut config: Vec<(&str, String)> = vec![
            // A workspace borrows the mirror's objects: never prune them.
            ("gc.auto", "0".into()),
            ("advice.detachedHead", "false".into()),
            ("init.defaultBranch", "main".into()),
        ];
        let repo = &self.plan.spec.repository;
        if auth
            && !self.plan.spec.token.is_empty()
            && (repo.starts_with("https://") || repo.starts_with("http://"))
        {
            config.push((
                "http.extraHeader",
                format!(
                    "Authorization: Basic {}",
                    basic_credentials(&self.plan.spec.token)
                ),
            ));
        }
        let mut command = Command::new("git");
        command
            .arg("-C")
            .arg(dir)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .env("HOME", &self.plan.mirrors_dir)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_COUNT", config.len().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (i, (key, value)) in config.iter().enumerate() {
            command.env(format!("GIT_CONFIG_KEY_{i}"), key);
            command.env(format!("GIT_CONFIG_VALUE_{i}"), value);
        }
        let deadline = self.deadline;
        let output = tokio::select! {
            output = command.output() => output,
            _ = self.cancel.wait_for(|c| *c) => return Err(CheckoutError::Cancelled),
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => return Err(CheckoutError::TimedOut),
        };
        let output = output
            .map_err(|e| CheckoutError::Failed(format!("cannot run git: {e}; install git on the runner")))?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            return Err(CheckoutError::Failed(format!(
                "git {} failed: {}",
                args.first().copied().unwrap_or_default(),
                stderr.trim()
            )));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

/// Checks `plan`'s commit out into `workspace` (an existing, empty
/// directory). `log` gets the lines to show in the job's log.
pub async fn checkout(
    plan: &CheckoutPlan,
    workspace: &Path,
    deadline: Option<Instant>,
    cancel: &mut watch::Receiver<bool>,
    log: &mut Vec<String>,
) -> Result<(), CheckoutError> {
    let started = std::time::Instant::now();
    let spec = &plan.spec;
    if !spec.sha.bytes().all(|b| b.is_ascii_hexdigit()) || spec.sha.is_empty() {
        return Err(CheckoutError::Failed(format!(
            "`{}` is not a commit id",
            spec.sha
        )));
    }
    if spec.repository.starts_with('-') || spec.git_ref.starts_with('-') {
        return Err(CheckoutError::Failed(
            "the repository or ref starts with `-`".into(),
        ));
    }
    log.push(format!(
        "[valkyrie] checkout {} of {}{}",
        spec.sha,
        spec.repository,
        if spec.git_ref.is_empty() {
            String::new()
        } else {
            format!(" ({})", spec.git_ref)
        }
    ));
    let mirror = plan.mirror_dir();
    let mut git = Git {
        plan,
        deadline,
        cancel,
    };
    let fetched = {
        let lock = mirror_lock(&mirror);
        let _held = lock.lock().await;
        if !mirror.join("HEAD").exists() {
            std::fs::create_dir_all(&mirror)
                .map_err(|e| CheckoutError::Failed(format!("cannot create {}: {e}", mirror.display())))?;
            git.run(&mirror, &["init", "--bare", "--quiet"], false).await?;
        }
        let commit = format!("{}^{{commit}}", spec.sha);
        let has_args = ["cat-file", "-e", commit.as_str()];
        // A shallow mirror holding the commit may still lack the history a
        // deeper checkout (`checkout: {depth: N}`, 0 for all) asks for.
        let shallow = mirror.join("shallow").exists();
        let has = match git.run(&mirror, &has_args, false).await {
            Ok(_) => !(shallow && spec.depth != 1),
            Err(CheckoutError::Failed(_)) => false,
            Err(other) => return Err(other),
        };
        match has {
            true => None,
            false => {
                let fetch_started = std::time::Instant::now();
                let depth = format!("--depth={}", spec.depth);
                let mut args = vec!["fetch", "--quiet", "--no-tags"];
                if spec.depth > 0 {
                    args.push(&depth);
                } else if shallow {
                    args.push("--unshallow");
                }
                args.extend(["--", spec.repository.as_str()]);
                let mut by_ref = Ok(String::new());
                if !spec.git_ref.is_empty() {
                    let refspec = format!("+{0}:{0}", spec.git_ref);
                    let mut ref_args = args.clone();
                    ref_args.push(&refspec);
                    by_ref = git.run(&mirror, &ref_args, true).await;
                    if matches!(by_ref, Err(CheckoutError::Cancelled | CheckoutError::TimedOut)) {
                        return by_ref.map(drop);
                    }
                }
                if git.run(&mirror, &has_args, false).await.is_err() {
                    let mut sha_args = args.clone();
                    sha_args.push(&spec.sha);
                    let by_sha = git.run(&mirror, &sha_args, true).await;
                    if git.run(&mirror, &has_args, false).await.is_err() {
                        by_ref?;
                        by_sha?;
                        return Err(CheckoutError::Failed(format!(
                            "commit {} is not in {}",
                            spec.sha, spec.repository
                        )));
                    }
                }
                Some(fetch_started.elapsed())
            }
        }
    };
    match fetched {
        Some(took) => log.push(format!(
            "[valkyrie] fetched into the runner's mirror in {:.2}s",
            took.as_secs_f64()
        )),
        None => log.push("[valkyrie] the runner's mirror has the commit: nothing fetched".into()),
    }
    git.run(workspace, &["init", "--quiet"], false).await?;
    let git_dir = workspace.join(".git");
    let objects = mirror.join("objects");
    std::fs::write(
        git_dir.join("objects/info/alternates"),
        format!("{}\n", objects.display()),
    )
    .map_err(|e| CheckoutError::Failed(format!("cannot write the workspace's alternates: {e}")))?;
    if mirror.join("shallow").exists() {
        std::fs::copy(mirror.join("shallow"), git_dir.join("shallow"))
            .map_err(|e| CheckoutError::Failed(format!("cannot copy the mirror's shallow file: {e}")))?;
    }
    git.run(
        workspace,
        &["remote", "add", "origin", "--", &spec.repository],
        false,
    )
    .await?;
    match spec.git_ref.strip_prefix("refs/heads/") {
        Some(branch) if !branch.is_empty() => {
            git.run(
                workspace,
                &["checkout", "--quiet", "-B", branch, &spec.sha],
                false,
            )
            .await?
        }
        _ => {
            git.run(workspace, &["checkout", "--quiet", "--detach", &spec.sha], false)
                .await?
        }
    };
    log.push(format!(
        "[valkyrie] checked out {} in {:.2}s",
        &spec.sha[..spec.sha.len().min(12)],
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"x-access-token:abc"), "eC1hY2Nlc3MtdG9rZW46YWJj");
    }

    #[test]
    fn mirror_names_are_readable_and_distinct() {
        let a = mirror_name("https://github.com/o/app.git");
        let b = mirror_name("https://gitlab.com/o/app.git");
        assert!(a.starts_with("app-") && a.ends_with(".git"), "{a}");
        assert_ne!(a, b);
        assert!(!mirror_name("git://h/../..").contains('/'));
    }

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@t")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@t")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// A second checkout of the same commit fetches nothing; a new commit
    /// is fetched into the same mirror.
    #[tokio::test]
    async fn checkouts_share_the_mirror_and_fetch_only_what_is_new() {
        let root = tempfile::tempdir().unwrap();
        let origin = root.path().join("origin");
        std::fs::create_dir(&origin).unwrap();
        git(&origin, &["init", "-q", "-b", "main"]);
        std::fs::write(origin.join("a.txt"), "one\n").unwrap();
        git(&origin, &["add", "a.txt"]);
        git(&origin, &["commit", "-q", "-m", "one"]);
        let first = git(&origin, &["rev-parse", "HEAD"]);
        let plan = |sha: &str| CheckoutPlan {
            spec: CheckoutSpec {
                repository: format!("file://{}", origin.display()),
                sha: sha.to_owned(),
                git_ref: "refs/heads/main".into(),
                depth: 1,
                token: String::new(),
            },
            mirrors_dir: root.path().join("mirrors"),
        };
        let (_tx, mut cancel) = watch::channel(false);
        for (n, expect_fetch) in [(1, true), (2, false)] {
            let ws = root.path().join(format!("ws{n}"));
            std::fs::create_dir(&ws).unwrap();
            let mut log = Vec::new();
            checkout(&plan(&first), &ws, None, &mut cancel, &mut log)
                .await
                .unwrap();
            assert_eq!(git(&ws, &["rev-parse", "HEAD"]), first);
            assert_eq!(std::fs::read_to_string(ws.join("a.txt")).unwrap(), "one\n");
            assert_eq!(
                log.iter().any(|l| l.contains("fetched into")),
                expect_fetch,
                "{log:?}"
            );
        }
        std::fs::write(origin.join("a.txt"), "two\n").unwrap();
        git(&origin, &["commit", "-q", "-am", "two"]);
        let second = git(&origin, &["rev-parse", "HEAD"]);
        let ws = root.path().join("ws3");
        std::fs::create_dir(&ws).unwrap();
        let mut log = Vec::new();
        checkout(&plan(&second), &ws, None, &mut cancel, &mut log)
            .await
            .unwrap();
        assert_eq!(git(&ws, &["rev-parse", "HEAD"]), second);
        assert_eq!(git(&ws, &["rev-parse", "--abbrev-ref", "HEAD"]), "main");
        assert_eq!(git(&ws, &["log", "--format=%s"]), "two");
        let ws = root.path().join("ws4");
        std::fs::create_dir(&ws).unwrap();
        let err = checkout(&plan(&"0".repeat(40)), &ws, None, &mut cancel, &mut Vec::new())
            .await
            .unwrap_err();
        assert!(
            matches!(err, CheckoutError::Failed(ref m) if m.contains("git fetch failed") || m.contains("is not in")),
            "{err:?}"
        );
    }
}
