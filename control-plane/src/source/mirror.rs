//! The server's bare mirror of each project's repository, in
//! `<data dir>/mirrors/<project>.git`, from which pipeline files are read
//! at the pushed commit.
//!
//! This runs the `git` program (through `tokio::process`) rather than
//! linking `gix`: every host that runs CI has git, it speaks every
//! transport and credential scheme a forge offers, and `gix` with network
//! support would add a few hundred crates and minutes to a cold build of
//! the server. Each call is bounded by [`GIT_TIMEOUT`] and killed past it.
//!
//! A fetch asks for the pushed ref only, one commit deep, and is skipped
//! when the mirror already has the commit (a redelivery, a second project
//! on the same commit): with a warm mirror reading a pipeline file costs
//! two local git processes. Fetches of one project are serialized; those
//! of different projects run side by side.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::process::Command;

use super::Project;

/// Longest a git command may take.
pub const GIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Largest pipeline file read from a repository (as for an upload).
pub const MAX_PIPELINE_FILE_BYTES: u64 = crate::rest::body::MAX_PIPELINE_BODY_BYTES as u64;

/// Why a pipeline file could not be read from a repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadPipelineError {
    /// git could not be run at all.
    #[error("cannot run git: {0}; install git on the server")]
    NoGit(String),
    /// git failed (fetch refused, repository unreachable, …).
    #[error("git {what} failed: {detail}")]
    Git {
        /// Which command.
        what: String,
        /// Its stderr.
        detail: String,
    },
    /// The commit is not in the repository (not at the ref, nor fetchable).
    #[error("commit {sha} is not in {repo} (fetched {git_ref})")]
    NoCommit {
        /// The repository.
        repo: String,
        /// The ref fetched.
        git_ref: String,
        /// The commit.
        sha: String,
    },
    /// The commit has no pipeline file.
    #[error("commit {sha} has no {file}; add it, or set the project's pipeline file with --file")]
    NoFile {
        /// The commit.
        sha: String,
        /// The path.
        file: String,
    },
    /// The file is over [`MAX_PIPELINE_FILE_BYTES`] or not text.
    #[error("{file} at {sha} is not a pipeline file: {detail}")]
    BadFile {
        /// The commit.
        sha: String,
        /// The path.
        file: String,
        /// Why.
        detail: String,
    },
}

/// The mirrors under one directory.
#[derive(Debug)]
pub struct Mirrors {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Mirrors {
    /// Mirrors kept under `root` (created when first needed).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            locks: Mutex::new(HashMap::new()),
        }
    }

    fn lock_of(&self, project: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(project.to_owned())
            .or_default()
            .clone()
    }

    /// Forgets a removed project's mirror.
    pub async fn remove(&self, project: &str) {
        let lock = self.lock_of(project);
        let _held = lock.lock().await;
        let _ = tokio::fs::remove_dir_all(self.root.join(format!("{project}.git"))).await;
    }

    /// The commit `git_ref` of `project`'s repository points at, fetched
    /// into the mirror.
    pub async fn resolve(&self, project: &Project, git_ref: &str) -> Result<String, ReadPipelineError> {
        let lock = self.lock_of(&project.name);
        let _held = lock.lock().await;
        let dir = self.init(&project.name).await?;
        let token = Some(project.token.as_str()).filter(|t| !t.is_empty());
        let refspec = format!("+{git_ref}:{git_ref}");
        git(
            &dir,
            token.map(|t| (project.repo.as_str(), t)),
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--depth=1",
                "--",
                &project.repo,
                &refspec,
            ],
            "fetch",
        )
        .await?;
        let commit = format!("{git_ref}^{{commit}}");
        let sha = git(
            &dir,
            None,
            &["rev-parse", "--verify", "--quiet", &commit],
            "rev-parse",
        )
        .await?;
        Ok(sha.trim().to_owned())
    }

    /// The mirror of `project`, created empty if it does not exist.
    async fn init(&self, project: &str) -> Result<PathBuf, ReadPipelineError> {
        let dir = self.root.join(format!("{project}.git"));
        if !dir.join("HEAD").exists() {
            tokio::fs::create_dir_all(&dir)
                .await
                .map_err(|e| ReadPipelineError::NoGit(format!("cannot create {}: {e}", dir.display())))?;
            git(&dir, None, &["init", "--bare", "--quiet"], "init").await?;
        }
        Ok(dir)
    }

    /// The text of `project`'s pipeline file at `sha`, fetching `git_ref`
    /// into the mirror first unless it already has the commit.
    pub async fn pipeline_file(
        &self,
        project: &Project,
        git_ref: &str,
        sha: &str,
    ) -> Result<String, ReadPipelineError> {
        let lock = self.lock_of(&project.name);
        let _held = lock.lock().await;
        let dir = self.init(&project.name).await?;
        let commit = format!("{sha}^{{commit}}");
        if git(&dir, None, &["cat-file", "-e", &commit], "cat-file")
            .await
            .is_err()
        {
            let token = Some(project.token.as_str()).filter(|t| !t.is_empty());
            let fetched = match git_ref {
                "" => Ok(String::new()),
                git_ref => {
                    let refspec = format!("+{git_ref}:{git_ref}");
                    git(
                        &dir,
                        token.map(|t| (project.repo.as_str(), t)),
                        &[
                            "fetch",
                            "--quiet",
                            "--no-tags",
                            "--depth=1",
                            "--",
                            &project.repo,
                            &refspec,
                        ],
                        "fetch",
                    )
                    .await
                }
            };
            if git(&dir, None, &["cat-file", "-e", &commit], "cat-file")
                .await
                .is_err()
            {
                // The ref moved on (or was never given): ask for the commit.
                let by_sha = git(
                    &dir,
                    token.map(|t| (project.repo.as_str(), t)),
                    &[
                        "fetch",
                        "--quiet",
                        "--no-tags",
                        "--depth=1",
                        "--",
                        &project.repo,
                        sha,
                    ],
                    "fetch",
                )
                .await;
                if git(&dir, None, &["cat-file", "-e", &commit], "cat-file")
                    .await
                    .is_err()
                {
                    fetched.and(by_sha)?;
                    return Err(ReadPipelineError::NoCommit {
                        repo: project.repo.clone(),
                        git_ref: git_ref.to_owned(),
                        sha: sha.to_owned(),
                    });
                }
            }
        }
        let object = format!("{sha}:{}", project.file);
        let size = match git(&dir, None, &["cat-file", "-s", &object], "cat-file").await {
            Ok(size) => size,
            Err(_) => {
                return Err(ReadPipelineError::NoFile {
                    sha: sha.to_owned(),
                    file: project.file.clone(),
                })
            }
        };
        let bad = |detail: String| ReadPipelineError::BadFile {
            sha: sha.to_owned(),
            file: project.file.clone(),
            detail,
        };
        let size: u64 = size
            .trim()
            .parse()
            .map_err(|_| bad(format!("git gave its size as `{size}`")))?;
        if size > MAX_PIPELINE_FILE_BYTES {
            return Err(bad(format!(
                "{size} bytes, over the limit of {MAX_PIPELINE_FILE_BYTES}"
            )));
        }
        let text = git(&dir, None, &["cat-file", "blob", &object], "cat-file").await?;
        Ok(text)
    }
}

/// The environment variables that make git send `token` to `repo`'s
/// server as an HTTP `Authorization` header (basic, as GitHub's and
/// GitLab's token logins take it): in git's environment, never in a URL or
/// on a command line. Empty for a non-HTTP repository.
pub fn token_env(repo: &str, token: &str) -> Vec<(String, String)> {
    if token.is_empty() || !(repo.starts_with("https://") || repo.starts_with("http://")) {
        return Vec::new();
    }
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{token}"));
    vec![
        ("GIT_CONFIG_COUNT".into(), "1".into()),
        ("GIT_CONFIG_KEY_0".into(), "http.extraHeader".into()),
        (
            "GIT_CONFIG_VALUE_0".into(),
            format!("Authorization: Basic {basic}"),
        ),
    ]
}

/// Runs `git args` in `dir` with a clean environment (no prompt, no
/// system or user configuration); returns stdout, or stderr as the error.
async fn git(
    dir: &Path,
    auth: Option<(&str, &str)>,
    args: &[&str],
    what: &str,
) -> Result<String, ReadPipelineError> {
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
        .env("HOME", dir)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some((repo, token)) = auth {
        command.envs(token_env(repo, token));
    }
    let output = match tokio::time::timeout(GIT_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => return Err(ReadPipelineError::NoGit(e.to_string())),
        Err(_) => {
            return Err(ReadPipelineError::Git {
                what: what.into(),
                detail: format!("took longer than {} s", GIT_TIMEOUT.as_secs()),
            })
        }
    };
    if !output.status.success() {
        let mut detail = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if let Some((_, token)) = auth {
            detail = detail.replace(token, "***");
        }
        detail.truncate(2000);
        return Err(ReadPipelineError::Git {
            what: what.into(),
            detail,
        });
    }
    String::from_utf8(output.stdout).map_err(|_| ReadPipelineError::Git {
        what: what.into(),
        detail: "its output is not UTF-8".into(),
    })
}
