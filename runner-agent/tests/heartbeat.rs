//! The agent's heartbeats as a server sees them (spec §6.2): the real
//! `valkyrie-agent` against a listener that plays the control plane.

use std::process::Stdio;
use std::time::Duration;

use valkyrie::message::{Ack, Message, RunnerRegistered};
use valkyrie::transport::{Listener, ListenerOptions};
use valkyrie::Endpoint;

const DEADLINE: Duration = Duration::from_secs(30);

async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {DEADLINE:?}"))
}

/// One Heartbeat in three asks for an Ack (a non-zero correlation id), and
/// the agent tells the server it pings only after four intervals of
/// silence: the Acks, one every three intervals, keep it from pinging.
#[tokio::test]
async fn one_heartbeat_in_three_asks_for_an_ack() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint: Endpoint = format!("unix://{}", dir.path().join("s.sock").display())
        .parse()
        .unwrap();
    let mut listener = Listener::bind(&endpoint, ListenerOptions::default())
        .await
        .unwrap();
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_valkyrie-agent"))
        .arg("--server")
        .arg(endpoint.to_string())
        .args([
            "--token",
            "t",
            "--name",
            "heartbeat-test",
            "--heartbeat-interval",
            "50ms",
        ])
        .arg("--work-dir")
        .arg(dir.path().join("work"))
        .env("VALKYRIE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let mut session = within("the agent's connection", listener.accept()).await.unwrap();
    let hello = session.hello().expect("the agent's Hello").clone();
    assert_eq!(hello.heartbeat_interval_ms, 200, "four heartbeat intervals");
    let register = within("RegisterRunner", session.recv()).await.unwrap();
    assert!(matches!(register.message, Message::RegisterRunner(_)));
    session
        .sender()
        .reply(
            register.correlation,
            RunnerRegistered {
                runner_id: 1,
                credential: "c".into(),
                stale: Vec::new(),
            },
        )
        .await
        .unwrap();

    // Whether each of the first nine Heartbeats asked for an answer.
    let mut asked = Vec::new();
    while asked.len() < 9 {
        let incoming = within("a Heartbeat", session.recv()).await.unwrap();
        if let Message::Heartbeat(_) = incoming.message {
            asked.push(incoming.correlation != 0);
            if incoming.correlation != 0 {
                session
                    .sender()
                    .reply(incoming.correlation, Ack {})
                    .await
                    .unwrap();
            }
        }
    }
    assert_eq!(
        asked,
        [false, false, true, false, false, true, false, false, true]
    );
    agent.kill().await.unwrap();
}
