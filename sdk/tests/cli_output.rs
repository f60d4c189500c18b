//! What `vk` prints and how it exits, against a real local cluster: closed
//! pipes, merged logs, attempt headers, `vk status`, exit codes.

mod support;
use support::*;

use std::process::Stdio;
use std::time::Duration;

use valkyrie_sdk::{Client, JobSpec, JobState, RetryOn, RetryPolicy, RunInfo, RunJobState};

async fn wait_job(client: &Client, job: u64, done: impl Fn(JobState) -> bool) -> JobState {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let state = client.job(job).await.unwrap().state;
        if done(state) {
            return state;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} stuck in {state:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_run(client: &Client, run: u64, done: impl Fn(&RunInfo) -> bool) -> RunInfo {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let info = client.run(run).await.unwrap();
        if done(&info) {
            return info;
        }
        assert!(tokio::time::Instant::now() < deadline, "run stuck: {info:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_pipe_ends_every_listing_quietly() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let job = client
        .submit(JobSpec::shell("many", "seq 1 20000"))
        .await
        .unwrap();
    wait_job(&client, job, JobState::is_terminal).await;
    let job = job.to_string();
    for args in [
        vec!["jobs"],
        vec!["runners"],
        vec!["runs"],
        vec!["logs", &job],
        vec!["jobs", "--json"],
    ] {
        // A real pipe whose reader is gone before `vk` writes: `vk jobs | head -0`.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = command(&c, &args).stdout(writer).output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stderr), "", "{args:?} exits quietly");
    }
    // And with `head -1` reading one line of many: exit 0, nothing on stderr.
    let out = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ '{}' logs {job}; echo \"vk exit: $?\" >&2; }} | head -1",
            env!("CARGO_BIN_EXE_vk")
        ))
        .env("VALKYRIE_SERVER", c.endpoint.to_string())
        .env("VALKYRIE_TOKEN", &c.api_token)
        .output()
        .await
        .unwrap();
    assert_eq!(text(&out.stdout), "1\n");
    assert_eq!(text(&out.stderr), "vk exit: 0\n", "quiet, and exit code 0");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_are_one_ordered_stream_on_stdout_with_streams_in_json() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let job = client
        .submit(JobSpec::shell(
            "mixed",
            "echo out-1; sleep 0.1; echo err-2 >&2; sleep 0.1; echo out-3",
        ))
        .await
        .unwrap();
    wait_job(&client, job, JobState::is_terminal).await;
    let out = vk(&c, &["logs", &job.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "out-1\nerr-2\nout-3\n",
        "merged, in order, on stdout"
    );
    assert_eq!(text(&out.stderr), "");

    let out = vk(&c, &["logs", &job.to_string(), "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let chunks: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    let streams: Vec<(&str, &str)> = chunks
        .iter()
        .map(|c| (c["stream"].as_str().unwrap(), c["text"].as_str().unwrap()))
        .collect();
    assert_eq!(
        streams,
        [
            ("stdout", "out-1\n"),
            ("stderr", "err-2\n"),
            ("stdout", "out-3\n")
        ]
    );
    assert!(chunks.iter().all(|c| c["job_id"] == job));

    // Following merges too.
    let out = vk(&c, &["logs", &job.to_string(), "-f"]).await;
    assert_eq!(text(&out.stdout), "out-1\nerr-2\nout-3\n");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_attempts_of_a_retried_job_are_separated_by_a_header() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let mark = c.dir().join("first-attempt-done");
    let line = format!(
        "if [ -f {m} ]; then echo second-try; else touch {m}; echo first-try; exit 3; fi",
        m = mark.display()
    );
    let mut spec = JobSpec::shell("flaky", line);
    spec.retry = RetryPolicy {
        max_retries: 1,
        on: RetryOn::FAILED,
    };
    let job = client.submit(spec).await.unwrap();
    assert_eq!(
        wait_job(&client, job, JobState::is_terminal).await,
        JobState::Succeeded
    );
    let out = vk(&c, &["logs", &job.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    let first = lines.iter().position(|l| *l == "first-try").expect(&stdout);
    let header = lines
        .iter()
        .position(|l| l.contains("attempt 2 on a1"))
        .expect(&stdout);
    let second = lines.iter().position(|l| *l == "second-try").expect(&stdout);
    assert!(first < header && header < second, "{stdout}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_durations_and_json_has_attempts() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let run = client
        .submit_pipeline("s.yaml", "jobs:\n  quick:\n    steps: [sleep 0.2]\n  gated:\n    needs: [quick]\n    if: on_failure\n    steps: [echo never]\n")
        .await
        .unwrap();
    wait_run(&client, run, |r| r.state.is_terminal()).await;
    let out = vk(&c, &["status", &format!("r{run}")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("DURATION"), "{stdout}");
    let quick = stdout.lines().find(|l| l.starts_with("quick")).expect(&stdout);
    let fields: Vec<&str> = quick.split_whitespace().collect();
    let seconds: f64 = fields[5].strip_suffix('s').expect(quick).parse().expect(quick);
    assert!(seconds >= 0.2, "{quick}");

    let out = vk(&c, &["status", &format!("r{run}"), "--json"]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let jobs = json["jobs"].as_array().unwrap();
    let quick = jobs.iter().find(|j| j["name"] == "quick").unwrap();
    assert_eq!(quick["attempt"], 1);
    assert!(quick["duration_ms"].as_u64().unwrap() >= 200, "{quick}");
    let gated = jobs.iter().find(|j| j["name"] == "gated").unwrap();
    assert_eq!(gated["state"], RunJobState::Skipped.as_str());
    assert_eq!(gated["attempt"], 0, "never ran");
    assert!(gated["duration_ms"].is_null());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_uses_the_protocol_field_names_and_detach_prints_json() {
    let c = cluster().await;
    let file = c.dir().join("d.yaml");
    std::fs::write(&file, "jobs:\n  a:\n    steps: [echo a]\n").unwrap();
    let out = vk(&c, &["run", file.to_str().unwrap(), "--json", "--detach"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let detached: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON, not a bare id");
    let run = detached["run_id"].as_u64().expect("run_id");
    let client = c.client().await.unwrap();
    wait_run(&client, run, |r| r.state.is_terminal()).await;

    let out = vk(&c, &["runners", "--json"]).await;
    let runners: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for key in ["runner_id", "name", "state", "slots", "busy", "last_seen_ms_ago"] {
        assert!(runners[0].get(key).is_some(), "runners have `{key}`: {runners}");
    }
    let out = vk(&c, &["runs", "--json"]).await;
    let runs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(runs[0]["run_id"], run);
    assert_eq!(runs[0]["state"], "succeeded");
    assert!(runs[0]["duration_ms"].is_u64(), "{runs}");
    assert_eq!(runs[0]["jobs"][0]["state"], "succeeded");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn interrupting_vk_run_cancels_the_run_and_exits_130() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let file = c.dir().join("long.yaml");
    std::fs::write(&file, "jobs:\n  sleeper:\n    steps: [sleep 600]\n").unwrap();
    let child = command(&c, &["run", file.to_str().unwrap(), "--plain"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the job to run, then Ctrl-C (SIGINT) the real process.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let runs = client.runs(1).await.unwrap();
        if runs
            .first()
            .is_some_and(|r| r.jobs[0].state == RunJobState::Running)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("vk run ends after Ctrl-C")
        .unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cancelling run"),
        "{}",
        text(&out.stderr)
    );
    c.shutdown().await;
}
