//! Handshake, request/response, refusals and the connection limit, over real
//! sockets on every transport.

mod support;

use std::sync::Arc;

use support::{hello, job_details, within, Fixture, ALL};
use valkyrie::error::ConnectionError;
use valkyrie::message::{GetJob, Message, RequestFailed};
use valkyrie::transport::{connect, ConnectError, RequestError};
use valkyrie::{ConnectionConfig, ErrorCode};

#[tokio::test]
async fn handshake_and_request_response() {
    let fx = Fixture::new();
    for t in ALL {
        let mut listener = fx.bind(t, fx.listener_options(ConnectionConfig::default())).await;
        let client = within(
            "connect",
            connect(
                listener.local_endpoint(),
                hello("tok"),
                &fx.client_options(ConnectionConfig::default()),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{t:?}: connect: {e}"));
        assert_eq!(
            client.welcome().map(|w| w.server_id.as_str()),
            Some("test-server"),
            "{t:?}"
        );
        let mut server = within("accept", listener.accept()).await.expect("session");
        assert_eq!(server.hello().map(|h| h.token.as_str()), Some("tok"), "{t:?}");

        let sender = client.sender();
        let ask = tokio::spawn(async move {
            let ok = sender.request(GetJob { job_id: 42 }).await;
            let failed = sender.request(GetJob { job_id: 404 }).await;
            (ok, failed)
        });
        let server_tx = server.sender();
        for _ in 0..2 {
            let req = within("a request", server.recv()).await.expect("request");
            assert_ne!(req.correlation, 0, "{t:?}: requests carry a correlation id");
            match req.message {
                Message::GetJob(GetJob { job_id: 42 }) => {
                    server_tx.reply(req.correlation, job_details(42)).await.unwrap()
                }
                Message::GetJob(GetJob { job_id }) => server_tx
                    .reply(
                        req.correlation,
                        RequestFailed {
                            code: ErrorCode::NOT_FOUND,
                            message: format!("no job {job_id}"),
                        },
                    )
                    .await
                    .unwrap(),
                other => panic!("{t:?}: unexpected {other:?}"),
            }
        }
        let (ok, failed) = within("replies", ask).await.unwrap();
        assert_eq!(ok, Ok(Message::from(job_details(42))), "{t:?}");
        assert_eq!(
            failed,
            Err(RequestError::Failed {
                code: ErrorCode::NOT_FOUND,
                message: "no job 404".into()
            }),
            "{t:?}"
        );

        // An orderly close reaches the other side as Ok.
        client.sender().close(ErrorCode::NORMAL, "done").await;
        assert_eq!(
            within("client closed", client.sender().closed()).await,
            Ok(()),
            "{t:?}"
        );
        assert_eq!(within("server closed", server_tx.closed()).await, Ok(()), "{t:?}");
        assert!(within("recv ends", server.recv()).await.is_none(), "{t:?}");
    }
}

#[tokio::test]
async fn both_sides_may_have_requests_in_flight_with_the_same_id() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, mut client, mut server) = fx.connected(t, "tok").await;
        // Both sides number requests from 1: the server's request 1 must not
        // be taken for the reply to the client's request 1.
        let (c_tx, s_tx) = (client.sender(), server.sender());
        let from_client = tokio::spawn(async move { c_tx.request(GetJob { job_id: 1 }).await });
        let from_server = tokio::spawn(async move { s_tx.request(GetJob { job_id: 2 }).await });
        let at_server = within("client's request", server.recv()).await.unwrap();
        let at_client = within("server's request", client.recv()).await.unwrap();
        assert_eq!(at_server.message, Message::GetJob(GetJob { job_id: 1 }), "{t:?}");
        assert_eq!(at_client.message, Message::GetJob(GetJob { job_id: 2 }), "{t:?}");
        server
            .sender()
            .reply(at_server.correlation, job_details(1))
            .await
            .unwrap();
        client
            .sender()
            .reply(at_client.correlation, job_details(2))
            .await
            .unwrap();
        assert_eq!(
            within("reply 1", from_client).await.unwrap(),
            Ok(Message::from(job_details(1))),
            "{t:?}"
        );
        assert_eq!(
            within("reply 2", from_server).await.unwrap(),
            Ok(Message::from(job_details(2))),
            "{t:?}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_are_refused_with_the_reason() {
    let fx = Fixture::new();
    for t in ALL {
        let mut options = fx.listener_options(ConnectionConfig::default());
        options.authenticate = Some(Arc::new(|h: &valkyrie::message::Hello| {
            if h.token == "secret" {
                Ok(())
            } else {
                Err((
                    ErrorCode::UNAUTHENTICATED,
                    format!("token `{}` is not valid", h.token),
                ))
            }
        }));
        let mut listener = fx.bind(t, options).await;
        let client_options = fx.client_options(ConnectionConfig::default());
        let err = within(
            "refusal",
            connect(listener.local_endpoint(), hello("guess"), &client_options),
        )
        .await
        .expect_err("wrong token must be refused");
        match err {
            ConnectError::Refused { code, reason } => {
                assert_eq!(code, ErrorCode::UNAUTHENTICATED, "{t:?}");
                assert_eq!(reason, "token `guess` is not valid", "{t:?}");
            }
            other => panic!("{t:?}: expected Refused, got {other}"),
        }
        // The right token still gets in.
        let ok = within(
            "connect",
            connect(listener.local_endpoint(), hello("secret"), &client_options),
        )
        .await;
        assert!(ok.is_ok(), "{t:?}: {:?}", ok.err());
        let session = within("accept", listener.accept()).await.unwrap();
        assert_eq!(session.hello().unwrap().token, "secret", "{t:?}");
    }
}

#[tokio::test]
async fn connection_limit_refuses_the_next_client() {
    let fx = Fixture::new();
    for t in ALL {
        let mut options = fx.listener_options(ConnectionConfig::default());
        options.max_connections = 1;
        let mut listener = fx.bind(t, options).await;
        let client_options = fx.client_options(ConnectionConfig::default());
        let first = within(
            "first connect",
            connect(listener.local_endpoint(), hello("a"), &client_options),
        )
        .await
        .unwrap();
        let _first_server = within("accept", listener.accept()).await.unwrap();
        let err = within(
            "second connect",
            connect(listener.local_endpoint(), hello("b"), &client_options),
        )
        .await
        .expect_err("over the limit");
        let code = match &err {
            ConnectError::Refused { code, .. } => *code,
            ConnectError::Handshake(ConnectionError::ClosedByPeer { code, .. }) => *code,
            other => panic!("{t:?}: expected a refusal, got {other}"),
        };
        assert_eq!(code, ErrorCode::CONNECTION_LIMIT, "{t:?}: {err}");
        // The first connection is unaffected.
        assert!(!first.sender().is_closed(), "{t:?}");
        // Once it leaves, its slot is free again.
        first.sender().close(ErrorCode::NORMAL, "bye").await;
        within("first closed", first.sender().closed()).await.unwrap();
        drop(first);
        within("slot freed", async {
            loop {
                match connect(listener.local_endpoint(), hello("c"), &client_options).await {
                    Ok(s) => return s,
                    // The server may still be finishing the first connection.
                    Err(ConnectError::Refused { code, .. }) if code == ErrorCode::CONNECTION_LIMIT => {
                        tokio::task::yield_now().await
                    }
                    Err(e) => panic!("{t:?}: {e}"),
                }
            }
        })
        .await;
    }
}

/// A session whose every sender is gone closes in order: the peer sees a
/// Close with code NORMAL, not a reset. The last sender's drop is what
/// wakes the driver (nothing else happens on the connection that would),
/// on every transport.
#[tokio::test]
async fn dropping_every_sender_closes_the_session_in_order() {
    let fx = Fixture::new();
    for t in ALL {
        let (_listener, client, server) = fx.connected(t, "x").await;
        let (sender, mut incoming) = client.into_parts();
        let kept = sender.clone();
        drop(sender);
        drop(kept);
        assert_eq!(
            within("the peer sees the close", server.sender().closed()).await,
            Ok(()),
            "{t:?}"
        );
        // The receiving half learns it too.
        assert!(within("incoming ends", incoming.recv()).await.is_none(), "{t:?}");
    }
}
