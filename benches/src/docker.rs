//! `valkyrie-bench docker`: what running a job in a container costs over
//! running it on the host, measured at the executor (no control plane).
//!
//! Three series of `--jobs` runs each, interleaved so that the machine's
//! state drifts equally over all three:
//! * `shell`: a one-step job `true` on the shell executor;
//! * `container`: the same job on the Docker executor (pull check, network,
//!   create + start, one exec, remove container and network);
//! * `docker run`: `docker run --rm IMAGE true` through the CLI, the figure
//!   people know.
//!
//! The image must be on the machine (`--image`; the scenario tests build
//! `valkyrie-test/busybox:1`: `cargo test -p valkyrie-tests --test docker_executor`).

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::sync::{mpsc, watch};
use valkyrie::message::{ContainerSpec, PullPolicy};
use valkyrie_runner_agent::executor::docker::{DockerExecutor, DockerSettings};
use valkyrie_runner_agent::executor::{self, ContainerPlan, JobOutcome, JobPlan, StepPlan};

use crate::stats::{us, Summary};

#[derive(Args, Debug)]
pub struct DockerArgs {
    /// Image to run; it must be present (pull_policy never).
    #[arg(long, env = "VALKYRIE_BENCH_IMAGE", default_value = "valkyrie-test/busybox:1")]
    image: String,
    /// Measured jobs per series.
    #[arg(long, env = "VALKYRIE_BENCH_JOBS", default_value_t = 100)]
    jobs: usize,
    /// Untimed jobs per series first.
    #[arg(long, env = "VALKYRIE_BENCH_WARMUP_JOBS", default_value_t = 5)]
    warmup_jobs: usize,
    /// Give every container job a network of its own (the agent's `--docker-network-per-job`).
    #[arg(long, env = "VALKYRIE_BENCH_NETWORK_PER_JOB")]
    network_per_job: bool,
    /// Print JSON instead of a table.
    #[arg(long, env = "VALKYRIE_BENCH_JSON")]
    json: bool,
}

pub fn main(args: DockerArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(args))
}

async fn run(args: DockerArgs) -> anyhow::Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("valkyrie-bench-docker-")
        .tempdir()?;
    let docker = DockerExecutor::connect(DockerSettings {
        runner: format!("bench-{}", std::process::id()),
        network_per_job: args.network_per_job,
        ..DockerSettings::default()
    })
    .await?;
    let mut samples: [Vec<u64>; 3] = Default::default();
    let started = Instant::now();
    for i in 0..args.warmup_jobs + args.jobs {
        let measured = i >= args.warmup_jobs;
        let shell = job(&dir, i, "shell", None, &args.image).await?;
        let container = job(&dir, i, "container", Some(&docker), &args.image).await?;
        let cli = docker_run(&args.image).await?;
        if measured {
            for (series, took) in samples.iter_mut().zip([shell, container, cli]) {
                series.push(took.as_nanos() as u64);
            }
        }
    }
    let wall = started.elapsed();
    let [shell, container, cli] = samples.map(|s| Summary::new(s, wall));
    let overhead_us = us(container.p50_ns.saturating_sub(shell.p50_ns));
    if args.json {
        let report = serde_json::json!({
            "image": args.image,
            "jobs": args.jobs,
            "network_per_job": args.network_per_job,
            "shell": shell.to_json(),
            "container": container.to_json(),
            "docker_run": cli.to_json(),
            "container_overhead_p50_us": overhead_us,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} jobs per series, image {}{}",
            args.jobs,
            args.image,
            if args.network_per_job {
                ", a network per job"
            } else {
                ""
            }
        );
        println!(
            "{:<28} {:>10} {:>10} {:>10}",
            "series", "p50 ms", "p99 ms", "max ms"
        );
        for (name, s) in [
            ("shell executor, `true`", &shell),
            ("docker executor, `true`", &container),
            ("docker run --rm IMAGE true", &cli),
        ] {
            println!(
                "{name:<28} {:>10.1} {:>10.1} {:>10.1}",
                ms(s.p50_ns),
                ms(s.p99_ns),
                ms(s.max_ns)
            );
        }
        println!(
            "container overhead over shell (p50): {:.1} ms",
            overhead_us / 1000.0
        );
    }
    Ok(())
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Runs one job of one step `true` and returns how long `run_job` took.
async fn job(
    dir: &tempfile::TempDir,
    i: usize,
    kind: &str,
    docker: Option<&DockerExecutor>,
    image: &str,
) -> anyhow::Result<Duration> {
    let mut plan = JobPlan::new(i as u64, dir.path().join(format!("{kind}-{i}")));
    plan.steps = vec![StepPlan::shell("true", "true")];
    plan.shell = executor::SH_SHELL.iter().map(|s| (*s).to_owned()).collect();
    if let Some(docker) = docker {
        let mut spec = ContainerSpec::image(image);
        spec.pull_policy = PullPolicy::Never;
        plan.host_env = Default::default();
        plan.container = Some(ContainerPlan {
            executor: docker.clone(),
            spec,
            attempt: 1,
        });
    }
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let (_cancel_tx, cancel_rx) = watch::channel(false);
    let started = Instant::now();
    let drain = tokio::spawn(async move { while events_rx.recv().await.is_some() {} });
    let report = executor::run_job(plan, events_tx, cancel_rx).await;
    let took = started.elapsed();
    drain.await?;
    anyhow::ensure!(
        report.outcome == JobOutcome::Succeeded,
        "the {kind} job failed: {:?}",
        report.error
    );
    Ok(took)
}

async fn docker_run(image: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let status = tokio::process::Command::new("docker")
        .args(["run", "--rm", image, "true"])
        .status()
        .await
        .context("docker run")?;
    anyhow::ensure!(status.success(), "docker run --rm {image} true failed: {status}");
    Ok(started.elapsed())
}
