//! End to end: `vk exec` through a real server and a real agent, on every
//! transport, with the job's output and exit code relayed exactly.

mod support;

use support::{text, within, Harness};

/// One server listening on `listen`, one agent and `vk` both connected over
/// it: a failing and a succeeding command come back with their output and
/// exit codes.
async fn exec_round_trip(listen: &str) {
    let h = Harness::new();
    let server = h.server().listen(&[listen]).start();
    let endpoint = server.endpoint().to_owned();
    assert!(
        endpoint.starts_with(listen.split("://").next().unwrap()),
        "server printed {endpoint} for {listen}"
    );
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let out = server
        .vk(&["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .await;
    assert_eq!(
        text(&out.stdout),
        "out\n",
        "stdout over {endpoint}; stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("err\n"),
        "stderr over {endpoint}: {}",
        text(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(7), "exit code over {endpoint}");

    let out = server.vk(&["exec", "--", "echo", "fine"]).await;
    assert_eq!(
        text(&out.stdout),
        "fine\n",
        "stdout over {endpoint}; stderr: {}",
        text(&out.stderr)
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "a succeeding job exits 0 over {endpoint}; stderr: {}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_unix_socket() {
    let h = Harness::new();
    let socket = h.path().join("e2e.sock");
    exec_round_trip(&format!("unix://{}", socket.display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tcp() {
    exec_round_trip("tcp://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_tls() {
    exec_round_trip("tls://127.0.0.1:0").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_over_quic() {
    exec_round_trip("quic://127.0.0.1:0").await;
}

/// A million numbered lines all arrive, in order, both live (`vk exec`) and
/// replayed afterwards (`vk logs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_lines_arrive_complete_and_in_order() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let mut expected = String::with_capacity(7_000_000);
    for i in 1..=1_000_000 {
        expected.push_str(&i.to_string());
        expected.push('\n');
    }

    let out = server.vk(&["exec", "--", "seq", "1", "1000000"]).await;
    assert!(out.status.success(), "vk exec failed: {}", text(&out.stderr));
    let live = text(&out.stdout);
    assert_eq!(
        live.len(),
        expected.len(),
        "live output length; stderr: {}",
        text(&out.stderr)
    );
    assert!(live == expected, "live output differs from `seq 1 1000000`");

    let jobs = client.jobs(10).await.expect("jobs");
    assert_eq!(jobs.len(), 1);
    let id = jobs[0].job_id.to_string();
    let out = server.vk(&["logs", &id]).await;
    assert!(out.status.success(), "vk logs failed: {}", text(&out.stderr));
    let replayed = text(&out.stdout);
    assert_eq!(
        replayed.len(),
        expected.len(),
        "replayed output length; stderr: {}",
        text(&out.stderr)
    );
    assert!(
        replayed == expected,
        "replayed output differs from `seq 1 1000000`"
    );
}

/// 2,000 submits at once on one connection. The server's core answers a
/// burst of them in one turn, far more than a lane's channel holds (256),
/// and each gets its answer: none is dropped for want of room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_submits_on_one_connection_each_gets_its_answer() {
    const SUBMITS: usize = 2000;
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let mut submits = tokio::task::JoinSet::new();
    for i in 0..SUBMITS {
        let client = client.clone();
        submits.spawn(async move {
            client
                .submit(valkyrie_sdk::JobSpec::shell(format!("burst-{i}"), "true"))
                .await
        });
    }
    let mut jobs = std::collections::HashSet::new();
    while let Some(done) = within("every submit's answer", submits.join_next()).await {
        jobs.insert(done.expect("submit task").expect("submit answered"));
    }
    assert_eq!(jobs.len(), SUBMITS, "each submit got its own job");
}
