//! `valkyrie-bench runners`: many runners on one control plane.
//!
//! Starts `valkyrie-server` as its own process (so its memory and CPU are
//! its own), then connects `--count` lightweight simulated runners from this
//! process: each a real connection with the real handshake, `RegisterRunner`
//! and a `Heartbeat` every `--heartbeat` (first beats spread over the
//! interval; as the agent's, one in three asks for an Ack), answering an
//! `Assign` at once with `AssignAck` and a succeeded `JobResult` carrying
//! its steps, as the agent does. It reports the server's RSS idle (just
//! started, and again after `--settle`) and with every runner
//! registered, the CPU the server spends while they only heartbeat (a
//! share of one core over `--window`), and the dispatch latency of no-op
//! jobs at one in flight with one runner connected and again with all of
//! them: the same run's baseline. With `--floor` it then runs the same
//! runners against a bare protocol server ([`crate::floor`]) and reports
//! that one's CPU over the same window: what a frame per runner per
//! interval costs the runtime and the kernel, before the control plane
//! adds its part.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tokio::sync::{watch, Semaphore};
use valkyrie::message::{
    AssignAck, Heartbeat, JobOutcome, JobResult, Message, RegisterRunner, Role, RunnerState, StepOutcome,
    StepSummary,
};
use valkyrie::transport::{connect, hello, ClientOptions, IncomingReceiver};
use valkyrie::{Endpoint, SessionSender};
use valkyrie_runner_agent::session::Heartbeats;
use valkyrie_sdk::Client;

use crate::dispatch::{self, Load};
use crate::stats::Summary;
use crate::wait::WakeMode;

/// The tokens of every control plane the benches start.
pub const API_TOKEN: &str = "bench-api-token";
pub const RUNNER_TOKEN: &str = "bench-runner-token";

#[derive(Args, Debug)]
pub struct RunnersArgs {
    /// Simulated runners to connect.
    #[arg(long, default_value_t = 10_000)]
    count: u32,
    /// Heartbeat interval of every simulated runner (and the server's `--heartbeat-interval`).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat: Duration,
    /// How long the server's CPU is measured while every runner heartbeats.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// How long the idle server is left alone before its RSS is read a
    /// second time. jemalloc's background thread gives back the pages the
    /// start freed over its 10 s decay, which is gradual: all were back
    /// 20 s after the start in our runs.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Measured no-op jobs at one in flight, before and after connecting the runners.
    #[arg(long, default_value_t = 2_000)]
    probe_jobs: usize,
    /// Connections opened at once while connecting the runners.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// The server program (default: `valkyrie-server` next to this program).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The server's store (`--store` of valkyrie-server).
    #[arg(long, default_value = "embedded")]
    store: String,
    /// Also run the same load against a bare protocol server
    /// (`valkyrie-bench heartbeat-floor`: the sans-IO connection on a
    /// socket per task, answering RegisterRunner and the Heartbeats that
    /// ask, nothing else) and report its CPU: the same run's floor.
    #[arg(long)]
    floor: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Memory and CPU of a process, read from /proc.
struct Proc(u32);

impl Proc {
    fn status_kib(&self, key: &str) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.0))?;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()
            })
            .with_context(|| format!("no {key} in /proc/{}/status", self.0))
    }

    fn rss_mib(&self) -> anyhow::Result<f64> {
        Ok(self.status_kib("VmRSS:")? as f64 / 1024.0)
    }

    /// CPU time of every thread, in nanoseconds (first field of each
    /// thread's schedstat).
    fn cpu_ns(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for task in std::fs::read_dir(format!("/proc/{}/task", self.0))? {
            let path = task?.path().join("schedstat");
            // A thread may end between the listing and the read.
            if let Ok(text) = std::fs::read_to_string(&path) {
                total += text
                    .split_whitespace()
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
        Ok(total)
    }
}

struct Server {
    child: Child,
    endpoint: Endpoint,
}

impl Server {
    fn start(bin: &Path, dir: &Path, args: &RunnersArgs) -> anyhow::Result<Self> {
        let socket = dir.join("valkyrie.sock");
        let log = std::fs::File::create(dir.join("server.log"))?;
        let child = Command::new(bin)
            .arg("--listen")
            .arg(format!("unix://{}", socket.display()))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--store", &args.store])
            .args(["--runner-token", RUNNER_TOKEN, "--api-token", API_TOKEN])
            .arg("--max-connections")
            .arg((args.count as usize + 64).to_string())
            .arg("--heartbeat-interval")
            .arg(humantime::format_duration(args.heartbeat).to_string())
            .env("VALKYRIE_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Self {
            child,
            endpoint: format!("unix://{}", socket.display()).parse()?,
        })
    }

    /// The heartbeat floor (`valkyrie-bench heartbeat-floor`), started
    /// from this program, once it listens.
    async fn floor(dir: &Path, args: &RunnersArgs) -> anyhow::Result<Self> {
        let socket = dir.join("floor.sock");
        let child = Command::new(std::env::current_exe()?)
            .arg("heartbeat-floor")
            .arg("--listen")
            .arg(&socket)
            .arg("--heartbeat")
            .arg(humantime::format_duration(args.heartbeat).to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start the heartbeat floor")?;
        let floor = Self {
            child,
            endpoint: format!("unix://{}", socket.display()).parse()?,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::UnixStream::connect(&socket).await.is_err() {
            if Instant::now() > deadline {
                bail!("the heartbeat floor does not listen on {}", socket.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(floor)
    }

    fn proc(&self) -> Proc {
        Proc(self.child.id())
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match Client::connect(&self.endpoint, API_TOKEN, ClientOptions::default()).await {
                Ok(client) => return Ok(client),
                Err(err) if Instant::now() > deadline => bail!("cannot connect to the server: {err}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One simulated runner: registers, heartbeats, and finishes every job it
/// is given at once. Counts its registration in `registered`.
async fn simulated_runner(
    endpoint: Endpoint,
    index: u32,
    heartbeat: Duration,
    registered: Arc<AtomicU64>,
    connecting: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let permit = connecting.acquire_owned().await?;
    let simulated = Simulated {
        endpoint,
        name: format!("sim-{index}"),
        slots: 1,
        heartbeat,
        options: ClientOptions::default(),
    };
    let session = simulated.register().await?;
    drop(permit);
    registered.fetch_add(1, Ordering::Relaxed);
    session
        .serve(async move {
            let _ = stop.changed().await;
        })
        .await
}

/// A simulated agent: a real connection with the real handshake,
/// `RegisterRunner` and Heartbeats (one in three asking for an Ack, as the
/// agent's), that answers each `Assign` at once from its session's task
/// with `AssignAck` and a succeeded `JobResult` carrying the job's steps,
/// without planning or running anything.
pub struct Simulated {
    pub endpoint: Endpoint,
    pub name: String,
    pub slots: u32,
    pub heartbeat: Duration,
    pub options: ClientOptions,
}

/// A registered simulated agent's session.
pub struct SimulatedSession {
    name: String,
    heartbeat: Duration,
    heartbeats: Heartbeats,
    sender: SessionSender,
    incoming: IncomingReceiver,
}

impl Simulated {
    /// Connects and registers.
    pub async fn register(self) -> anyhow::Result<SimulatedSession> {
        let Simulated {
            endpoint,
            name,
            slots,
            heartbeat,
            options,
        } = self;
        // The agent's rule: which Heartbeats ask for an Ack, and when the
        // connection pings.
        let (heartbeats, options) = Heartbeats::plan(heartbeat, &options);
        let session = connect(
            &endpoint,
            hello(Role::Agent, RUNNER_TOKEN, "bench-runner"),
            &options,
        )
        .await
        .with_context(|| format!("{name} cannot connect"))?;
        let (sender, incoming) = session.into_parts();
        let register = RegisterRunner {
            name: name.clone(),
            tags: Vec::new(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            slots,
            version: env!("CARGO_PKG_VERSION").into(),
            running: Vec::new(),
        };
        match sender.request(register).await? {
            Message::RunnerRegistered(_) => {}
            other => bail!("{name}: unexpected answer to RegisterRunner: {}", other.kind()),
        }
        Ok(SimulatedSession {
            name,
            heartbeat,
            heartbeats,
            sender,
            incoming,
        })
    }
}

impl SimulatedSession {
    /// Heartbeats and answers Assigns until `stop` completes.
    pub async fn serve(self, stop: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Self {
            name,
            heartbeat,
            mut heartbeats,
            sender,
            mut incoming,
        } = self;
        tokio::pin!(stop);
        // Spread the first beats over one interval, as real agents started
        // at different times would be.
        let offset = heartbeat.mul_f64(fastrand::f64());
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + offset, heartbeat);
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if heartbeats.asks() {
                        let _ = sender.request_queued(Heartbeat { running: 0 }).await?;
                    } else {
                        sender.send(Heartbeat { running: 0 }).await?;
                    }
                }
                inc = incoming.recv() => {
                    let Some(inc) = inc else { bail!("{name}: the server closed the connection") };
                    if let Message::Assign(a) = inc.message {
                        sender.send(AssignAck { job_id: a.job_id, attempt: a.attempt, accepted: true, reason: String::new() }).await?;
                        let steps = (0..a.spec.steps.len() as u32)
                            .map(|step| StepSummary { step, outcome: StepOutcome::Succeeded, exit_code: None, duration_ms: 0 })
                            .collect();
                        let result = JobResult {
                            job_id: a.job_id,
                            attempt: a.attempt,
                            outcome: JobOutcome::Succeeded,
                            exit_code: None,
                            duration_ms: 0,
                            message: String::new(),
                            log_chunks: 0,
                            steps,
                        };
                        let sender = sender.clone();
                        tokio::spawn(async move { let _ = sender.request(result).await; });
                    }
                }
                _ = &mut stop => return Ok(()),
            }
        }
    }
}

async fn wait_registered(client: &Client, want: usize, deadline: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let listed = client.runners().await?;
        let connected = listed
            .iter()
            .filter(|r| matches!(r.state, RunnerState::Idle | RunnerState::Busy))
            .count();
        if connected >= want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > deadline {
            bail!("only {connected} of {want} runners registered within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn probe(client: &Client, jobs: usize) -> anyhow::Result<Summary> {
    let load = Load {
        warmup_jobs: (jobs / 10).min(200),
        jobs,
        concurrency: 1,
        job_timeout: Duration::from_secs(10),
        mode: WakeMode::Park,
        spec_padding: 0,
    };
    let report = dispatch::run(std::slice::from_ref(client), &load).await?;
    if !report.missing.is_empty() {
        bail!("{} probe jobs never finished", report.missing.len());
    }
    Ok(report.latency)
}

pub fn main(args: RunnersArgs) -> anyhow::Result<()> {
    // Each side holds one socket per runner: this process and the server (which
    // inherits the limit).
    raise_fd_limit(args.count as u64 + 1024)?;
    let bin = match &args.server_bin {
        Some(bin) => bin.clone(),
        None => std::env::current_exe()?.with_file_name("valkyrie-server"),
    };
    let dir = tempfile::Builder::new()
        .prefix("valkyrie-bench-runners-")
        .tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = rt.block_on(run(&args, &bin, dir.path()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print(&args, &report);
    }
    Ok(())
}

async fn run(args: &RunnersArgs, bin: &Path, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let server = Server::start(bin, dir, args)?;
    let client = server.client().await?;
    let proc = server.proc();
    // Idle: started, one API client, no runner.
    let idle_rss = proc.rss_mib()?;
    tokio::time::sleep(args.settle).await;
    let settled_rss = proc.rss_mib()?;

    let fleet = Fleet::new(args);
    let mut tasks = fleet.spawn(&server.endpoint, 0..1);
    wait_registered(&client, 1, Duration::from_secs(10)).await?;
    let one = probe(&client, args.probe_jobs).await?;

    let started = Instant::now();
    tasks.extend(fleet.spawn(&server.endpoint, 1..args.count));
    let took = wait_registered(&client, args.count as usize, Duration::from_secs(300)).await?;
    let connect_s = started.elapsed().max(took).as_secs_f64();
    // Let the first beats of every runner pass before measuring.
    tokio::time::sleep(args.heartbeat).await;
    let rss_all = proc.rss_mib()?;
    let cpu_share = cpu_share(&proc, args.window).await?;
    let still = wait_registered(&client, args.count as usize, Duration::ZERO)
        .await
        .is_ok();
    let all = probe(&client, args.probe_jobs).await?;
    let rss_after = proc.rss_mib()?;
    let peak = proc.status_kib("VmHWM:")? as f64 / 1024.0;

    fleet.stop(tasks).await;
    drop(client);
    drop(server);
    let floor = match args.floor {
        true => Some(floor(args, dir).await?),
        false => None,
    };
    Ok(serde_json::json!({
        "runners": args.count,
        "registered": fleet.registered.load(Ordering::Relaxed),
        "all_still_connected_after_window": still,
        "connect_all_s": (connect_s * 10.0).round() / 10.0,
        "heartbeat_s": args.heartbeat.as_secs_f64(),
        "server_rss_idle_mib": (idle_rss * 10.0).round() / 10.0,
        "server_rss_idle_settled_mib": (settled_rss * 10.0).round() / 10.0,
        "settle_s": args.settle.as_secs_f64(),
        "server_rss_all_registered_mib": (rss_all * 10.0).round() / 10.0,
        "server_rss_after_probes_mib": (rss_after * 10.0).round() / 10.0,
        "server_rss_peak_mib": (peak * 10.0).round() / 10.0,
        "server_cpu_heartbeats_percent_of_core": (cpu_share * 1000.0).round() / 10.0,
        "cpu_window_s": args.window.as_secs_f64(),
        "dispatch_1_runner": one.to_json(),
        "dispatch_all_runners": all.to_json(),
        "store": args.store,
        "floor": floor,
    }))
}

/// The share of one core `proc` spends over `window`.
async fn cpu_share(proc: &Proc, window: Duration) -> anyhow::Result<f64> {
    let before = proc.cpu_ns()?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    Ok((proc.cpu_ns()? - before) as f64 / start.elapsed().as_nanos() as f64)
}

/// The simulated runners of one load.
struct Fleet {
    heartbeat: Duration,
    registered: Arc<AtomicU64>,
    connecting: Arc<Semaphore>,
    stop_tx: watch::Sender<bool>,
}

impl Fleet {
    fn new(args: &RunnersArgs) -> Self {
        Self {
            heartbeat: args.heartbeat,
            registered: Arc::new(AtomicU64::new(0)),
            connecting: Arc::new(Semaphore::new(args.connect_concurrency.max(1))),
            stop_tx: watch::channel(false).0,
        }
    }

    /// Starts the runners numbered `indices`, connecting to `endpoint`.
    fn spawn(&self, endpoint: &Endpoint, indices: std::ops::Range<u32>) -> Vec<tokio::task::JoinHandle<()>> {
        indices
            .map(|index| {
                let task = simulated_runner(
                    endpoint.clone(),
                    index,
                    self.heartbeat,
                    self.registered.clone(),
                    self.connecting.clone(),
                    self.stop_tx.subscribe(),
                );
                tokio::spawn(async move {
                    if let Err(err) = task.await {
                        eprintln!("{err:#}");
                    }
                })
            })
            .collect()
    }

    async fn stop(&self, tasks: Vec<tokio::task::JoinHandle<()>>) {
        let _ = self.stop_tx.send(true);
        for task in tasks {
            let _ = task.await;
        }
    }
}

/// The same load against the heartbeat floor ([`crate::floor`]): its CPU
/// over the same window, and its RSS with every runner registered.
async fn floor(args: &RunnersArgs, dir: &Path) -> anyhow::Result<serde_json::Value> {
    let floor = Server::floor(dir, args).await?;
    let proc = floor.proc();
    let fleet = Fleet::new(args);
    let tasks = fleet.spawn(&floor.endpoint, 0..args.count);
    let deadline = Instant::now() + Duration::from_secs(300);
    while fleet.registered.load(Ordering::Relaxed) < u64::from(args.count) {
        if Instant::now() > deadline || tasks.iter().any(|t| t.is_finished()) {
            bail!(
                "only {} of {} runners registered with the heartbeat floor",
                fleet.registered.load(Ordering::Relaxed),
                args.count
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(args.heartbeat).await;
    let rss = proc.rss_mib()?;
    let cpu_share = cpu_share(&proc, args.window).await?;
    // A runner's task ends only when its connection does.
    let still = !tasks.iter().any(|t| t.is_finished());
    fleet.stop(tasks).await;
    Ok(serde_json::json!({
        "all_still_connected_after_window": still,
        "rss_all_registered_mib": (rss * 10.0).round() / 10.0,
        "cpu_heartbeats_percent_of_core": (cpu_share * 1000.0).round() / 10.0,
    }))
}

fn print(args: &RunnersArgs, r: &serde_json::Value) {
    println!(
        "valkyrie-server ({} store) in its own process; {} simulated runners over unix sockets, heartbeat every {:?}; {} CPUs",
        args.store,
        args.count,
        args.heartbeat,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    println!(
        "registered                      {} of {} (all still connected after the window: {})",
        r["registered"], r["runners"], r["all_still_connected_after_window"]
    );
    println!("time to register all            {} s", r["connect_all_s"]);
    println!("server RSS idle, just started   {} MiB", r["server_rss_idle_mib"]);
    println!(
        "server RSS idle, after {} s      {} MiB",
        r["settle_s"], r["server_rss_idle_settled_mib"]
    );
    println!(
        "server RSS, all registered      {} MiB",
        r["server_rss_all_registered_mib"]
    );
    println!("server RSS peak                 {} MiB", r["server_rss_peak_mib"]);
    println!(
        "server CPU, heartbeats only     {} % of one core over {} s",
        r["server_cpu_heartbeats_percent_of_core"], r["cpu_window_s"]
    );
    let floor = &r["floor"];
    if !floor.is_null() {
        println!(
            "floor CPU, heartbeats only      {} % of one core over {} s (bare protocol server; RSS {} MiB, all still connected: {})",
            floor["cpu_heartbeats_percent_of_core"],
            r["cpu_window_s"],
            floor["rss_all_registered_mib"],
            floor["all_still_connected_after_window"]
        );
    }
    for (label, key) in [
        ("1 runner", "dispatch_1_runner"),
        ("all runners", "dispatch_all_runners"),
    ] {
        let d = &r[key];
        println!(
            "dispatch, 1 in flight, {label:<12} p50 {} µs  p99 {} µs  ({} jobs)",
            d["p50_us"], d["p99_us"], d["samples"]
        );
    }
}

fn raise_fd_limit(want: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft >= want {
        return Ok(());
    }
    if hard < want {
        bail!("the open-file limit is {hard}; {want} are needed (raise it with `ulimit -Hn {want}` as root)");
    }
    setrlimit(Resource::RLIMIT_NOFILE, want, hard)?;
    Ok(())
}
