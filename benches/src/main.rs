//! `valkyrie-bench`: the load generator.
//!
//! `valkyrie-bench dispatch` starts a control plane and agents in-process
//! (library calls on their own tokio runtime, talking over real sockets of
//! the chosen transport), submits no-op jobs through the SDK from a separate
//! client runtime, and reports the submit → terminal-event round trip next to
//! two plain-socket baselines measured in the same run on the same
//! transport: a 64-byte ping-pong and a two-hop relay.

mod dispatch;
mod docker;
mod floor;
mod http;
mod raw;
mod runners;
mod stats;
mod system;
mod wait;

use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::dispatch::{DispatchReport, Load};
use crate::stats::{us, Summary};
use crate::system::System;
use crate::wait::WakeMode;

/// jemalloc (see the workspace's Cargo.toml for why).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Load generator for Valkyrie.
#[derive(Parser, Debug)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Measure job dispatch latency and throughput against plain-socket baselines.
    #[command(
        after_help = "Examples:\n  valkyrie-bench dispatch --transport unix --jobs 20000 --concurrency 1\n  valkyrie-bench dispatch --transport quic --jobs 100000 --concurrency 256 --spin --json"
    )]
    Dispatch(DispatchArgs),
    /// Measure REST latency (p50/p99/p99.9) at a fixed request rate.
    #[command(
        after_help = "Examples:\n  valkyrie-bench http --rate 5000 --requests 25000\n  valkyrie-bench http --rate 5000 --json"
    )]
    Http(http::HttpArgs),
    /// Measure a container job's overhead over a shell job, next to `docker run --rm IMAGE true`.
    #[command(after_help = "Example:\n  valkyrie-bench docker --jobs 100")]
    Docker(docker::DockerArgs),
    /// Connect many simulated runners to a valkyrie-server process: its memory, heartbeat CPU and dispatch latency.
    #[command(
        after_help = "Example (needs `cargo build --release --bins`):\n  valkyrie-bench runners --count 10000"
    )]
    Runners(runners::RunnersArgs),
    /// The bare protocol server `runners --floor` measures (not a bench of its own).
    #[command(hide = true)]
    HeartbeatFloor(floor::FloorArgs),
}

/// What plays the agents in the dispatch bench.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AgentKind {
    Real,
    Simulated,
}

impl AgentKind {
    fn as_str(self) -> &'static str {
        match self {
            AgentKind::Real => "agents",
            AgentKind::Simulated => "simulated agents",
        }
    }
}

/// A transport to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    Unix,
    Tcp,
    Quic,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Unix => "unix",
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }
}

#[derive(Args, Clone, Debug)]
struct DispatchArgs {
    /// Transport for every connection (client, agents and baselines).
    #[arg(long, env = "VALKYRIE_BENCH_TRANSPORT", default_value = "unix")]
    transport: Transport,
    /// Measured jobs.
    #[arg(long, env = "VALKYRIE_BENCH_JOBS", default_value_t = 20_000)]
    jobs: usize,
    /// Jobs in flight at once (each a submit-then-wait task).
    #[arg(long, env = "VALKYRIE_BENCH_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Untimed jobs run first (default: a tenth of --jobs, at most 2,000).
    #[arg(long, env = "VALKYRIE_BENCH_WARMUP_JOBS")]
    warmup_jobs: Option<usize>,
    /// Agents.
    #[arg(long, env = "VALKYRIE_BENCH_AGENTS", default_value_t = 2)]
    agents: u32,
    /// Slots per agent.
    #[arg(long, env = "VALKYRIE_BENCH_SLOTS", default_value_t = 64)]
    slots: u32,
    /// What plays the agents: `real` runs the agent library (`valkyrie-agent`
    /// in-process: it plans each job and runs it with the executor);
    /// `simulated` answers each Assign at once from its session's task with
    /// AssignAck and a succeeded JobResult, as `valkyrie-bench runners` does.
    /// The difference between the two is the agent's own share of a job.
    #[arg(long, env = "VALKYRIE_BENCH_AGENT", value_enum, default_value = "real")]
    agent: AgentKind,
    /// SDK connections the submissions are spread over (the first also carries the event subscription).
    #[arg(long, env = "VALKYRIE_BENCH_CONNECTIONS", default_value_t = 1)]
    connections: usize,
    /// Also measure with the client spinning before it parks (see --spin-us).
    #[arg(long, env = "VALKYRIE_BENCH_SPIN")]
    spin: bool,
    /// How long the client busy-polls before parking, in --spin mode.
    #[arg(long, env = "VALKYRIE_BENCH_SPIN_US", default_value_t = 1000)]
    spin_us: u64,
    /// Round trips per baseline (ping-pong and relay).
    #[arg(long, env = "VALKYRIE_BENCH_BASELINE_ITERATIONS", default_value_t = 20_000)]
    baseline_iterations: usize,
    /// Worker threads of the runtime hosting the control plane, agents and baseline servers.
    #[arg(long, env = "VALKYRIE_BENCH_SYSTEM_THREADS", default_value_t = 2)]
    system_threads: usize,
    /// Worker threads of the client's runtime.
    #[arg(long, env = "VALKYRIE_BENCH_CLIENT_THREADS", default_value_t = 2)]
    client_threads: usize,
    /// A job whose terminal event has not arrived after this many seconds is reported missing.
    #[arg(long, env = "VALKYRIE_BENCH_JOB_TIMEOUT_SECS", default_value_t = 10)]
    job_timeout_secs: u64,
    /// Adds an environment variable of this many bytes to every job's spec:
    /// a job of a real pipeline carries its commands and variables (a few
    /// KiB), the default no-op job about 300 bytes.
    #[arg(long, env = "VALKYRIE_BENCH_SPEC_PADDING", default_value_t = 0)]
    spec_padding: usize,
    /// Where the control plane keeps state: `memory`, `embedded` (redb, fsync per
    /// commit), `embedded-none` (redb without fsync) or a `mongodb://` URI. Repeat to
    /// measure several stores in one run.
    #[arg(
        long = "store",
        env = "VALKYRIE_BENCH_STORE",
        value_delimiter = ',',
        default_value = "memory"
    )]
    stores: Vec<String>,
    /// Print JSON instead of a table.
    #[arg(long, env = "VALKYRIE_BENCH_JSON")]
    json: bool,
}

/// One store and wake mode's figures.
struct ModeResult {
    store: String,
    mode: WakeMode,
    ping_pong: Summary,
    relay: Summary,
    /// The relay with as many messages in flight as the dispatch load,
    /// when that is more than one.
    relay_in_flight: Option<Summary>,
    dispatch: DispatchReport,
}

fn main() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Command::Dispatch(args) => args,
        Command::Http(args) => return http::main(args),
        Command::Docker(args) => return docker::main(args),
        Command::Runners(args) => return runners::main(args),
        Command::HeartbeatFloor(args) => return floor::main(args),
    };
    let dir = tempfile::Builder::new().prefix("valkyrie-bench-").tempdir()?;
    let system_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.system_threads.max(1))
        .thread_name("system")
        .enable_all()
        .build()?;
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("client")
        .enable_all()
        .build()?;
    let handle = system_rt.handle().clone();
    // Everything measured runs on the client runtime's worker threads, as
    // the dispatch load's own tasks do: a future run by `block_on` is woken
    // by unparking that thread instead of by the runtime's scheduler, which
    // made the one-in-flight baselines several times slower than the same
    // round trip from a task, and so too easy to compare with.
    let results = client_rt.block_on({
        let (args, dir) = (args.clone(), dir.path().to_path_buf());
        async move { tokio::spawn(async move { run(&args, handle, dir).await }).await }
    })??;
    client_rt.shutdown_timeout(Duration::from_secs(1));
    system_rt.shutdown_timeout(Duration::from_secs(1));
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&args, &results))?);
    } else {
        print_table(&args, &results);
    }
    Ok(())
}

async fn run(
    args: &DispatchArgs,
    system_rt: tokio::runtime::Handle,
    dir: std::path::PathBuf,
) -> anyhow::Result<Vec<ModeResult>> {
    let mut results = Vec::new();
    for (i, store) in args.stores.iter().enumerate() {
        let store_dir = dir.join(format!("store-{i}"));
        std::fs::create_dir_all(&store_dir)?;
        results.extend(run_store(args, &system_rt, store_dir, store).await?);
    }
    Ok(results)
}

async fn run_store(
    args: &DispatchArgs,
    system_rt: &tokio::runtime::Handle,
    dir: std::path::PathBuf,
    store: &str,
) -> anyhow::Result<Vec<ModeResult>> {
    let system = System::start(
        system_rt,
        args.transport,
        dir.clone(),
        args.agents,
        args.slots,
        args.agent,
        store,
    )
    .await
    .with_context(|| format!("cannot start the control plane (store {store}) and agents"))?;
    let servers = raw::start_servers(system_rt, args.transport, dir, system.raw_tls.clone())
        .await
        .context("cannot start the baseline servers")?;
    let connector = raw::Connector::new(system.raw_tls.as_ref())?;

    let mut modes = vec![WakeMode::Park];
    if args.spin {
        modes.push(WakeMode::Spin(Duration::from_micros(args.spin_us)));
    }
    let warmup_jobs = args.warmup_jobs.unwrap_or((args.jobs / 10).min(2_000));
    let baseline_warmup = (args.baseline_iterations / 10).min(2_000);
    let mut results = Vec::new();
    for mode in modes {
        let ping_pong = raw::ping_pong(
            &connector,
            &servers.echo,
            baseline_warmup,
            args.baseline_iterations,
            mode,
        )
        .await
        .context("ping-pong baseline failed")?;
        let relay = raw::ping_pong(
            &connector,
            &servers.relay,
            baseline_warmup,
            args.baseline_iterations,
            mode,
        )
        .await
        .context("relay baseline failed")?;
        let relay_in_flight = match args.concurrency {
            0 | 1 => None,
            concurrency => Some(
                raw::ping_pong_in_flight(
                    &connector,
                    &servers.relay,
                    baseline_warmup,
                    args.baseline_iterations,
                    concurrency,
                    mode,
                )
                .await
                .context("relay baseline in flight failed")?,
            ),
        };
        let mut clients = Vec::new();
        for _ in 0..args.connections.max(1) {
            clients.push(system.client().await?);
        }
        let load = Load {
            warmup_jobs,
            jobs: args.jobs,
            concurrency: args.concurrency.max(1),
            job_timeout: Duration::from_secs(args.job_timeout_secs),
            mode,
            spec_padding: args.spec_padding,
        };
        let dispatch = dispatch::run(&clients, &load).await?;
        results.push(ModeResult {
            store: store.to_owned(),
            mode,
            ping_pong,
            relay,
            relay_in_flight,
            dispatch,
        });
    }
    system.stop();
    Ok(results)
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn setup_line(args: &DispatchArgs) -> String {
    format!(
        "in-process: control plane + {} {} × {} slots on a {}-thread tokio runtime; client on a separate {}-thread runtime; {} CPUs",
        args.agents,
        args.agent.as_str(),
        args.slots,
        args.system_threads,
        args.client_threads,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    )
}

fn print_table(args: &DispatchArgs, results: &[ModeResult]) {
    println!("valkyrie-bench dispatch over {}", args.transport.as_str());
    println!("  {}", setup_line(args));
    println!(
        "  jobs {} (after {} warm-up), concurrency {}, {} SDK connection(s); baselines: {} round trips of {} B, one in flight",
        args.jobs,
        args.warmup_jobs.unwrap_or((args.jobs / 10).min(2_000)),
        args.concurrency,
        args.connections.max(1),
        args.baseline_iterations,
        raw::MESSAGE_BYTES
    );
    for r in results {
        println!();
        println!("store: {}, wake mode: {}", r.store, r.mode.label());
        println!(
            "  {:<34} {:>8} {:>10} {:>10} {:>10} {:>10} {:>11}",
            "measurement", "samples", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "per second"
        );
        let row = |name: &str, s: &Summary| {
            println!(
                "  {:<34} {:>8} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>11.0}",
                name,
                s.samples,
                us(s.p50_ns),
                us(s.p99_ns),
                us(s.p999_ns),
                us(s.max_ns),
                s.rate_per_s
            );
        };
        row("raw ping-pong", &r.ping_pong);
        row("two-hop relay", &r.relay);
        let in_flight_label = format!("two-hop relay, {} in flight", args.concurrency);
        if let Some(relay) = &r.relay_in_flight {
            row(&in_flight_label, relay);
        }
        row("dispatch (submit → terminal event)", &r.dispatch.latency);
        println!(
            "  dispatch throughput: {:.0} jobs/s ({} jobs over the measured wall time)",
            r.dispatch.jobs_per_s, args.jobs
        );
        let d = &r.dispatch.latency;
        println!(
            "  dispatch p50 = {:.2}× raw ping-pong, {:.2}× two-hop relay",
            ratio(d.p50_ns, r.ping_pong.p50_ns),
            ratio(d.p50_ns, r.relay.p50_ns)
        );
        let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
        let unix = if args.transport == Transport::Unix {
            ""
        } else {
            " (the targets are for unix)"
        };
        match &r.relay_in_flight {
            // The targets of one job in flight: latency against the relay.
            None => println!(
                "  targets{unix}: p50 ≤ 1.5× relay p50: {} ({:.2}×); p99 ≤ 2× relay p99: {} ({:.2}×)",
                verdict(ratio(d.p50_ns, r.relay.p50_ns) <= 1.5),
                ratio(d.p50_ns, r.relay.p50_ns),
                verdict(ratio(d.p99_ns, r.relay.p99_ns) <= 2.0),
                ratio(d.p99_ns, r.relay.p99_ns),
            ),
            // Pipelined: throughput, 100,000 jobs/s in memory and 50,000
            // with a durable store, next to the relay's at the same depth.
            Some(relay) => {
                let target = if r.store == "memory" { 100_000.0 } else { 50_000.0 };
                println!(
                    "  dispatch throughput = {:.1} % of the relay's at {} in flight ({:.0} round trips/s)",
                    100.0 * r.dispatch.jobs_per_s / relay.rate_per_s.max(1.0),
                    args.concurrency,
                    relay.rate_per_s
                );
                println!(
                    "  target{unix}: ≥ {target:.0} jobs/s with this store: {} ({:.0})",
                    verdict(r.dispatch.jobs_per_s >= target),
                    r.dispatch.jobs_per_s
                );
            }
        }
        let rep = &r.dispatch;
        println!(
            "  events: {} intermediate State events, {} dropped for the subscriber (Skipped)",
            rep.intermediate_events, rep.skipped_events
        );
        if !rep.not_succeeded.is_empty() {
            println!("  jobs not succeeded: {:?}", rep.not_succeeded);
        }
        if !rep.missing.is_empty() {
            println!(
                "  PROBLEM: {} job(s) whose terminal event never reached the subscriber (not in the latency samples); server-side state of the first: {:?}",
                rep.missing.len(),
                &rep.missing[..rep.missing.len().min(5)]
            );
        }
    }
}

fn to_json(args: &DispatchArgs, results: &[ModeResult]) -> serde_json::Value {
    serde_json::json!({
        "transport": args.transport.as_str(),
        "setup": setup_line(args),
        "in_process": true,
        "jobs": args.jobs,
        "concurrency": args.concurrency,
        "agents": args.agents,
        "agent": args.agent.as_str(),
        "slots": args.slots,
        "connections": args.connections.max(1),
        "baseline_message_bytes": raw::MESSAGE_BYTES,
        "modes": results.iter().map(|r| {
            let d = &r.dispatch.latency;
            serde_json::json!({
                "store": r.store,
                "wake_mode": r.mode.label(),
                "raw_ping_pong": r.ping_pong.to_json(),
                "two_hop_relay": r.relay.to_json(),
                "two_hop_relay_in_flight": r.relay_in_flight.as_ref().map(Summary::to_json),
                "dispatch": d.to_json(),
                "dispatch_jobs_per_s": r.dispatch.jobs_per_s.round(),
                "dispatch_p50_over_ping_pong": (ratio(d.p50_ns, r.ping_pong.p50_ns) * 100.0).round() / 100.0,
                "dispatch_p50_over_relay": (ratio(d.p50_ns, r.relay.p50_ns) * 100.0).round() / 100.0,
                "intermediate_events": r.dispatch.intermediate_events,
                "skipped_events": r.dispatch.skipped_events,
                "not_succeeded": r.dispatch.not_succeeded,
                "missing_terminal_events": r.dispatch.missing.iter().map(|(id, state)| serde_json::json!({"job_id": id, "server_state": state})).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}
