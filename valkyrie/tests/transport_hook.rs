//! A session's inbound hook over real sockets: it sees each of the peer's
//! messages first, in order, with how many were queued for `recv` before
//! it; what it keeps never reaches `recv`, and what it returns does, in
//! order. Replies to our own requests never pass through it.

mod support;

use std::sync::{Arc, Mutex};

use support::{within, Fixture, ALL};
use valkyrie::message::{Ack, Heartbeat, Message};
use valkyrie::transport::Hooked;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hook_sees_every_message_first_and_passes_on_what_it_returns() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, client, mut server) = fx.connected(t, "x").await;
        // Kept: heartbeats whose `running` is even. Seen: (running, queued).
        let seen = Arc::new(Mutex::new(Vec::new()));
        server.set_inbound_hook({
            let seen = seen.clone();
            Box::new(move |incoming, queued| {
                let Message::Heartbeat(Heartbeat { running }) = incoming.message else {
                    return Hooked::Queue(incoming);
                };
                seen.lock().unwrap().push((running, queued));
                if running % 2 == 1 {
                    Hooked::Queue(incoming)
                } else {
                    Hooked::Taken
                }
            })
        });
        for running in 0..10 {
            client.sender().send(Heartbeat { running }).await.unwrap();
        }
        // A reply to the server's own request goes to the request, not
        // through the hook: the client answers a heartbeat request.
        let mut client_incoming = client;
        let answer = tokio::spawn({
            let sender = server.sender();
            async move { sender.request(Heartbeat { running: 99 }).await }
        });
        let request = within("the server's request", client_incoming.recv())
            .await
            .unwrap();
        client_incoming
            .sender()
            .reply(request.correlation, Ack {})
            .await
            .unwrap();
        assert!(matches!(
            within("the answer", answer).await.unwrap(),
            Ok(Message::Ack(_))
        ));
        let mut passed = Vec::new();
        while passed.len() < 5 {
            match within("a passed message", server.recv()).await.unwrap().message {
                Message::Heartbeat(h) => passed.push(h.running),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(passed, [1, 3, 5, 7, 9], "{t:?}: the odd ones, in order");
        let expected: Vec<(u32, u64)> = (0..10).map(|r| (r, u64::from(r / 2))).collect();
        assert_eq!(
            *seen.lock().unwrap(),
            expected,
            "{t:?}: each with the count queued before it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hook_answers_from_the_connections_own_turn() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, client, mut server) = fx.connected(t, "x").await;
        // Correlated heartbeats are answered by the hook; nothing else is.
        server.set_inbound_hook(Box::new(|incoming, _| match incoming.message {
            Message::Heartbeat(_) if incoming.correlation != 0 => {
                Hooked::Reply(incoming.correlation, Ack {}.into())
            }
            _ => Hooked::Queue(incoming),
        }));
        for _ in 0..3 {
            let answer = within(
                "the hook's answer",
                client.sender().request(Heartbeat { running: 1 }),
            )
            .await;
            assert!(matches!(answer, Ok(Message::Ack(_))), "{t:?}: {answer:?}");
        }
        client.sender().send(Heartbeat { running: 7 }).await.unwrap();
        let passed = within("the uncorrelated heartbeat", server.recv()).await.unwrap();
        assert_eq!(
            passed.message,
            Message::Heartbeat(Heartbeat { running: 7 }),
            "{t:?}: the answered ones never reach recv"
        );
    }
}
