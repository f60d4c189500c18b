//! Reading one output pipe (stdout or stderr) of a step.
//!
//! Owns the pipe, its read buffer, its [`StreamShaper`] and the timer that
//! releases an unterminated line once the stream has been quiet for
//! [`PARTIAL_LINE_FLUSH`]. The timer restarts on every read, so a line that is
//! still being written is not cut just because the agent was slow to read.

use std::io;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::output::{Secrets, StreamShaper};

/// Bytes asked for per read.
const READ_BUF_BYTES: usize = 32 * 1024;
/// An unterminated line (a prompt, a progress bar) is sent once its stream
/// has been quiet this long, so it shows up live.
const PARTIAL_LINE_FLUSH: Duration = Duration::from_millis(100);

pub(super) struct PipeReader<R> {
    /// `None` once the pipe hit EOF or was abandoned.
    pipe: Option<R>,
    shaper: StreamShaper,
    buf: Vec<u8>,
    /// When to release the unterminated line, if there is one.
    pub(super) flush_partial_at: Option<Instant>,
}

impl<R: AsyncRead + Unpin> PipeReader<R> {
    pub(super) fn new(pipe: Option<R>, secrets: Secrets) -> Self {
        PipeReader {
            pipe,
            shaper: StreamShaper::new(secrets),
            buf: vec![0; READ_BUF_BYTES],
            flush_partial_at: None,
        }
    }

    pub(super) fn is_open(&self) -> bool {
        self.pipe.is_some()
    }

    /// Reads once; never completes once the pipe is closed. Cancel safe.
    pub(super) async fn read(&mut self) -> io::Result<usize> {
        match &mut self.pipe {
            Some(pipe) => pipe.read(&mut self.buf).await,
            None => std::future::pending().await,
        }
    }

    /// Takes the result of [`Self::read`] and returns the chunks now ready.
    /// On EOF or a read error the pipe is closed and everything held is
    /// released.
    pub(super) fn on_read(&mut self, read: io::Result<usize>) -> Vec<Bytes> {
        match read {
            Ok(n) if n > 0 => {
                let chunks = self.shaper.push(&self.buf[..n]);
                self.flush_partial_at = self
                    .shaper
                    .has_partial_line()
                    .then(|| Instant::now() + PARTIAL_LINE_FLUSH);
                chunks
            }
            result => {
                if let Err(error) = result {
                    tracing::warn!(%error, "could not read step output");
                }
                self.close()
            }
        }
    }

    /// The stream was quiet: release its unterminated line.
    pub(super) fn flush_partial_line(&mut self) -> Vec<Bytes> {
        self.flush_partial_at = None;
        self.shaper.flush_partial_line()
    }

    /// Stops reading (EOF, or giving up on a pipe held open by a process
    /// outside the step's group) and releases everything held.
    pub(super) fn close(&mut self) -> Vec<Bytes> {
        self.pipe = None;
        self.flush_partial_at = None;
        self.shaper.finish()
    }
}
