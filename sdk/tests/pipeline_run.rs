//! `vk run`, `vk validate`, `vk demo` and run semantics against a real local
//! cluster (in-process control plane and agents, Unix socket, real processes).

mod support;
use support::*;

use valkyrie_sdk::{RunJobState, RunState};

#[tokio::test(flavor = "multi_thread")]
async fn vk_run_exits_zero_on_success_and_prints_json_events() {
    let c = cluster().await;
    let file = write(&c, "ok.yaml", "jobs:\n  hello:\n    steps: [echo hello-from-job]\n  after:\n    needs: [hello]\n    steps: [echo after]\n");
    let out = vk(&c, &["run", &file, "--json", "--logs"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(
        (last["type"].as_str(), last["state"].as_str()),
        (Some("run"), Some("succeeded"))
    );
    assert!(lines
        .iter()
        .any(|l| l["type"] == "log" && l["line"] == "hello-from-job" && l["name"] == "hello"));
    assert!(lines
        .iter()
        .any(|l| l["type"] == "job" && l["name"] == "after" && l["state"] == "succeeded"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vk_run_exits_nonzero_and_shows_the_failing_jobs_last_lines() {
    let c = cluster().await;
    let file = write(&c, "fail.yaml", "jobs:\n  broken:\n    steps:\n      - run: |\n          echo compiling\n          echo 'error: missing semicolon' >&2\n          exit 4\n  deploy:\n    needs: [broken]\n    steps: [echo never]\n");
    let out = vk(&c, &["run", &file, "--plain"]).await;
    assert_eq!(out.status.code(), Some(1));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(stdout.contains("failed"), "{stdout}");
    assert!(stderr.contains("last") && stderr.contains("`broken`"), "{stderr}");
    assert!(stderr.contains("error: missing semicolon"), "{stderr}");
    assert!(stdout.contains("skipped"), "deploy is skipped: {stdout}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_pipelines_are_refused_locally_with_positions() {
    let c = cluster().await;
    let file = write(
        &c,
        "bad.yaml",
        "jobs:\n  build:\n    steps: [make]\n  test:\n    needs: [buld]\n    stpes: [x]\n    steps: [x]\n",
    );
    for args in [vec!["validate", file.as_str()], vec!["run", file.as_str()]] {
        let out = vk(&c, &args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("bad.yaml:5:13: job `test` needs `buld`, which is not defined"),
            "{stderr}"
        );
        assert!(stderr.contains("did you mean `build`?"), "{stderr}");
        assert!(stderr.contains("bad.yaml:6:5: unknown key `stpes`"), "{stderr}");
    }
    let client = c.client().await.unwrap();
    assert!(client.runs(0).await.unwrap().is_empty(), "nothing was submitted");
    // The server validates with the same code: a bad file sent directly is refused.
    let err = client
        .submit_pipeline("bad.yaml", "jobs:\n  a:\n    steps: []\n")
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("bad.yaml:3:12: job `a` has no steps"),
        "{err}"
    );
    let out = vk(
        &c,
        &[
            "validate",
            &write(&c, "good.yaml", "jobs:\n  a:\n    steps: [x]\n"),
        ],
    )
    .await;
    assert!(out.status.success());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn release_order_conditions_and_failure_propagation() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let marks = c.dir().join("order");
    std::fs::create_dir_all(&marks).unwrap();
    let m = marks.display();
    let yaml = format!(
        "stages: [one, two, three]\njobs:\n  a:\n    stage: one\n    steps: [echo a >> {m}/log]\n  b:\n    stage: one\n    steps: [\"echo b >> {m}/log; exit 1\"]\n  c:\n    stage: two\n    needs: [a]\n    steps: [echo c >> {m}/log]\n  d:\n    stage: two\n    steps: [echo d >> {m}/log]\n  on-fail:\n    stage: three\n    if: on_failure\n    steps: [echo on-fail >> {m}/log]\n  cleanup:\n    stage: three\n    if: always\n    steps: [echo cleanup >> {m}/log]\n"
    );
    let run = client.submit_pipeline("order.yaml", &yaml).await.unwrap();
    let info = wait_run(&client, run, |r| r.state.is_terminal()).await;
    assert_eq!(info.state, RunState::Failed, "{info:#?}");
    assert_eq!(job(&info, "c").state, RunJobState::Succeeded, "c needs only a");
    assert_eq!(
        job(&info, "d").state,
        RunJobState::Skipped,
        "d waits for stage one, where b failed"
    );
    assert!(
        job(&info, "d").reason.contains("`b` failed"),
        "{}",
        job(&info, "d").reason
    );
    assert_eq!(job(&info, "on-fail").state, RunJobState::Succeeded);
    assert_eq!(job(&info, "cleanup").state, RunJobState::Succeeded);
    let log = std::fs::read_to_string(marks.join("log")).unwrap();
    let order: Vec<&str> = log.lines().collect();
    let pos = |n: &str| {
        order
            .iter()
            .position(|l| *l == n)
            .unwrap_or_else(|| panic!("{n} did not run: {order:?}"))
    };
    assert!(pos("a") < pos("c"));
    assert!(pos("b") < pos("on-fail") && pos("b") < pos("cleanup"));
    assert!(!order.contains(&"d"));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_run_cancels_its_jobs_and_skips_the_rest() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let file = write(&c, "long.yaml", "jobs:\n  sleeper:\n    steps: [echo started; sleep 600]\n  later:\n    needs: [sleeper]\n    steps: [echo later]\n");
    let out = vk(&c, &["run", &file, "--detach"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_id = text(&out.stdout).trim().to_owned();
    assert!(run_id.starts_with('r'), "{run_id}");
    let run: u64 = run_id[1..].parse().unwrap();
    wait_run(&client, run, |r| job(r, "sleeper").state == RunJobState::Running).await;
    let out = vk(&c, &["cancel", &run_id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = wait_run(&client, run, |r| r.state.is_terminal()).await;
    assert_eq!(info.state, RunState::Cancelled);
    assert_eq!(job(&info, "sleeper").state, RunJobState::Cancelled);
    assert_eq!(job(&info, "later").state, RunJobState::Skipped);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_over_its_timeout_is_timed_out() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let run = client
        .submit_pipeline("t.yaml", "timeout: 1s\njobs:\n  slow:\n    steps: [sleep 600]\n  next:\n    needs: [slow]\n    steps: [echo x]\n")
        .await
        .unwrap();
    let info = wait_run(&client, run, |r| r.state.is_terminal()).await;
    assert_eq!(info.state, RunState::TimedOut, "{info:#?}");
    assert_eq!(job(&info, "slow").state, RunJobState::Cancelled);
    assert_eq!(job(&info, "next").state, RunJobState::Skipped);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_runs_and_succeeds() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vk"))
        .args(["demo", "--plain"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("run r1 `demo` succeeded"), "{stdout}");
    assert!(
        stdout.contains("[test [suite=unit]] unit test 1 ... ok"),
        "{stdout}"
    );
    assert!(
        stdout.contains("flaky-benchmark") && stdout.contains("(allowed to fail)"),
        "{stdout}"
    );
    assert!(!stdout.contains('\u{1b}'), "NO_COLOR means no escape codes");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_matrix_leg_cancels_its_siblings_and_step_conditions_decide_cleanup() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    // Legs a and d (c excluded, d included) sleep until fail-fast cancels
    // them; leg b fails at once. A second job fails its first step, then
    // runs only its failure and cleanup steps.
    let yaml = r#"jobs:
  test:
    name: test ${{ matrix.os }}
    matrix:
      os: [a, b, c]
      exclude: [{os: c}]
      include: [{os: d}]
    steps:
      - run: if [ "$os" = b ]; then exit 7; fi; sleep 60
  steps-if:
    steps:
      - run: echo building; exit 3
      - run: echo never-printed
      - name: report
        run: echo reporting-failure
        if: failure()
      - name: cleanup
        run: echo cleanup-ran
        if: always
"#;
    let run = client.submit_pipeline("matrix.yaml", yaml).await.unwrap();
    let info = wait_run(&client, run, |r| r.state.is_terminal()).await;
    let names: Vec<&str> = info.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["test a", "test b", "test d", "steps-if"], "{info:#?}");
    assert_eq!(info.state, RunState::Failed, "{info:#?}");
    assert_eq!(job(&info, "test b").state, RunJobState::Failed);
    assert_eq!(job(&info, "test b").exit_code, Some(7));
    for leg in ["test a", "test d"] {
        assert_eq!(job(&info, leg).state, RunJobState::Cancelled, "{leg}: {info:#?}");
    }
    assert_eq!(
        info.message, "job `test b` failed",
        "a failure, not a cancel, is named"
    );

    let steps_if = job(&info, "steps-if");
    assert_eq!(steps_if.state, RunJobState::Failed);
    assert_eq!(
        steps_if.exit_code,
        Some(3),
        "the exit code of the step that failed"
    );
    let id = steps_if.job_id.unwrap().to_string();
    let logs = text(&vk(&c, &["logs", &id]).await.stdout);
    assert!(logs.contains("building"), "{logs}");
    assert!(logs.contains("reporting-failure"), "{logs}");
    assert!(logs.contains("cleanup-ran"), "{logs}");
    assert!(logs.lines().all(|l| l != "never-printed"), "{logs}");
    assert!(logs.contains("`echo never-printed` skipped"), "{logs}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_fail_fast_every_leg_runs_to_its_end() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let yaml = "jobs:\n  test:\n    fail_fast: false\n    matrix:\n      n: [1, 2, 3]\n    steps:\n      - run: test $n != 2\n";
    let run = client.submit_pipeline("ff.yaml", yaml).await.unwrap();
    let info = wait_run(&client, run, |r| r.state.is_terminal()).await;
    let states: Vec<RunJobState> = info.jobs.iter().map(|j| j.state).collect();
    assert_eq!(
        states,
        [
            RunJobState::Succeeded,
            RunJobState::Failed,
            RunJobState::Succeeded
        ],
        "{info:#?}"
    );
    assert_eq!(info.message, "job `test [n=2]` failed");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vk_status_json_lists_each_steps_state_exit_code_and_duration() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let yaml = "jobs:\n  build:\n    steps:\n      - name: fetch\n        run: echo fetched\n      - name: compile\n        run: exit 4\n      - name: package\n        run: echo never\n";
    let run = client.submit_pipeline("steps.yaml", yaml).await.unwrap();
    wait_run(&client, run, |r| r.state.is_terminal()).await;
    let out = vk(&c, &["status", &format!("r{run}"), "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let steps = status["jobs"][0]["steps"].as_array().expect("steps").clone();
    let summary: Vec<(String, String, serde_json::Value)> = steps
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
                s["exit_code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("fetch".to_owned(), "succeeded".to_owned(), serde_json::json!(0)),
            ("compile".to_owned(), "failed".to_owned(), serde_json::json!(4)),
            (
                "package".to_owned(),
                "skipped".to_owned(),
                serde_json::Value::Null
            ),
        ],
        "{status:#}"
    );
    assert!(steps.iter().all(|s| s["duration_ms"].is_u64()), "{status:#}");
    // The job's log has a section line at each step's start and end.
    let id = status["jobs"][0]["job_id"].as_u64().unwrap().to_string();
    let logs = text(&vk(&c, &["logs", &id]).await.stdout);
    let sections: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("[valkyrie] step "))
        .collect();
    assert_eq!(sections.len(), 5, "{logs}");
    assert_eq!(sections[0], "[valkyrie] step 1/3 `fetch` started", "{logs}");
    assert!(
        sections[1].starts_with("[valkyrie] step 1/3 `fetch` succeeded in "),
        "{logs}"
    );
    assert!(
        sections[3].starts_with("[valkyrie] step 2/3 `compile` failed with exit code 4 in "),
        "{logs}"
    );
    assert_eq!(sections[4], "[valkyrie] step 3/3 `package` skipped", "{logs}");
    c.shutdown().await;
}
