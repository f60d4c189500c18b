//! Replaying and following the output of a job that is still running, when
//! its history is far longer than a subscriber's queue.

use std::time::Duration;

use valkyrie_control_plane::CoreConfig;
use valkyrie_sdk::local::{LocalAgent, LocalCluster};
use valkyrie_sdk::{JobSpec, JobState};

async fn vk(cluster: &LocalCluster, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_vk"))
        .args(args)
        .env("VALKYRIE_SERVER", cluster.endpoint.to_string())
        .env("VALKYRIE_TOKEN", &cluster.api_token)
        .output()
        .await
        .expect("vk runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_jobs_long_history_replays_and_follows_without_gaps() {
    let cluster = LocalCluster::start(CoreConfig::default(), &[LocalAgent::new("a1", &[], 1)])
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    let go = cluster.dir().join("go");
    let line = format!(
        "seq 1 1000000; while [ ! -f {} ]; do sleep 0.05; done; echo done",
        go.display()
    );
    let job = client.submit(JobSpec::shell("long", line)).await.unwrap();
    let expected: String = (1..=1_000_000).map(|n| format!("{n}\n")).collect();

    // While it runs: `vk logs` replays everything so far (~7 MB, hundreds of
    // chunks), polled until the last number is in.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let out = vk(&cluster, &["logs", &job.to_string()]).await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        if out.stdout.len() == expected.len() {
            assert!(
                out.stdout == expected.as_bytes(),
                "replay differs from the output"
            );
            break;
        }
        assert!(out.stdout.len() < expected.len(), "replay longer than the output");
        assert!(tokio::time::Instant::now() < deadline, "output never complete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(client.job(job).await.unwrap().state, JobState::Running);

    // Following: the history, then live output, to the end.
    let follow = tokio::process::Command::new(env!("CARGO_BIN_EXE_vk"))
        .args(["logs", &job.to_string(), "-f"])
        .env("VALKYRIE_SERVER", cluster.endpoint.to_string())
        .env("VALKYRIE_TOKEN", &cluster.api_token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(&go, b"").unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), follow.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.len(), expected.len() + "done\n".len());
    assert!(
        text.starts_with(&expected) && text.ends_with("done\n"),
        "gap or duplicate in the followed output"
    );
    cluster.shutdown().await;
}
