//! Scheduling seen from outside: pending reasons, slot limits, priority and
//! fair share, with real agents running real jobs.

mod support;

use std::collections::HashMap;

use support::{sh_path, text, wait_final, wait_state, wait_until, Harness};
use valkyrie_sdk::{JobSpec, JobState};

/// A job needing a tag no runner has waits, says why, and runs as soon as
/// a runner with the tag registers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_waits_for_missing_tag_then_runs_when_runner_arrives() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _plain = h.agent(&server).tags(&["linux"]).start(&client).await;

    let id = server.vk_detach(&["--tags", "gpu", "--", "echo", "on-gpu"]).await;
    let queued = wait_until(
        "`vk jobs --json` to show the job queued with a reason",
        || async {
            let out = server.vk(&["jobs", "--json"]).await;
            assert!(out.status.success(), "vk jobs failed: {}", text(&out.stderr));
            let jobs: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("vk jobs --json is JSON");
            let job = jobs
                .as_array()
                .expect("a JSON array")
                .iter()
                .find(|j| j["job_id"] == id)
                .cloned()
                .expect("the job is listed");
            (job["state"] == "queued" && !job["reason"].as_str().unwrap_or("").is_empty()).then_some(job)
        },
    )
    .await;
    let reason = queued["reason"].as_str().unwrap();
    assert!(
        reason.contains("gpu"),
        "the pending reason names the missing tag: {reason:?}"
    );

    let _gpu = h.agent(&server).tags(&["linux", "gpu"]).start(&client).await;
    let job = wait_final(&client, id).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(job.runner.as_deref(), Some(_gpu.name.as_str()));
    let out = server.vk(&["logs", &id.to_string()]).await;
    assert_eq!(text(&out.stdout), "on-gpu\n");
}

/// A runner with 2 slots never runs more than 2 jobs at once. Each job
/// marks itself present in a shared directory, counts the marks, records
/// the count, lingers, and leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_never_exceeds_its_slots() {
    const SLOTS: u32 = 2;
    const JOBS: usize = 6;
    let h = Harness::new();
    let present = h.path().join("present");
    let counts = h.path().join("counts");
    std::fs::create_dir_all(&present).unwrap();
    std::fs::create_dir_all(&counts).unwrap();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).slots(SLOTS).start(&client).await;

    let line = format!(
        "touch {p}/$VALKYRIE_JOB_ID; ls {p} | wc -l > {c}/$VALKYRIE_JOB_ID; sleep 0.3; \
         ls {p} | wc -l >> {c}/$VALKYRIE_JOB_ID; rm {p}/$VALKYRIE_JOB_ID",
        p = sh_path(&present),
        c = sh_path(&counts)
    );
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let spec = JobSpec::shell(format!("slot-{i}"), line.clone());
        ids.push(client.submit(spec).await.expect("submit"));
    }
    for id in &ids {
        let job = wait_final(&client, *id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
    let mut max = 0;
    for id in &ids {
        let recorded = std::fs::read_to_string(counts.join(id.to_string())).expect("count file");
        for n in recorded.split_whitespace() {
            max = max.max(n.parse::<u32>().expect("a count"));
        }
    }
    assert!(max >= 1, "every job saw at least itself");
    assert!(
        max <= SLOTS,
        "{max} jobs ran at once on a runner with {SLOTS} slots"
    );
}

/// With one slot held by a blocker, queued jobs start, once it is
/// released, high priority first, then alternating between two projects
/// (fair share), FIFO within each project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn priority_then_fair_share_decide_start_order() {
    let h = Harness::new();
    let order = h.path().join("order");
    let release = h.path().join("release");
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).slots(1).start(&client).await;

    let mut blocker = JobSpec::shell(
        "blocker",
        format!("while [ ! -e {} ]; do sleep 0.02; done", sh_path(&release)),
    );
    blocker.project = "blocker".into();
    let blocker = client.submit(blocker).await.expect("submit blocker");
    wait_state(&client, blocker, JobState::Running).await;

    let job = |name: &str, project: &str, priority: u8| {
        let mut spec = JobSpec::shell(name, format!("echo {name} >> {}", sh_path(&order)));
        spec.project = project.into();
        spec.priority = priority;
        spec
    };
    let mut specs = Vec::new();
    for i in 1..=3 {
        specs.push(job(&format!("a{i}"), "a", 0));
    }
    for i in 1..=3 {
        specs.push(job(&format!("b{i}"), "b", 0));
    }
    specs.push(job("h1", "c", 9));
    specs.push(job("h2", "c", 9));
    let mut ids = Vec::new();
    for spec in specs {
        ids.push(client.submit(spec).await.expect("submit"));
    }
    // Every job is queued behind the blocker before it is released.
    for id in &ids {
        let job = client.job(*id).await.unwrap();
        assert_eq!(job.state, JobState::Queued, "{job:?}");
    }
    std::fs::write(&release, b"").unwrap();
    for id in &ids {
        let job = wait_final(&client, *id).await;
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    }
    assert_eq!(wait_final(&client, blocker).await.state, JobState::Succeeded);

    let started: Vec<String> = std::fs::read_to_string(&order)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(started.len(), 8, "{started:?}");
    assert_eq!(started[..2], ["h1", "h2"], "high priority first: {started:?}");
    let rest = &started[2..];
    for pair in rest.windows(2) {
        assert_ne!(pair[0][..1], pair[1][..1], "projects alternate: {started:?}");
    }
    let mut seen: HashMap<&str, Vec<&str>> = HashMap::new();
    for name in rest {
        seen.entry(&name[..1]).or_default().push(name);
    }
    assert_eq!(
        seen["a"],
        ["a1", "a2", "a3"],
        "FIFO within a project: {started:?}"
    );
    assert_eq!(
        seen["b"],
        ["b1", "b2", "b3"],
        "FIFO within a project: {started:?}"
    );
}
