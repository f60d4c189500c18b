//! `valkyrie-agent`: runs CI jobs for a Valkyrie control plane.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use valkyrie::binary::{default_state_dir, init_logging, LogFormat};
use valkyrie::message::EXECUTOR_TAG_PREFIX;
use valkyrie::transport::{ClientOptions, ClientTls};
use valkyrie::Endpoint;
use valkyrie_runner_agent::executor;
use valkyrie_runner_agent::executor::docker::{DockerExecutor, DockerSettings};
use valkyrie_runner_agent::job::JobDefaults;
use valkyrie_runner_agent::supervisor;
use valkyrie_runner_agent::{Agent, AgentConfig};

/// jemalloc (see the workspace's Cargo.toml for why).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Lets one jemalloc thread give freed pages back to the system once they
/// have been unused for jemalloc's decay time (10 s), as the server does
/// (its `purge_in_background` says why). Should the allocator refuse, the
/// agent only keeps more memory.
#[cfg(feature = "jemalloc")]
fn purge_in_background() {
    let _ = tikv_jemalloc_ctl::max_background_threads::write(1);
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
}

/// Runs CI jobs handed out by a Valkyrie control plane.
#[derive(Parser, Debug)]
#[command(
    name = "valkyrie-agent",
    version,
    after_help = "Example (the token in the environment: a command line is visible to every local user):\n  VALKYRIE_RUNNER_TOKEN=$(cat runner-token) valkyrie-agent --server tls://ci.example.com:7700 --name build-1 --tags linux,docker --slots 4"
)]
struct Args {
    /// TOML file with any of these flags as keys in snake_case (`data_dir = "/srv/ci"`);
    /// flags and environment variables override it.
    #[arg(long, env = "VALKYRIE_CONFIG")]
    config: Option<PathBuf>,
    /// The control plane: unix:///path, tcp://host:port, tls://host:port or quic://host:port.
    /// Several (comma-separated) for a group of servers on one MongoDB store: the agent
    /// tries them in turn until it reaches the leader.
    #[arg(
        long,
        env = "VALKYRIE_SERVER",
        value_delimiter = ',',
        default_value = "tcp://127.0.0.1:7700"
    )]
    server: Vec<Endpoint>,
    /// Runner registration token.
    #[arg(long, env = "VALKYRIE_RUNNER_TOKEN", hide_env_values = true)]
    token: String,
    /// Runner name, unique per control plane (default: the host name).
    #[arg(long, env = "VALKYRIE_RUNNER_NAME")]
    name: Option<String>,
    /// Tags jobs can require, comma-separated.
    #[arg(long, env = "VALKYRIE_RUNNER_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// Jobs run at once.
    #[arg(long, env = "VALKYRIE_SLOTS", default_value_t = 4)]
    slots: u32,
    /// Directory for per-job workspaces [default: /var/lib/valkyrie-agent as root,
    /// else $XDG_STATE_HOME/valkyrie-agent or ~/.local/state/valkyrie-agent].
    #[arg(long, env = "VALKYRIE_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Log lines as `text` or `json` (filter with VALKYRIE_LOG, e.g. `debug`).
    #[arg(long, env = "VALKYRIE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Shell a step line is passed to when the job names none, split on spaces
    /// (the line is appended as the last argument). Default: `bash -eo pipefail -c`
    /// when bash is on PATH, `sh -e -c` otherwise, so a failing line fails the step.
    #[arg(long, env = "VALKYRIE_SHELL")]
    shell: Option<String>,
    /// Grace between SIGTERM and SIGKILL when a job is cancelled or times out.
    #[arg(long, env = "VALKYRIE_KILL_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    kill_grace: Duration,
    /// Output kept per job; beyond it output is truncated with a marker.
    #[arg(long, env = "VALKYRIE_OUTPUT_LIMIT_BYTES", default_value_t = 64 << 20)]
    output_limit_bytes: u64,
    /// The largest artifact archive a job may upload; over it the job fails, saying so in its log.
    #[arg(long, env = "VALKYRIE_MAX_ARTIFACT_BYTES", default_value_t = 1 << 30)]
    max_artifact_bytes: u64,
    /// Heartbeat interval.
    #[arg(long, env = "VALKYRIE_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// On SIGTERM, how long running jobs may finish before they are cancelled.
    #[arg(long, env = "VALKYRIE_DRAIN_TIMEOUT", default_value = "10m", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// More variables of the agent's environment to pass on to jobs, comma-separated
    /// (e.g. HTTP_PROXY). Jobs get only PATH, HOME, USER, LOGNAME, SHELL, LANG,
    /// LANGUAGE, LC_*, TZ, TMPDIR and TERM otherwise; VALKYRIE_* variables, the
    /// agent's own settings and credentials, are never passed on.
    #[arg(long, env = "VALKYRIE_PASS_ENV", value_delimiter = ',')]
    pass_env: Vec<String>,
    /// CA certificate (PEM) to trust for tls:// and quic:// servers.
    #[arg(long, env = "VALKYRIE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// How steps run: `shell` (processes on this machine) or `docker` (each job in a
    /// container of its `image:`, through the Docker Engine at DOCKER_HOST or the
    /// default socket). A docker runner advertises the tag `executor:docker`.
    #[arg(long, env = "VALKYRIE_EXECUTOR", value_enum, default_value = "shell")]
    executor: ExecutorKind,
    /// Docker executor: run job and service containers privileged (off by default;
    /// a privileged job can take over this machine).
    #[arg(long, env = "VALKYRIE_DOCKER_PRIVILEGED")]
    docker_privileged: bool,
    /// Docker executor: an extra bind mount for every job container, `host:container[:ro]`,
    /// comma-separated. Nothing of the host is mounted otherwise (never the Docker socket).
    #[arg(long, env = "VALKYRIE_DOCKER_VOLUME", value_delimiter = ',')]
    docker_volume: Vec<String>,
    /// Docker executor: the image of jobs that name none; without it such jobs fail.
    #[arg(long, env = "VALKYRIE_DOCKER_DEFAULT_IMAGE")]
    docker_default_image: Option<String>,
    /// Docker executor: give every job a network of its own (jobs with services always
    /// get one); otherwise jobs without services share Docker's default bridge, which
    /// saves creating a network (about 0.4 s per job) but lets them reach each other by IP.
    #[arg(long, env = "VALKYRIE_DOCKER_NETWORK_PER_JOB")]
    docker_network_per_job: bool,
}

/// How the agent runs steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExecutorKind {
    /// Processes on this machine, as the agent's user.
    Shell,
    /// One container per job, through the Docker Engine.
    Docker,
}

fn main() -> std::process::ExitCode {
    // An attempt's supervisor: this binary again, in a hidden sub-command.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == supervisor::SUBCOMMAND) {
        return supervisor::main(&args[2..]);
    }
    #[cfg(feature = "jemalloc")]
    purge_in_background();
    agent_main()
}

#[tokio::main]
async fn agent_main() -> std::process::ExitCode {
    match run().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("valkyrie-agent: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run() -> anyhow::Result<()> {
    let args: Args = valkyrie::config_file::parse_with_config("VALKYRIE_CONFIG")?;
    init_logging(args.log_format);
    // Jobs run as this user: without this, any job could read the agent's
    // environment (VALKYRIE_RUNNER_TOKEN) from /proc/<agent>/environ. A
    // process that is not dumpable has its /proc files owned by root.
    // Jobs are not affected: an exec makes a process dumpable again.
    #[cfg(target_os = "linux")]
    if let Err(err) = nix::sys::prctl::set_dumpable(false) {
        tracing::warn!(%err, "cannot hide the agent's environment from its jobs (prctl PR_SET_DUMPABLE)");
    }
    let pass_env: Vec<String> = args.pass_env.into_iter().filter(|n| !n.is_empty()).collect();
    if let Some(name) = pass_env.iter().find(|n| n.starts_with("VALKYRIE_")) {
        anyhow::bail!(
            "--pass-env {name}: VALKYRIE_* variables configure the agent (and hold its \
             credentials); they are never passed to jobs. Give the job its own variable instead"
        );
    }
    if let Some(tag) = args.tags.iter().find(|t| t.starts_with(EXECUTOR_TAG_PREFIX)) {
        anyhow::bail!(
            "--tags {tag}: tags starting with `{EXECUTOR_TAG_PREFIX}` are set by the agent from --executor; remove it"
        );
    }
    let docker_volumes: Vec<String> = args.docker_volume.into_iter().filter(|v| !v.is_empty()).collect();
    if args.executor == ExecutorKind::Shell
        && (args.docker_privileged
            || !docker_volumes.is_empty()
            || args.docker_default_image.is_some()
            || args.docker_network_per_job)
    {
        anyhow::bail!("--docker-* options need --executor docker");
    }
    if let Some(bad) = docker_volumes
        .iter()
        .find(|v| v.split(':').count() < 2 || !v.starts_with('/'))
    {
        anyhow::bail!("--docker-volume {bad}: write it as /host/path:/container/path[:ro]");
    }
    let tls = args.ca_cert.as_deref().map(ClientTls::from_ca_file).transpose()?;
    let name = args.name.unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_else(|| "runner".into())
    });
    let work_dir = match args.work_dir {
        Some(dir) => dir,
        None => default_state_dir("valkyrie-agent")?,
    };
    valkyrie::private_fs::create_dir_all(&work_dir)
        .with_context(|| format!("cannot create work directory {}", work_dir.display()))?;
    let work_dir = std::fs::canonicalize(&work_dir)?;
    // Held until the process ends: one agent per work directory, so what
    // is found there was left by a dead agent, never a live one.
    let _work_dir_lock = valkyrie_runner_agent::leftovers::lock_work_dir(&work_dir)?;
    // What an earlier life left: the attempts still running under their
    // supervisors (or finished with a result the server may lack) are
    // re-attached; everything else is killed and removed.
    let survivors = supervisor::survivors(&work_dir);
    let keep: Vec<String> = survivors.iter().flat_map(|s| s.names()).collect();
    valkyrie_runner_agent::leftovers::clean_up_except(&work_dir, &keep);
    let docker = match args.executor {
        ExecutorKind::Shell => None,
        ExecutorKind::Docker => Some(
            DockerExecutor::connect(DockerSettings {
                runner: name.clone(),
                privileged: args.docker_privileged,
                volumes: docker_volumes,
                default_image: args.docker_default_image.filter(|i| !i.is_empty()),
                network_per_job: args.docker_network_per_job,
            })
            .await?,
        ),
    };
    let mut servers = args.server.into_iter();
    let server = servers.next().context("--server names no server")?;
    let config = AgentConfig {
        server,
        more_servers: servers.collect(),
        token: args.token,
        name,
        tags: args.tags.into_iter().filter(|t| !t.is_empty()).collect(),
        slots: args.slots.max(1),
        work_dir,
        defaults: JobDefaults {
            shell: args
                .shell
                .map(|s| s.split_whitespace().map(String::from).collect::<Vec<_>>())
                .filter(|s| !s.is_empty())
                .unwrap_or_else(executor::default_shell),
            kill_grace: args.kill_grace,
            output_limit_bytes: args.output_limit_bytes,
            host_env: executor::env::agent_environment(&pass_env).into(),
            docker,
            max_artifact_bytes: args.max_artifact_bytes,
        },
        heartbeat_interval: args.heartbeat_interval,
        drain_timeout: args.drain_timeout,
        client: ClientOptions {
            tls,
            ..ClientOptions::default()
        },
        // The running binary, even if its file was replaced (an upgrade).
        supervisor: Some(PathBuf::from("/proc/self/exe")),
    };
    let mut agent = Agent::new(config);
    agent.reattach(survivors);
    agent.run(shutdown_signal()).await?;
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
