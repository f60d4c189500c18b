//! `valkyrie-server`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use valkyrie::transport::{dev_certificate, ListenerOptions, ServerTls};
use valkyrie::{ConnectionConfig, Endpoint};
use valkyrie_control_plane::auth::Tokens;
use valkyrie_control_plane::core::spawn_with_store;
use valkyrie_control_plane::metrics::Metrics;
use valkyrie_control_plane::rest::auth::{JwtKeys, Role};
use valkyrie_control_plane::rest::{self, RestConfig};
use valkyrie_control_plane::store::embedded::EmbeddedStore;
use valkyrie_control_plane::store::mongo::MongoStore;
use valkyrie_control_plane::store::{Durability, Store, StoreHandle};
use valkyrie_control_plane::{server, CoreConfig};

/// The Valkyrie control plane: schedules CI jobs onto runner agents.
#[derive(Parser, Debug)]
#[command(
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  valkyrie-server --listen tcp://0.0.0.0:7700 --data-dir /var/lib/valkyrie\n  valkyrie-server --listen unix:///run/valkyrie.sock --listen quic://0.0.0.0:7701\n  valkyrie-server --http 127.0.0.1:8080\n  valkyrie-server token --role viewer --ttl 24h --data-dir /var/lib/valkyrie"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
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
    /// Failed hand-offs in a row (assignment refused, lease expired) after which a job ends lost.
    /// A failed hand-off otherwise sends the job back to the queue without spending a retry.
    #[arg(long, env = "VALKYRIE_HANDOFF_LIMIT", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    handoff_limit: u32,
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
    /// Where state is kept: `embedded` (a file in the data directory) or a `mongodb://` URI.
    #[arg(long, env = "VALKYRIE_STORE", default_value = "embedded")]
    store: String,
    /// Finished jobs and their logs older than this are deleted.
    #[arg(long, env = "VALKYRIE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// At most this many finished jobs (and their logs) are kept; the oldest go first.
    #[arg(long, env = "VALKYRIE_MAX_FINISHED_JOBS", default_value_t = 100_000)]
    max_finished_jobs: usize,
    /// Output stored per job for `vk logs` and replay (the agent truncates at its own limit).
    #[arg(long, env = "VALKYRIE_LOG_LIMIT_BYTES", default_value_t = 64 << 20)]
    log_limit_bytes: usize,
    /// `fsync`: every commit reaches the disk before what depends on it is acknowledged;
    /// `none`: commits are not fsynced (benchmarks, throwaway CI).
    #[arg(long, env = "VALKYRIE_DURABILITY", value_enum, default_value = "fsync")]
    durability: Durability,
    /// Serve the REST API (and /metrics, /healthz, /readyz) on this address, e.g. 127.0.0.1:8080.
    #[arg(long, env = "VALKYRIE_HTTP")]
    http: Option<SocketAddr>,
    /// Origin allowed cross-origin REST requests (`*` for any). Repeatable.
    #[arg(long = "cors-origin", env = "VALKYRIE_CORS_ORIGIN", value_delimiter = ',')]
    cors_origin: Vec<String>,
    /// REST requests per second per token (0: unlimited).
    #[arg(long, env = "VALKYRIE_RATE_LIMIT", default_value_t = 100.0)]
    rate_limit: f64,
    /// REST requests a token may make at once before the rate limit applies.
    #[arg(long, env = "VALKYRIE_RATE_LIMIT_BURST", default_value_t = 200.0)]
    rate_limit_burst: f64,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Mint a JWT for the REST API, signed with the data directory's jwt-secret; prints it on stdout.
    Token {
        /// What the token may do: viewer (read), submitter (read, create, trigger, cancel), admin (everything).
        #[arg(long, value_enum)]
        role: Role,
        /// How long the token is valid.
        #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Who the token is for (its `sub` claim).
        #[arg(long, default_value = "cli")]
        subject: String,
        /// The server's data directory.
        #[arg(long, env = "VALKYRIE_DATA_DIR", default_value = "valkyrie-data")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("valkyrie-server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VALKYRIE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if let Some(Cmd::Token {
        role,
        ttl,
        subject,
        data_dir,
    }) = &args.command
    {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let (keys, _) = JwtKeys::load_or_generate(data_dir)
            .with_context(|| format!("cannot read or store jwt-secret in {}", data_dir.display()))?;
        println!("{}", keys.mint(subject, *role, *ttl));
        return Ok(());
    }
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
    let core_config = CoreConfig {
        assign_lease: args.assign_lease,
        runner_lost_after: args.runner_lost_after,
        kill_grace: args.kill_grace,
        log_retention_bytes: args.log_limit_bytes,
        finished_job_retention: args.max_finished_jobs,
        retention: args.retention,
        handoff_limit: args.handoff_limit,
    };
    let metrics: Arc<Metrics> = Default::default();
    let mut store = open_store(&args.store, &args.data_dir, args.durability)?;
    let loaded = store.load().context("cannot load the stored state")?;
    let store = StoreHandle::spawn(store, metrics.clone());
    let core = spawn_with_store(core_config, tokens.clone(), metrics, store, loaded);
    let listeners_bound = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.http {
        let (jwt, generated) = JwtKeys::load_or_generate(&args.data_dir)
            .with_context(|| format!("cannot store jwt-secret in {}", args.data_dir.display()))?;
        if generated {
            eprintln!(
                "generated JWT secret: {}",
                args.data_dir.join("jwt-secret").display()
            );
        }
        let config = RestConfig::new(jwt)
            .cors_origins(args.cors_origin.clone())
            .rate_limit(args.rate_limit, args.rate_limit_burst)
            .ready_flag(listeners_bound.clone());
        let http = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
        println!("serving HTTP on http://{}", http.local_addr()?);
        let router = rest::router(core.clone(), tokens, config);
        tokio::spawn(async move {
            if let Err(err) = rest::serve(http, router).await {
                tracing::error!(%err, "the HTTP server stopped");
            }
        });
    }
    let listeners = server::bind_all(&args.listen, &options).await?;
    for listener in listeners {
        // Printed on stdout so scripts and tests can wait for readiness.
        println!("listening on {}", listener.local_endpoint());
        tokio::spawn(server::serve(listener, core.clone()));
    }
    listeners_bound.store(true, Ordering::Release);
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

/// Opens the store named by `--store`.
fn open_store(
    store: &str,
    data_dir: &std::path::Path,
    durability: Durability,
) -> anyhow::Result<Box<dyn Store>> {
    match store {
        "embedded" => Ok(Box::new(EmbeddedStore::open(data_dir, durability)?)),
        uri if uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://") => {
            Ok(Box::new(MongoStore::connect(uri, durability)?))
        }
        other => bail!("unknown store `{other}`: use `embedded` or a mongodb:// URI"),
    }
}
