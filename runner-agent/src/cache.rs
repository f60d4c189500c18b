//! Per-job cache directories (`$VALKYRIE_CACHE_DIR`) that persist across
//! jobs on one agent and are never used by two running jobs at once.
//!
//! Jobs on one host that share a tool's cache (`~/.cargo`, `~/.npm`) block
//! on its lock or, worse, corrupt it. Each job instead gets an instance of
//! a pool keyed by its project and job name, as GitLab Runner's
//! concurrent-id build directories:
//!
//! ```text
//! <work_dir>/cache/<project>_<job>-<hash>/0       first job of that name
//!                                        /0.lock  flock held while a job uses 0
//!                                        /1       a second job of that name
//!                                        /1.lock  running at the same time
//! ```
//!
//! A job takes the first instance whose lock is free (creating it if
//! none is), and holds the lock until it ends: the lock is an `flock`, so
//! it is released however the process holding it ends (the job's
//! supervisor, [`crate::supervisor`], or the agent). Instances are never
//! removed by the agent; remove `<work_dir>/cache` to reclaim the space.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The name of the pools' directory inside the agent's work directory.
pub const CACHE_DIR: &str = "cache";

/// An instance of a cache pool, held until dropped.
#[derive(Debug)]
pub struct CacheLease {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl CacheLease {
    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pool of `project` and `job` in `work_dir`: a readable name, and a
/// hash of the exact names so that two keys never share a pool.
pub fn pool_dir(work_dir: &Path, project: &str, job: &str) -> PathBuf {
    let readable: String = format!("{project}_{job}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    // FNV-1a: stable across builds and Rust versions (a pool must keep its
    // name after an upgrade of the agent).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in project.bytes().chain([0]).chain(job.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    work_dir
        .join(CACHE_DIR)
        .join(format!("{readable}-{:08x}", hash as u32))
}

/// Takes the first free instance of the pool of `project` and `job`.
pub fn acquire(work_dir: &Path, project: &str, job: &str) -> std::io::Result<CacheLease> {
    acquire_in(&pool_dir(work_dir, project, job))
}

/// Takes the first free instance of `pool` ([`pool_dir`]).
pub fn acquire_in(pool: &Path) -> std::io::Result<CacheLease> {
    valkyrie::private_fs::create_dir_all(pool)?;
    for instance in 0u32.. {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(pool.join(format!("{instance}.lock")))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                let dir = pool.join(instance.to_string());
                valkyrie::private_fs::create_dir_all(&dir)?;
                return Ok(CacheLease { dir, _lock: lock });
            }
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
            Err((_, errno)) => return Err(errno.into()),
        }
    }
    unreachable!("more than u32::MAX jobs of one name at once")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_jobs_get_different_instances_and_a_later_one_reuses_the_first() {
        let root = tempfile::tempdir().unwrap();
        let first = acquire(root.path(), "web", "build").unwrap();
        let second = acquire(root.path(), "web", "build").unwrap();
        assert_ne!(first.dir(), second.dir());
        let other = acquire(root.path(), "web", "test").unwrap();
        assert!(other.dir().ends_with("0"), "{}", other.dir().display());
        let first_dir = first.dir().to_owned();
        std::fs::write(first_dir.join("kept"), "x").unwrap();
        drop(first);
        let third = acquire(root.path(), "web", "build").unwrap();
        assert_eq!(third.dir(), first_dir);
        assert!(third.dir().join("kept").exists(), "the cache persists");
    }

    #[test]
    fn pools_of_similar_names_differ() {
        let a = pool_dir(Path::new("/w"), "a", "b c");
        let b = pool_dir(Path::new("/w"), "a", "b_c");
        assert_ne!(a, b);
        assert!(a.starts_with("/w/cache"));
    }
}
