//! `vk demo`: a control plane and two agents with different tags, in this
//! process, over a Unix socket in a temporary directory; runs
//! examples/demo.yaml live, prints a summary, and cleans up on exit or Ctrl-C.

use std::process::ExitCode;

use anyhow::Context;
use valkyrie_control_plane::CoreConfig;
use valkyrie_sdk::local::{LocalAgent, LocalCluster};

use crate::out::outln;
use crate::run_view::{follow_run, subscribe, ViewOptions};

/// The demo pipeline, built into the binary so `vk demo` works from anywhere.
pub const DEMO_PIPELINE: &str = include_str!("../../../../examples/demo.yaml");

pub async fn demo(options: ViewOptions) -> anyhow::Result<ExitCode> {
    let agents = [
        LocalAgent::new("demo-agent-1", &["linux", "unit"], 2),
        LocalAgent::new("demo-agent-2", &["linux", "integration"], 2),
    ];
    let cluster = LocalCluster::start(CoreConfig::default(), &agents)
        .await
        .context("cannot start the demo cluster")?;
    outln!(
        "control plane listening on {} (temporary directory {})",
        cluster.endpoint,
        cluster.dir().display()
    );
    for agent in &agents {
        outln!(
            "agent {} registered with tags {}",
            agent.name,
            agent.tags.join(",")
        );
    }
    let client = cluster.client().await?;
    let events = subscribe(&client, options).await?;
    let run_id = client
        .submit_pipeline("examples/demo.yaml", DEMO_PIPELINE)
        .await?;
    outln!("running examples/demo.yaml as run r{run_id}\n");
    let reconnect = || async { Ok(cluster.client().await?) };
    let (code, _run) = follow_run(&client, run_id, options, events, reconnect).await?;
    cluster.shutdown().await;
    Ok(code)
}
