//! Crash recovery of the control plane, with the real binaries: the server
//! is killed with SIGKILL while jobs are submitted and run, and started again
//! on the same store and socket. Agents are never restarted; they reconnect
//! by themselves and re-attach the attempts they kept running.
//!
//! What must hold:
//! - every job whose submit was acknowledged exists after every restart and
//!   ends in exactly one final state, which does not change afterwards;
//! - no two attempts of a job overlap in time (job steps write `START`/`END`
//!   markers with nanosecond timestamps), and no attempt runs twice;
//! - a job running during the crash is re-attached, not run again: it ends
//!   as attempt 1 with its whole output.
//!
//! Each scenario takes the server's store flags and runs on both stores:
//! the embedded one, and MongoDB (`--store mongodb://…`), served by the
//! test's own `nx-27017` ([`support::MongoServer`]), which lives through
//! every restart of the server. The MongoDB variants run the same load:
//! the repeated-kill scenario settled its 10,000 jobs in 37 s there and in
//! 15 s embedded with the test binary's six tests at once, and in 23–25 s
//! embedded run alone (2-core machine, debug build, one session).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{
    raw_agent_registered, sh_path, text, wait_file, wait_final, wait_state, wait_until, wait_until_within,
    within, Agent, Harness, MongoServer, Server, DEADLINE,
};
use tokio::sync::watch;
use tokio::task::JoinSet;
use valkyrie::message::{JobOutcome, JobResult, Message, RunningAttempt};
use valkyrie_sdk::{Client, EventBody, JobInfo, JobSpec, JobState, StepSpec};

const API_TOKEN: &str = "crash-api-secret";
const RUNNER_TOKEN: &str = "crash-runner-secret";
/// The default (embedded, redb) store, named explicitly.
const EMBEDDED: &[&str] = &["--store", "embedded"];

/// Jobs submitted in the repeated-kill scenario.
const JOBS: usize = 10_000;
/// One job in this many runs a shell step that writes markers; the others
/// are no-op steps, which start no process.
const MARKED_EVERY: usize = 50;
/// Submits in flight at once.
const SUBMITTERS: usize = 32;
/// The server is killed when this many submits have been acknowledged, and
/// once more right after the last one (while the jobs run).
const KILL_AT: [usize; 3] = [2_000, 5_000, 8_000];
/// Limit for waits on bulk progress (thousands of jobs).
const BULK: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_every_acknowledged_job_across_repeated_kills() {
    acknowledged_jobs_survive_repeated_kills(EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_reattaches_jobs_running_during_a_kill() {
    running_jobs_are_reattached_after_a_kill(EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_takes_a_reported_attempt_as_acknowledged_after_a_kill() {
    reported_attempt_is_acknowledged_after_a_kill(EMBEDDED).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_keeps_every_acknowledged_job_across_repeated_kills() {
    let mongo = MongoServer::start();
    acknowledged_jobs_survive_repeated_kills(&["--store", &mongo.uri()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_reattaches_jobs_running_during_a_kill() {
    let mongo = MongoServer::start();
    running_jobs_are_reattached_after_a_kill(&["--store", &mongo.uri()]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_takes_a_reported_attempt_as_acknowledged_after_a_kill() {
    let mongo = MongoServer::start();
    reported_attempt_is_acknowledged_after_a_kill(&["--store", &mongo.uri()]).await;
}

/// A server that can be killed and started again on the same socket, data
/// directory and tokens.
struct Restartable<'h> {
    harness: &'h Harness,
    socket: String,
    data_dir: PathBuf,
    store: Vec<String>,
    kills: usize,
}

impl<'h> Restartable<'h> {
    fn new(harness: &'h Harness, name: &str, store: &[&str]) -> Self {
        Self {
            harness,
            socket: format!("unix://{}", harness.path().join(format!("{name}.sock")).display()),
            data_dir: harness.path().join(format!("{name}-data")),
            store: store.iter().map(|s| s.to_string()).collect(),
            kills: 0,
        }
    }

    fn start(&self) -> Server {
        let store: Vec<&str> = self.store.iter().map(String::as_str).collect();
        let builder = self
            .harness
            .server()
            .listen(&[&self.socket])
            .data_dir(&self.data_dir)
            .tokens(API_TOKEN, RUNNER_TOKEN)
            .args(&store);
        // Starting waits on the child's output; keep the runtime's other
        // tasks (submitters) running meanwhile.
        tokio::task::block_in_place(|| builder.start())
    }

    /// SIGKILLs `server` and starts it again.
    fn kill_and_restart(&mut self, server: &mut Server) {
        server.process.kill_now();
        self.kills += 1;
        *server = self.start();
    }
}

/// The spec of the `index`-th job of the repeated-kill scenario.
fn crash_job(index: usize, marks: &Path) -> JobSpec {
    let name = format!("crash-{index}");
    if !index.is_multiple_of(MARKED_EVERY) {
        return JobSpec::with_steps(name, vec![StepSpec::noop()]);
    }
    let line = format!(
        "f={marks}/$VALKYRIE_JOB_ID; \
         echo \"START $VALKYRIE_JOB_ID $VALKYRIE_JOB_ATTEMPT $$ $(date +%s%N)\" >> \"$f\"; \
         sleep 0.3; \
         echo \"END $VALKYRIE_JOB_ID $VALKYRIE_JOB_ATTEMPT $(date +%s%N)\" >> \"$f\"",
        marks = sh_path(marks)
    );
    JobSpec::shell(name, line)
}

/// The client of the current server, numbered by restart.
type Clients = watch::Receiver<(u64, Client)>;

/// Submits jobs by index until every index is taken. A submit that fails
/// (the server died) was not acknowledged: it is submitted again, as a new
/// job, once the server is back. Returns how many submits failed.
async fn submitter(
    mut clients: Clients,
    next: Arc<AtomicUsize>,
    acked: Arc<Mutex<Vec<(usize, u64)>>>,
    marks: PathBuf,
) -> usize {
    let mut failed = 0;
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= JOBS {
            return failed;
        }
        let spec = crash_job(index, &marks);
        loop {
            let (generation, client) = clients.borrow().clone();
            let what = format!("the submit of job crash-{index}");
            match within(&what, client.submit(spec.clone())).await {
                Ok(id) => {
                    acked.lock().expect("acked").push((index, id));
                    break;
                }
                Err(err) => {
                    failed += 1;
                    let restarted =
                        tokio::time::timeout(DEADLINE, clients.wait_for(|(g, _)| *g != generation)).await;
                    match restarted {
                        Ok(Ok(_)) => {}
                        Ok(Err(_)) => panic!("the test stopped handing out clients"),
                        Err(_) => panic!(
                            "submit of crash-{index} failed with the server up \
                             (no restart within {DEADLINE:?}): {err}"
                        ),
                    }
                }
            }
        }
    }
}

/// Looks up `ids`, a few requests in flight at once.
async fn lookup(client: &Client, ids: &[u64]) -> Vec<(u64, Result<JobInfo, String>)> {
    let mut tasks = JoinSet::new();
    for chunk in ids.chunks(ids.len().div_ceil(8).max(1)) {
        let client = client.clone();
        let chunk = chunk.to_vec();
        tasks.spawn(async move {
            let mut out = Vec::with_capacity(chunk.len());
            for id in chunk {
                out.push((id, client.job(id).await.map_err(|e| e.to_string())));
            }
            out
        });
    }
    let mut all = Vec::with_capacity(ids.len());
    while let Some(done) = tasks.join_next().await {
        all.extend(done.expect("lookup task"));
    }
    all
}

/// Waits until every job in `ids` is final; fails on a job the server
/// does not know.
async fn wait_all_final(client: &Client, names: &HashMap<u64, String>) -> HashMap<u64, JobInfo> {
    let mut pending: Vec<u64> = names.keys().copied().collect();
    let mut finals = HashMap::with_capacity(pending.len());
    let deadline = Instant::now() + BULK;
    let mut last_seen: HashMap<u64, JobInfo> = HashMap::new();
    loop {
        for (id, found) in lookup(client, &pending).await {
            let info = found
                .unwrap_or_else(|err| panic!("acknowledged job {id} ({}) is missing: {err}", names[&id]));
            if info.state.is_terminal() {
                finals.insert(id, info);
            } else {
                last_seen.insert(id, info);
            }
        }
        pending.retain(|id| !finals.contains_key(id));
        if pending.is_empty() {
            return finals;
        }
        if Instant::now() >= deadline {
            let stuck: Vec<String> = pending
                .iter()
                .take(20)
                .map(|id| format!("{:?}", last_seen.get(id)))
                .collect();
            panic!(
                "{} acknowledged jobs still not final after {BULK:?}; the first ones:\n{}",
                pending.len(),
                stuck.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One attempt of a marked job, as its markers tell.
#[derive(Debug, Default)]
struct MarkedAttempt {
    starts: u32,
    start_ns: u128,
    end_ns: Option<u128>,
}

/// The attempts recorded in one job's marker file, by attempt number.
fn read_markers(path: &Path) -> BTreeMap<u32, MarkedAttempt> {
    let content =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("marker file {}: {e}", path.display()));
    let mut attempts: BTreeMap<u32, MarkedAttempt> = BTreeMap::new();
    for line in content.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parse = |i: usize| -> u128 {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .unwrap_or_else(|| panic!("bad marker line {line:?} in {}", path.display()))
        };
        let attempt = parse(2) as u32;
        let entry = attempts.entry(attempt).or_default();
        match fields[0] {
            "START" => {
                entry.starts += 1;
                entry.start_ns = parse(4);
            }
            "END" => entry.end_ns = Some(parse(3)),
            _ => panic!("bad marker line {line:?} in {}", path.display()),
        }
    }
    attempts
}

/// What the markers of all marked jobs say.
#[derive(Debug, Default)]
struct MarkerReport {
    jobs: usize,
    attempts: usize,
    /// Attempts that ran to the end and were then run again as a new attempt.
    finished_then_rerun: Vec<u64>,
}

/// Checks the markers of every marked job: attempts never overlap, no
/// attempt runs twice, and the attempt the server recorded as final ran to
/// its end.
fn check_markers(marks: &Path, finals: &HashMap<u64, JobInfo>) -> MarkerReport {
    let mut report = MarkerReport::default();
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(marks).expect("marker directory") {
        let path = entry.expect("marker entry").path();
        let id: u64 = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unexpected file {}", path.display()));
        let attempts = read_markers(&path);
        report.jobs += 1;
        report.attempts += attempts.len();
        let mut by_start: Vec<(&u32, &MarkedAttempt)> = attempts.iter().collect();
        by_start.sort_by_key(|(_, a)| a.start_ns);
        for (n, a) in &by_start {
            if a.starts != 1 {
                problems.push(format!("job {id}: attempt {n} started {} times", a.starts));
            }
        }
        for pair in by_start.windows(2) {
            let ((n1, a1), (n2, a2)) = (pair[0], pair[1]);
            match a1.end_ns {
                Some(end) if end <= a2.start_ns => {
                    report.finished_then_rerun.push(id);
                }
                Some(end) => problems.push(format!(
                    "job {id}: attempt {n1} (ended at {end}) overlaps attempt {n2} (started at {})",
                    a2.start_ns
                )),
                None => problems.push(format!(
                    "job {id}: attempt {n1} never ended, and attempt {n2} started at {}",
                    a2.start_ns
                )),
            }
        }
        if let Some(info) = finals.get(&id) {
            let last = attempts.get(&info.attempt);
            if info.state == JobState::Succeeded && last.is_none_or(|a| a.end_ns.is_none()) {
                problems.push(format!(
                    "job {id} is recorded succeeded as attempt {}, but the markers show {:?}",
                    info.attempt, attempts
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "marker files show attempts that overlap or repeat:\n{}",
        problems.join("\n")
    );
    report
}

/// Kills the server at least four times while 10,000 jobs are submitted and
/// run; then checks that every acknowledged job ended exactly once.
async fn acknowledged_jobs_survive_repeated_kills(store: &[&str]) {
    let began = Instant::now();
    let h = Harness::new();
    let marks = h.path().join("marks");
    std::fs::create_dir_all(&marks).expect("marker directory");
    let mut servers = Restartable::new(&h, "crash", store);
    let mut server = servers.start();
    let client = server.client().await;
    let mut agents: Vec<Agent> = Vec::new();
    for name in ["crash-a", "crash-b"] {
        agents.push(h.agent(&server).name(name).slots(8).start(&client).await);
    }

    let (clients_tx, clients) = watch::channel((0u64, client));
    let next = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::with_capacity(JOBS)));
    let mut submitters = JoinSet::new();
    for _ in 0..SUBMITTERS {
        submitters.spawn(submitter(
            clients.clone(),
            next.clone(),
            acked.clone(),
            marks.clone(),
        ));
    }
    let mut generation = 0;
    for at in KILL_AT {
        wait_until_within(&format!("{at} acknowledged submits"), BULK, || {
            std::future::ready((acked.lock().expect("acked").len() >= at).then_some(()))
        })
        .await;
        servers.kill_and_restart(&mut server);
        generation += 1;
        let _ = clients_tx.send((generation, server.client().await));
    }
    let mut failed_submits = 0;
    let all_submitted = tokio::time::timeout(BULK, async {
        while let Some(done) = submitters.join_next().await {
            failed_submits += done.expect("submitter task");
        }
    })
    .await;
    assert!(
        all_submitted.is_ok(),
        "the submitters did not finish within {BULK:?}"
    );
    let submitted_in = began.elapsed();

    // Every submit is acknowledged: kill once more while the jobs run.
    servers.kill_and_restart(&mut server);
    let client = server.client().await;

    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    assert_eq!(acked.len(), JOBS, "every index is acknowledged once");
    let names: HashMap<u64, String> = acked
        .iter()
        .map(|(index, id)| (*id, format!("crash-{index}")))
        .collect();
    assert_eq!(
        names.len(),
        JOBS,
        "two acknowledged submits were given the same job id"
    );

    let finals = wait_all_final(&client, &names).await;
    let settled_in = began.elapsed();
    for (id, info) in &finals {
        assert_eq!(
            &info.name, &names[id],
            "job {id} is not the job whose submit was acknowledged with that id"
        );
    }
    let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
    for info in finals.values() {
        *by_state.entry(info.state.as_str()).or_default() += 1;
    }
    let retried: Vec<u64> = finals
        .values()
        .filter(|i| i.attempt > 1)
        .map(|i| i.job_id)
        .collect();
    let not_succeeded: Vec<&JobInfo> = finals
        .values()
        .filter(|i| i.state != JobState::Succeeded)
        .collect();
    let markers = check_markers(&marks, &finals);
    eprintln!(
        "recovery_crash: {} kills; {} acknowledged ({} submits failed and were made again); \
         final states {by_state:?}; {} retried (attempt > 1): {:?}; \
         marked jobs {} with {} attempts, {} run again after finishing: {:?}; \
         submitted in {submitted_in:?}, settled in {settled_in:?}",
        servers.kills,
        acked.len(),
        failed_submits,
        retried.len(),
        &retried[..retried.len().min(20)],
        markers.jobs,
        markers.attempts,
        markers.finished_then_rerun.len(),
        markers.finished_then_rerun,
    );
    // An attempt that ran to its end is never run again: its result is
    // kept by the agent until the server has stored it.
    assert!(
        markers.finished_then_rerun.is_empty(),
        "jobs run again after an attempt finished: {:?}",
        markers.finished_then_rerun
    );
    // Only attempts whose assignment was stored but not yet sent when the
    // server died are tried again: a handful per kill.
    assert!(
        retried.len() < JOBS / 20,
        "{} jobs needed more than one attempt",
        retried.len()
    );
    assert!(
        not_succeeded.is_empty(),
        "{} acknowledged jobs did not succeed: {:#?}",
        not_succeeded.len(),
        &not_succeeded[..not_succeeded.len().min(10)]
    );

    // A final state is recorded once: the same after another crash. The
    // acknowledged submit is a barrier: it is sent only once everything the
    // server did before it is durable.
    within(
        "the barrier submit",
        client.submit(JobSpec::with_steps("barrier", vec![StepSpec::noop()])),
    )
    .await
    .expect("barrier submit");
    servers.kill_and_restart(&mut server);
    let client = server.client().await;
    let ids: Vec<u64> = names.keys().copied().collect();
    let mut changed = Vec::new();
    for (id, found) in lookup(&client, &ids).await {
        let info = found.unwrap_or_else(|err| panic!("job {id} is missing after the last restart: {err}"));
        if info != finals[&id] {
            changed.push(format!("before: {:?}\nafter:  {info:?}", finals[&id]));
        }
    }
    assert!(
        changed.is_empty(),
        "{} final states changed across a restart:\n{}",
        changed.len(),
        changed[..changed.len().min(10)].join("\n")
    );
    for agent in &mut agents {
        assert!(
            agent.process.try_wait().is_none(),
            "agent {} exited; agents must ride out server crashes",
            agent.name
        );
    }
    assert!(servers.kills >= 4);
}

/// Jobs running when the server is killed keep running on their agent, are
/// re-attached when it reconnects, and finish as attempt 1 with all their
/// output.
async fn running_jobs_are_reattached_after_a_kill(store: &[&str]) {
    const RUNNING: usize = 4;
    let h = Harness::new();
    let dir = h.path().join("midrun");
    std::fs::create_dir_all(&dir).expect("job directory");
    let go = dir.join("go");
    let mut servers = Restartable::new(&h, "midrun", store);
    let mut server = servers.start();
    let client = server.client().await;
    let mut agent = h
        .agent(&server)
        .name("midrun-agent")
        .slots(RUNNING as u32 + 1)
        .start(&client)
        .await;

    let line = format!(
        "echo begin $VALKYRIE_JOB_ID; \
         echo $VALKYRIE_JOB_ATTEMPT >> {dir}/runs-$VALKYRIE_JOB_ID; \
         while [ ! -f {go} ]; do sleep 0.05; done; \
         echo end $VALKYRIE_JOB_ID",
        dir = sh_path(&dir),
        go = sh_path(&go),
    );
    let mut ids = Vec::new();
    for n in 0..RUNNING {
        let id = client
            .submit(JobSpec::shell(format!("midrun-{n}"), line.clone()))
            .await
            .expect("submit");
        ids.push(id);
    }
    for &id in &ids {
        wait_file(&dir.join(format!("runs-{id}"))).await;
        wait_state(&client, id, JobState::Running).await;
        wait_until(
            &format!("job {id}'s first output to reach the server"),
            || async {
                let out = server.vk(&["logs", &id.to_string()]).await;
                text(&out.stdout).contains("begin").then_some(())
            },
        )
        .await;
    }
    // Acknowledged only once all that came before it is durable (the
    // output above included).
    client
        .submit(JobSpec::with_steps("barrier", vec![StepSpec::noop()]))
        .await
        .expect("barrier submit");

    servers.kill_and_restart(&mut server);
    let client = server.client().await;
    agent.registered(&client).await;
    for &id in &ids {
        let info = client.job(id).await.expect("job after restart");
        assert!(
            matches!(info.state, JobState::Running | JobState::Assigned) && info.attempt == 1,
            "job {id} should still be on its runner as attempt 1 after the restart: {info:?}"
        );
    }
    // Output written from now on goes over the new connection.
    std::fs::write(&go, b"").expect("release file");

    for &id in &ids {
        let info = wait_final(&client, id).await;
        assert_eq!(info.state, JobState::Succeeded, "job {id}: {info:?}");
        assert_eq!(info.attempt, 1, "job {id} was run again: {info:?}");
        let runs = std::fs::read_to_string(dir.join(format!("runs-{id}"))).expect("runs file");
        assert_eq!(runs, "1\n", "job {id} started more than once");

        let expected = format!("begin {id}\nend {id}\n");
        let out = server.vk(&["logs", &id.to_string()]).await;
        assert!(out.status.success(), "vk logs {id}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), expected, "vk logs {id}");

        let mut events = client.watch(Some(id), true, true).await.expect("watch");
        let mut output = Vec::new();
        let mut states = Vec::new();
        within(&format!("the replay of job {id}"), async {
            while let Some(event) = events.recv().await {
                match event.expect("event").body {
                    EventBody::Log { data, .. } => output.extend_from_slice(&data),
                    EventBody::State { state, attempt, .. } => states.push((state, attempt)),
                    EventBody::ReplayDone => break,
                    EventBody::Skipped { missed } => panic!("replay skipped {missed} events"),
                }
            }
        })
        .await;
        assert_eq!(text(&output), expected, "replayed output of job {id}");
        assert_eq!(
            states,
            vec![(JobState::Succeeded, 1)],
            "replayed state of job {id}"
        );
    }
    assert!(
        agent.process.try_wait().is_none(),
        "the agent exited; it must ride out a server crash"
    );
}

/// An agent got an assignment, and the server died before it stored the
/// agent's acknowledgement (here: the agent never sent one). After the
/// restart the agent re-reports the attempt as running: that is its
/// acknowledgement. Left assigned, the lease would run out and the job run
/// a second time while the first attempt still runs. The attempt's result
/// is then acknowledged, and recorded as attempt 1.
async fn reported_attempt_is_acknowledged_after_a_kill(store: &[&str]) {
    let h = Harness::new();
    let mut servers = Restartable::new(&h, "acked", store);
    let mut server = servers.start();
    let client = server.client().await;
    let (mut session, _) = raw_agent_registered(&server, "raw-runner", &["raw"], &[]).await;
    let mut spec = JobSpec::shell("raw-job", "true");
    spec.tags = vec!["raw".into()];
    let id = client.submit(spec).await.expect("submit");
    let assign = within("the Assign frame", async {
        loop {
            let incoming = session.recv().await.expect("raw agent session open");
            if let Message::Assign(assign) = incoming.message {
                return assign;
            }
        }
    })
    .await;
    assert_eq!((assign.job_id, assign.attempt), (id, 1));
    // Sent only once stored: the restarted server knows the assignment.

    servers.kill_and_restart(&mut server);
    drop(session);
    let client = server.client().await;
    let running = [RunningAttempt {
        job_id: id,
        attempt: 1,
    }];
    let (session, registered) = raw_agent_registered(&server, "raw-runner", &["raw"], &running).await;
    assert!(
        registered.stale.is_empty(),
        "the re-reported attempt is current: {:?}",
        registered.stale
    );
    let job = client.job(id).await.expect("job after restart");
    assert_eq!(
        (job.state, job.attempt),
        (JobState::Running, 1),
        "a re-reported attempt counts as acknowledged: {job:?}"
    );
    let answer = within(
        "the answer to the JobResult",
        session.sender().request(JobResult {
            job_id: id,
            attempt: 1,
            outcome: JobOutcome::Succeeded,
            exit_code: Some(0),
            duration_ms: 10,
            message: String::new(),
            log_chunks: 0,
            steps: Vec::new(),
        }),
    )
    .await;
    assert!(answer.is_ok(), "the result is acknowledged: {answer:?}");
    let job = wait_final(&client, id).await;
    assert_eq!((job.state, job.attempt), (JobState::Succeeded, 1), "{job:?}");
}
