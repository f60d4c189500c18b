//! The dispatch load: C tasks, each submitting a no-op job and waiting for
//! its terminal State event, over one or a few SDK connections. One
//! subscription to all events (opened before the first submission) feeds a
//! table of waiters keyed by job id; the terminal event is timestamped when
//! the bench's event reader receives it.
//!
//! In spin mode only the event reader spins: one busy task keeps the client
//! runtime's I/O driver hot for every other task (submit replies and the
//! hand-off to the waiters), without a spinner per job burning the CPUs the
//! control plane and agents need.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::oneshot;
use valkyrie_sdk::{Client, EventBody, EventStream, JobSpec, JobState, StepSpec};

use crate::stats::Summary;
use crate::wait::WakeMode;

/// What one dispatch run measured.
pub struct DispatchReport {
    pub latency: Summary,
    /// Every measured job (with or without a seen terminal event) over the wall time.
    pub jobs_per_s: f64,
    /// Jobs whose terminal state was not `succeeded`.
    pub not_succeeded: HashMap<&'static str, u64>,
    /// Jobs whose terminal event never arrived within the job timeout, with
    /// the state the server reports for them.
    pub missing: Vec<(u64, String)>,
    /// Events the server reported as dropped for our subscription.
    pub skipped_events: u64,
    /// Non-terminal State events seen.
    pub intermediate_events: u64,
}

enum Slot {
    Waiting(oneshot::Sender<(Instant, JobState)>),
    /// The terminal event arrived before the submitter registered its wait.
    Done(Instant, JobState),
}

#[derive(Default)]
struct Completions {
    slots: Mutex<HashMap<u64, Slot>>,
    skipped: AtomicU64,
    intermediate: AtomicU64,
}

impl Completions {
    fn complete(&self, job: u64, at: Instant, state: JobState) {
        let mut slots = self.slots.lock().expect("completions");
        match slots.remove(&job) {
            Some(Slot::Waiting(tx)) => {
                let _ = tx.send((at, state));
            }
            _ => {
                slots.insert(job, Slot::Done(at, state));
            }
        }
    }

    fn wait_for(&self, job: u64) -> Result<(Instant, JobState), oneshot::Receiver<(Instant, JobState)>> {
        let mut slots = self.slots.lock().expect("completions");
        match slots.remove(&job) {
            Some(Slot::Done(at, state)) => Ok((at, state)),
            Some(Slot::Waiting(_)) | None => {
                let (tx, rx) = oneshot::channel();
                slots.insert(job, Slot::Waiting(tx));
                Err(rx)
            }
        }
    }
}

async fn read_events(mut events: EventStream, completions: Arc<Completions>, mode: WakeMode) {
    while let Some(event) = mode.wait(events.recv()).await {
        let at = Instant::now();
        let Ok(event) = event else { break };
        match event.body {
            EventBody::State { state, .. } if state.is_terminal() => {
                completions.complete(event.job_id, at, state)
            }
            EventBody::State { .. } => {
                completions.intermediate.fetch_add(1, Ordering::Relaxed);
            }
            EventBody::Skipped { missed } => {
                completions.skipped.fetch_add(missed, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// Parameters of one run.
pub struct Load {
    pub warmup_jobs: usize,
    pub jobs: usize,
    pub concurrency: usize,
    pub job_timeout: Duration,
    pub mode: WakeMode,
    /// Bytes of one environment variable added to every job's spec.
    pub spec_padding: usize,
}

/// Runs `load` over `clients` (the first also carries the subscription).
pub async fn run(clients: &[Client], load: &Load) -> anyhow::Result<DispatchReport> {
    let completions = Arc::new(Completions::default());
    let events = clients[0]
        .watch(None, false, false)
        .await
        .context("cannot subscribe to events")?;
    let reader = tokio::spawn(read_events(events, completions.clone(), load.mode));

    // Warm-up: same path, not recorded.
    if load.warmup_jobs > 0 {
        phase(clients, &completions, load, load.warmup_jobs).await?;
    }
    completions.skipped.store(0, Ordering::Relaxed);
    completions.intermediate.store(0, Ordering::Relaxed);
    let started = Instant::now();
    let outcome = phase(clients, &completions, load, load.jobs).await?;
    let wall = started.elapsed();
    reader.abort();

    let mut missing = Vec::new();
    for job in outcome.missing {
        let state = match clients[0].job(job).await {
            Ok(info) => format!("{:?}", info.state).to_lowercase(),
            Err(err) => format!("unknown ({err})"),
        };
        missing.push((job, state));
    }
    Ok(DispatchReport {
        latency: Summary::new(outcome.samples, wall),
        jobs_per_s: load.jobs as f64 / wall.as_secs_f64(),
        not_succeeded: outcome.not_succeeded,
        missing,
        skipped_events: completions.skipped.load(Ordering::Relaxed),
        intermediate_events: completions.intermediate.load(Ordering::Relaxed),
    })
}

/// How often a waiter whose terminal event is late asks the server for the
/// job's state, so a dropped event costs the run seconds instead of the
/// whole job timeout.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);

/// How long after the server reports a job final its event may still be on
/// the way (queued behind other events) before it counts as dropped.
const FINAL_GRACE: Duration = Duration::from_secs(2);

/// Waits for the terminal event; `None` if it did not come within `timeout`,
/// or within [`FINAL_GRACE`] of the server reporting the job final (a
/// dropped event: counted as missing, not as a sample).
async fn wait_or_probe(
    client: &Client,
    job: u64,
    mut rx: oneshot::Receiver<(Instant, JobState)>,
    timeout: Duration,
) -> Option<(Instant, JobState)> {
    let mut deadline = Instant::now() + timeout;
    let mut final_on_server = false;
    loop {
        match tokio::time::timeout(PROBE_INTERVAL, &mut rx).await {
            Ok(Ok(done)) => return Some(done),
            Ok(Err(_)) => return None,
            Err(_) => {}
        }
        if Instant::now() >= deadline {
            return None;
        }
        if !final_on_server && client.job(job).await.is_ok_and(|info| info.state.is_terminal()) {
            final_on_server = true;
            deadline = deadline.min(Instant::now() + FINAL_GRACE);
        }
    }
}

#[derive(Default)]
struct PhaseOutcome {
    samples: Vec<u64>,
    not_succeeded: HashMap<&'static str, u64>,
    missing: Vec<u64>,
}

async fn phase(
    clients: &[Client],
    completions: &Arc<Completions>,
    load: &Load,
    jobs: usize,
) -> anyhow::Result<PhaseOutcome> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for task in 0..load.concurrency.min(jobs) {
        let client = clients[task % clients.len()].clone();
        let completions = completions.clone();
        let next = next.clone();
        let timeout = load.job_timeout;
        let spec_padding = load.spec_padding;
        tasks.push(tokio::spawn(async move {
            let mut spec = JobSpec::with_steps("bench", vec![StepSpec::noop()]);
            if spec_padding > 0 {
                spec.env.push(("BENCH_PADDING".into(), "x".repeat(spec_padding)));
            }
            let mut out = PhaseOutcome::default();
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let t0 = Instant::now();
                let job = client.submit(spec.clone()).await.context("submit failed")?;
                let done = match completions.wait_for(job) {
                    Ok(done) => Some(done),
                    Err(rx) => wait_or_probe(&client, job, rx, timeout).await,
                };
                match done {
                    Some((at, state)) => {
                        out.samples
                            .push(at.saturating_duration_since(t0).as_nanos() as u64);
                        if state != JobState::Succeeded {
                            *out.not_succeeded.entry(state.as_str()).or_default() += 1;
                        }
                    }
                    None => {
                        completions.slots.lock().expect("completions").remove(&job);
                        out.missing.push(job);
                    }
                }
            }
            anyhow::Ok(out)
        }));
    }
    let mut total = PhaseOutcome::default();
    for task in tasks {
        let out = task.await??;
        total.samples.extend(out.samples);
        for (state, n) in out.not_succeeded {
            *total.not_succeeded.entry(state).or_default() += n;
        }
        total.missing.extend(out.missing);
    }
    Ok(total)
}
