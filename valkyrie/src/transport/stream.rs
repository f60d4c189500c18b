//! The driver for byte-stream transports (Unix, TCP, TLS): one task owns the
//! read half and the [`Connection`]; a writer task owns the write half, so a
//! peer that stops reading never stops us from reading (and answering) it.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, Instrument};

use super::session::{Authenticator, DriverEnds, Handshake, LaneReceivers, Redirector};
use crate::connection::Connection;
use crate::error::ConnectionError;
use crate::frame::{ErrorCode, Lane};

/// Frames are coalesced into writes of up to this many bytes.
pub(crate) const MAX_WRITE_BYTES: usize = 256 * 1024;
/// Reads ask for between these many bytes, adapting to what the last read
/// brought (as hyper does): bulk transfers read 64 KiB at a time while an
/// idle connection, the common case among thousands of agents, holds a
/// small buffer or none.
const MIN_READ_BYTES: usize = 1024;
const MAX_READ_BYTES: usize = 64 * 1024;
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

pub(crate) async fn drive_stream<R, W>(mut reader: R, writer: W, setup: DriverSetup)
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
    let [mut control_rx, mut dispatch_rx, mut bulk_rx] = lanes;
    let mut handshake = Some(handshake);
    // Two chunks in flight: one being written, one ready behind it.
    let (write_tx, write_rx) = mpsc::channel::<Bytes>(2);
    let writer_task = tokio::spawn(write_loop(writer, write_rx).in_current_span());
    let mut read_size = ReadSize::default();
    let mut lanes_open = [true; 3];
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
        if lanes_open.iter().all(|open| !open) && conn.is_open() {
            conn.close(ErrorCode::NORMAL, "session dropped");
            continue;
        }
        let open = conn.is_open();
        let timeout = close_deadline.or_else(|| conn.poll_timeout());
        timer.arm(timeout);
        let reading = !conn.is_closed();
        let writing = conn.has_pending_output();
        let can_send = [Lane::Control, Lane::Dispatch, Lane::Bulk]
            .map(|lane| open && lanes_open[lane.index()] && conn.can_send(lane));
        let read_buf = conn.recv_buffer(0);
        read_size.prepare(read_buf);
        tokio::select! {
            biased;
            permit = write_tx.reserve(), if writing => {
                match permit {
                    Ok(permit) => {
                        let mut out = BytesMut::with_capacity(MAX_WRITE_BYTES.min(64 * 1024));
                        conn.poll_transmit(&mut out, MAX_WRITE_BYTES);
                        permit.send(out.freeze());
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
            cmd = control_rx.recv(), if can_send[0] => {
                match cmd {
                    Some(cmd) => ends.apply_batch(&mut conn, cmd, &mut control_rx, Lane::Control),
                    None => lanes_open[0] = false,
                }
            }
            cmd = dispatch_rx.recv(), if can_send[1] => {
                match cmd {
                    Some(cmd) => ends.apply_batch(&mut conn, cmd, &mut dispatch_rx, Lane::Dispatch),
                    None => lanes_open[1] = false,
                }
            }
            cmd = bulk_rx.recv(), if can_send[2] => {
                match cmd {
                    Some(cmd) => ends.apply_batch(&mut conn, cmd, &mut bulk_rx, Lane::Bulk),
                    None => lanes_open[2] = false,
                }
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
    drop(write_tx);
    let deadline = close_deadline.unwrap_or_else(|| Instant::now() + CLOSE_LINGER);
    // Let the Close frame (if any) reach the socket before it shuts.
    let mut writer_task = writer_task;
    if tokio::time::timeout_at(deadline.into(), &mut writer_task)
        .await
        .is_err()
    {
        writer_task.abort();
    }
    // Lingering close: closing a TCP socket with unread input makes the kernel
    // send RST, and the peer may then lose the Close frame we just wrote. So
    // read and discard until the peer's EOF (it closes on our Close), bounded.
    if !read_eof {
        let _ = tokio::time::timeout_at(deadline.into(), discard_until_eof(&mut reader)).await;
    }
    debug!("connection ended");
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
    let mut sink = [0u8; 8192];
    while let Ok(n) = reader.read(&mut sink).await {
        if n == 0 {
            return;
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        if writer.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

/// A connection's timer: one `Sleep` for the driver's life, moved only
/// when a deadline comes sooner than the one it is set for. A later
/// deadline (each frame received pushes the ping and idle deadlines back)
/// leaves it to fire early: the connection, asked then, finds nothing due,
/// and the timer is set again. A new `Sleep` on every turn of the driver
/// cost a timer-wheel insertion and removal per frame.
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

    /// Makes the timer fire no later than `deadline` (if any).
    pub(crate) fn arm(&mut self, deadline: Option<Instant>) {
        if let Some(deadline) = deadline {
            if self.set_for.is_none_or(|at| deadline < at) {
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
