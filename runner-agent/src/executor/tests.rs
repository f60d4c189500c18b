//! `run_job` against real child processes in temporary workspaces.
//!
//! Tests never sleep for a fixed time: they wait for events, or poll a
//! condition, under a deadline.

use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::*;

/// Generous bound on anything a test waits for; only hit when a test fails.
const TEST_DEADLINE: Duration = Duration::from_secs(60);

struct Run {
    events: mpsc::Receiver<ExecEvent>,
    cancel: watch::Sender<bool>,
    job: JoinHandle<JobReport>,
}

/// A plan whose workspace is a not-yet-existing directory inside `root`.
fn plan(root: &tempfile::TempDir, steps: Vec<StepPlan>) -> JobPlan {
    let mut plan = JobPlan::new(7, root.path().join("jobs/7"));
    plan.steps = steps;
    plan
}

fn start(plan: JobPlan) -> Run {
    let (events_tx, events) = mpsc::channel(64);
    let (cancel, cancel_rx) = watch::channel(false);
    let job = tokio::spawn(run_job(plan, events_tx, cancel_rx));
    Run { events, cancel, job }
}

impl Run {
    async fn next_event(&mut self) -> Option<ExecEvent> {
        tokio::time::timeout(TEST_DEADLINE, self.events.recv())
            .await
            .expect("no event before the test deadline")
    }

    /// Reads events until one matches, returning every event read so far.
    async fn events_until(&mut self, mut done: impl FnMut(&[ExecEvent]) -> bool) -> Vec<ExecEvent> {
        let mut seen = Vec::new();
        while !done(&seen) {
            let event = self
                .next_event()
                .await
                .expect("job ended before the awaited event");
            seen.push(event);
        }
        seen
    }

    /// Collects the remaining events (the channel closes when `run_job`
    /// returns) and the report.
    async fn finish(mut self, mut seen: Vec<ExecEvent>) -> (Vec<ExecEvent>, JobReport) {
        while let Some(event) = self.next_event().await {
            seen.push(event);
        }
        let report = tokio::time::timeout(TEST_DEADLINE, self.job)
            .await
            .expect("run_job did not return")
            .expect("run_job panicked");
        check_seq(&seen);
        (seen, report)
    }
}

async fn run_to_end(plan: JobPlan) -> (Vec<ExecEvent>, JobReport) {
    start(plan).finish(Vec::new()).await
}

/// Output `seq` starts at 0 and has no gaps.
fn check_seq(events: &[ExecEvent]) {
    let seqs: Vec<u64> = events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Output { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
}

fn output(events: &[ExecEvent], wanted: OutputStream) -> String {
    let bytes: Vec<u8> = events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Output { stream, data, .. } if *stream == wanted => Some(data.as_ref()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat();
    String::from_utf8(bytes).expect("output is UTF-8")
}

fn finished(events: &[ExecEvent]) -> Vec<(u32, StepOutcome, Option<i32>, Option<i32>)> {
    events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::StepFinished {
                index,
                exit_code,
                signal,
                outcome,
                ..
            } => Some((*index, *outcome, *exit_code, *signal)),
            _ => None,
        })
        .collect()
}

fn step_pgid(events: &[ExecEvent], step: u32) -> i32 {
    events
        .iter()
        .find_map(|event| match event {
            ExecEvent::StepStarted { index, pgid, .. } if *index == step => *pgid,
            _ => None,
        })
        .expect("step started with a process group")
}

fn saw_stdout(events: &[ExecEvent], text: &str) -> bool {
    output(events, OutputStream::Stdout).contains(text)
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn live_members(pgid: i32) -> Vec<i32> {
    let mut members = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("read /proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // A process may vanish between listing and reading; that is fine.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command: state ppid pgrp ...
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Zombies are dead already; they only wait for a reaper that, in a
        // container, may never come.
        if fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string() {
            members.push(pid);
        }
    }
    members
}

/// SIGKILL is asynchronous: poll until the group has no live member.
async fn assert_group_gone(pgid: i32) {
    let gone = tokio::time::timeout(TEST_DEADLINE, async {
        while !live_members(pgid).is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        gone.is_ok(),
        "processes of group {pgid} survived: {:?}",
        live_members(pgid)
    );
}

/// Ignores SIGTERM in the shell and in two background children, then waits.
const STUBBORN_STEP: &str = r#"trap "" TERM; sleep 1000 & sleep 1000 & echo ready; wait"#;

#[tokio::test]
async fn steps_run_in_order_and_report_each_step() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![
            StepPlan::shell("one", "echo one"),
            StepPlan::shell("two", "echo two"),
            StepPlan::shell("three", "echo three"),
        ],
    );
    let (events, report) = run_to_end(plan).await;

    let shape: Vec<String> = events
        .iter()
        .filter(|event| {
            !matches!(
                event,
                ExecEvent::Output {
                    stream: OutputStream::System,
                    ..
                }
            )
        })
        .map(|event| match event {
            ExecEvent::StepStarted { index, name, .. } => format!("start {index} {name}"),
            ExecEvent::Output { stream, data, .. } => {
                format!("{stream:?} {}", String::from_utf8_lossy(data))
            }
            ExecEvent::StepFinished { index, outcome, .. } => format!("finish {index} {outcome:?}"),
        })
        .collect();
    assert_eq!(
        shape,
        [
            "start 0 one",
            "Stdout one\n",
            "finish 0 Succeeded",
            "start 1 two",
            "Stdout two\n",
            "finish 1 Succeeded",
            "start 2 three",
            "Stdout three\n",
            "finish 2 Succeeded",
        ]
    );
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_eq!(report.exit_code, Some(0));
    assert!(!report.output_truncated);
}

#[tokio::test]
async fn steps_see_layered_env_and_their_working_directory() {
    let root = tempfile::tempdir().unwrap();
    let mut in_subdir = StepPlan::shell("show", r#"pwd; echo "$LAYER $JOB_ONLY $TOKEN""#);
    in_subdir.working_directory = Some("sub/dir".to_owned());
    in_subdir.env = vec![("LAYER".to_owned(), "step".to_owned())];
    let mut plan = plan(
        &root,
        vec![StepPlan::shell("mkdir", "mkdir -p sub/dir"), in_subdir],
    );
    plan.env = vec![
        ("LAYER".to_owned(), "job".to_owned()),
        ("JOB_ONLY".to_owned(), "job-only".to_owned()),
    ];
    plan.secrets = vec![("TOKEN".to_owned(), "tok".to_owned())];
    let workspace = plan.workspace.clone();

    let (events, report) = run_to_end(plan).await;

    assert_eq!(report.outcome, JobOutcome::Succeeded);
    let expected_dir = workspace.join("sub/dir").canonicalize().unwrap();
    assert_eq!(
        output(&events, OutputStream::Stdout),
        format!("{}\nstep job-only ***\n", expected_dir.display())
    );
}

#[tokio::test]
async fn stdout_and_stderr_are_streamed_separately() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![StepPlan::shell("both", "echo out; echo err >&2; echo out2")],
    );
    let (events, _) = run_to_end(plan).await;
    assert_eq!(output(&events, OutputStream::Stdout), "out\nout2\n");
    assert_eq!(output(&events, OutputStream::Stderr), "err\n");
    assert_eq!(output(&events, OutputStream::System), "");
}

#[tokio::test]
async fn failing_step_fails_the_job_and_skips_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![
            StepPlan::shell("ok", "true"),
            StepPlan::shell("fail", "echo failing; exit 3"),
            StepPlan::shell("never", "echo never"),
            StepPlan::noop("never either"),
        ],
    );
    let (events, report) = run_to_end(plan).await;

    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Succeeded, Some(0), None),
            (1, StepOutcome::Failed, Some(3), None),
            (2, StepOutcome::Skipped, None, None),
            (3, StepOutcome::Skipped, None, None),
        ]
    );
    let started = events
        .iter()
        .filter(|e| matches!(e, ExecEvent::StepStarted { .. }))
        .count();
    assert_eq!(started, 2, "skipped steps are not started");
    assert_eq!(output(&events, OutputStream::Stdout), "failing\n");
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.exit_code, Some(3));
}

#[tokio::test]
async fn continue_on_error_step_fails_allowed_and_the_job_goes_on() {
    let root = tempfile::tempdir().unwrap();
    let mut allowed = StepPlan::shell("flaky", "exit 4");
    allowed.continue_on_error = true;
    let plan = plan(&root, vec![allowed, StepPlan::shell("after", "echo after")]);
    let (events, report) = run_to_end(plan).await;

    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::FailedAllowed, Some(4), None),
            (1, StepOutcome::Succeeded, Some(0), None)
        ]
    );
    assert_eq!(output(&events, OutputStream::Stdout), "after\n");
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_eq!(report.exit_code, Some(0));
}

fn step_if(name: &str, line: &str, condition: StepCondition) -> StepPlan {
    StepPlan {
        condition,
        ..StepPlan::shell(name, line)
    }
}

#[tokio::test]
async fn after_a_failure_only_on_failure_and_always_steps_run() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![
            step_if("notify early", "echo never", StepCondition::OnFailure),
            StepPlan::shell("build", "exit 3"),
            StepPlan::shell("test", "echo never"),
            step_if("notify", "echo notify", StepCondition::OnFailure),
            step_if("clean", "echo clean; exit 5", StepCondition::Always),
        ],
    );
    let (events, report) = run_to_end(plan).await;
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Skipped, None, None),
            (1, StepOutcome::Failed, Some(3), None),
            (2, StepOutcome::Skipped, None, None),
            (3, StepOutcome::Succeeded, Some(0), None),
            (4, StepOutcome::Failed, Some(5), None),
        ]
    );
    assert_eq!(output(&events, OutputStream::Stdout), "notify\nclean\n");
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.exit_code, Some(3), "the step that failed the job");
    // Section lines name each step, how it ended and how long it took.
    let system = output(&events, OutputStream::System);
    let lines: Vec<&str> = system.lines().collect();
    assert_eq!(lines[0], "[valkyrie] step 1/5 `notify early` skipped", "{system}");
    assert_eq!(lines[1], "[valkyrie] step 2/5 `build` started", "{system}");
    assert!(
        lines[2].starts_with("[valkyrie] step 2/5 `build` failed with exit code 3 in ")
            && lines[2].ends_with('s'),
        "{system}"
    );
    assert_eq!(lines[3], "[valkyrie] step 3/5 `test` skipped", "{system}");
    assert!(
        lines[5].starts_with("[valkyrie] step 4/5 `notify` succeeded in "),
        "{system}"
    );
    assert!(
        lines[7].starts_with("[valkyrie] step 5/5 `clean` failed with exit code 5 in "),
        "{system}"
    );
    assert_eq!(lines.len(), 8, "{system}");
}

#[tokio::test]
async fn an_always_step_runs_after_success_too() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![
            StepPlan::shell("build", "echo build"),
            step_if("clean", "echo clean", StepCondition::Always),
        ],
    );
    let (events, report) = run_to_end(plan).await;
    assert_eq!(output(&events, OutputStream::Stdout), "build\nclean\n");
    assert_eq!(report.outcome, JobOutcome::Succeeded);
}

#[tokio::test]
async fn signalled_step_reports_the_signal_and_no_exit_code() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(&root, vec![StepPlan::shell("suicide", "kill -KILL $$")]);
    let (events, report) = run_to_end(plan).await;
    assert_eq!(finished(&events), [(0, StepOutcome::Failed, None, Some(9))]);
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(report.exit_code, None);
}

#[tokio::test]
async fn cancel_terminates_then_kills_the_whole_process_group() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![
            StepPlan::shell("stubborn", STUBBORN_STEP),
            StepPlan::shell("next", "echo next"),
        ],
    );
    let kill_grace = Duration::from_millis(300);
    plan.kill_grace = kill_grace;
    let mut run = start(plan);

    let seen = run.events_until(|seen| saw_stdout(seen, "ready\n")).await;
    let pgid = step_pgid(&seen, 0);
    assert_eq!(
        live_members(pgid).len(),
        3,
        "shell and two sleeps run in the step's group"
    );
    run.cancel.send(true).unwrap();
    let (events, report) = run.finish(seen).await;

    // The shell ignores SIGTERM, so only the SIGKILL after the grace ends it.
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Cancelled, None, Some(9)),
            (1, StepOutcome::Skipped, None, None)
        ]
    );
    let step_duration = events.iter().find_map(|event| match event {
        ExecEvent::StepFinished { duration, .. } => Some(*duration),
        _ => None,
    });
    assert!(
        step_duration.unwrap() >= kill_grace,
        "SIGKILL came before the grace expired"
    );
    assert_eq!(report.outcome, JobOutcome::Cancelled);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn cancel_stops_a_step_that_honours_sigterm_without_waiting_for_the_grace() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![StepPlan::shell("sleeper", "echo ready; exec sleep 1000")],
    );
    // Far beyond the test deadline: the test only passes if SIGTERM worked.
    plan.kill_grace = Duration::from_secs(3600);
    let mut run = start(plan);

    let seen = run.events_until(|seen| saw_stdout(seen, "ready\n")).await;
    let pgid = step_pgid(&seen, 0);
    run.cancel.send(true).unwrap();
    let (events, report) = run.finish(seen).await;

    assert_eq!(finished(&events), [(0, StepOutcome::Cancelled, None, Some(15))]);
    assert_eq!(report.outcome, JobOutcome::Cancelled);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn job_timeout_kills_the_whole_process_group() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![
            StepPlan::shell("stubborn", STUBBORN_STEP),
            StepPlan::shell("next", "echo next"),
        ],
    );
    // Long enough for the shell to start and print "ready" on a busy machine.
    plan.timeout = Some(Duration::from_secs(2));
    plan.kill_grace = Duration::from_millis(300);
    let mut run = start(plan);

    let seen = run.events_until(|seen| saw_stdout(seen, "ready\n")).await;
    let pgid = step_pgid(&seen, 0);
    let (events, report) = run.finish(seen).await;

    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::TimedOut, None, Some(9)),
            (1, StepOutcome::Skipped, None, None)
        ]
    );
    assert_eq!(report.outcome, JobOutcome::TimedOut);
    assert_eq!(report.exit_code, None);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn background_child_holding_stdout_does_not_outlive_its_step() {
    let root = tempfile::tempdir().unwrap();
    // The background sleep inherits stdout; without killing the group the
    // pipe would stay open for 1000 s.
    let plan = plan(&root, vec![StepPlan::shell("bg", "sleep 1000 & echo done")]);
    let mut run = start(plan);
    let seen = run.events_until(|seen| !seen.is_empty()).await;
    let pgid = step_pgid(&seen, 0);
    let (events, report) = run.finish(seen).await;

    assert_eq!(finished(&events), [(0, StepOutcome::Succeeded, Some(0), None)]);
    assert_eq!(output(&events, OutputStream::Stdout), "done\n");
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_group_gone(pgid).await;
}

#[tokio::test]
async fn cancel_before_the_first_step_skips_everything() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(&root, vec![StepPlan::shell("a", "echo a"), StepPlan::noop("b")]);
    let (events_tx, mut events_rx) = mpsc::channel(64);
    let (_cancel, cancel_rx) = watch::channel(true);
    let report = run_job(plan, events_tx, cancel_rx).await;

    let mut events = Vec::new();
    while let Ok(event) = events_rx.try_recv() {
        events.push(event);
    }
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Skipped, None, None),
            (1, StepOutcome::Skipped, None, None)
        ]
    );
    assert_eq!(
        output(&events, OutputStream::System),
        "[valkyrie] step 1/2 `a` skipped\n[valkyrie] step 2/2 `b` skipped\n"
    );
    assert_eq!(events.len(), 4, "a section line and StepFinished per step");
    assert_eq!(report.outcome, JobOutcome::Cancelled);
}

#[tokio::test]
async fn cancel_stops_a_cache_restore_that_has_not_finished() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(&root, vec![StepPlan::shell("a", "echo a")]);
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
    let started_tx = std::sync::Mutex::new(Some(started_tx));
    // A restore that never ends by itself (a stalled download).
    plan.before_steps = Some(std::sync::Arc::new(move |_env| {
        if let Some(tx) = started_tx.lock().unwrap().take() {
            let _ = tx.send(());
        }
        Box::pin(std::future::pending::<Vec<String>>())
    }));
    let run = start(plan);
    tokio::time::timeout(TEST_DEADLINE, started_rx)
        .await
        .expect("the restore did not start")
        .unwrap();
    run.cancel.send(true).unwrap();
    let (events, report) = run.finish(Vec::new()).await;
    assert_eq!(report.outcome, JobOutcome::Cancelled);
    assert_eq!(finished(&events), [(0, StepOutcome::Skipped, None, None)]);
    let system = output(&events, OutputStream::System);
    assert!(
        system.starts_with("[valkyrie] job cancelled while restoring its caches; the restore stopped\n"),
        "{system}"
    );
}

#[tokio::test]
async fn a_million_lines_arrive_complete_and_in_order() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(&root, vec![StepPlan::shell("seq", "seq 1 1000000")]);
    let (events, report) = run_to_end(plan).await;

    let expected: String = (1..=1_000_000).map(|n| format!("{n}\n")).collect();
    assert_eq!(output(&events, OutputStream::Stdout), expected);
    for event in &events {
        if let ExecEvent::Output { data, .. } = event {
            // Line alignment is checked in the chunker's own tests: here a
            // stall of `seq` mid-line may legitimately release a partial line.
            assert!(data.len() <= MAX_CHUNK_BYTES, "chunk of {} bytes", data.len());
        }
    }
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert!(!report.output_truncated);
}

#[tokio::test]
async fn output_over_the_limit_is_cut_marked_and_dropped() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![
            StepPlan::shell("loud", "seq 1 100000; echo err >&2"),
            StepPlan::shell("after", "echo dropped"),
        ],
    );
    plan.output_limit_bytes = 1000;
    let (events, report) = run_to_end(plan).await;

    let all: String = (1..=100_000).map(|n| format!("{n}\n")).collect();
    let emitted: usize = events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Output {
                stream: OutputStream::Stdout | OutputStream::Stderr,
                data,
                ..
            } => Some(data.len()),
            _ => None,
        })
        .sum();
    assert_eq!(emitted, 1000);
    assert_eq!(output(&events, OutputStream::Stdout), all[..1000]);
    let system = output(&events, OutputStream::System);
    assert!(
        system.contains("\n[valkyrie] output truncated: job exceeded its 1000 bytes output limit\n"),
        "{system}"
    );
    assert!(
        system.contains("[valkyrie] step 2/2 `after` succeeded in"),
        "section lines go on after the truncation: {system}"
    );
    // The producer kept being drained, so it finished normally.
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Succeeded, Some(0), None),
            (1, StepOutcome::Succeeded, Some(0), None)
        ]
    );
    assert!(report.output_truncated);
    assert_eq!(report.outcome, JobOutcome::Succeeded);
}

#[tokio::test]
async fn secret_values_are_masked_even_across_writes() {
    let root = tempfile::tempdir().unwrap();
    // The pause makes the secret arrive in two reads, and lets the idle
    // flush of the unterminated line happen in between.
    let line = r#"echo "token is $TOKEN"; echo "$TOKEN" >&2; printf 'split=hunter2'; sleep 0.3; printf -- '-secret end\n'; echo "short $SHORT""#;
    let mut plan = plan(&root, vec![StepPlan::shell("leaky", line)]);
    plan.secrets = vec![
        ("TOKEN".to_owned(), "hunter2-secret".to_owned()),
        ("SHORT".to_owned(), "ab".to_owned()),
        ("EMPTY".to_owned(), String::new()),
    ];
    let (events, report) = run_to_end(plan).await;

    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_eq!(
        output(&events, OutputStream::Stdout),
        "token is ***\nsplit=*** end\nshort ab\n"
    );
    assert_eq!(output(&events, OutputStream::Stderr), "***\n");
    let all_bytes: Vec<u8> = events
        .iter()
        .filter_map(|event| match event {
            ExecEvent::Output { data, .. } => Some(data.as_ref()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .concat();
    assert!(!String::from_utf8_lossy(&all_bytes).contains("hunter2"));
}

#[tokio::test]
async fn unstartable_shell_fails_the_step_with_an_explanation() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![StepPlan::shell("x", "echo hi"), StepPlan::shell("y", "echo hi")],
    );
    plan.shell = vec!["/nonexistent/valkyrie-shell".to_owned()];
    let (events, report) = run_to_end(plan).await;

    assert!(matches!(
        &events[0],
        ExecEvent::StepStarted {
            index: 0,
            pgid: None,
            ..
        }
    ));
    let system = output(&events, OutputStream::System);
    assert!(
        system.starts_with("[valkyrie] step 1/2 `x` started\n[valkyrie] could not start step `x`"),
        "{system}"
    );
    assert!(system.contains("/nonexistent/valkyrie-shell"), "{system}");
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Failed, None, None),
            (1, StepOutcome::Skipped, None, None)
        ]
    );
    assert_eq!(report.outcome, JobOutcome::Failed);
}

#[tokio::test]
async fn working_directory_outside_the_workspace_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let mut escape = StepPlan::shell("escape", "pwd");
    escape.working_directory = Some("../..".to_owned());
    escape.continue_on_error = true;
    let (events, report) = run_to_end(plan(&root, vec![escape])).await;

    assert_eq!(output(&events, OutputStream::Stdout), "");
    assert!(output(&events, OutputStream::System).contains("working_directory `../..`"));
    assert_eq!(finished(&events), [(0, StepOutcome::FailedAllowed, None, None)]);
    assert_eq!(report.outcome, JobOutcome::Succeeded);
}

#[tokio::test]
async fn noop_steps_start_no_process_and_write_nothing() {
    let root = tempfile::tempdir().unwrap();
    let (events, report) = run_to_end(plan(&root, vec![StepPlan::noop("health")])).await;
    assert_eq!(
        events,
        [
            ExecEvent::StepStarted {
                index: 0,
                name: "health".to_owned(),
                pgid: None
            },
            ExecEvent::StepFinished {
                index: 0,
                exit_code: None,
                signal: None,
                duration: Duration::ZERO,
                outcome: StepOutcome::Succeeded,
                error: None,
            },
        ]
    );
    assert_eq!(report.outcome, JobOutcome::Succeeded);
}

#[tokio::test]
async fn workspace_is_created_and_is_the_default_cwd() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(&root, vec![StepPlan::shell("touch", "touch marker")]);
    let workspace = plan.workspace.clone();
    let (_, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert!(Path::new(&workspace).join("marker").is_file());
}

#[test]
fn debug_output_of_a_plan_never_shows_secret_values() {
    let mut plan = JobPlan::new(1, "/tmp/ws");
    plan.secrets = vec![("TOKEN".to_owned(), "hunter2-secret".to_owned())];
    let debug = format!("{plan:?}");
    assert!(debug.contains("TOKEN"));
    assert!(!debug.contains("hunter2"));
}

#[test]
fn plan_defaults() {
    let plan = JobPlan::new(1, "/tmp/ws");
    // bash is on the PATH of every machine these tests run on.
    assert_eq!(plan.shell, BASH_SHELL);
    assert_eq!(plan.kill_grace, Duration::from_secs(10));
    assert_eq!(plan.output_limit_bytes, 64 * 1024 * 1024);
    assert_eq!(plan.timeout, None);
}

#[tokio::test]
async fn a_failing_first_line_of_a_block_fails_the_step_in_the_default_shell() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![
            StepPlan::shell("block", "false\necho after the failure\n"),
            StepPlan::shell("next", "echo next"),
        ],
    );
    let (events, report) = run_to_end(plan).await;
    assert_eq!(output(&events, OutputStream::Stdout), "");
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Failed, Some(1), None),
            (1, StepOutcome::Skipped, None, None)
        ]
    );
    assert_eq!(report.outcome, JobOutcome::Failed);
}

#[tokio::test]
async fn a_failing_command_inside_a_pipe_fails_the_step_under_bash() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![StepPlan::shell(
            "pipe",
            "(echo piped; exit 3) | cat\necho after the pipe",
        )],
    );
    assert_eq!(plan.shell, BASH_SHELL);
    let (events, report) = run_to_end(plan).await;
    assert_eq!(output(&events, OutputStream::Stdout), "piped\n");
    assert_eq!(finished(&events), [(0, StepOutcome::Failed, Some(3), None)]);
    assert_eq!(report.outcome, JobOutcome::Failed);
}

#[tokio::test]
async fn the_sh_fallback_fails_on_the_first_failing_line_too() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(&root, vec![StepPlan::shell("block", "echo one\nfalse\necho two")]);
    plan.shell = SH_SHELL.iter().map(|s| s.to_string()).collect();
    let (events, report) = run_to_end(plan).await;
    assert_eq!(output(&events, OutputStream::Stdout), "one\n");
    assert_eq!(finished(&events), [(0, StepOutcome::Failed, Some(1), None)]);
    assert_eq!(report.outcome, JobOutcome::Failed);
}

#[tokio::test]
async fn an_explicit_shell_without_e_keeps_its_semantics() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![StepPlan::shell("block", "false\necho after the failure")],
    );
    plan.shell = vec!["sh".to_owned(), "-c".to_owned()];
    let (events, report) = run_to_end(plan).await;
    assert_eq!(output(&events, OutputStream::Stdout), "after the failure\n");
    assert_eq!(finished(&events), [(0, StepOutcome::Succeeded, Some(0), None)]);
    assert_eq!(report.outcome, JobOutcome::Succeeded);
}

fn host_env() -> Vec<(String, String)> {
    vec![
        ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
        ("HOME".to_owned(), "/home/valkyrie-test".to_owned()),
    ]
}

#[tokio::test]
async fn steps_see_the_host_env_and_job_vars_and_nothing_of_the_agent() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(&root, vec![StepPlan::shell("env", "env")]);
    plan.host_env = host_env().into();
    plan.env = vec![("JOB_VAR".to_owned(), "job".to_owned())];
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    let mut names: Vec<String> = output(&events, OutputStream::Stdout)
        .lines()
        .filter_map(|l| l.split_once('=').map(|(n, _)| n.to_owned()))
        .collect();
    names.sort();
    // bash itself adds PWD, SHLVL and `_`.
    assert_eq!(
        names,
        [
            "HOME",
            "JOB_VAR",
            "PATH",
            "PWD",
            "SHLVL",
            "VALKYRIE_ENV",
            "VALKYRIE_PATH",
            "_"
        ]
    );
}

#[tokio::test]
async fn env_values_expand_earlier_variables() {
    let root = tempfile::tempdir().unwrap();
    let mut step = StepPlan::shell("show", r#"echo "$PATH|$GREETING|$COST|$EMPTY|$STEP_VAR""#);
    step.env = vec![("STEP_VAR".to_owned(), "${GREETING}-step".to_owned())];
    let mut plan = plan(&root, vec![step]);
    plan.host_env = host_env().into();
    plan.env = vec![
        ("PATH".to_owned(), "/opt/valkyrie-test/bin:$PATH".to_owned()),
        ("GREETING".to_owned(), "hi $HOME".to_owned()),
        ("COST".to_owned(), "$$5".to_owned()),
        ("EMPTY".to_owned(), "[$UNDEFINED]".to_owned()),
    ];
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{events:?}");
    assert_eq!(
        output(&events, OutputStream::Stdout),
        "/opt/valkyrie-test/bin:/usr/local/bin:/usr/bin:/bin|hi /home/valkyrie-test|$5|[]|hi /home/valkyrie-test-step\n"
    );
}

#[tokio::test]
async fn valkyrie_env_and_path_files_reach_later_steps() {
    let root = tempfile::tempdir().unwrap();
    let setup = r#"echo "GREETING=hello world" >> "$VALKYRIE_ENV"
printf 'BLOCK<<END\nline one\nline two\nEND\n' >> "$VALKYRIE_ENV"
mkdir -p tools
printf '#!/bin/sh\necho tool ran\n' > tools/valkyrie-test-tool
chmod +x tools/valkyrie-test-tool
echo "$PWD/tools" >> "$VALKYRIE_PATH""#;
    let plan = plan(
        &root,
        vec![
            StepPlan::shell("setup", setup),
            StepPlan::shell("use", r#"echo "$GREETING"; echo "$BLOCK"; valkyrie-test-tool"#),
            StepPlan::shell(
                "files are fresh per step",
                r#"cat "$VALKYRIE_ENV" "$VALKYRIE_PATH""#,
            ),
        ],
    );
    let files = files_dir(&plan.workspace);
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{events:?}");
    assert_eq!(
        output(&events, OutputStream::Stdout),
        "hello world\nline one\nline two\ntool ran\n"
    );
    assert!(!files.exists(), "the job's files are removed when it ends");
}

#[tokio::test]
async fn a_bad_valkyrie_env_line_fails_the_step_and_names_the_line() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![
            StepPlan::shell(
                "setup",
                r#"printf 'OK=1\nnot an assignment\n' >> "$VALKYRIE_ENV""#,
            ),
            StepPlan::shell("never", "echo never"),
        ],
    );
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    let system = output(&events, OutputStream::System);
    assert!(system.contains("$VALKYRIE_ENV line 2"), "{system}");
    let error = events.iter().find_map(|e| match e {
        ExecEvent::StepFinished { error, .. } => error.clone(),
        _ => None,
    });
    assert!(error.unwrap().contains("line 2"));
    assert_eq!(
        finished(&events),
        [
            (0, StepOutcome::Failed, Some(0), None),
            (1, StepOutcome::Skipped, None, None)
        ]
    );
}

#[tokio::test]
async fn a_missing_working_directory_is_named() {
    let root = tempfile::tempdir().unwrap();
    let mut step = StepPlan::shell("in sub", "pwd");
    step.working_directory = Some("sub/dir".to_owned());
    let (events, report) = run_to_end(plan(&root, vec![step])).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    let system = output(&events, OutputStream::System);
    assert!(
        system.contains("working directory `sub/dir` does not exist"),
        "{system}"
    );
    let error = events.iter().find_map(|e| match e {
        ExecEvent::StepFinished { error, .. } => error.clone(),
        _ => None,
    });
    assert_eq!(
        error.as_deref(),
        Some("could not start: working directory `sub/dir` does not exist in the job workspace; create it in an earlier step or fix the path")
    );
}

#[tokio::test]
async fn a_shell_missing_from_path_is_named_with_the_path() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(&root, vec![StepPlan::shell("x", "echo hi")]);
    plan.shell = vec!["sh".to_owned(), "-c".to_owned()];
    plan.host_env = host_env().into();
    plan.env = vec![("PATH".to_owned(), "/opt/valkyrie-nothing-here".to_owned())];
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    let system = output(&events, OutputStream::System);
    assert!(
        system.contains("program `sh` was not found on the step's PATH `/opt/valkyrie-nothing-here`"),
        "{system}"
    );
}

#[tokio::test]
async fn an_env_chain_over_the_limit_fails_the_job_before_any_step() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(&root, vec![StepPlan::shell("x", "echo never")]);
    plan.env = (1..40)
        .map(|i| (format!("V{i}"), format!("${{V{p}}}${{V{p}}}x", p = i - 1)))
        .collect();
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert_eq!(finished(&events), [(0, StepOutcome::Skipped, None, None)]);
    let error = report.error.expect("a job error");
    assert!(error.contains("job env `V"), "{error}");
    assert!(error.contains("131072 bytes"), "{error}");
}

fn argv_step(name: &str, argv: &[&str]) -> StepPlan {
    StepPlan {
        command: StepCommand::Argv(argv.iter().map(|s| (*s).to_owned()).collect()),
        ..StepPlan::shell(name, "")
    }
}

#[tokio::test]
async fn argv_steps_run_the_program_directly_with_arguments_as_given() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![argv_step("printf", &["printf", "%s|", "a b", "'c'", "$HOME"])],
    );
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded);
    assert_eq!(output(&events, OutputStream::Stdout), "a b|'c'|$HOME|");
}

#[tokio::test]
async fn an_argv_program_not_on_path_is_named() {
    let root = tempfile::tempdir().unwrap();
    let plan = plan(
        &root,
        vec![argv_step("missing", &["valkyrie-no-such-program", "x"])],
    );
    let (events, report) = run_to_end(plan).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    let system = output(&events, OutputStream::System);
    assert!(
        system.contains("program `valkyrie-no-such-program` was not found on the step's PATH"),
        "{system}"
    );
}

#[tokio::test]
async fn cancel_reaches_the_trap_of_an_argv_shell() {
    let root = tempfile::tempdir().unwrap();
    let mut plan = plan(
        &root,
        vec![argv_step(
            "trap",
            &[
                "sh",
                "-c",
                "trap 'echo got TERM; exit 0' TERM; echo ready; sleep 1000 & wait",
            ],
        )],
    );
    plan.kill_grace = Duration::from_secs(3600);
    let mut run = start(plan);
    let seen = run.events_until(|seen| saw_stdout(seen, "ready\n")).await;
    run.cancel.send(true).unwrap();
    let (events, report) = run.finish(seen).await;
    assert_eq!(output(&events, OutputStream::Stdout), "ready\ngot TERM\n");
    assert_eq!(report.outcome, JobOutcome::Cancelled);
}

/// Only processes (and the hook before the steps) see the job's
/// environment, so a job of no-op steps does not build it, nor fail on
/// it: the same `env`, which cannot expand within the limit, fails a job
/// that starts a process before its first step.
#[tokio::test]
async fn only_a_job_that_starts_a_process_builds_its_environment() {
    let root = tempfile::tempdir().unwrap();
    let doubling: Vec<(String, String)> = std::iter::once(("V0".to_owned(), "x".repeat(1024)))
        .chain((1..=8).map(|i| (format!("V{i}"), format!("${{V{}}}${{V{}}}", i - 1, i - 1))))
        .collect();
    let mut noop = plan(&root, vec![StepPlan::noop("nothing")]);
    noop.env = doubling.clone();
    let (_, report) = run_to_end(noop).await;
    assert_eq!(report.outcome, JobOutcome::Succeeded, "{:?}", report.error);

    let mut shell = plan(&root, vec![StepPlan::shell("echo", "echo hi")]);
    shell.env = doubling;
    let (events, report) = run_to_end(shell).await;
    assert_eq!(report.outcome, JobOutcome::Failed);
    assert!(
        report
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("job env `V8` is longer than")),
        "{:?}",
        report.error
    );
    assert_eq!(finished(&events), [(0, StepOutcome::Skipped, None, None)]);
}
