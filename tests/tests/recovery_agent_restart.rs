//! An agent killed with SIGKILL leaves its jobs running under their
//! supervisors. The next agent on the same work directory re-attaches the
//! jobs the server still counts as running on it (they end once, with
//! their whole output and their exit status), and kills and removes the
//! others.

mod support;

use std::time::Instant;

use support::{sh_path, text, wait_file, wait_final, wait_until, Harness};
use valkyrie_sdk::{JobSpec, JobState};

fn alive(pid: i32) -> bool {
    // A zombie is dead for this purpose; /proc says which.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_reattaches_a_running_shell_job_which_ends_once_with_its_output() {
    let h = Harness::new();
    // Long enough that the server keeps the job while the agent restarts.
    let server = h.server().flag("--runner-lost-after", "60s").start();
    let client = server.client().await;
    let mut agent = h.agent(&server).name("phoenix").start(&client).await;

    let (counter, started, go) = (
        h.path().join("runs"),
        h.path().join("started"),
        h.path().join("go"),
    );
    let first = format!(
        "echo run >> {counter}; echo before; touch {started}; \
         while [ ! -e {go} ]; do sleep 0.05; done; echo after; exit 0",
        counter = sh_path(&counter),
        started = sh_path(&started),
        go = sh_path(&go),
    );
    let mut spec = JobSpec::with_steps(
        "reattached",
        vec![
            valkyrie::message::StepSpec::shell(first),
            valkyrie::message::StepSpec::shell("echo \"second step sees $STEP_ONE_DONE\""),
        ],
    );
    spec.env = vec![("STEP_ONE_DONE".into(), "the job env".into())];
    let id = client.submit(spec).await.expect("submit");
    wait_file(&started).await;

    let killed = Instant::now();
    agent.process.kill_now();
    // kill -9 gives the agent no chance; its job runs on, supervised.
    let work_dir = std::fs::canonicalize(h.path().join("work-phoenix")).unwrap();
    assert!(work_dir.join(format!("job-{id}-1.supervisor")).is_dir());

    let restarted = h.agent(&server).name("phoenix").start(&client).await;
    let reattached_after = killed.elapsed();
    std::fs::write(&go, "").unwrap();
    let job = wait_final(&client, id).await;
    eprintln!("re-attach: agent restarted and registered {reattached_after:?} after kill -9");
    assert_eq!(
        (job.state, job.attempt, job.exit_code),
        (JobState::Succeeded, 1, Some(0)),
        "{job:?}\nagent log:\n{}",
        restarted.process.log()
    );
    assert_eq!(
        std::fs::read_to_string(&counter).unwrap(),
        "run\n",
        "the step ran once"
    );
    let out = server.vk(&["logs", &id.to_string()]).await;
    assert!(out.status.success(), "vk logs: {}", text(&out.stderr));
    let log = text(&out.stdout);
    for line in ["before\n", "after\n", "second step sees the job env\n"] {
        assert_eq!(log.matches(line).count(), 1, "`{line}` once in:\n{log}");
    }
    assert!(log.find("before").unwrap() < log.find("after").unwrap(), "{log}");
    let agent_log = restarted.process.log();
    assert!(agent_log.contains("re-attaching a job"), "{agent_log}");
    // The attempt is over: nothing of it is left in the work directory.
    wait_until("the job's directories to be removed", || async {
        let left: Vec<_> = std::fs::read_dir(&work_dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("job-"))
            .map(|e| e.file_name())
            .collect();
        left.is_empty().then_some(())
    })
    .await;
}

/// A job cancelled while its agent was down is no longer the agent's: the
/// restarted agent kills its processes (also one that left the job's
/// process group) and removes its workspace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_kills_a_job_the_server_gave_up_on_and_removes_its_workspace() {
    let h = Harness::new();
    let pid_file = h.path().join("sleep.pid");
    let server = h.server().flag("--runner-lost-after", "60s").start();
    let client = server.client().await;
    let mut agent = h.agent(&server).name("phoenix").start(&client).await;

    // The step's process group: the shell, and a `sleep` it waits for; a
    // second `sleep` leaves the group with setsid.
    let line = format!(
        "sleep 600 & echo $! > {pids}.tmp; setsid sleep 600 & echo $! >> {pids}.tmp; mv {pids}.tmp {pids}; wait",
        pids = sh_path(&pid_file)
    );
    let id = client
        .submit(JobSpec::shell("sleeper", line))
        .await
        .expect("submit");
    let pids_written = tokio::time::timeout(std::time::Duration::from_secs(20), wait_file(&pid_file)).await;
    if pids_written.is_err() {
        let job = client.job(id).await;
        panic!(
            "the job never wrote its pids: {job:?}\nagent log:\n{}",
            agent.process.log()
        );
    }
    let pids: Vec<i32> = std::fs::read_to_string(&pid_file)
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    let work_dir = h.path().join("work-phoenix");
    let workspace = std::fs::canonicalize(&work_dir)
        .unwrap()
        .join(format!("job-{id}-1"));
    assert!(workspace.is_dir(), "{}", workspace.display());

    agent.process.kill_now();
    // kill -9 gives the agent no chance: its job's processes live on.
    assert!(
        pids.iter().all(|&p| alive(p)),
        "the job's processes outlive a killed agent"
    );
    // While the agent is down, the job is cancelled: the server gives it up.
    client.cancel(id).await.expect("cancel");
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");

    let mut restarted = h.agent(&server).name("phoenix").start(&client).await;
    wait_until("the given-up job's processes to be killed", || async {
        pids.iter().all(|&p| !alive(p)).then_some(())
    })
    .await;
    wait_until("the given-up job's workspace to be removed", || async {
        (!workspace.exists()).then_some(())
    })
    .await;
    let log = restarted.process.log();
    assert!(
        log.contains("killed an attempt the server no longer counts"),
        "{log}"
    );
    let job = client.job(id).await.expect("job");
    assert_eq!(job.state, JobState::Cancelled, "it stays cancelled: {job:?}");

    // A second agent on the same work directory is refused, clearly.
    let mut second = h.agent(&server).name("phoenix").spawn();
    let status = second.process.exited().await;
    assert!(!status.success());
    let log = second.process.log();
    assert!(
        log.contains("another valkyrie-agent uses the work directory"),
        "{log}"
    );
    assert!(
        restarted.process.try_wait().is_none(),
        "the first agent keeps running"
    );
}

/// What an earlier agent left without a supervisor (no journal to
/// re-attach) is killed and removed before the agent takes jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_left_without_a_supervisor_is_removed() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let work_dir = h.path().join("work-phoenix");
    std::fs::create_dir_all(work_dir.join("job-7-1")).unwrap();
    std::fs::create_dir_all(work_dir.join("job-7-1.supervisor")).unwrap();
    let _agent = h.agent(&server).name("phoenix").start(&client).await;
    assert!(!work_dir.join("job-7-1").exists());
    assert!(!work_dir.join("job-7-1.supervisor").exists());
}
