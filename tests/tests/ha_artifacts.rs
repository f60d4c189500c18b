//! Artifacts and caches across a failover: two control planes on one
//! MongoDB store (nx-27017) with their artifacts in one S3 bucket (moto).
//! The records of both live in the store, so the server that takes over
//! lists and serves what a job uploaded through the old leader, and a
//! cache saved before the failover is restored after it.

mod support;

use std::time::Duration;

use support::s3::S3Server;
use support::*;
use valkyrie::ClientOptions;
use valkyrie_sdk::{Client, RunState};

const API_TOKEN: &str = "ha-art-api-token";
const RUNNER_TOKEN: &str = "ha-art-runner-token";
/// Short leases keep the failover quick.
const LEASE: &[&str] = &["--lease-ttl", "1s", "--lease-renew", "250ms"];
const BUCKET: &str = "ha-artifacts";
const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// A job `build` of project `web` that uploads `dist/` and keeps `deps/`
/// under the key `deps-v1`; it prints a restored `deps/stamp`, or writes
/// one holding `stamp`.
fn pipeline(stamp: &str) -> String {
    format!(
        r#"jobs:
  build:
    project: web
    cache:
      key: deps-v1
      paths: [deps/]
    artifacts:
      paths: [dist/]
    steps:
      - run: |
          mkdir -p dist && echo "built by {stamp}" > dist/app
          if [ -f deps/stamp ]; then echo "restored stamp: $(cat deps/stamp)"; else mkdir -p deps && echo {stamp} > deps/stamp; fi
"#
    )
}

/// The epoch of the last "leading … (epoch N)" line of a server's log.
fn leading_epoch(log: &str) -> Option<u64> {
    log.lines()
        .filter_map(|l| l.strip_prefix("leading the servers on this store (epoch "))
        .filter_map(|rest| rest.trim_end_matches(')').parse().ok())
        .next_back()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_and_caches_survive_a_failover_with_s3() {
    let h = Harness::new();
    let mongo = MongoServer::start();
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET).await;
    let key_file = h.path().join("secrets-key");
    std::fs::write(&key_file, "7a".repeat(32)).expect("key file");
    let key = key_file.display().to_string();
    let sockets: Vec<String> = (0..2)
        .map(|i| format!("unix://{}", h.path().join(format!("ha-art-{i}.sock")).display()))
        .collect();
    let url = format!("s3://{BUCKET}/ci");
    let server = |i: usize| {
        let store = mongo.uri();
        let builder = h
            .server()
            .listen(&[&sockets[i]])
            .data_dir(h.path().join(format!("ha-art-{i}-data")))
            .tokens(API_TOKEN, RUNNER_TOKEN)
            .args(&["--store", &store, "--secrets-key-file", &key])
            .args(&["--artifacts", &url])
            .args(LEASE);
        s3.env()
            .into_iter()
            .fold(builder, |b, (name, value)| b.env(name, &value))
    };
    let mut leader = tokio::task::block_in_place(|| server(0).start());
    let mut standby = tokio::task::block_in_place(|| server(1).start_standby());
    let client = leader.client().await;
    let _agent = h.agent(&leader).endpoint(&sockets.join(",")).start(&client).await;

    // Through the leader: the artifact is uploaded and the cache saved.
    let run = run_pipeline(&client, &pipeline("first"), RUN_DEADLINE).await;
    let build = job_id(&run, "build");
    let log = text(&leader.vk(&["logs", &build.to_string()]).await.stdout);
    assert_eq!(run.state, RunState::Succeeded, "{log}");
    assert!(log.contains("[valkyrie] cache saved: key `deps-v1`"), "{log}");
    let listed = leader.vk(&["artifacts", &build.to_string(), "--list"]).await;
    let before = text(&listed.stdout);
    assert!(before.contains("artifacts.tar"), "{before}");
    drop(client);

    // The leader dies; the standby takes over.
    leader.process.kill_now();
    wait_until_within("the standby to lead", RUN_DEADLINE, || {
        std::future::ready(leading_epoch(&standby.process.log()))
    })
    .await;
    let client = wait_until_within("the new leader to answer", RUN_DEADLINE, || async {
        let endpoint = sockets[1].parse().expect("endpoint");
        let client = Client::connect_any(&[endpoint], API_TOKEN, ClientOptions::default())
            .await
            .ok()?;
        client.jobs(1).await.ok().map(|_| client)
    })
    .await;

    // The new leader lists the artifact as the old one did, and serves it
    // from the bucket.
    let listed = standby.vk(&["artifacts", &build.to_string(), "--list"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert_eq!(
        text(&listed.stdout),
        before,
        "the same listing after the failover"
    );
    let out = h.path().join("downloaded");
    let downloaded = standby
        .vk(&[
            "artifacts",
            &build.to_string(),
            "--output",
            out.to_str().expect("utf-8 path"),
        ])
        .await;
    assert!(downloaded.status.success(), "{}", text(&downloaded.stderr));
    assert_eq!(
        std::fs::read_to_string(out.join("dist/app")).expect("the downloaded file"),
        "built by first\n"
    );

    // The cache saved before the failover is hit after it (the agent
    // follows the group to the new leader).
    let run = run_pipeline(&client, &pipeline("second"), RUN_DEADLINE).await;
    let second = job_id(&run, "build");
    let log = text(&standby.vk(&["logs", &second.to_string()]).await.stdout);
    assert_eq!(run.state, RunState::Succeeded, "{log}");
    assert!(
        log.contains("[valkyrie] cache hit: restored key `deps-v1`"),
        "{log}"
    );
    assert!(log.contains("restored stamp: first"), "{log}");
    standby.process.kill_now();
}
