//! The driver for byte-stream transports (Unix, TCP, TLS): one task owns the
//! read half and the [`Connection`]; a writer task owns the write half, so a
//! peer that stops reading never stops us from reading (and answering) it.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, Instrument};

use super::session::{Authenticator, DriverEnds, Handshake, LaneReceivers};
use crate::connection::Connection;
use crate::error::ConnectionError;
use crate::frame::{ErrorCode, Lane};

/// Frames are coalesced into writes of up to this many bytes.
pub(crate) const MAX_WRITE_BYTES: usize = 256 * 1024;
const READ_BUFFER_BYTES: usize = 64 * 1024;

pub(crate) struct DriverSetup {
    pub conn: Connection,
    pub ends: DriverEnds,
    pub lanes: LaneReceivers,
    pub authenticate: Option<Authenticator>,
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
        server_id,
        handshake,
    } = setup;
    let [mut control_rx, mut dispatch_rx, mut bulk_rx] = lanes;
    let mut handshake = Some(handshake);
    // Two chunks in flight: one being written, one ready behind it.
    let (write_tx, write_rx) = mpsc::channel::<Bytes>(2);
    let writer_task = tokio::spawn(write_loop(writer, write_rx).in_current_span());
    let mut read_buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    let mut lanes_open = [true; 3];
    let mut write_failed = false;

    loop {
        let now = Instant::now();
        if let Some(done) = ends
            .drain_events(&mut conn, authenticate.as_ref(), &server_id, now)
            .await
        {
            if let Some(tx) = handshake.take() {
                let _ = tx.send(done);
            }
        }
        if conn.is_drained() || write_failed {
            break;
        }
        if lanes_open.iter().all(|open| !open) && conn.is_open() {
            conn.close(ErrorCode::NORMAL, "session dropped");
            continue;
        }
        let open = conn.is_open();
        let timeout = conn.poll_timeout();
        tokio::select! {
            biased;
            permit = write_tx.reserve(), if conn.has_pending_output() => {
                match permit {
                    Ok(permit) => {
                        let mut out = BytesMut::with_capacity(MAX_WRITE_BYTES.min(64 * 1024));
                        conn.poll_transmit(&mut out, MAX_WRITE_BYTES);
                        permit.send(out.freeze());
                    }
                    Err(_) => write_failed = true,
                }
            }
            read = reader.read_buf(&mut read_buf), if !conn.is_closed() => {
                match read {
                    Ok(0) | Err(_) => conn.handle_eof(0),
                    Ok(_) => {
                        conn.handle_bytes(0, &read_buf, Instant::now());
                        read_buf.clear();
                        if read_buf.capacity() < READ_BUFFER_BYTES {
                            read_buf.reserve(READ_BUFFER_BYTES);
                        }
                    }
                }
            }
            cmd = control_rx.recv(), if open && lanes_open[0] && conn.can_send(Lane::Control) => {
                match cmd { Some(cmd) => ends.apply(&mut conn, cmd), None => lanes_open[0] = false }
            }
            cmd = dispatch_rx.recv(), if open && lanes_open[1] && conn.can_send(Lane::Dispatch) => {
                match cmd { Some(cmd) => ends.apply(&mut conn, cmd), None => lanes_open[1] = false }
            }
            cmd = bulk_rx.recv(), if open && lanes_open[2] && conn.can_send(Lane::Bulk) => {
                match cmd { Some(cmd) => ends.apply(&mut conn, cmd), None => lanes_open[2] = false }
            }
            _ = sleep_until(timeout), if timeout.is_some() => conn.handle_timeout(Instant::now()),
        }
    }
    drop(write_tx);
    // Let the Close frame (if any) reach the socket before it shuts.
    let _ = writer_task.await;
    ends.finish(ConnectionError::Reset);
    debug!("connection ended");
}

async fn write_loop<W: AsyncWrite + Unpin>(mut writer: W, mut chunks: mpsc::Receiver<Bytes>) {
    while let Some(chunk) = chunks.recv().await {
        if writer.write_all(&chunk).await.is_err() {
            return;
        }
    }
    let _ = writer.shutdown().await;
}

pub(crate) async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
