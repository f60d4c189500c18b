//! `SessionSender::push`, for what must reach the peer but cannot wait (an
//! answer to its request, an assignment, a cancel): never dropped for want
//! of room, in order, and a peer that reads none of it is disconnected
//! before it piles up without bound. Over real sockets.

mod support;

use support::{within, Fixture, Transport, ALL};
use valkyrie::error::{ConnectionError, SendError};
use valkyrie::message::{Heartbeat, Message};
use valkyrie::transport::{RingBatch, MAX_PUSHED_WAITING};
use valkyrie::ErrorCode;

/// Far more than a lane's channel holds (256).
const PUSHED: u32 = 3000;

// One thread: the connections' drivers cannot run while the test pushes.
#[tokio::test]
async fn pushed_messages_past_the_lane_channel_all_arrive_in_order() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, mut client, server) = fx.connected(t, "x").await;
        let sender = server.sender();
        // In one go, as the control plane's core answers a burst of
        // requests in one turn; nothing is taken from the lane before the
        // last is pushed.
        {
            let _batch = RingBatch::hold();
            for running in 0..PUSHED {
                sender.push(0, Heartbeat { running }).unwrap();
            }
        }
        for expected in 0..PUSHED {
            match within("the pushed messages", client.recv())
                .await
                .map(|m| m.message)
            {
                Some(Message::Heartbeat(Heartbeat { running })) => assert_eq!(running, expected, "{t:?}"),
                other => panic!("{t:?}: unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn a_peer_that_reads_nothing_is_disconnected_before_pushed_messages_pile_up() {
    let fx = Fixture::new();
    let (_listener, _client, server) = fx.connected(Transport::Unix, "x").await;
    let sender = server.sender();
    // The client never reads: its session's queue fills, then the socket,
    // then the server's connection queue and lane channel, then what push
    // keeps behind them.
    let mut refused = None;
    for running in 0..1_000_000u32 {
        if let Err(err) = sender.push(0, Heartbeat { running }) {
            refused = Some((running, err));
            break;
        }
        if running % 1024 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let (at, err) = refused.expect("the pushes piled up without bound");
    assert_eq!(err, SendError::QueueFull(valkyrie::Lane::Control));
    assert!(at as usize > MAX_PUSHED_WAITING, "refused after {at}");
    match within("the server to close the connection", sender.closed()).await {
        Err(ConnectionError::ClosedLocally { code, reason }) => {
            assert_eq!(code, ErrorCode::INTERNAL);
            assert!(reason.contains("unread"), "{reason}");
        }
        other => panic!("closed with {other:?}"),
    }
    assert_eq!(sender.push(0, Heartbeat { running: 0 }), Err(SendError::Closed));
}

#[tokio::test]
async fn try_push_lets_a_backlog_wait_and_refuses_past_it_without_closing() {
    const BACKLOG: usize = 500;
    let fx = Fixture::new();
    let (_listener, mut client, server) = fx.connected(Transport::Unix, "x").await;
    let sender = server.sender();
    // In one go: the channel's 256, then the backlog behind it, then
    // refusals.
    let mut taken = 0u32;
    {
        let _batch = RingBatch::hold();
        for running in 0..2 * PUSHED {
            match sender.try_push(0, Heartbeat { running }, BACKLOG) {
                Ok(()) => {
                    assert_eq!(running, taken, "refused ones are not followed by taken ones");
                    taken += 1;
                }
                Err(err) => assert_eq!(err, SendError::QueueFull(valkyrie::Lane::Control)),
            }
        }
    }
    assert!(
        taken as usize > BACKLOG && (taken as usize) < BACKLOG + 1024,
        "{taken} taken"
    );
    for expected in 0..taken {
        match within("the taken messages", client.recv())
            .await
            .map(|m| m.message)
        {
            Some(Message::Heartbeat(Heartbeat { running })) => assert_eq!(running, expected),
            other => panic!("unexpected {other:?}"),
        }
    }
    // Still open: the next one goes through.
    sender.try_push(0, Heartbeat { running: 7 }, BACKLOG).unwrap();
    match within("one more", client.recv()).await.map(|m| m.message) {
        Some(Message::Heartbeat(Heartbeat { running: 7 })) => {}
        other => panic!("unexpected {other:?}"),
    }
}
