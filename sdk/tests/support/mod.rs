//! What the `vk` end-to-end tests share: a local cluster (in-process
//! control plane and agent, real processes for the steps), the real `vk`
//! binary run against it, and waiting for a run with a deadline.
#![allow(dead_code)]

use std::process::{Output, Stdio};
use std::time::Duration;

use valkyrie_control_plane::CoreConfig;
use valkyrie_sdk::local::{LocalAgent, LocalCluster};
use valkyrie_sdk::{Client, RunInfo};

/// How long a test waits for what it expects.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A local cluster with one agent (`a1`, tag `linux`, 4 slots).
pub async fn cluster() -> LocalCluster {
    let config = CoreConfig {
        kill_grace: Duration::from_secs(1),
        ..CoreConfig::default()
    };
    LocalCluster::start(config, &[LocalAgent::new("a1", &["linux"], 4)])
        .await
        .expect("local cluster")
}

/// `vk args` against `cluster`, not yet started.
pub fn command(cluster: &LocalCluster, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_vk"));
    command
        .args(args)
        .env("VALKYRIE_SERVER", cluster.endpoint.to_string())
        .env("VALKYRIE_TOKEN", &cluster.api_token)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null());
    command
}

/// `vk args` against `cluster`, run to its end.
pub async fn vk(cluster: &LocalCluster, args: &[&str]) -> Output {
    command(cluster, args).output().await.expect("vk runs")
}

/// Writes a file `name` into the cluster's directory; returns its path.
pub fn write(cluster: &LocalCluster, name: &str, yaml: &str) -> String {
    let path = cluster.dir().join(name);
    std::fs::write(&path, yaml).unwrap();
    path.display().to_string()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls the run until `done` holds, with a deadline.
pub async fn wait_run(client: &Client, run: u64, done: impl Fn(&RunInfo) -> bool) -> RunInfo {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let info = client.run(run).await.unwrap();
        if done(&info) {
            return info;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "run never reached the expected state: {info:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Job `name` of the run.
pub fn job<'a>(info: &'a RunInfo, name: &str) -> &'a valkyrie_sdk::RunJobInfo {
    info.jobs
        .iter()
        .find(|j| j.name == name)
        .unwrap_or_else(|| panic!("no job {name}"))
}
