//! What an earlier life of the agent left in its work directory: the
//! process groups of jobs that were running when it was killed (`kill -9`
//! gives it no chance to end them), and their workspaces.
//!
//! While a step runs, its process group id is recorded in
//! `<workspace>.valkyrie/pgid`, a directory the executor removes when the
//! job ends. On start, before it registers, the agent SIGKILLs every
//! recorded group that still has a member started for that workspace
//! (its environment holds `VALKYRIE_WORKSPACE=<workspace>`: a group id
//! reused by an unrelated process is left alone), then every other process
//! started for a workspace of this work directory (a step's child that left
//! its group with `setsid`), and removes the `job-*` workspaces. Only one
//! agent may use a work directory at a time ([`lock_work_dir`]), so
//! nothing found there belongs to a live agent.
//!
//! The attempts a restarted agent re-attaches ([`crate::supervisor`]) are
//! spared ([`clean_up_except`]); those the server no longer counts are
//! cleaned up one by one once their supervisor is killed
//! ([`clean_up_attempt`]).

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

/// The name of the file a running step's process group id is recorded in,
/// inside [`crate::executor::files_dir`].
pub const PGID_FILE: &str = "pgid";

/// Holds the work directory for this agent until dropped.
#[derive(Debug)]
pub struct WorkDirLock {
    _lock: Flock<File>,
}

/// Why the work directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockWorkDirError {
    /// Another agent holds it.
    #[error("another valkyrie-agent uses the work directory {0}; give each agent its own --work-dir")]
    InUse(PathBuf),
    /// The lock file could not be opened.
    #[error("cannot lock the work directory {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Takes the work directory for this agent (an exclusive `flock` on
/// `<work_dir>/agent.lock`, released when the process ends, however it ends).
pub fn lock_work_dir(work_dir: &Path) -> Result<WorkDirLock, LockWorkDirError> {
    let path = work_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockWorkDirError::Io {
            dir: work_dir.to_owned(),
            source,
        })?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(WorkDirLock { _lock: lock }),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Err(LockWorkDirError::InUse(work_dir.to_owned())),
        Err((_, errno)) => Err(LockWorkDirError::Io {
            dir: work_dir.to_owned(),
            source: errno.into(),
        }),
    }
}

/// What [`clean_up`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CleanedUp {
    /// Process groups killed.
    pub groups: Vec<i32>,
    /// Other processes killed (they had left their job's group).
    pub processes: Vec<i32>,
    /// Workspaces (and their `.valkyrie` directories) removed.
    pub workspaces: Vec<PathBuf>,
}

/// Ends what an earlier agent left in `work_dir` and removes the stale
/// workspaces. Call with the work directory locked, before taking jobs.
pub fn clean_up(work_dir: &Path) -> CleanedUp {
    clean_up_matching(work_dir, |_| true)
}

/// [`clean_up`], but leaves alone the entries named in `keep` (the
/// workspaces, files and state directories of the attempts the agent
/// re-attaches, [`crate::supervisor::Survivor::names`]) and the processes
/// started for those workspaces.
pub fn clean_up_except(work_dir: &Path, keep: &[String]) -> CleanedUp {
    clean_up_matching(work_dir, |name| !keep.iter().any(|k| k == name))
}

/// Ends the processes of one attempt and removes its workspace, files and
/// state directory: for an attempt the server no longer counts, once its
/// supervisor is dead.
pub fn clean_up_attempt(work_dir: &Path, job_id: u64, attempt: u32) -> CleanedUp {
    let base = format!("job-{job_id}-{attempt}");
    clean_up_matching(work_dir, |name| {
        name == base || name.strip_prefix(&base).is_some_and(|rest| rest.starts_with('.'))
    })
}

/// The work of [`clean_up`] for the `job-*` entries whose name `matches`.
fn clean_up_matching(work_dir: &Path, matches: impl Fn(&str) -> bool) -> CleanedUp {
    let mut done = CleanedUp::default();
    let Ok(entries) = std::fs::read_dir(work_dir) else {
        return done;
    };
    let mut stale: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("job-") && matches(n))
        })
        .collect();
    stale.sort();
    let processes = processes();
    for dir in stale
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "valkyrie"))
    {
        let Some(pgid) = std::fs::read_to_string(dir.join(PGID_FILE))
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|pgid| *pgid > 1)
        else {
            continue;
        };
        let workspace = dir.with_extension("");
        let marker = workspace_marker(&workspace);
        let alive = processes
            .iter()
            .any(|p| p.pgid == pgid && p.environ.contains(&marker));
        if alive && killpg(Pid::from_raw(pgid), Signal::SIGKILL).is_ok() {
            tracing::warn!(pgid, workspace = %workspace.display(), "killed the process group of a job an earlier agent left running");
            done.groups.push(pgid);
        }
    }
    // A step's child may have left its group (setsid); its environment
    // still names the workspace.
    let prefix = workspace_marker(work_dir);
    for p in &processes {
        if done.groups.contains(&p.pgid) {
            continue;
        }
        let ours = p.environ.iter().any(|v| {
            v.strip_prefix(prefix.as_slice())
                .and_then(|rest| rest.strip_prefix(b"/"))
                .and_then(|name| std::str::from_utf8(name).ok())
                .is_some_and(|name| name.starts_with("job-") && !name.contains('/') && matches(name))
        });
        if ours && kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok() {
            tracing::warn!(
                pid = p.pid,
                "killed a process a job of an earlier agent left behind"
            );
            done.processes.push(p.pid);
        }
    }
    for path in stale {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => done.workspaces.push(path),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "could not remove a stale workspace")
            }
        }
    }
    if !done.workspaces.is_empty() {
        tracing::info!(count = done.workspaces.len(), "removed stale job workspaces");
    }
    done
}

/// `VALKYRIE_WORKSPACE=<workspace>` as bytes of an environment entry.
fn workspace_marker(workspace: &Path) -> Vec<u8> {
    let mut marker = b"VALKYRIE_WORKSPACE=".to_vec();
    marker.extend_from_slice(workspace.as_os_str().as_encoded_bytes());
    marker
}

/// A process of this user, as `/proc` shows it.
struct Process {
    pid: i32,
    pgid: i32,
    environ: Vec<Vec<u8>>,
}

/// The live processes whose environment this user can read (Linux `/proc`).
/// Elsewhere there are none, so a recorded group cannot be verified and
/// nothing is killed.
fn processes() -> Vec<Process> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<i32>().ok()?;
            if pid == me {
                return None;
            }
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // Fields after the command name: state, ppid, pgrp, ...
            let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
            let state = fields.next()?;
            if state == "Z" {
                return None;
            }
            let pgid = fields.nth(1)?.parse::<i32>().ok()?;
            let environ = std::fs::read(entry.path().join("environ")).ok()?;
            let environ = environ.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
            Some(Process { pid, pgid, environ })
        })
        .collect()
}
