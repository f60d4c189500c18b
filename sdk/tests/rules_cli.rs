//! `vk run --var`, `if:` rules, `vk play` and `vk rerun --failed` with the
//! real `vk` binary against a local cluster (in-process control plane and
//! agent, real processes for the steps).

mod support;
use support::*;

use valkyrie_sdk::{RunJobState, RunState};

/// The run id `vk run --json` reported in its last line.
fn last_run(stdout: &str) -> (u64, String) {
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().expect("a line")).unwrap();
    (
        last["run_id"].as_u64().expect("run_id"),
        last["state"].as_str().unwrap_or_default().to_owned(),
    )
}

const RULES: &str = "workflow:
  if: $VALKYRIE_EVENT == \"run\" && !$STOP
env:
  DEPLOY: \"0\"
jobs:
  build:
    steps: ['echo \"build DEPLOY=$DEPLOY\"']
  deploy:
    needs: [build]
    if: $DEPLOY == \"1\" && $TARGET =~ /^stag/
    steps: ['echo \"deploying to $TARGET\"']
  smoke:
    needs: [deploy]
    steps: [echo smoke]
";

#[tokio::test(flavor = "multi_thread")]
async fn vk_run_var_decides_rules_and_overrides_env() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let file = write(&c, "rules.yaml", RULES);

    // No variables: deploy is skipped by its rule, smoke after it.
    let out = vk(&c, &["run", &file, "--json", "--logs"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("build DEPLOY=0"), "{stdout}");
    let (run, state) = last_run(&stdout);
    assert_eq!(state, "succeeded");
    let info = client.run(run).await.unwrap();
    let deploy = job(&info, "deploy");
    assert_eq!(deploy.state, RunJobState::Skipped);
    assert!(
        deploy
            .reason
            .starts_with("skipped by rules: `if: $DEPLOY == \"1\""),
        "{}",
        deploy.reason
    );
    assert_eq!(job(&info, "smoke").state, RunJobState::Skipped);

    // The variables: they override the file's env and decide the rule.
    let out = vk(
        &c,
        &[
            "run",
            &file,
            "--json",
            "--logs",
            "--var",
            "DEPLOY=1",
            "--var",
            "TARGET=staging",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("build DEPLOY=1"), "--var beats env: {stdout}");
    assert!(stdout.contains("deploying to staging"), "{stdout}");
    let (run, _) = last_run(&stdout);
    let info = client.run(run).await.unwrap();
    assert_eq!(job(&info, "smoke").state, RunJobState::Succeeded);

    // `workflow: if` false: no run, and vk says why.
    let runs_before = client.runs(0).await.unwrap().len();
    let out = vk(&c, &["run", &file, "--var", "STOP=1"]).await;
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("no run created: `workflow: if` is false"),
        "{stderr}"
    );
    assert_eq!(client.runs(0).await.unwrap().len(), runs_before);

    // A bad variable is refused by vk's parser and by the server.
    let out = vk(&c, &["run", &file, "--var", "NOEQUALS"]).await;
    assert!(
        text(&out.stderr).contains("is not NAME=VALUE"),
        "{}",
        text(&out.stderr)
    );
    let out = vk(&c, &["run", &file, "--var", "VALKYRIE_BRANCH=main"]).await;
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("reserved"), "{}", text(&out.stderr));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vk_play_starts_a_manual_job_and_what_needs_it() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let yaml = "jobs:\n  build:\n    steps: [echo built]\n  deploy:\n    needs: [build]\n    when: manual\n    steps: [echo deployed]\n  smoke:\n    needs: [deploy]\n    steps: [echo smoked]\n";
    let run = client.submit_pipeline("manual.yaml", yaml).await.unwrap();
    // The manual job does not hold the run: it ends, deploy waits.
    let info = wait_run(&client, run, |r| r.state != RunState::Running).await;
    assert_eq!(info.state, RunState::Succeeded, "{info:#?}");
    let deploy = job(&info, "deploy");
    assert_eq!(deploy.state, RunJobState::Manual);
    assert_eq!(deploy.reason, format!("manual: run `vk play r{run} deploy`"));
    assert_eq!(job(&info, "smoke").state, RunJobState::Waiting);
    let status = vk(&c, &["status", &format!("r{run}")]).await;
    assert!(
        text(&status.stdout).contains("manual"),
        "{}",
        text(&status.stdout)
    );

    let out = vk(&c, &["play", &format!("r{run}"), "smoke"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not a manual job"),
        "{}",
        text(&out.stderr)
    );
    let out = vk(&c, &["play", &format!("r{run}"), "deploy"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info = wait_run(&client, run, |r| {
        r.state != RunState::Running && job(r, "smoke").state.is_terminal()
    })
    .await;
    assert_eq!(info.state, RunState::Succeeded, "{info:#?}");
    assert_eq!(job(&info, "deploy").state, RunJobState::Succeeded);
    assert_eq!(job(&info, "smoke").state, RunJobState::Succeeded);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn vk_rerun_failed_reruns_only_the_failed_job_and_its_dependents() {
    let c = cluster().await;
    let client = c.client().await.unwrap();
    let marker = c.dir().join("fixed");
    let count = c.dir().join("stable.count");
    let yaml = format!(
        "stages: [test, after]\njobs:\n  stable:\n    stage: test\n    steps: ['echo ran >> {count}']\n  flaky:\n    stage: test\n    steps: ['test -e {marker}']\n  report:\n    stage: after\n    needs: [flaky]\n    steps: [echo report]\n",
        count = count.display(),
        marker = marker.display()
    );
    let run = client.submit_pipeline("flaky.yaml", &yaml).await.unwrap();
    let first = wait_run(&client, run, |r| r.state != RunState::Running).await;
    assert_eq!(first.state, RunState::Failed);
    assert_eq!(job(&first, "report").state, RunJobState::Skipped);

    std::fs::write(&marker, "").unwrap();
    let out = vk(&c, &["rerun", &format!("r{run}"), "--failed", "--detach"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rerun: u64 = text(&out.stdout)
        .trim()
        .trim_start_matches('r')
        .parse()
        .expect("the new run id");
    assert_ne!(rerun, run);
    let second = wait_run(&client, rerun, |r| r.state != RunState::Running).await;
    assert_eq!(second.state, RunState::Succeeded, "{second:#?}");
    assert_eq!(
        job(&second, "stable").job_id,
        job(&first, "stable").job_id,
        "stable kept its result: the same job"
    );
    assert_ne!(job(&second, "flaky").job_id, job(&first, "flaky").job_id);
    assert_eq!(job(&second, "report").state, RunJobState::Succeeded);
    assert_eq!(
        std::fs::read_to_string(&count).unwrap().lines().count(),
        1,
        "stable ran once"
    );

    // Nothing failed any more; a full rerun runs stable again.
    let out = vk(&c, &["rerun", &format!("r{rerun}"), "--failed"]).await;
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no failed or cancelled job"),
        "{}",
        text(&out.stderr)
    );
    let out = vk(&c, &["rerun", &format!("r{rerun}")]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 2);
    c.shutdown().await;
}
