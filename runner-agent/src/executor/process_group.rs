//! Spawning a step's process in its own process group, and signalling that
//! group.
//!
//! Guarantees:
//! * every step process is the leader of a new process group, so a signal to
//!   the group reaches everything the step started (pipelines, `&` jobs),
//!   unless a descendant deliberately left the group (`setsid`);
//! * [`StepProcess`] kills the whole group with SIGKILL when it is dropped
//!   before [`StepProcess::kill_group_after_exit`] ran, so abandoning a step
//!   (the `run_job` future being dropped, a panic) cannot leak processes.

use std::io;
use std::path::Path;
use std::process::Stdio;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// A running step: the group leader and its output pipes.
pub(crate) struct StepProcess {
    pub(crate) child: Child,
    pub(crate) stdout: Option<ChildStdout>,
    pub(crate) stderr: Option<ChildStderr>,
    pgid: Pid,
    /// Set once the group has been killed after the leader was reaped; from
    /// then on the pgid may be reused by an unrelated group and must not be
    /// signalled again.
    group_released: bool,
}

/// Starts `program` (the resolved path of `argv[0]`) with `argv` as the
/// leader of a new process group, in `cwd`, with exactly the environment
/// `env` (nothing of the agent's own).
pub(crate) fn spawn<'a>(
    program: &Path,
    argv: &[String],
    cwd: &Path,
    env: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> io::Result<StepProcess> {
    let (arg0, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the step's command is empty"))?;
    let mut command = Command::new(program);
    command
        .arg0(arg0)
        .args(args)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        // Steps are non-interactive: a read from stdin sees EOF instead of
        // hanging on the agent's terminal.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Backstop for the leader; the group is handled by our Drop.
        .kill_on_drop(true);
    let mut child = command.spawn()?;
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the step process exited before its id was read"))?;
    // process_group(0) makes the leader's pid the group id.
    let pgid = Pid::from_raw(i32::try_from(pid).map_err(io::Error::other)?);
    Ok(StepProcess {
        stdout: child.stdout.take(),
        stderr: child.stderr.take(),
        child,
        pgid,
        group_released: false,
    })
}

impl StepProcess {
    pub(crate) fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Sends `signal` to every process in the step's group.
    pub(crate) fn signal_group(&self, signal: Signal) {
        if !self.group_released {
            signal_group(self.pgid, signal);
        }
    }

    /// The leader has exited and been reaped: SIGKILL whatever is left of
    /// the group, so no background child outlives its step or keeps the
    /// output pipes open.
    ///
    /// The leader's pid cannot be reused while other members keep the group
    /// alive; if the group is already empty there is a tiny window in which
    /// the pid could be recycled, which this single signal accepts.
    pub(crate) fn kill_group_after_exit(&mut self) {
        if !self.group_released {
            signal_group(self.pgid, Signal::SIGKILL);
            self.group_released = true;
        }
    }
}

impl Drop for StepProcess {
    fn drop(&mut self) {
        self.signal_group(Signal::SIGKILL);
    }
}

fn signal_group(pgid: Pid, signal: Signal) {
    match killpg(pgid, signal) {
        // The group is already gone: nothing left to stop.
        Ok(()) | Err(Errno::ESRCH) => {}
        Err(errno) => {
            tracing::warn!(pgid = pgid.as_raw(), %signal, %errno, "could not signal step process group")
        }
    }
}
