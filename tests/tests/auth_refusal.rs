//! Refusals at the door: wrong tokens are turned away with a reason, and a
//! peer sending garbage does not disturb anyone else.

mod support;

use support::{text, within, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `vk` with a wrong token exits non-zero and prints the server's code and
/// reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_with_wrong_token_is_refused_with_reason() {
    let h = Harness::new();
    let server = h.server().start();
    let out = server.vk_on(server.endpoint(), "not-the-token", &["jobs"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("UNAUTHENTICATED"), "{stderr}");
    assert!(stderr.contains("invalid API token"), "{stderr}");

    // The runner token is valid, but not for clients (spec §6.1.4).
    let out = server
        .vk_on(server.endpoint(), &server.runner_token, &["jobs"])
        .await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("PERMISSION_DENIED"), "{stderr}");
    assert!(stderr.contains("does not grant the client role"), "{stderr}");
    assert!(stderr.contains("API token"), "names the token to use: {stderr}");
}

/// An agent given the API token is told it is the wrong kind of token
/// (PERMISSION_DENIED) and exits instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_the_api_token_is_denied_and_exits() {
    let h = Harness::new();
    let server = h.server().start();
    let mut agent = h.agent(&server).token(&server.api_token).spawn();
    let status = agent.process.exited().await;
    assert!(!status.success(), "{status}");
    let log = agent.process.log();
    assert!(log.contains("does not grant the agent role"), "{log}");
}

/// An agent with a wrong registration token exits non-zero with the
/// server's reason instead of retrying forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_with_wrong_token_exits_with_reason() {
    let h = Harness::new();
    let server = h.server().start();
    let mut agent = h.agent(&server).token("not-the-token").spawn();
    let status = agent.process.exited().await;
    assert!(!status.success(), "{status}");
    let log = agent.process.log();
    assert!(log.contains("invalid runner registration token"), "{log}");
}

/// Clients that send garbage over TCP are disconnected; the server keeps
/// serving `vk exec` meanwhile and afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_client_does_not_stop_the_server() {
    let h = Harness::new();
    let mut server = h.server().listen(&["tcp://127.0.0.1:0"]).start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;
    let addr = server.endpoint().strip_prefix("tcp://").unwrap().to_owned();

    // One peer sends garbage and waits for the server to hang up; another
    // connects and goes silent mid-handshake.
    let mut garbage = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let _silent = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    let junk: Vec<u8> = (0..64 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let _ = garbage.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let _ = garbage.write_all(&junk).await;
    within("the server to close the garbage connection", async {
        let mut buf = [0u8; 4096];
        loop {
            match garbage.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;

    let out = server.vk(&["exec", "--", "sh", "-c", "echo still serving"]).await;
    assert_eq!(
        text(&out.stdout),
        "still serving\n",
        "stderr: {}",
        text(&out.stderr)
    );
    assert!(out.status.success());
    assert!(
        server.process.try_wait().is_none(),
        "the server process is still the one that started"
    );
}
