//! `valkyrie-bench http`: latency of the REST adapter under an open-loop
//! load. A control plane and its REST router run in-process on their own
//! runtime; a client runtime sends requests at a fixed rate over HTTP/1.1
//! keep-alive connections, never waiting for earlier responses before
//! sending (so a stall cannot slow the load down). Each request is timed
//! from when it was sent to its full response. Tokio's timer has a 1 ms
//! resolution, so a request may leave up to ~1 ms after its scheduled
//! time; the pacing lag (scheduled → sent) is reported separately rather
//! than folded into the server's latency.
//!
//! Two scenarios: `GET /api/ci/executions/{id}` (a viewer JWT, so token
//! verification is measured too) and `POST /api/ci/pipelines/{id}/trigger`
//! (a submitter JWT; each request creates a run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use valkyrie_control_plane::auth::{random_token, Tokens};
use valkyrie_control_plane::rest::auth::{JwtKeys, Role};
use valkyrie_control_plane::rest::{self, RestConfig};
use valkyrie_control_plane::{spawn_core, CoreConfig};

use crate::stats::{us, Summary};

#[derive(Args, Debug)]
pub struct HttpArgs {
    /// Requests per second, per scenario.
    #[arg(long, env = "VALKYRIE_BENCH_RATE", default_value_t = 5_000)]
    rate: u64,
    /// Measured requests per scenario.
    #[arg(long, env = "VALKYRIE_BENCH_REQUESTS", default_value_t = 25_000)]
    requests: usize,
    /// Untimed requests sent first, at the same rate.
    #[arg(long, env = "VALKYRIE_BENCH_WARMUP", default_value_t = 2_500)]
    warmup: usize,
    /// Worker threads of the runtime hosting the control plane and the HTTP server.
    #[arg(long, env = "VALKYRIE_BENCH_SYSTEM_THREADS", default_value_t = 2)]
    system_threads: usize,
    /// Worker threads of the client's runtime.
    #[arg(long, env = "VALKYRIE_BENCH_CLIENT_THREADS", default_value_t = 2)]
    client_threads: usize,
    /// Print JSON instead of a table.
    #[arg(long, env = "VALKYRIE_BENCH_JSON")]
    json: bool,
}

struct Scenario {
    name: &'static str,
    summary: Summary,
    lag: Summary,
    errors: u64,
}

pub fn main(args: HttpArgs) -> anyhow::Result<()> {
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
    let secret = random_token();
    let base = system_rt.block_on(async {
        let tokens = Arc::new(Tokens::new(random_token(), random_token()));
        let core = spawn_core(CoreConfig::default(), tokens.clone(), Default::default());
        // Rate limiting off: the load comes from one token.
        let config = RestConfig::new(JwtKeys::new(secret.as_bytes())).rate_limit(0.0, 0.0);
        let router = rest::router(core, tokens, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(rest::serve(listener, router));
        anyhow::Ok(base)
    })?;
    let keys = JwtKeys::new(secret.as_bytes());
    let scenarios = client_rt.block_on(run(&args, &base, &keys))?;
    client_rt.shutdown_timeout(Duration::from_secs(1));
    system_rt.shutdown_timeout(Duration::from_secs(1));
    if args.json {
        let out: Vec<_> = scenarios
            .iter()
            .map(|s| {
                let mut v = s.summary.to_json();
                v["scenario"] = s.name.into();
                v["errors"] = s.errors.into();
                v["pacing_lag_p99_us"] = us(s.lag.p99_ns).into();
                v["target_rate_per_s"] = args.rate.into();
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "REST latency, open loop at {} req/s, {} requests per scenario ({} warm-up), HTTP/1.1 keep-alive",
            args.rate, args.requests, args.warmup
        );
        println!(
            "{:<36} {:>9} {:>9} {:>9} {:>9} {:>10} {:>7} {:>13}",
            "scenario", "p50 µs", "p99 µs", "p99.9 µs", "max µs", "req/s", "errors", "lag p99 µs"
        );
        for s in &scenarios {
            println!(
                "{:<36} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.0} {:>7} {:>13.1}",
                s.name,
                us(s.summary.p50_ns),
                us(s.summary.p99_ns),
                us(s.summary.p999_ns),
                us(s.summary.max_ns),
                s.summary.rate_per_s,
                s.errors,
                us(s.lag.p99_ns)
            );
        }
    }
    Ok(())
}

async fn run(args: &HttpArgs, base: &str, keys: &JwtKeys) -> anyhow::Result<Vec<Scenario>> {
    // reqwest's rustls has no built-in provider in this workspace.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .tcp_nodelay(true)
        .build()?;
    let admin = keys.mint("bench", Role::Admin, Duration::from_secs(3600));
    let yaml = "name: bench\njobs:\n  noop:\n    steps: [\"true\"]\n";
    let response = client
        .post(format!("{base}/api/ci/pipelines"))
        .bearer_auth(&admin)
        .header("content-type", "application/yaml")
        .body(yaml)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("creating the pipeline failed: {}", response.text().await?);
    }
    let pipeline = response.json::<serde_json::Value>().await?["id"]
        .as_u64()
        .context("no pipeline id")?;
    let triggered: serde_json::Value = client
        .post(format!("{base}/api/ci/pipelines/{pipeline}/trigger"))
        .bearer_auth(&admin)
        .send()
        .await?
        .json()
        .await?;
    let run = triggered["run_id"].as_u64().context("no execution id")?;

    let viewer = keys.mint("bench-viewer", Role::Viewer, Duration::from_secs(3600));
    let submitter = keys.mint("bench-submitter", Role::Submitter, Duration::from_secs(3600));
    let get = Request {
        method: reqwest::Method::GET,
        url: format!("{base}/api/ci/executions/{run}"),
        token: viewer,
    };
    let trigger = Request {
        method: reqwest::Method::POST,
        url: format!("{base}/api/ci/pipelines/{pipeline}/trigger"),
        token: submitter,
    };
    let mut out = Vec::new();
    for (name, request) in [
        ("GET /api/ci/executions/{id}", get),
        ("POST /api/ci/pipelines/{id}/trigger", trigger),
    ] {
        let request = Arc::new(request);
        open_loop(&client, &request, args.rate, args.warmup).await;
        let (summary, lag, errors) = open_loop(&client, &request, args.rate, args.requests).await;
        out.push(Scenario {
            name,
            summary,
            lag,
            errors,
        });
    }
    Ok(out)
}

struct Request {
    method: reqwest::Method,
    url: String,
    token: String,
}

/// Sends `count` requests at `rate` per second; returns the latencies (from
/// each request's send to its full response), the pacing lag (scheduled →
/// sent) and the error count.
async fn open_loop(
    client: &reqwest::Client,
    request: &Arc<Request>,
    rate: u64,
    count: usize,
) -> (Summary, Summary, u64) {
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    for i in 0..count {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let (client, request, errors, tx) = (client.clone(), request.clone(), errors.clone(), tx.clone());
        tokio::spawn(async move {
            let sent = Instant::now();
            let result = client
                .request(request.method.clone(), &request.url)
                .bearer_auth(&request.token)
                .send()
                .await;
            let ok = match result {
                Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
                Err(_) => false,
            };
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            }
            let latency = sent.elapsed().as_nanos() as u64;
            let _ = tx.send((
                latency,
                sent.saturating_duration_since(scheduled).as_nanos() as u64,
            ));
        });
    }
    drop(tx);
    let (mut samples, mut lags) = (Vec::with_capacity(count), Vec::with_capacity(count));
    while let Some((latency, lag)) = rx.recv().await {
        samples.push(latency);
        lags.push(lag);
    }
    let wall = start.elapsed();
    (
        Summary::new(samples, wall),
        Summary::new(lags, wall),
        errors.load(Ordering::Relaxed),
    )
}
