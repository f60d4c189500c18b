//! The core on a virtual clock: no sockets, no sleeps. Each test drives
//! [`Core`] the way its driver does (an input, then dispatch and flush; a
//! tick every 100 ms) with a clock it moves by hand, and reads what the core
//! sent to agents from in-memory sessions.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use valkyrie::message::{
    Assign, AssignAck, CancelAssignment, Event, EventBody, JobInfo, JobOutcome, JobResult, JobSpec,
    JobStarted, JobState, LogChunk, Message, OutputStream, RegisterRunner, RetryOn, RunnerRegistered,
    RunningAttempt, StepSpec,
};
use valkyrie::transport::SentMessages;
use valkyrie::{ErrorCode, SessionSender};

use super::{Command, Core, CoreConfig, Heard, Now};
use crate::auth::Tokens;
use crate::metrics::Metrics;
use crate::responder::{EventSink, Responder};
use crate::scheduler::RunnerId;

/// The driver's tick.
const TICK: Duration = Duration::from_millis(100);

struct Harness {
    core: Core,
    /// Work the core hands back to itself.
    rx: mpsc::Receiver<Command>,
    _tx: mpsc::Sender<Command>,
    now: Now,
    next_session: u64,
}

/// An agent as the core sees it: a runner id, a session and what was sent
/// on it.
struct Agent {
    id: RunnerId,
    session: u64,
    sent: SentMessages,
    heard: Heard,
}

impl Agent {
    fn messages(&mut self) -> Vec<Message> {
        self.sent.drain().into_iter().map(|i| i.message).collect()
    }

    /// The Assigns and CancelAssignments sent since the last look.
    fn dispatch(&mut self) -> (Vec<Assign>, Vec<CancelAssignment>) {
        let mut assigns = Vec::new();
        let mut cancels = Vec::new();
        for message in self.messages() {
            match message {
                Message::Assign(a) => assigns.push(*a),
                Message::CancelAssignment(c) => cancels.push(c),
                _ => {}
            }
        }
        (assigns, cancels)
    }
}

fn config() -> CoreConfig {
    CoreConfig {
        assign_lease: Duration::from_secs(5),
        runner_lost_after: Duration::from_secs(10),
        kill_grace: Duration::from_secs(10),
        ..CoreConfig::default()
    }
}

fn job(name: &str, retries: u32) -> JobSpec {
    let mut spec = JobSpec::with_steps(name, vec![StepSpec::noop()]);
    spec.retry.max_retries = retries;
    spec.retry.on = RetryOn(RetryOn::LOST.0 | RetryOn::FAILED.0);
    spec
}

impl Harness {
    fn new(config: CoreConfig) -> Self {
        let (tx, rx) = mpsc::channel(1024);
        let now = Now {
            at: Instant::now(),
            wall_ms: 1_800_000_000_000,
        };
        let tokens = Arc::new(Tokens::new("api-token".into(), "runner-token".into()));
        let core = Core::new(
            config,
            tokens,
            Arc::new(Metrics::default()),
            None,
            tx.downgrade(),
            now,
        );
        Self {
            core,
            rx,
            _tx: tx,
            now,
            next_session: 1,
        }
    }

    /// What the driver does after a batch of inputs.
    fn turn(&mut self) {
        while let Ok(command) = self.rx.try_recv() {
            self.core.handle(command, self.now);
        }
        self.core.dispatch();
        self.core.flush();
    }

    fn input(&mut self, command: Command) {
        self.core.handle(command, self.now);
        self.turn();
    }

    /// Moves the clock by `by`, ticking every 100 ms as the driver does.
    fn advance(&mut self, by: Duration) {
        let end = self.now.at + by;
        while self.now.at < end {
            let step = TICK.min(end - self.now.at);
            self.now.at += step;
            self.now.wall_ms += step.as_millis() as u64;
            self.core.on_tick(self.now);
            self.turn();
        }
    }

    /// Moves the clock by `seconds`, a second at a time, `agent`
    /// heartbeating after each (so it is never lost).
    fn pass_heartbeating(&mut self, agent: &Agent, seconds: u64) {
        for _ in 0..seconds {
            self.advance(Duration::from_secs(1));
            agent.heard.mark(self.now.at);
        }
    }

    fn register(&mut self, name: &str, slots: u32) -> Agent {
        let (agent, registered) = self.register_running(name, slots, Vec::new());
        assert!(registered.stale.is_empty());
        agent
    }

    /// Registers (again) an agent that says it runs `running`.
    fn register_running(
        &mut self,
        name: &str,
        slots: u32,
        running: Vec<RunningAttempt>,
    ) -> (Agent, RunnerRegistered) {
        let (sender, mut sent) = SessionSender::in_memory();
        let heard = Heard::new(self.now.at);
        let session = self.next_session;
        self.next_session += 1;
        let (done, mut done_rx) = oneshot::channel();
        self.input(Command::Register {
            msg: RegisterRunner {
                name: name.into(),
                tags: Vec::new(),
                os: "linux".into(),
                arch: "x86_64".into(),
                slots,
                version: "test".into(),
                running,
            },
            sender,
            session,
            heard: heard.clone(),
            correlation: 1,
            token: "runner-token".into(),
            done,
        });
        let id = done_rx
            .try_recv()
            .expect("registration answered in the same turn")
            .expect("registered");
        let registered = match sent.try_next().map(|i| i.message) {
            Some(Message::RunnerRegistered(r)) => r,
            other => panic!("expected RunnerRegistered first, got {other:?}"),
        };
        let agent = Agent {
            id,
            session,
            sent,
            heard,
        };
        (agent, registered)
    }

    /// A message from the agent: its session marks it heard, then hands
    /// it to the core.
    fn report(&mut self, agent: &Agent, correlation: u64, message: impl Into<Message>) {
        agent.heard.mark(self.now.at);
        self.input(Command::FromRunner {
            runner: agent.id,
            session: agent.session,
            correlation,
            message: message.into(),
        });
    }

    /// Acknowledges and starts `assign` as its agent would.
    fn start(&mut self, agent: &mut Agent, assign: &Assign) {
        let (job_id, attempt) = (assign.job_id, assign.attempt);
        self.report(
            agent,
            10,
            AssignAck {
                job_id,
                attempt,
                accepted: true,
                reason: String::new(),
            },
        );
        self.report(agent, 11, JobStarted { job_id, attempt });
        agent.messages(); // the two Acks
    }

    fn submit(&mut self, spec: JobSpec) -> u64 {
        let (reply, mut rx) = Responder::channel();
        self.input(Command::Submit(spec, reply));
        match rx.try_recv() {
            Ok(Message::JobAccepted(accepted)) => accepted.job_id,
            other => panic!("Submit answered with {other:?}"),
        }
    }

    /// Submits `spec` and returns its id and the one Assign `agent` got
    /// for it.
    fn submit_to(&mut self, agent: &mut Agent, spec: JobSpec) -> (u64, Assign) {
        let id = self.submit(spec);
        let (mut assigns, _) = agent.dispatch();
        assert_eq!(assigns.len(), 1, "one assignment: {assigns:?}");
        (id, assigns.remove(0))
    }

    fn job(&mut self, job_id: u64) -> JobInfo {
        let (reply, mut rx) = Responder::channel();
        self.input(Command::GetJob(job_id, reply));
        match rx.try_recv() {
            Ok(Message::JobDetails(details)) => details.job,
            other => panic!("GetJob answered with {other:?}"),
        }
    }
}

#[tokio::test]
async fn an_unacknowledged_assignment_goes_back_to_the_queue_when_its_lease_runs_out() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let (id, assign) = h.submit_to(&mut a, job("build", 0));
    assert_eq!((assign.job_id, assign.attempt, assign.lease_ms), (id, 1, 5_000));

    // Just inside the lease nothing changes.
    h.advance(Duration::from_millis(4_900));
    assert_eq!(h.job(id).state, JobState::Assigned);
    assert_eq!(a.dispatch(), (vec![], vec![]));

    // Past it, the hand-off failed: the job is handed out again, as a new
    // attempt, without spending the retry budget it does not have.
    h.advance(Duration::from_millis(200));
    h.advance(Duration::from_secs(1)); // the hand-off back-off
    let (assigns, _) = a.dispatch();
    assert_eq!(
        assigns.iter().map(|a| (a.job_id, a.attempt)).collect::<Vec<_>>(),
        [(id, 2)]
    );
    let info = h.job(id);
    assert_eq!((info.state, info.attempt), (JobState::Assigned, 2));
}

#[tokio::test]
async fn leases_and_deadlines_set_long_after_the_last_look_still_run_out() {
    // The core looks for due jobs only once the first can be due: with
    // nothing on any runner for a while, a lease set now must still be
    // enforced when it runs out, and so must a cancel's deadline.
    let mut h = Harness::new(config());
    let mut a = h.register("a", 2);
    h.pass_heartbeating(&a, 30);
    let leased = h.submit(job("never-acked", 0));
    let (assigns, _) = a.dispatch();
    assert_eq!(assigns.iter().map(|a| a.job_id).collect::<Vec<_>>(), [leased]);
    h.advance(Duration::from_millis(4_900));
    a.heard.mark(h.now.at);
    assert_eq!(h.job(leased).state, JobState::Assigned);
    h.advance(Duration::from_millis(200));
    a.heard.mark(h.now.at);
    // The hand-off failed: the job went back to the queue and out again.
    let info = h.job(leased);
    assert_eq!(info.attempt, 2, "{info:?}");
    assert!(info.reason.contains("did not acknowledge"), "{info:?}");

    // A second job starts and is cancelled, and the agent never confirms.
    h.pass_heartbeating(&a, 20);
    let started = h.submit(job("cancelled", 3));
    let (assigns, _) = a.dispatch();
    let assign = assigns.iter().find(|a| a.job_id == started).expect("assigned");
    h.start(&mut a, assign);
    h.pass_heartbeating(&a, 20);
    let (reply, _rx) = Responder::channel();
    h.input(Command::Cancel(started, reply));
    let mut waited = Duration::ZERO;
    while h.job(started).state == JobState::Running {
        assert!(waited < Duration::from_secs(60), "still running after {waited:?}");
        h.pass_heartbeating(&a, 1);
        waited += Duration::from_secs(1);
    }
    assert_eq!(h.job(started).state, JobState::Cancelled);
    // kill grace (10 s) and the margin (5 s), to the tick.
    assert_eq!(waited, Duration::from_secs(15));
}

#[tokio::test]
async fn a_runner_silent_past_runner_lost_after_is_lost_and_its_job_retried_elsewhere() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let id = h.submit(job("build", 1));
    let (assigns, _) = a.dispatch();
    h.start(&mut a, &assigns[0]);
    let mut b = h.register("b", 1);
    assert_eq!(h.job(id).state, JobState::Running);

    // The session marks what it hears (heartbeats never reach the core).
    // `b` heartbeats every second throughout; `a` once, at 9 s: it is still
    // alive at 10 s.
    let (a_heard, b_heard) = (a.heard.clone(), b.heard.clone());
    let beat = |h: &mut Harness, a_too: bool, seconds: u64| {
        for _ in 0..seconds {
            h.advance(Duration::from_secs(1));
            b_heard.mark(h.now.at);
            if a_too {
                a_heard.mark(h.now.at);
            }
        }
    };
    beat(&mut h, false, 8);
    beat(&mut h, true, 1);
    beat(&mut h, false, 1);
    assert_eq!(h.job(id).state, JobState::Running);

    // Silent from then on: lost 10 s after its last mark (at 19 s), and the
    // job's attempt 2 goes to `b`.
    beat(&mut h, false, 8);
    h.advance(Duration::from_millis(900));
    b.heard.mark(h.now.at);
    assert_eq!(h.job(id).state, JobState::Running, "not before 10 s of silence");
    assert_eq!(b.dispatch(), (vec![], vec![]));
    beat(&mut h, false, 1);
    let (assigns, _) = b.dispatch();
    assert_eq!(
        assigns.iter().map(|a| (a.job_id, a.attempt)).collect::<Vec<_>>(),
        [(id, 2)],
        "{:?}",
        h.job(id)
    );
}

#[tokio::test]
async fn a_job_past_its_timeout_is_ended_by_the_server_when_the_agent_stays_silent() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let mut spec = job("slow", 0);
    spec.timeout_ms = 2_000;
    let id = h.submit(spec);
    let (assigns, _) = a.dispatch();
    h.start(&mut a, &assigns[0]);

    // The agent enforces the timeout itself; the server gives it the
    // timeout plus the kill grace plus a margin before it steps in. The
    // agent keeps heartbeating (the runner is not lost), but never reports.
    let mut waited = Duration::ZERO;
    while h.job(id).state == JobState::Running {
        assert!(waited < Duration::from_secs(60), "still running after {waited:?}");
        h.pass_heartbeating(&a, 1);
        waited += Duration::from_secs(1);
    }
    let info = h.job(id);
    assert_eq!(info.state, JobState::TimedOut, "{info:?}");
    assert!(waited >= Duration::from_secs(2), "ended after {waited:?}");
    let (_, cancels) = a.dispatch();
    assert_eq!(
        cancels.iter().map(|c| (c.job_id, c.attempt)).collect::<Vec<_>>(),
        [(id, 1)]
    );
}

#[tokio::test]
async fn a_cancel_reaches_the_runner_and_is_forced_when_the_agent_never_confirms() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let id = h.submit(job("build", 3));
    let (assigns, _) = a.dispatch();
    h.start(&mut a, &assigns[0]);

    let (reply, mut rx) = Responder::channel();
    h.input(Command::Cancel(id, reply));
    assert!(matches!(rx.try_recv(), Ok(Message::Ack(_))));
    let (_, cancels) = a.dispatch();
    assert_eq!(
        cancels.iter().map(|c| (c.job_id, c.attempt)).collect::<Vec<_>>(),
        [(id, 1)]
    );
    // Until the agent answers, the job is still on its runner...
    h.advance(Duration::from_secs(5));
    a.heard.mark(h.now.at);
    assert_eq!(h.job(id).state, JobState::Running);
    // ...and after the kill grace and a margin, the server ends it
    // cancelled, not retried despite its retry budget.
    h.advance(Duration::from_secs(5));
    a.heard.mark(h.now.at);
    h.advance(Duration::from_secs(6));
    assert_eq!(h.job(id).state, JobState::Cancelled);
    assert_eq!(a.dispatch().0, vec![], "a cancelled job is not handed out again");
}

#[tokio::test]
async fn a_result_from_a_replaced_attempt_is_refused_and_the_current_one_counts() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let id = h.submit(job("build", 0));
    let (first, _) = a.dispatch();
    // `a` never acknowledges attempt 1; after the lease it gets attempt 2.
    h.advance(Duration::from_millis(5_100));
    h.advance(Duration::from_secs(1));
    let (second, _) = a.dispatch();
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].attempt, 2);
    h.start(&mut a, &second[0]);

    let result = |attempt, outcome| JobResult {
        job_id: id,
        attempt,
        outcome,
        exit_code: Some(0),
        duration_ms: 5,
        message: String::new(),
        log_chunks: 0,
        steps: Vec::new(),
    };
    // A late report of attempt 1 is refused with STALE_ATTEMPT...
    h.report(&a, 20, result(first[0].attempt, JobOutcome::Failed));
    match a.messages().as_slice() {
        [Message::RequestFailed(f)] => assert_eq!(f.code, ErrorCode::STALE_ATTEMPT),
        other => panic!("expected STALE_ATTEMPT, got {other:?}"),
    }
    assert_eq!(h.job(id).state, JobState::Running);
    // ...and attempt 2's result is the job's.
    h.report(&a, 21, result(2, JobOutcome::Succeeded));
    assert!(matches!(a.messages().as_slice(), [Message::Ack(_)]));
    let info = h.job(id);
    assert_eq!((info.state, info.attempt), (JobState::Succeeded, 2));
}

/// What a subscriber to every job was sent: job ids with the state of a
/// State event, or `None` for a log event.
fn seen(events: &mut mpsc::Receiver<Event>) -> Vec<(u64, Option<JobState>)> {
    let mut seen = Vec::new();
    while let Ok(event) = events.try_recv() {
        match event.body {
            EventBody::State { state, .. } => seen.push((event.job_id, Some(state))),
            EventBody::Log { .. } => seen.push((event.job_id, None)),
            other => panic!("unexpected event {other:?}"),
        }
    }
    seen
}

/// State changes of one job within one turn of the core reach a
/// subscriber as one event, the state at the end of the turn; a log event
/// is preceded by its job's pending state, and the final state is always
/// sent.
#[tokio::test]
async fn state_changes_within_one_turn_reach_a_subscriber_as_one_event() {
    let mut h = Harness::new(config());
    let (tx, mut events) = mpsc::channel(64);
    h.input(Command::Subscribe {
        job: None,
        logs: true,
        replay: false,
        sink: EventSink::Channel(tx),
        resume_from: None,
    });
    let mut a = h.register("a", 2);
    // Queued and assigned in the turn of its submission.
    let quick = h.submit(job("quick", 0));
    let chatty = h.submit(job("chatty", 0));
    assert_eq!(
        seen(&mut events),
        [
            (quick, Some(JobState::Assigned)),
            (chatty, Some(JobState::Assigned))
        ]
    );
    let (assigns, _) = a.dispatch();
    assert_eq!(assigns.len(), 2);
    let result = |job_id, log_chunks| JobResult {
        job_id,
        attempt: 1,
        outcome: JobOutcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 1,
        message: String::new(),
        log_chunks,
        steps: Vec::new(),
    };
    let ack = |job_id| AssignAck {
        job_id,
        attempt: 1,
        accepted: true,
        reason: String::new(),
    };
    let chunk = LogChunk {
        job_id: chatty,
        attempt: 1,
        seq: 0,
        stream: OutputStream::Stdout,
        data: "hi\n".into(),
    };
    // One batch of the agent's reports, handled in one turn.
    let reports: Vec<(u64, Message)> = vec![
        (0, ack(quick).into()),
        (30, result(quick, 0).into()),
        (0, ack(chatty).into()),
        (0, chunk.into()),
        (31, result(chatty, 1).into()),
    ];
    for (correlation, message) in reports {
        h.core.handle(
            Command::FromRunner {
                runner: a.id,
                session: a.session,
                correlation,
                message,
            },
            h.now,
        );
    }
    h.turn();
    assert_eq!(
        seen(&mut events),
        [
            (chatty, Some(JobState::Running)),
            (chatty, None),
            (quick, Some(JobState::Succeeded)),
            (chatty, Some(JobState::Succeeded)),
        ]
    );
}

#[tokio::test]
async fn a_runner_that_disconnects_is_lost_after_the_grace_unless_it_comes_back() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let id = h.submit(job("build", 0));
    let (assigns, _) = a.dispatch();
    h.start(&mut a, &assigns[0]);

    h.input(Command::RunnerDisconnected {
        runner: a.id,
        session: a.session,
    });
    h.advance(Duration::from_secs(9));
    assert_eq!(
        h.job(id).state,
        JobState::Running,
        "the agent may still come back"
    );

    // It comes back on a new session, re-reporting the attempt it runs:
    // the job stays where it is.
    let (back, registered) = h.register_running(
        "a",
        1,
        vec![RunningAttempt {
            job_id: id,
            attempt: 1,
        }],
    );
    assert_eq!(back.id, a.id);
    assert!(registered.stale.is_empty(), "{registered:?}");
    h.advance(Duration::from_secs(5));
    assert_eq!(h.job(id).state, JobState::Running);
}

#[tokio::test]
async fn a_runner_gone_longer_than_the_retention_is_removed_when_it_is_due() {
    // Runners are looked through for removal only once the first can be
    // due: a runner that heartbeats for a long while and then goes away is
    // still removed once the retention has passed since it was last heard.
    let mut h = Harness::new(CoreConfig {
        runner_retention: Duration::from_secs(60),
        ..config()
    });
    let a = h.register("a", 1);
    let names = |h: &mut Harness| -> Vec<String> {
        let (reply, mut rx) = Responder::channel();
        h.input(Command::ListRunners(reply));
        match rx.try_recv() {
            Ok(Message::RunnerList(list)) => list.runners.into_iter().map(|r| r.name).collect(),
            other => panic!("{other:?}"),
        }
    };
    h.pass_heartbeating(&a, 100);
    let last_heard = h.now.at;
    h.input(Command::RunnerDisconnected {
        runner: a.id,
        session: a.session,
    });
    h.advance(Duration::from_millis(59_900));
    assert_eq!(names(&mut h), ["a"], "kept for the retention");
    h.advance(Duration::from_millis(100));
    assert_eq!(h.now.at - last_heard, Duration::from_secs(60));
    assert!(names(&mut h).is_empty(), "removed once the retention passed");
}

/// Answers a command the way the REST adapter and the sessions do.
fn ask<T>(h: &mut Harness, command: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
    let (tx, mut rx) = oneshot::channel();
    h.input(command(tx));
    rx.try_recv().expect("the core answers in the same turn")
}

#[test]
fn a_schedule_slot_is_claimed_once_even_across_a_restart() {
    use super::ProjectCommand;
    use crate::source::{Project, Schedule};

    let mut h = Harness::new(config());
    let project = Project::new(
        "app".into(),
        "git://127.0.0.1/app".into(),
        String::new(),
        String::new(),
        String::new(),
        String::new(),
    );
    ask(&mut h, |tx| {
        Command::Project(ProjectCommand::Create(Box::new(project), tx))
    })
    .unwrap();
    let every_10s = Schedule {
        id: 0,
        cron: "*/10 * * * * *".into(),
        branch: String::new(),
        variables: vec![("SUITE".into(), "nightly".into())],
        created_at_ms: 0,
        last_slot_ms: 0,
    };
    let added = ask(&mut h, |tx| {
        Command::Project(ProjectCommand::AddSchedule("app".into(), Box::new(every_10s), tx))
    })
    .unwrap();
    assert_eq!(
        (added.id, added.branch.as_str()),
        (1, "main"),
        "the project's branch by default"
    );
    let claim = |h: &mut Harness| ask(h, |tx| Command::Project(ProjectCommand::ClaimDue(tx)));
    assert!(claim(&mut h).is_empty(), "no slot since it was added");

    h.advance(Duration::from_secs(10));
    let due = claim(&mut h);
    assert_eq!(due.len(), 1, "{due:?}");
    let slot = due[0].slot_ms;
    assert_eq!(slot % 10_000, 0, "a slot of the expression");
    assert!(slot > added.created_at_ms && slot <= h.now.wall_ms);
    assert_eq!(
        due[0].schedule.variables,
        [("SUITE".to_owned(), "nightly".to_owned())]
    );
    assert!(claim(&mut h).is_empty(), "claimed once");

    // What was stored is what a restarted core recovers: the slot stays claimed.
    let stored = ask(&mut h, |tx| {
        Command::Project(ProjectCommand::Get("app".into(), tx))
    })
    .unwrap();
    assert_eq!(stored.schedules[0].last_slot_ms, slot);
    let mut again = Harness::new(config());
    again.now = h.now;
    again.core.projects.recover(vec![stored], Vec::new());
    assert!(claim(&mut again).is_empty(), "not fired again after a restart");
    again.advance(Duration::from_secs(10));
    let next = claim(&mut again);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].slot_ms, slot + 10_000);

    // A second schedule gets a new id; removing one leaves the other.
    let hourly = Schedule {
        cron: "0 * * * *".into(),
        ..added.clone()
    };
    let second = ask(&mut again, |tx| {
        Command::Project(ProjectCommand::AddSchedule("app".into(), Box::new(hourly), tx))
    })
    .unwrap();
    assert_eq!(second.id, 2, "ids continue after the recovered ones");
    assert!(ask(&mut again, |tx| Command::Project(
        ProjectCommand::RemoveSchedule(1, tx)
    )));
    assert!(!ask(&mut again, |tx| Command::Project(
        ProjectCommand::RemoveSchedule(1, tx)
    )));
    let left = ask(&mut again, |tx| {
        Command::Project(ProjectCommand::Schedules(String::new(), tx))
    });
    assert_eq!(left.iter().map(|(_, s)| s.id).collect::<Vec<_>>(), [2]);
}

#[tokio::test]
async fn a_project_run_is_announced_when_it_starts_ends_is_played_and_rerun() {
    use crate::core::{ProjectCommand, RunCommand, ValidatedPipeline};
    use crate::source::notifier::RunNotices;
    use crate::source::status::{StatusConfig, StatusForge};
    use crate::source::{Project, Trigger};
    use valkyrie::message::RunState;

    let notices = RunNotices::unstarted();
    let mut h = Harness::new(CoreConfig {
        run_notices: Some(notices.clone()),
        ..config()
    });
    let states = |notices: &RunNotices| {
        notices
            .take_all()
            .into_iter()
            .map(|n| (n.run.run_id, n.run.state))
            .collect::<Vec<_>>()
    };
    let project = |name: &str, status: bool| Project {
        name: name.into(),
        repo: "https://github.com/o/app.git".into(),
        branch: "main".into(),
        file: ".valkyrie.yml".into(),
        webhook_secret: "s".into(),
        token: "t".into(),
        created_at_ms: 0,
        schedules: Vec::new(),
        status: status.then(|| StatusConfig {
            forge: StatusForge::Github,
            api_url: "https://api.github.com".into(),
            repository: "o/app".into(),
            token: String::new(),
        }),
        notify: None,
    };
    for (name, status) in [("app", true), ("quiet", false)] {
        let (reply, _rx) = oneshot::channel();
        h.input(Command::Project(ProjectCommand::Create(
            Box::new(project(name, status)),
            reply,
        )));
    }
    let yaml = "name: ci\njobs:\n  build:\n    checkout: false\n    steps: [make]\n  deploy:\n    checkout: false\n    needs: [build]\n    when: manual\n    steps: [deploy]\n";
    let start = |h: &mut Harness, project: &str| {
        let (reply, mut rx) = oneshot::channel();
        h.input(Command::Project(ProjectCommand::Start {
            trigger: Box::new(Trigger {
                project: project.into(),
                event: "push".into(),
                git_ref: "refs/heads/main".into(),
                sha: "a".repeat(40),
                branch: "main".into(),
                ..Trigger::default()
            }),
            pipeline: Box::new(ValidatedPipeline::parse_now(".valkyrie.yml", yaml)),
            reply,
        }));
        rx.try_recv().unwrap().unwrap().run_id
    };
    let mut agent = h.register("a", 1);
    let finish = |h: &mut Harness, agent: &mut Agent| {
        let (assigns, _) = agent.dispatch();
        assert_eq!(assigns.len(), 1, "{assigns:?}");
        h.start(agent, &assigns[0]);
        h.report(agent, 20, succeeded(assigns[0].job_id, assigns[0].attempt));
    };

    // A run of a project without status settings is not announced.
    let quiet = start(&mut h, "quiet");
    finish(&mut h, &mut agent);
    assert_eq!(states(&notices), []);

    let run = start(&mut h, "app");
    assert_eq!(states(&notices), [(run, RunState::Running)]);
    finish(&mut h, &mut agent);
    // It ends with its manual job unplayed.
    assert_eq!(states(&notices), [(run, RunState::Succeeded)]);

    // Played, it runs again: announced again, then its new end.
    let (reply, _rx) = Responder::channel();
    h.input(Command::Run(RunCommand::Play {
        run_id: run,
        job: "deploy".into(),
        reply,
    }));
    assert_eq!(states(&notices), [(run, RunState::Running)]);
    finish(&mut h, &mut agent);
    assert_eq!(states(&notices), [(run, RunState::Succeeded)]);

    // A rerun is a new run of the same commit.
    let (reply, mut rx) = Responder::channel();
    h.input(Command::Run(RunCommand::Rerun {
        run_id: run,
        failed_only: false,
        reply,
    }));
    let rerun = match rx.try_recv() {
        Ok(Message::RunAccepted(accepted)) => accepted.run_id,
        other => panic!("Rerun answered with {other:?}"),
    };
    assert!(rerun > run && rerun != quiet);
    let announced = notices.take_all();
    assert_eq!(announced.len(), 1);
    assert_eq!(
        (announced[0].run.run_id, announced[0].run.state),
        (rerun, RunState::Running)
    );
    assert_eq!(announced[0].trigger.sha, "a".repeat(40));
}

/// A store whose commits succeed, or fail once told to.
struct ScriptedStore {
    fail: Arc<std::sync::atomic::AtomicBool>,
}

impl crate::store::Store for ScriptedStore {
    fn load(&mut self) -> Result<crate::store::Loaded, crate::store::StoreError> {
        Ok(Default::default())
    }

    fn commit(&mut self, _: &[crate::store::Change]) -> Result<(), crate::store::StoreError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(crate::store::StoreError::Deposed {
                epoch: 7,
                detail: "another server leads".into(),
            });
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_reply_waits_for_the_store_to_report_its_commit_and_a_failed_commit_sends_nothing() {
    use crate::store::{Completion, StoreHandle};

    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let store = StoreHandle::spawn(
        Box::new(ScriptedStore { fail: fail.clone() }),
        Arc::new(Metrics::default()),
    );
    let mut completions = store.take_completions().expect("the first taker gets them");
    assert!(store.take_completions().is_none(), "one driver only");
    let mut h = Harness::new(config());
    h.core.store = Some(store);

    let (reply, mut accepted) = Responder::channel();
    h.input(Command::Submit(job("build", 0), reply));
    assert!(
        accepted.try_recv().is_err(),
        "not acknowledged before it is durable"
    );
    let done = within_deadline(completions.recv()).await;
    let Some(Completion::Committed(batch)) = done else {
        panic!("{done:?}")
    };
    h.core.committed(batch, h.now);
    assert!(matches!(accepted.try_recv(), Ok(Message::JobAccepted(_))));

    // A read-only request while nothing is in flight is answered at once.
    let (reply, mut listed) = Responder::channel();
    h.input(Command::ListJobs(10, reply));
    assert!(matches!(listed.try_recv(), Ok(Message::JobList(_))));

    // The store fails: the thread reports it and stops; what waited for
    // that batch is never sent.
    fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let (reply, mut refused) = Responder::channel();
    h.input(Command::Submit(job("lost", 0), reply));
    let done = within_deadline(completions.recv()).await;
    assert!(
        matches!(
            done,
            Some(Completion::Failed(crate::store::StoreError::Deposed {
                epoch: 7,
                ..
            }))
        ),
        "{done:?}"
    );
    assert!(
        within_deadline(completions.recv()).await.is_none(),
        "the store thread stopped"
    );
    assert!(refused.try_recv().is_err());
}

/// `fut`, or a panic after 10 s (a test waits for an event, never a fixed time).
async fn within_deadline<F: std::future::Future>(fut: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("the store thread answers within 10 s")
}

#[tokio::test]
async fn an_assignment_whose_lease_ran_out_before_its_commit_is_never_sent() {
    use crate::store::StoreHandle;

    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let store = StoreHandle::spawn(
        Box::new(ScriptedStore {
            fail: Arc::new(std::sync::atomic::AtomicBool::new(false)),
        }),
        Arc::new(Metrics::default()),
    );
    let mut completions = store.take_completions().unwrap();
    h.core.store = Some(store);

    let (reply, _accepted) = Responder::channel();
    h.input(Command::Submit(job("build", 3), reply));
    assert!(a.dispatch().0.is_empty(), "the assignment waits for its commit");
    // The commit is slow: the lease runs out first, and the job is planned
    // again as attempt 2.
    h.advance(Duration::from_secs(6));
    let last = h.core.last_batch;
    wait_for_commit(&mut completions, last).await;
    h.core.committed(last, h.now);
    let (assigns, _) = a.dispatch();
    let attempts: Vec<u32> = assigns.iter().map(|a| a.attempt).collect();
    assert!(
        !attempts.contains(&1),
        "attempt 1 must not reach the agent: {attempts:?}"
    );
    for assign in &assigns {
        let info = h.job(assign.job_id);
        assert_eq!(info.attempt, assign.attempt, "only the current attempt is sent");
    }
}

/// A store that keeps every job row it commits.
struct RecordingStore(Arc<std::sync::Mutex<Vec<crate::job::JobRecord>>>);

impl crate::store::Store for RecordingStore {
    fn load(&mut self) -> Result<crate::store::Loaded, crate::store::StoreError> {
        Ok(Default::default())
    }

    fn commit(&mut self, changes: &[crate::store::Change]) -> Result<(), crate::store::StoreError> {
        let mut rows = self.0.lock().unwrap();
        for change in changes {
            if let crate::store::Change::Job(job) = change {
                rows.push((**job).clone());
            }
        }
        Ok(())
    }
}

#[tokio::test]
async fn an_accepted_assignment_is_stored_with_the_jobs_next_change() {
    use crate::store::StoreHandle;

    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    let (id, assign) = h.submit_to(&mut a, job("build", 0));
    let rows = Arc::new(std::sync::Mutex::new(Vec::new()));
    let store = StoreHandle::spawn(
        Box::new(RecordingStore(rows.clone())),
        Arc::new(Metrics::default()),
    );
    let mut completions = store.take_completions().unwrap();
    h.core.store = Some(store);

    let batches = h.core.last_batch;
    h.report(
        &a,
        0,
        AssignAck {
            job_id: id,
            attempt: assign.attempt,
            accepted: true,
            reason: String::new(),
        },
    );
    assert_eq!(
        h.job(id).state,
        JobState::Running,
        "running at once, for readers and subscribers"
    );
    assert_eq!(h.core.last_batch, batches, "no write of its own");

    h.report(&a, 30, succeeded(id, assign.attempt));
    let last = h.core.last_batch;
    assert!(last > batches, "the result is written");
    wait_for_commit(&mut completions, last).await;
    let rows = rows.lock().unwrap();
    let states: Vec<JobState> = rows.iter().map(|r| r.state()).collect();
    assert_eq!(states, [JobState::Succeeded], "one row, the job's end");
    // That row carries what the acceptance changed.
    assert_eq!(rows[0].started_attempts, 1);
    assert!(rows[0].started_at_ms.is_some());
}

/// Waits until the store reports batch `last` committed.
async fn wait_for_commit(
    completions: &mut tokio::sync::mpsc::UnboundedReceiver<crate::store::Completion>,
    last: u64,
) {
    loop {
        match within_deadline(completions.recv()).await {
            Some(crate::store::Completion::Committed(batch)) if batch >= last => return,
            Some(crate::store::Completion::Committed(_)) => {}
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_core_without_a_store_keeps_nothing_to_write() {
    let mut h = Harness::new(config());
    let mut a = h.register("a", 1);
    for _ in 0..3 {
        let (id, assign) = h.submit_to(&mut a, job("build", 0));
        h.start(&mut a, &assign);
        h.report(&a, 30, succeeded(id, assign.attempt));
        assert_eq!(h.job(id).state, JobState::Succeeded);
    }
    // Each turn's changes are dropped at its end: nothing grows with the
    // number of jobs.
    assert!(h.core.dirty_jobs.is_empty() && h.core.dirty_runs.is_empty() && !h.core.counters_dirty);
    assert!(h.core.changes.is_empty());
}

/// A succeeded attempt's result, with no log and no step reports.
fn succeeded(job_id: u64, attempt: u32) -> JobResult {
    JobResult {
        job_id,
        attempt,
        outcome: JobOutcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 5,
        message: String::new(),
        log_chunks: 0,
        steps: Vec::new(),
    }
}
