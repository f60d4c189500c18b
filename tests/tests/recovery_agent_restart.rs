//! An agent killed with SIGKILL leaves its job's processes running and its
//! workspace on disk; the next agent on the same work directory ends them
//! and removes it before taking jobs.

mod support;

use support::{sh_path, wait_file, wait_until, Harness};
use valkyrie_sdk::JobSpec;

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
async fn a_restarted_agent_kills_what_its_killed_predecessor_left_and_removes_its_workspace() {
    let h = Harness::new();
    let pid_file = h.path().join("sleep.pid");
    let server = h.server().start();
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

    let mut restarted = h.agent(&server).name("phoenix").start(&client).await;
    wait_until("the orphaned job processes to be killed", || async {
        pids.iter().all(|&p| !alive(p)).then_some(())
    })
    .await;
    assert!(!workspace.exists(), "the stale workspace is removed");
    let log = restarted.process.log();
    assert!(log.contains("killed the process group"), "{log}");

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
