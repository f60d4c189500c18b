//! The driver for byte-stream transports (Unix, TCP, TLS): one task owns
//! both halves of the socket and the [`Connection`]. It waits for the
//! socket to be writable and readable at once, so a peer that stops
//! reading never stops us from reading it, and a frame is written from the
//! turn that queued it, with no hand-off to another task.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tracing::debug;

use super::session::{Authenticator, DriverEnds, Handshake, LaneReceivers, Lanes, Redirector};
use crate::connection::Connection;
use crate::error::ConnectionError;
use crate::frame::ErrorCode;

/// Frames are coalesced into writes of up to this many bytes.
pub(crate) const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Reads ask for between these many bytes, adapting to what the last read
/// brought (as hyper does): bulk transfers read 64 KiB at a time while an
/// idle connection, the common case among thousands of agents, holds a
/// small buffer or none.
const MIN_READ_BYTES: usize = 1024;
const MAX_READ_BYTES: usize = 64 * 1024;
/// An emptied write buffer larger than this is given back to the allocator,
/// so that a connection that once sent a burst does not hold its room while
/// idle.
const MAX_IDLE_WRITE_BYTES: usize = 8 * 1024;
/// How long a closing connection may take to hand its last frames (the Close)
/// to a peer, and then to wait for the peer's EOF, before it is abandoned. A
/// dead peer that never reads must not hold a connection slot forever.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

pub(crate) struct DriverSetup {
    pub conn: Connection,
    pub ends: DriverEnds,
    pub lanes: LaneReceivers,
    pub authenticate: Option<Authenticator>,
    pub redirect: Option<Redirector>,
    pub server_id: String,
    pub handshake: oneshot::Sender<Handshake>,
}

pub(crate) async fn drive_stream<R, W>(mut reader: R, mut writer: W, setup: DriverSetup)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let DriverSetup {
        mut conn,
        mut ends,
        lanes,
        authenticate,
        redirect,
        server_id,
        handshake,
    } = setup;
    let mut lanes = Lanes::new(lanes);
    let mut handshake = Some(handshake);
    // Frames taken from the connection and not yet accepted by the socket.
    let mut out = BytesMut::new();
    // Whether bytes the socket accepted may still sit in the writer's own
    // buffer (TLS records): they are flushed before the writer waits.
    let mut unflushed = false;
    let mut read_size = ReadSize::default();
    let mut write_failed = false;
    let mut read_eof = false;
    let mut close_deadline: Option<Instant> = None;
    let mut timer = ConnTimer::new();

    loop {
        let now = Instant::now();
        if let Some(done) = ends
            .drain_events(
                &mut conn,
                authenticate.as_ref(),
                redirect.as_ref(),
                &server_id,
                now,
            )
            .await
        {
            if let Some(tx) = handshake.take() {
                let _ = tx.send(done);
            }
        }
        if conn.is_drained() || write_failed {
            break;
        }
        if conn.is_closed() && close_deadline.is_none() {
            close_deadline = Some(Instant::now() + CLOSE_LINGER);
        }
        if lanes.all_closed() && conn.is_open() {
            conn.close(ErrorCode::NORMAL, "session dropped");
            continue;
        }
        // What the application queued goes into the connection before the
        // next write, so that the connection orders it by lane: a control
        // frame overtakes the bulk frames queued before it.
        if conn.is_open() {
            lanes.read(&mut ends, &mut conn);
            // A Close just queued (or every sender gone): the loop's top
            // reports how the session ended before the Close is written.
            if conn.is_closed() || lanes.all_closed() {
                continue;
            }
        }
        if out.is_empty() && conn.has_pending_output() {
            conn.poll_transmit(&mut out, MAX_WRITE_BYTES);
            if conn.is_drained() {
                // The Close frame is in `out`: written below, after the loop.
                break;
            }
        }
        let timeout = close_deadline.or_else(|| conn.poll_timeout());
        timer.arm(timeout);
        let reading = !conn.is_closed();
        let writing = !out.is_empty() || unflushed;
        // A lane with commands left that the connection can take: the next
        // turn reads it, without waiting.
        let lanes_pending = lanes.pending(&conn);
        let shared = &ends.shared;
        let read_buf = conn.recv_buffer(0);
        read_size.prepare(read_buf);
        tokio::select! {
            biased;
            wrote = std::future::poll_fn(|cx| poll_write_turn(&mut writer, &out, cx)), if writing => {
                match wrote {
                    Ok(wrote) => {
                        out.advance(wrote.bytes);
                        unflushed = !wrote.flushed;
                        if out.is_empty() && out.capacity() > MAX_IDLE_WRITE_BYTES {
                            out = BytesMut::new();
                        }
                    }
                    Err(_) => write_failed = true,
                }
            }
            read = reader.read_buf(read_buf), if reading => {
                match read {
                    Ok(0) | Err(_) => {
                        read_eof = true;
                        conn.handle_eof(0);
                    }
                    Ok(n) => {
                        read_size.record(n);
                        conn.handle_buffered(0, Instant::now());
                    }
                }
            }
            () = std::future::ready(()), if lanes_pending => {}
            () = std::future::poll_fn(|cx| shared.outbound.poll_rung(cx)), if !lanes_pending => {
                lanes.rung();
            }
            _ = timer.fired(), if timeout.is_some() => {
                let now = Instant::now();
                if close_deadline.is_some_and(|at| now >= at) {
                    debug!("peer does not take the Close frame; abandoning the connection");
                    break;
                }
                conn.handle_timeout(now);
            }
        }
    }
    // Whoever waits for the handshake (connect, the listener) learns the
    // outcome now, not after the linger below.
    drop(handshake);
    ends.finish(ConnectionError::Reset);
    drop(ends);
    let deadline = close_deadline.unwrap_or_else(|| Instant::now() + CLOSE_LINGER);
    // Let the Close frame (if any) reach the socket before it shuts.
    if !write_failed {
        let finish = async {
            writer.write_all(&out).await?;
            writer.shutdown().await
        };
        let _ = tokio::time::timeout_at(deadline.into(), finish).await;
    }
    drop(writer);
    // Lingering close: closing a TCP socket with unread input makes the kernel
    // send RST, and the peer may then lose the Close frame we just wrote. So
    // read and discard until the peer's EOF (it closes on our Close), bounded.
    if !read_eof {
        let _ = tokio::time::timeout_at(deadline.into(), discard_until_eof(&mut reader)).await;
    }
    debug!("connection ended");
}

/// What one write turn did.
struct Wrote {
    /// Bytes of `out` the socket took.
    bytes: usize,
    /// Whether everything taken has left the writer's own buffer too.
    flushed: bool,
}

/// Writes what it can of `out`; once all of it is taken, flushes the
/// writer in the same turn when that completes at once (always for Unix and
/// TCP; TLS may keep records back). Ready only when it made progress, so
/// that the driver's other branches run while the socket is full.
fn poll_write_turn<W: AsyncWrite + Unpin>(
    writer: &mut W,
    out: &[u8],
    cx: &mut Context<'_>,
) -> Poll<io::Result<Wrote>> {
    let mut writer = Pin::new(writer);
    let bytes = if out.is_empty() {
        0
    } else {
        match writer.as_mut().poll_write(cx, out) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => n,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        }
    };
    if bytes < out.len() {
        return Poll::Ready(Ok(Wrote {
            bytes,
            flushed: false,
        }));
    }
    match writer.poll_flush(cx) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(Wrote { bytes, flushed: true })),
        Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
        Poll::Pending if bytes > 0 => Poll::Ready(Ok(Wrote {
            bytes,
            flushed: false,
        })),
        Poll::Pending => Poll::Pending,
    }
}

/// How much room the next read gets.
struct ReadSize {
    next: usize,
}

impl Default for ReadSize {
    fn default() -> Self {
        Self { next: MIN_READ_BYTES }
    }
}

impl ReadSize {
    /// Makes room for the next read in `buf` (the decoder's buffer, which
    /// may hold the start of a frame). An empty buffer much larger than
    /// reads now need is given back to the allocator.
    fn prepare(&self, buf: &mut BytesMut) {
        if buf.is_empty() && buf.capacity() > 4 * self.next {
            *buf = BytesMut::new();
        }
        if buf.capacity() - buf.len() < self.next {
            buf.reserve(self.next);
        }
    }

    /// Adapts to a read of `n` bytes: doubles after a read that filled its
    /// room, halves after one that used less than half.
    fn record(&mut self, n: usize) {
        if n >= self.next {
            self.next = (self.next * 2).min(MAX_READ_BYTES);
        } else if n < self.next / 2 {
            self.next = (self.next / 2).max(MIN_READ_BYTES);
        }
    }
}

/// Reads and drops input until EOF or an error.
pub(crate) async fn discard_until_eof<R: AsyncRead + Unpin>(reader: &mut R) {
    // On the heap: a buffer on the stack would sit in every connection's
    // task, idle or not, for this one use at the end.
    let mut sink = vec![0u8; 4096];
    while let Ok(n) = reader.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

/// A connection's timer: one `Sleep` for the driver's life, moved to each
/// new deadline. Every received frame pushes the ping and idle deadlines
/// back; moving a tokio timer later only updates its deadline (the timer
/// wheel re-files it when the old instant comes, without waking the task),
/// while a timer left at the earlier deadline woke the connection's task
/// for nothing once per heartbeat interval. A new `Sleep` on every turn of
/// the driver cost a timer-wheel insertion and removal per frame.
pub(crate) struct ConnTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    set_for: Option<Instant>,
}

impl ConnTimer {
    pub(crate) fn new() -> Self {
        // Not set: no deadline is this far away.
        let never = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        Self {
            sleep: Box::pin(tokio::time::sleep_until(never)),
            set_for: None,
        }
    }

    /// Makes the timer fire at `deadline` (if any).
    pub(crate) fn arm(&mut self, deadline: Option<Instant>) {
        if let Some(deadline) = deadline {
            if self.set_for != Some(deadline) {
                self.sleep.as_mut().reset(deadline.into());
                self.set_for = Some(deadline);
            }
        }
    }

    /// Waits until the time it is set for; forever when it is not set.
    pub(crate) async fn fired(&mut self) {
        if self.set_for.is_none() {
            return std::future::pending().await;
        }
        self.sleep.as_mut().await;
        self.set_for = None;
    }
}
