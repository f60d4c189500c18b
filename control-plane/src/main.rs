//! `valkyrie-server`: the control plane.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use valkyrie::transport::{dev_certificate, ListenerOptions, ServerTls};
use valkyrie::{ConnectionConfig, Endpoint};
use valkyrie_control_plane::auth::Tokens;
use valkyrie_control_plane::{server, spawn_core, CoreConfig};

/// The Valkyrie control plane: schedules CI jobs onto runner agents.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  valkyrie-server --listen tcp://0.0.0.0:7700 --data-dir /var/lib/valkyrie\n  valkyrie-server --listen unix:///run/valkyrie.sock --listen quic://0.0.0.0:7701"
)]
struct Args {
    /// Where to listen: unix:///path, tcp://host:port, tls://host:port, quic://host:port. Repeatable.
    #[arg(
        long = "listen",
        env = "VALKYRIE_LISTEN",
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:7700"
    )]
    listen: Vec<Endpoint>,
    /// Directory for tokens, certificates and state.
    #[arg(long, env = "VALKYRIE_DATA_DIR", default_value = "valkyrie-data")]
    data_dir: PathBuf,
    /// Token agents present to register (generated into the data directory if unset).
    #[arg(long, env = "VALKYRIE_RUNNER_TOKEN", hide_env_values = true)]
    runner_token: Option<String>,
    /// Token SDK clients and `vk` present (generated into the data directory if unset).
    #[arg(long, env = "VALKYRIE_API_TOKEN", hide_env_values = true)]
    api_token: Option<String>,
    /// TLS certificate chain (PEM) for tls:// and quic://; a development certificate is generated if unset.
    #[arg(long, env = "VALKYRIE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "VALKYRIE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// How long an agent has to acknowledge an assignment before the job is queued again.
    #[arg(long, env = "VALKYRIE_ASSIGN_LEASE", default_value = "5s", value_parser = humantime::parse_duration)]
    assign_lease: Duration,
    /// A runner silent or disconnected this long is lost and its jobs retried.
    #[arg(long, env = "VALKYRIE_RUNNER_LOST_AFTER", default_value = "10s", value_parser = humantime::parse_duration)]
    runner_lost_after: Duration,
    /// Grace agents give jobs between SIGTERM and SIGKILL (the server waits this long, plus 5 s, for their word).
    #[arg(long, env = "VALKYRIE_KILL_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Ping interval on idle connections.
    #[arg(long, env = "VALKYRIE_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Maximum concurrent connections per listener.
    #[arg(long, env = "VALKYRIE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VALKYRIE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create data directory {}", args.data_dir.display()))?;
    let (tokens, generated) =
        Tokens::load_or_generate(&args.data_dir, args.api_token.clone(), args.runner_token.clone())
            .with_context(|| format!("cannot store tokens in {}", args.data_dir.display()))?;
    for token in &generated {
        eprintln!("generated {} token: {}", token.kind, token.path.display());
    }
    let tokens = Arc::new(tokens);

    let tls = if args.listen.iter().any(Endpoint::needs_tls) {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                let dev = dev_certificate(&args.data_dir, &["localhost", "127.0.0.1", "::1"])?;
                eprintln!(
                    "using development TLS certificate {} (clients: --ca-cert {})",
                    dev.cert.display(),
                    dev.cert.display()
                );
                (dev.cert, dev.key)
            }
        };
        Some(ServerTls::from_pem_files(&cert, &key)?)
    } else {
        None
    };
    if args.listen.is_empty() {
        bail!("nothing to listen on: pass --listen");
    }
    let base = ListenerOptions {
        config: ConnectionConfig::default().heartbeat_interval(args.heartbeat_interval),
        tls,
        max_connections: args.max_connections,
        server_id: format!("valkyrie-server/{}", env!("CARGO_PKG_VERSION")),
        authenticate: None,
    };
    let options = server::listener_options(tokens.clone(), base);
    let core = spawn_core(
        CoreConfig {
            assign_lease: args.assign_lease,
            runner_lost_after: args.runner_lost_after,
            kill_grace: args.kill_grace,
            ..CoreConfig::default()
        },
        tokens,
        Default::default(),
    );
    let listeners = server::bind_all(&args.listen, &options).await?;
    for listener in listeners {
        // Printed on stdout so scripts and tests can wait for readiness.
        println!("listening on {}", listener.local_endpoint());
        tokio::spawn(server::serve(listener, core.clone()));
    }
    shutdown_signal().await;
    eprintln!("shutting down");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
