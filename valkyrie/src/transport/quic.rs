//! The QUIC driver: each lane travels on its own unidirectional QUIC stream
//! per direction, so a flood of log chunks on the bulk stream cannot block a
//! dispatch or control frame behind it (no head-of-line blocking across lanes).
//!
//! Stream preamble: each endpoint opens one unidirectional stream per lane the
//! first time it sends on that lane; the stream's first byte is the lane
//! number (0 control, 1 dispatch, 2 bulk), then frames follow.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::sync::mpsc;
use tracing::{debug, Instrument};

use super::session::{DriverEnds, Lanes};
use super::stream::{ConnTimer, DriverSetup, CLOSE_LINGER, MAX_WRITE_BYTES};
use crate::error::ConnectionError;
use crate::frame::{ErrorCode, Lane};

/// What the stream readers report. There is no per-stream end: the peer
/// finishes its lane streams only when it closes, and a lane stream's end can
/// overtake the Close frame still in flight on the control stream. The end of
/// the connection is the channel closing, once every reader has handed over
/// all it received.
enum Inbound {
    Data(usize, Bytes),
    BadLane(u8),
}

pub(crate) async fn drive_quic(quic: quinn::Connection, setup: DriverSetup) {
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
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(32);
    let acceptor = tokio::spawn(accept_streams(quic.clone(), in_tx).in_current_span());
    let mut writers = Vec::new();
    let mut lane_tx = Vec::new();
    for lane in Lane::ALL {
        let (tx, rx) = mpsc::channel::<Bytes>(2);
        writers.push(tokio::spawn(write_lane(quic.clone(), lane, rx).in_current_span()));
        lane_tx.push(tx);
    }
    let mut close_deadline: Option<Instant> = None;
    let mut write_failed = false;
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
        let timeout = close_deadline.or_else(|| conn.poll_timeout());
        timer.arm(timeout);
        // A lane with commands left that the connection can take is read
        // at once; otherwise the driver waits on the doorbell.
        let lanes_pending = lanes.pending(&conn);
        let shared = &ends.shared;
        tokio::select! {
            biased;
            // A lane's writer is gone only when its stream failed (or the
            // runtime is shutting down): nothing more can be sent, so the
            // driver ends, as the stream transports' do. (Retrying the
            // closed channel instead spun without ever yielding.)
            permit = lane_tx[0].reserve(), if conn.has_pending_lane(Lane::Control) => match permit {
                Ok(p) => p.send(take_lane(&mut conn, Lane::Control)),
                Err(_) => write_failed = true,
            },
            permit = lane_tx[1].reserve(), if conn.has_pending_lane(Lane::Dispatch) => match permit {
                Ok(p) => p.send(take_lane(&mut conn, Lane::Dispatch)),
                Err(_) => write_failed = true,
            },
            permit = lane_tx[2].reserve(), if conn.has_pending_lane(Lane::Bulk) => match permit {
                Ok(p) => p.send(take_lane(&mut conn, Lane::Bulk)),
                Err(_) => write_failed = true,
            },
            inbound = in_rx.recv(), if !conn.is_closed() => match inbound {
                Some(Inbound::Data(lane, data)) => conn.handle_bytes(lane, &data, Instant::now()),
                Some(Inbound::BadLane(lane)) => conn.close(ErrorCode::PROTOCOL_ERROR, format!("stream preamble names unknown lane {lane}")),
                None => conn.handle_eof(0),
            },
            () = std::future::ready(()), if lanes_pending => lanes.read(&mut ends, &mut conn),
            () = std::future::poll_fn(|cx| shared.outbound.poll_rung(cx)), if !lanes_pending => lanes.rung(),
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
    drop(handshake);
    finish(&mut ends);
    drop(ends);
    drop(lane_tx);
    let deadline =
        tokio::time::Instant::from_std(close_deadline.unwrap_or_else(|| Instant::now() + CLOSE_LINGER));
    for mut writer in writers {
        if tokio::time::timeout_at(deadline, &mut writer).await.is_err() {
            writer.abort();
        }
    }
    acceptor.abort();
    quic.close(0u32.into(), b"closed");
    debug!("quic connection ended");
}

fn finish(ends: &mut DriverEnds) {
    ends.finish(ConnectionError::Reset);
}

fn take_lane(conn: &mut crate::Connection, lane: Lane) -> Bytes {
    let mut out = BytesMut::with_capacity(16 * 1024);
    conn.poll_transmit_lane(lane, &mut out, MAX_WRITE_BYTES);
    out.freeze()
}

async fn accept_streams(quic: quinn::Connection, tx: mpsc::Sender<Inbound>) {
    while let Ok(mut recv) = quic.accept_uni().await {
        let tx = tx.clone();
        tokio::spawn(
            async move {
                let mut lane = [0u8; 1];
                if recv.read_exact(&mut lane).await.is_err() {
                    return;
                }
                let lane = match Lane::ALL.get(lane[0] as usize) {
                    Some(l) => l.index(),
                    None => {
                        let _ = tx.send(Inbound::BadLane(lane[0])).await;
                        return;
                    }
                };
                loop {
                    match recv.read_chunk(MAX_WRITE_BYTES, true).await {
                        Ok(Some(chunk)) => {
                            if tx.send(Inbound::Data(lane, chunk.bytes)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) | Err(_) => return,
                    }
                }
            }
            .in_current_span(),
        );
    }
}

async fn write_lane(quic: quinn::Connection, lane: Lane, mut chunks: mpsc::Receiver<Bytes>) {
    let mut stream: Option<quinn::SendStream> = None;
    while let Some(chunk) = chunks.recv().await {
        if stream.is_none() {
            let Ok(mut s) = quic.open_uni().await else { return };
            if s.write_all(&[lane as u8]).await.is_err() {
                return;
            }
            stream = Some(s);
        }
        let Some(s) = stream.as_mut() else { return };
        if s.write_all(&chunk).await.is_err() {
            return;
        }
    }
    if let Some(mut s) = stream {
        let _ = s.finish();
        // Give the peer a moment to read the last frames (a Close) before the
        // connection itself is closed, which would discard them.
        let _ = tokio::time::timeout(Duration::from_secs(1), s.stopped()).await;
    }
}
