//! Dead-peer detection over real sockets: a peer that completes the
//! handshake and then goes silent is closed with IDLE_TIMEOUT, while a
//! normal client kept alive by heartbeats over the same period is not.

mod support;

use std::time::Duration;

use support::{hello, hello_frame, job_details, within, Fixture, ALL};
use valkyrie::error::ConnectionError;
use valkyrie::message::{GetJob, Message};
use valkyrie::transport::connect;
use valkyrie::{ConnectionConfig, ErrorCode};

#[tokio::test]
async fn silent_peer_is_detected_dead_and_live_one_is_not() {
    let fx = Fixture::new();
    let server_config = ConnectionConfig::default()
        .heartbeat_interval(Duration::from_millis(100))
        .idle_timeout(Duration::from_millis(300));
    let client_config = ConnectionConfig::default().heartbeat_interval(Duration::from_millis(100));
    for t in ALL {
        let mut listener = fx.bind(t, fx.listener_options(server_config.clone())).await;

        let live = within(
            "connect",
            connect(
                listener.local_endpoint(),
                hello("live"),
                &fx.client_options(client_config.clone()),
            ),
        )
        .await
        .unwrap();
        let mut live_server = within("accept live", listener.accept()).await.unwrap();

        // The raw peer announces 100 ms heartbeats, then never sends again.
        let mut silent = fx.raw(&listener, &hello_frame("silent", 100)).await;
        assert!(
            matches!(silent.message().await, Some(Message::Welcome(_))),
            "{t:?}"
        );
        let silent_server = within("accept silent", listener.accept()).await.unwrap();
        assert_eq!(silent_server.hello().unwrap().token, "silent");

        let result = within("idle timeout", silent_server.sender().closed()).await;
        assert_eq!(result, Err(ConnectionError::IdleTimeout), "{t:?}");
        // The silent peer got Pings (we do not answer) and then a Close.
        match silent.message().await {
            Some(Message::Close(c)) => assert_eq!(c.code, ErrorCode::IDLE_TIMEOUT, "{t:?}"),
            other => panic!("{t:?}: expected Close IDLE_TIMEOUT, got {other:?}"),
        }

        // Over the same period the live client kept both sides open.
        assert!(
            !live.sender().is_closed(),
            "{t:?}: live client closed: {:?}",
            live.sender().close_reason()
        );
        assert!(!live_server.sender().is_closed(), "{t:?}");
        let sender = live.sender();
        let ask = tokio::spawn(async move { sender.request(GetJob { job_id: 9 }).await });
        let req = within("live request", live_server.recv()).await.unwrap();
        live_server
            .sender()
            .reply(req.correlation, job_details(9))
            .await
            .unwrap();
        assert_eq!(
            within("live reply", ask).await.unwrap(),
            Ok(Message::from(job_details(9))),
            "{t:?}"
        );
    }
}
