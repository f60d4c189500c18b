//! `vk demo`: a control plane and two agents with different tags, in this
//! process, over a Unix socket in a temporary directory; runs
//! examples/demo.yaml live, prints a summary, and cleans up on exit or Ctrl-C.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use valkyrie::transport::{Listener, ListenerOptions};
use valkyrie::{ConnectionConfig, Endpoint};
use valkyrie_control_plane::auth::{random_token, Tokens};
use valkyrie_control_plane::{server, spawn_core, CoreConfig};
use valkyrie_runner_agent::job::JobDefaults;
use valkyrie_runner_agent::{Agent, AgentConfig};
use valkyrie_sdk::{Client, ClientOptions};

use crate::run_view::{follow_run, subscribe, ViewOptions};

/// The demo pipeline, built into the binary so `vk demo` works from anywhere.
pub const DEMO_PIPELINE: &str = include_str!("../../../../examples/demo.yaml");

pub async fn demo(options: ViewOptions) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new().prefix("valkyrie-demo-").tempdir()?;
    let socket = dir.path().join("valkyrie.sock");
    let endpoint = Endpoint::Unix(socket.clone());
    let (api, runner) = (random_token(), random_token());
    let tokens = Arc::new(Tokens::new(api.clone(), runner.clone()));

    let core = spawn_core(CoreConfig::default(), tokens.clone());
    let listener_options = server::listener_options(tokens, ListenerOptions::default());
    let listener = Listener::bind(&endpoint, listener_options)
        .await
        .context("cannot start the control plane")?;
    tokio::spawn(server::serve(listener, core));
    println!(
        "control plane listening on {endpoint} (temporary directory {})",
        dir.path().display()
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut agents = Vec::new();
    for (name, tags) in [
        ("demo-agent-1", ["linux", "unit"]),
        ("demo-agent-2", ["linux", "integration"]),
    ] {
        let work_dir = dir.path().join(name);
        std::fs::create_dir_all(&work_dir)?;
        let config = AgentConfig {
            server: endpoint.clone(),
            token: runner.clone(),
            name: name.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            slots: 2,
            work_dir,
            defaults: JobDefaults {
                shell: vec!["sh".into(), "-c".into()],
                kill_grace: Duration::from_secs(5),
                output_limit_bytes: 64 << 20,
            },
            heartbeat_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            client: ClientOptions::default(),
        };
        let mut stop = stop_rx.clone();
        agents.push(tokio::spawn(Agent::new(config).run(async move {
            let _ = stop.wait_for(|stop| *stop).await;
        })));
        println!("agent {name} started with tags {}", tags.join(","));
    }

    let client = Client::connect(
        &endpoint,
        &api,
        ClientOptions {
            config: ConnectionConfig::default(),
            tls: None,
        },
    )
    .await
    .context("cannot connect to the demo control plane")?;
    // Wait until both agents registered, so the first jobs do not queue.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.runners().await?.len() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = subscribe(&client, options).await?;
    let run_id = client
        .submit_pipeline("examples/demo.yaml", DEMO_PIPELINE)
        .await?;
    println!("running examples/demo.yaml as run r{run_id}\n");
    let (code, _run) = follow_run(&client, run_id, options, events).await?;

    let _ = stop_tx.send(true);
    for agent in agents {
        let _ = tokio::time::timeout(Duration::from_secs(15), agent).await;
    }
    drop(dir);
    Ok(code)
}
