//! `valkyrie-server`: the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use valkyrie::binary::{default_state_dir, init_logging, LogFormat};
use valkyrie::transport::{dev_certificate, ListenerOptions, ServerTls};
use valkyrie::{ConnectionConfig, Endpoint};
use valkyrie_control_plane::artifacts::{ArtifactStore, S3Blobs, StoreConfig};
use valkyrie_control_plane::auth::Tokens;
use valkyrie_control_plane::core::spawn_with_store;
use valkyrie_control_plane::core::{Command, CoreHandle};
use valkyrie_control_plane::group::Group;
use valkyrie_control_plane::metrics::Metrics;
use valkyrie_control_plane::responder::Responder;
use valkyrie_control_plane::rest::auth::{JwtKeys, Role};
use valkyrie_control_plane::rest::{self, RestConfig};
use valkyrie_control_plane::source::mirror::Mirrors;
use valkyrie_control_plane::source::notifier::{self, NotifierConfig};
use valkyrie_control_plane::source::schedule;
use valkyrie_control_plane::store::embedded::EmbeddedStore;
use valkyrie_control_plane::store::leader::{Election, LeaseConfig};
use valkyrie_control_plane::store::mongo::MongoStore;
use valkyrie_control_plane::store::seal::{SealedStore, SecretsKey};
use valkyrie_control_plane::store::{
    step_down, Durability, Store, StoreError, StoreHandle, STORE_FAILED_EXIT,
};
use valkyrie_control_plane::{audit, server, CoreConfig};

/// jemalloc (see the workspace's Cargo.toml for why).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Lets one jemalloc thread give freed pages back to the system once they
/// have been unused for jemalloc's decay time (10 s). Without it, pages are
/// purged only as the program goes on allocating, so an idle process keeps
/// what its start freed (about 1.2 MiB for an idle server: README,
/// Benchmarks). One thread, not jemalloc's default of one per CPU. Should
/// the allocator refuse, the process only keeps more memory.
#[cfg(feature = "jemalloc")]
fn purge_in_background() {
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

/// The Valkyrie control plane: schedules CI jobs onto runner agents.
#[derive(Parser, Debug)]
#[command(
    name = "valkyrie-server",
    version,
    args_conflicts_with_subcommands = true,
    after_help = "Examples:\n  valkyrie-server --listen tcp://0.0.0.0:7700 --data-dir /var/lib/valkyrie\n  valkyrie-server --listen unix:///run/valkyrie.sock --listen quic://0.0.0.0:7701\n  valkyrie-server --http 127.0.0.1:8080\n  valkyrie-server token --role viewer --ttl 24h --data-dir /var/lib/valkyrie"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// TOML file with any of these flags as keys in snake_case (`data_dir = "/srv/ci"`);
    /// flags and environment variables override it.
    #[arg(long, env = "VALKYRIE_CONFIG")]
    config: Option<PathBuf>,
    /// Where to listen: unix:///path, tcp://host:port, tls://host:port, quic://host:port. Repeatable.
    #[arg(
        long = "listen",
        env = "VALKYRIE_LISTEN",
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:7700"
    )]
    listen: Vec<Endpoint>,
    /// Directory for tokens, certificates and state [default: /var/lib/valkyrie as root,
    /// else $XDG_STATE_HOME/valkyrie or ~/.local/state/valkyrie].
    #[arg(long, env = "VALKYRIE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Log lines as `text` or `json` (filter with VALKYRIE_LOG, e.g. `debug`).
    #[arg(long, env = "VALKYRIE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
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
    /// With a MongoDB store, several servers form one group and one leads: how long its lease
    /// lasts without renewal (a standby takes over that long after the leader stops renewing).
    #[arg(long, env = "VALKYRIE_LEASE_TTL", default_value = "2s", value_parser = humantime::parse_duration)]
    lease_ttl: Duration,
    /// How often the leader renews its lease (well inside --lease-ttl).
    #[arg(long, env = "VALKYRIE_LEASE_RENEW", default_value = "500ms", value_parser = humantime::parse_duration)]
    lease_renew: Duration,
    /// URIs where agents and clients reach this server, told to them by the standbys
    /// (comma-separated or repeated). Default: the --listen URIs.
    #[arg(long, env = "VALKYRIE_ADVERTISE", value_delimiter = ',')]
    advertise: Vec<String>,
    /// URL of this server's REST API (--http) for the other servers of its group: while it leads,
    /// standbys redirect REST requests there (307). Default: http://<--http address>, unless that
    /// address is unspecified (0.0.0.0 or ::), when standbys answer 503 naming the leader instead.
    #[arg(long, env = "VALKYRIE_ADVERTISE_HTTP")]
    advertise_http: Option<String>,
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
    /// File holding the key that seals secrets at rest (64 hex digits; from a KMS or secret manager).
    /// If unset, `secrets-key` in the data directory is used, generated on first start.
    #[arg(long, env = "VALKYRIE_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Finished jobs and their logs older than this are deleted.
    #[arg(long, env = "VALKYRIE_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    retention: Duration,
    /// Runners lost or stopped for longer than this are removed from the registry.
    #[arg(long, env = "VALKYRIE_RUNNER_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    runner_retention: Duration,
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
    /// After SIGTERM or Ctrl-C, how long HTTP requests in flight get to finish; the process
    /// exits within this time whatever is still running (a second signal exits at once).
    #[arg(long, env = "VALKYRIE_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// The largest artifact a job may upload, in bytes (uploads over it fail, saying so in the job's log).
    #[arg(long, env = "VALKYRIE_MAX_ARTIFACT_BYTES", default_value_t = 1 << 30)]
    max_artifact_bytes: u64,
    /// How long artifacts are kept when the pipeline gives no `expire_in`.
    #[arg(long, env = "VALKYRIE_ARTIFACTS_EXPIRE_IN", default_value = "30d", value_parser = humantime::parse_duration)]
    artifacts_expire_in: Duration,
    /// Where artifact contents are kept: in the data directory (default), or `s3://BUCKET/PREFIX` in any
    /// S3-compatible store, with endpoint, region and credentials from AWS_ENDPOINT_URL, AWS_REGION,
    /// AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (AWS_ALLOW_HTTP=true for a plain-http endpoint).
    #[arg(long, env = "VALKYRIE_ARTIFACTS", value_name = "s3://BUCKET/PREFIX", value_parser = artifacts_url)]
    artifacts: Option<String>,
    /// How often expired artifacts and the blobs no job references are removed.
    #[arg(long, env = "VALKYRIE_ARTIFACTS_SWEEP_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    artifacts_sweep_interval: Duration,
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
        /// The server's data directory [default: as the server's].
        #[arg(long, env = "VALKYRIE_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

/// Of the shutdown grace, what is kept for stopping the runtime once the
/// HTTP server has drained (or its share of the grace is over).
const RUNTIME_STOP: Duration = Duration::from_millis(500);

fn main() -> std::process::ExitCode {
    #[cfg(feature = "jemalloc")]
    purge_in_background();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("valkyrie-server: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run());
    // Not a plain drop: dropping a runtime waits for every blocking task
    // (a pipeline being validated) and for every worker stuck in a long
    // poll, without limit. What is still running now is abandoned.
    runtime.shutdown_timeout(RUNTIME_STOP);
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("valkyrie-server: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let mut args: Args = valkyrie::config_file::parse_with_config("VALKYRIE_CONFIG")?;
    init_logging(args.log_format);
    // Installed before anything is printed: a SIGTERM sent as soon as
    // `listening on` appears must find the handler in place.
    let mut signals = Signals::new()?;
    if let Some(Cmd::Token {
        role,
        ttl,
        subject,
        data_dir,
    }) = &args.command
    {
        let data_dir = &match data_dir {
            Some(dir) => dir.clone(),
            None => default_state_dir("valkyrie")?,
        };
        valkyrie::private_fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
        let (keys, _) = JwtKeys::load_or_generate(data_dir)
            .with_context(|| format!("cannot read or store jwt-secret in {}", data_dir.display()))?;
        let token = keys.mint(subject, *role, *ttl);
        // The audit log learns of it through the data directory (the
        // store belongs to the running server).
        let record = audit::inbox::MintRecord {
            at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            user: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            subject: subject.clone(),
            role: role.as_str().to_owned(),
            ttl_secs: ttl.as_secs(),
        };
        audit::inbox::write(data_dir, &record)
            .with_context(|| format!("cannot record the minted token in {}", data_dir.display()))?;
        println!("{token}");
        return Ok(());
    }
    let data_dir = match args.data_dir.take() {
        Some(dir) => dir,
        None => default_state_dir("valkyrie")?,
    };
    valkyrie::private_fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let (tokens, generated) =
        Tokens::load_or_generate(&data_dir, args.api_token.clone(), args.runner_token.clone())
            .with_context(|| format!("cannot store tokens in {}", data_dir.display()))?;
    for token in &generated {
        eprintln!("generated {} token: {}", token.kind, token.path.display());
    }
    let tokens = Arc::new(tokens);

    let tls = if args.listen.iter().any(Endpoint::needs_tls) {
        let (cert, key) = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => (cert.clone(), key.clone()),
            _ => {
                let dev = dev_certificate(&data_dir, &["localhost", "127.0.0.1", "::1"])?;
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
        redirect: None,
    };
    let mongo = args.store.starts_with("mongodb://") || args.store.starts_with("mongodb+srv://");
    let advertise_http = match (&args.advertise_http, args.http) {
        (Some(url), _) => Some(url.clone()),
        (None, Some(addr)) if !addr.ip().is_unspecified() => Some(format!("http://{addr}")),
        _ => None,
    };
    // The protocol listeners are bound before the store is opened: a
    // standby answers each Hello with a Redirect to the leader (spec §6.4)
    // until it leads.
    let group = if mongo {
        Group::standby(server_id(&data_dir)?, advertise_http.clone())
    } else {
        Group::alone(advertise_http.clone())
    };
    let options = ListenerOptions {
        redirect: Some(group.redirector()),
        ..server::listener_options(tokens.clone(), base)
    };
    let listeners = server::bind_all(&args.listen, &options).await?;
    group.set_advertise(if args.advertise.is_empty() {
        listeners.iter().map(|l| l.local_endpoint().to_string()).collect()
    } else {
        args.advertise.clone()
    });
    let core_config = CoreConfig {
        assign_lease: args.assign_lease,
        runner_lost_after: args.runner_lost_after,
        kill_grace: args.kill_grace,
        log_retention_bytes: args.log_limit_bytes,
        finished_job_retention: args.max_finished_jobs,
        retention: args.retention,
        handoff_limit: args.handoff_limit,
        runner_retention: args.runner_retention,
        run_notices: None,
    };
    let metrics: Arc<Metrics> = Default::default();
    let key = match &args.secrets_key_file {
        Some(path) => SecretsKey::load(path)?,
        None => {
            let (key, generated) = SecretsKey::load_or_generate(&data_dir)?;
            if generated {
                eprintln!("generated secrets key: {}", key.path().display());
            }
            key
        }
    };
    // Bound before the store is opened: a standby answers /healthz and
    // /readyz (not ready, naming the leader) while it waits to lead.
    let http_listener = match args.http {
        Some(addr) => {
            let listener = std::net::TcpListener::bind(addr)
                .with_context(|| format!("cannot listen for HTTP on {addr}"))?;
            listener.set_nonblocking(true)?;
            Some(listener)
        }
        None => None,
    };
    let standby_http = match &http_listener {
        Some(listener) => {
            let listener = tokio::net::TcpListener::from_std(listener.try_clone()?)?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let router = group.standby_router();
            let task = tokio::spawn(async move {
                let stop = async move {
                    let _ = stopped.await;
                };
                if let Err(err) = rest::serve_until(listener, router, stop).await {
                    tracing::warn!(%err, "the standby HTTP server stopped");
                }
            });
            Some((stop, task))
        }
        None => None,
    };
    let store = open_store(&args, &data_dir, &group).await?;
    if let Some((stop, task)) = standby_http {
        // Not a graceful stop: a keep-alive connection must not hold the
        // new leader back; its next request reaches the real router.
        let _ = stop.send(());
        task.abort();
    }
    let mut store = SealedStore::new(store, key);
    let mut loaded = store.load().context("cannot load the stored state")?;
    let store = StoreHandle::spawn(Box::new(store), metrics.clone());
    let artifacts = open_artifacts(
        &args,
        &data_dir,
        metrics.artifacts.clone(),
        store.clone(),
        std::mem::take(&mut loaded.artifacts),
    )
    .await?;
    let cache = open_cache(
        &data_dir,
        artifacts.clone(),
        metrics.cache.clone(),
        store.clone(),
        std::mem::take(&mut loaded.cache_entries),
    )
    .await?;
    // Commit statuses and run webhooks: posted by the leader only, since
    // only the leader's core announces runs.
    let notices = notifier::spawn(
        NotifierConfig::default().base_url(advertise_http.clone()),
        metrics.notify.clone(),
    )?;
    let core_config = CoreConfig {
        run_notices: Some(notices),
        ..core_config
    };
    let core = spawn_with_store(core_config, tokens.clone(), metrics, store, loaded)
        .with_artifacts(artifacts)
        .with_cache(cache)
        .with_mirrors(Arc::new(Mirrors::new(data_dir.join("mirrors"))));
    tokio::spawn(import_minted_tokens(data_dir.clone(), core.clone()));
    // Schedules fire where the core runs: on the leader only.
    tokio::spawn(schedule::run(core.clone()));
    let listeners_bound = Arc::new(AtomicBool::new(false));
    let (stop_http, http_stopped) = tokio::sync::watch::channel(false);
    let mut http_task = None;
    if let Some(http_listener) = http_listener {
        let (jwt, generated) = JwtKeys::load_or_generate(&data_dir)
            .with_context(|| format!("cannot store jwt-secret in {}", data_dir.display()))?;
        if generated {
            eprintln!("generated JWT secret: {}", data_dir.join("jwt-secret").display());
        }
        let config = RestConfig::new(jwt)
            .cors_origins(args.cors_origin.clone())
            .rate_limit(args.rate_limit, args.rate_limit_burst)
            .ready_flag(listeners_bound.clone());
        let http = tokio::net::TcpListener::from_std(http_listener)?;
        println!("serving HTTP on http://{}", http.local_addr()?);
        let router = rest::router(core.clone(), tokens, config);
        let mut stopped = http_stopped;
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        http_task = Some(tokio::spawn(async move {
            if let Err(err) = rest::serve_until(http, router, stop).await {
                tracing::error!(%err, "the HTTP server stopped");
            }
        }));
    }
    // Hellos are welcomed from now on (a standby's were redirected).
    group.lead();
    for listener in listeners {
        // Printed on stdout so scripts and tests can wait for readiness.
        println!("listening on {}", listener.local_endpoint());
        tokio::spawn(server::serve_in_group(listener, core.clone(), group.clone()));
    }
    listeners_bound.store(true, Ordering::Release);
    tokio::select! {
        _ = signals.next() => {}
        err = core.store_failure() => {
            // The core stopped without acknowledging anything the store did
            // not make durable; the process ends with the reason.
            if let StoreError::Deposed { .. } = *err {
                step_down(&err);
            }
            eprintln!("valkyrie-server: store commit failed: {err}");
            std::process::exit(STORE_FAILED_EXIT);
        }
    }
    let grace = args.shutdown_grace;
    eprintln!("shutting down (grace {})", humantime::format_duration(grace));
    listeners_bound.store(false, Ordering::Release);
    let _ = stop_http.send(true);
    if let Some(task) = http_task {
        // Requests in flight may finish within the grace; a second signal
        // or the end of the grace cuts them short.
        tokio::select! {
            _ = tokio::time::timeout(grace.saturating_sub(RUNTIME_STOP), task) => {}
            _ = signals.next() => eprintln!("second signal: exiting now"),
        }
    }
    Ok(())
}

/// `--artifacts`: an `s3://bucket/prefix` URL.
fn artifacts_url(url: &str) -> Result<String, String> {
    valkyrie_control_plane::artifacts::s3::parse_url(url).map(|_| url.to_owned())
}

/// Opens the `cache:` index, kept in the store (`rows` as loaded), whose
/// entries are artifacts of `artifacts`; the `cache-index.json` of earlier
/// versions is moved into the store once.
async fn open_cache(
    data_dir: &std::path::Path,
    artifacts: Arc<ArtifactStore>,
    metrics: valkyrie_control_plane::artifacts::cache::CacheMetrics,
    store: StoreHandle,
    rows: Vec<valkyrie_control_plane::store::CacheRow>,
) -> anyhow::Result<Arc<valkyrie_control_plane::artifacts::cache::CacheIndex>> {
    let index = valkyrie_control_plane::artifacts::cache::CacheIndex::new(artifacts, metrics)
        .with_entries(store, rows);
    let legacy = data_dir.join("cache-index.json");
    let moved = index
        .import_legacy(&legacy)
        .await
        .with_context(|| format!("cannot move the cache index {} into the store", legacy.display()))?;
    if moved > 0 {
        tracing::info!(entries = moved, file = %legacy.display(), "cache index moved into the store");
    }
    Ok(Arc::new(index))
}

/// Opens the artifact store (records in the store, `rows` as loaded;
/// uploads staged under the data directory; contents there or in S3) and
/// starts its sweeper. The records of earlier versions, JSON files under
/// the data directory, are moved into the store once.
async fn open_artifacts(
    args: &Args,
    data_dir: &std::path::Path,
    metrics: valkyrie_control_plane::artifacts::ArtifactMetrics,
    records: StoreHandle,
    rows: Vec<valkyrie_control_plane::store::ArtifactRow>,
) -> anyhow::Result<Arc<ArtifactStore>> {
    let dir = data_dir.join("artifacts");
    let config = StoreConfig {
        max_artifact_bytes: args.max_artifact_bytes,
        default_expiry: args.artifacts_expire_in,
    };
    let store = match &args.artifacts {
        None => ArtifactStore::open_with_metrics(&dir, config, metrics)
            .with_context(|| format!("cannot open the artifact store in {}", dir.display()))?,
        Some(url) => {
            let blobs = S3Blobs::from_env(url).with_context(|| format!("cannot use {url} for artifacts"))?;
            ArtifactStore::open_with_blobs(&dir, Arc::new(blobs), config, metrics)
                .await
                .with_context(|| format!("cannot list the artifacts in {url}"))?
        }
    };
    let store = Arc::new(store.with_records(records, rows));
    let moved = store.import_legacy_records().await.with_context(|| {
        format!(
            "cannot move the artifact records of {} into the store",
            dir.display()
        )
    })?;
    if moved > 0 {
        tracing::info!(artifacts = moved, "artifact records moved into the store");
    }
    tracing::info!(blobs = %store.blob_location(), "artifact store open");
    let sweeping = store.clone();
    let interval = args.artifacts_sweep_interval;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            match sweeping.sweep(valkyrie_control_plane::artifacts::now_ms()).await {
                Ok((0, 0)) => {}
                Ok((artifacts, blobs)) => tracing::info!(artifacts, blobs, "expired artifacts removed"),
                Err(err) => tracing::warn!(%err, "cannot sweep the artifact store"),
            }
        }
    });
    Ok(store)
}

/// How often the server looks for tokens minted by `valkyrie-server token`.
const AUDIT_INBOX_INTERVAL: Duration = Duration::from_secs(2);

/// Moves records of minted tokens from the data directory's inbox into the
/// audit log, at start and then every [`AUDIT_INBOX_INTERVAL`]; each file
/// is deleted once its record is stored.
async fn import_minted_tokens(data_dir: PathBuf, core: CoreHandle) {
    let mut tick = tokio::time::interval(AUDIT_INBOX_INTERVAL);
    loop {
        tick.tick().await;
        let dir = data_dir.clone();
        let Ok(found) = tokio::task::spawn_blocking(move || audit::inbox::read(&dir)).await else {
            continue;
        };
        if found.is_empty() {
            continue;
        }
        let (files, records): (Vec<PathBuf>, Vec<_>) = found.into_iter().unzip();
        let (reply, stored) = Responder::channel();
        if !core.send(Command::ImportAudit { records, reply }).await {
            return;
        }
        if stored.await.is_ok() {
            for file in files {
                if let Err(err) = std::fs::remove_file(&file) {
                    tracing::warn!(%err, file = %file.display(), "cannot remove an imported audit record");
                }
            }
        }
    }
}

/// SIGTERM and SIGINT (Ctrl-C).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    /// Waits for the next of either.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// Opens the store named by `--store`. With MongoDB, waits (as a standby)
/// until this server leads the group of servers sharing the database.
async fn open_store(
    args: &Args,
    data_dir: &std::path::Path,
    group: &Arc<Group>,
) -> anyhow::Result<Box<dyn Store>> {
    let uri = args.store.as_str();
    if uri == "embedded" {
        return Ok(Box::new(EmbeddedStore::open(data_dir, args.durability)?));
    }
    if !(uri.starts_with("mongodb://") || uri.starts_with("mongodb+srv://")) {
        bail!("unknown store `{uri}`: use `embedded` or a mongodb:// URI");
    }
    if args.lease_renew.saturating_mul(2) > args.lease_ttl {
        bail!(
            "--lease-renew ({}) must be at most half of --lease-ttl ({})",
            humantime::format_duration(args.lease_renew),
            humantime::format_duration(args.lease_ttl)
        );
    }
    let mut mongo = MongoStore::connect(uri, args.durability)?;
    let config = LeaseConfig {
        server_id: group.server_id().to_owned(),
        advertise: group.advertise(),
        advertise_http: group.advertise_http(),
        ttl: args.lease_ttl,
        renew_every: args.lease_renew,
    };
    let election = mongo.election(config);
    report_membership(election.clone(), group.clone(), args.lease_renew);
    // The MongoDB driver's blocking calls run on a thread of their own.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shown = group.clone();
    std::thread::spawn(move || {
        let fence = election
            .acquire(|leader| {
                shown.saw_leader(leader.clone());
                tracing::info!(leader = %leader.holder, epoch = leader.epoch, "standby");
                eprintln!(
                    "standby: server {} leads (epoch {}) at {}; redirecting peers there",
                    leader.holder,
                    leader.epoch,
                    leader.advertise.join(", ")
                );
            })
            .and_then(|fence| {
                // Renewed from now on: claiming and loading a large store
                // may take longer than one lease.
                election.clone().keep(fence.clone(), |err| step_down(&err));
                election.claim(&fence).map(|()| fence)
            });
        let _ = tx.send(fence);
    });
    let fence = rx.await.context("the election thread ended")?;
    let fence = fence.context("cannot take the lead of the servers sharing the store")?;
    // Until it serves, peers are told that no leader is known (rather than
    // sent to the one it replaced).
    group.forget_leader();
    eprintln!("leading the servers on this store (epoch {})", fence.epoch());
    tracing::info!(epoch = fence.epoch(), "leading");
    mongo.set_fence(fence);
    Ok(Box::new(mongo))
}

/// Reports this server in the group's membership every `every`, and keeps
/// `group`'s list of servers (for `vk servers`) as the store has it, for
/// the life of the process (on a thread: the MongoDB driver blocks).
fn report_membership(election: Election, group: Arc<Group>, every: Duration) {
    std::thread::Builder::new()
        .name("valkyrie-members".into())
        .spawn(move || loop {
            match election.members() {
                Ok(servers) => {
                    let seen = servers.iter().map(|s| s.epoch).max().unwrap_or(0);
                    group.set_servers(servers);
                    if let Err(err) = election.report(seen) {
                        tracing::debug!(%err, "cannot report this server's membership");
                    }
                }
                Err(err) => tracing::debug!(%err, "cannot read the group's membership"),
            }
            std::thread::sleep(every);
        })
        .expect("spawn the membership thread");
}

/// This server's id in its group: kept in the data directory, which it
/// locks, so that one id is one live process (a restart takes over at once).
fn server_id(data_dir: &std::path::Path) -> anyhow::Result<String> {
    let lock_path = data_dir.join("server.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    if lock.try_lock().is_err() {
        bail!(
            "{} is in use by another valkyrie-server (only one server may use a data directory)",
            data_dir.display()
        );
    }
    // Held (and locked) for the life of the process.
    std::mem::forget(lock);
    let path = data_dir.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_owned()),
        _ => {
            let id = format!("{:016x}", fastrand::u64(..));
            valkyrie::private_fs::write_file(&path, id.as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            Ok(id)
        }
    }
}
