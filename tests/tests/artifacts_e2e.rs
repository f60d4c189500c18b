//! Artifacts end to end, with the real server, agent and `vk`: a build
//! job's files reach the job that needs it and `vk artifacts`, survive a
//! server restart and an upload cut by a server crash; escapes and
//! over-size artifacts fail their job with a message in its log.

mod support;

use std::path::Path;
use std::time::Duration;

use support::{text, wait_until_within, Harness, Server};
use valkyrie_sdk::{Client, RunInfo, RunState};

/// Long enough for 50 MB through a debug build on a loaded machine.
const RUN_DEADLINE: Duration = Duration::from_secs(240);

/// Job 1 writes a 50 MB file, a tree of small files and their checksums;
/// job 2 (`needs` job 1) checks them in its workspace; job 3 opts out with
/// `dependencies: []` and sees none of them.
const PIPELINE: &str = r#"name: artifacts
jobs:
  build:
    steps:
      - run: |
          mkdir -p dist/tree/a dist/tree/b
          head -c 52428800 /dev/urandom > dist/big.bin
          for i in $(seq 1 300); do echo "small file $i" > dist/tree/a/f$i.txt; done
          echo nested > dist/tree/b/deep.txt
          echo noise > dist/build.log
          (cd dist && find . -type f ! -name '*.log' | sort | xargs sha256sum) > SHA256SUMS
          mv SHA256SUMS dist/
    artifacts:
      paths: [dist/]
      exclude: ['**/*.log']
      expire_in: 1h
  test:
    needs: [build]
    steps:
      - run: |
          cd dist && sha256sum --quiet -c SHA256SUMS
          test "$(ls tree/a | wc -l)" = 300
          test ! -e build.log
  package:
    needs: [test, build]
    dependencies: []
    steps:
      - run: test ! -e dist
"#;

async fn run_pipeline(client: &Client, yaml: &str) -> RunInfo {
    let run_id = client
        .submit_pipeline("ci.yaml", yaml)
        .await
        .expect("submit pipeline");
    wait_until_within("the run to finish", RUN_DEADLINE, || async {
        let run = client.run(run_id).await.expect("run");
        run.state.is_terminal().then_some(run)
    })
    .await
}

fn job_id(run: &RunInfo, name: &str) -> u64 {
    run.jobs
        .iter()
        .find(|j| j.name == name)
        .and_then(|j| j.job_id)
        .unwrap_or_else(|| panic!("no job `{name}` in {run:?}"))
}

async fn logs(server: &Server, job: u64) -> String {
    text(&server.vk(&["logs", &job.to_string()]).await.stdout)
}

/// `sha256sum -c` of the checksums that came with the files, in `dir`.
fn check_sums(dir: &Path) {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg("sha256sum --quiet -c SHA256SUMS")
        .current_dir(dir)
        .output()
        .expect("sha256sum");
    assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_hands_its_files_to_the_jobs_that_need_them_and_to_vk() {
    let h = Harness::new();
    let socket = h.path().join("art.sock");
    let listen = format!("unix://{}", socket.display());
    let data = h.path().join("data");
    let server = h.server().listen(&[&listen]).data_dir(&data).start();
    let client = server.client().await;
    let _agent = h.agent(&server).slots(2).start(&client).await;

    let run = run_pipeline(&client, PIPELINE).await;
    let build = job_id(&run, "build");
    let test = job_id(&run, "test");
    assert_eq!(
        run.state,
        RunState::Succeeded,
        "build log:\n{}\ntest log:\n{}\npackage log:\n{}",
        logs(&server, build).await,
        logs(&server, test).await,
        logs(&server, job_id(&run, "package")).await
    );
    let build_log = logs(&server, build).await;
    assert!(
        build_log.contains("[valkyrie] uploaded artifacts: 303 file(s)"),
        "{build_log}"
    );
    let test_log = logs(&server, test).await;
    assert!(
        test_log.contains(&format!(
            "[valkyrie] downloaded the artifacts of job {build}: 303 file(s)"
        )),
        "{test_log}"
    );

    // `vk artifacts --list`: one archive, with its size and checksum.
    let out = server
        .vk(&["artifacts", &build.to_string(), "--list", "--json"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed[0]["name"], "artifacts.tar", "{listed}");
    let size = listed[0]["size"].as_u64().unwrap();
    assert!(size > 50 << 20, "{listed}");
    assert_eq!(listed[0]["sha256"].as_str().unwrap().len(), 64, "{listed}");
    let none = server
        .vk(&["artifacts", &test.to_string(), "--list", "--json"])
        .await;
    assert_eq!(text(&none.stdout).trim(), "[]");

    // `vk artifacts --output DIR`: the files, intact.
    let out_dir = h.path().join("downloaded");
    let out = server
        .vk(&[
            "artifacts",
            &build.to_string(),
            "--output",
            out_dir.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    check_sums(&out_dir.join("dist"));
    assert_eq!(
        std::fs::metadata(out_dir.join("dist/big.bin")).unwrap().len(),
        50 << 20
    );
    assert!(!out_dir.join("dist/build.log").exists());

    // After a restart the artifacts are still there.
    drop(client);
    drop(server);
    let server = h.server().listen(&[&listen]).data_dir(&data).start();
    let out = server
        .vk(&["artifacts", &build.to_string(), "--list", "--json"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(again, listed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escapes_and_oversize_artifacts_fail_the_job_saying_why() {
    let h = Harness::new();
    let server = h
        .server()
        .listen(&["tcp://127.0.0.1:0"])
        .args(&["--max-artifact-bytes", "1000000"])
        .start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let run = run_pipeline(
        &client,
        "jobs:\n  link:\n    steps:\n      - run: mkdir out && echo ok > out/ok && ln -s /etc/passwd out/pw\n    artifacts:\n      paths: [out]\n  big:\n    steps:\n      - run: mkdir out && head -c 3000000 /dev/zero > out/big\n    artifacts:\n      paths: [out]\n",
    )
    .await;
    assert_eq!(run.state, RunState::Failed, "{run:?}");
    let link_log = logs(&server, job_id(&run, "link")).await;
    assert!(
        link_log.contains("artifact `out/pw` is a symbolic link to `/etc/passwd`, outside the workspace"),
        "{link_log}"
    );
    let big_log = logs(&server, job_id(&run, "big")).await;
    assert!(
        big_log.contains("the server refused it: the artifact is over the limit of 1000000 bytes"),
        "{big_log}"
    );
    let out = server
        .vk(&["artifacts", &job_id(&run, "big").to_string(), "--list", "--json"])
        .await;
    assert_eq!(text(&out.stdout).trim(), "[]", "nothing half-stored");
}

/// The server is killed (SIGKILL) while an artifact is being uploaded and
/// started again: the agent reconnects, uploads it again from the start,
/// and the job that needs it gets it intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_server_crash_is_done_again_after_reconnecting() {
    let h = Harness::new();
    let socket = h.path().join("cut.sock");
    let listen = format!("unix://{}", socket.display());
    let data = h.path().join("data");
    let mut server = h
        .server()
        .listen(&[&listen])
        .data_dir(&data)
        .tokens("api-cut", "runner-cut")
        .start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;
    let yaml = "jobs:\n  build:\n    steps:\n      - run: mkdir d && head -c 209715200 /dev/urandom > d/blob && sha256sum d/blob > d.sum && mv d.sum d/\n    artifacts:\n      paths: [d]\n  check:\n    needs: [build]\n    steps:\n      - run: sha256sum -c d/d.sum\n";
    let run_id = client.submit_pipeline("ci.yaml", yaml).await.expect("submit");
    // Mid-upload: a partial upload file with bytes in it.
    let uploads = data.join("artifacts/uploads");
    wait_until_within("an upload in progress", RUN_DEADLINE, || async {
        let growing = std::fs::read_dir(&uploads)
            .ok()?
            .flatten()
            .any(|e| e.metadata().is_ok_and(|m| m.len() > 1 << 20));
        growing.then_some(())
    })
    .await;
    server.process.kill_now();
    drop(client);
    let server = h
        .server()
        .listen(&[&listen])
        .data_dir(&data)
        .tokens("api-cut", "runner-cut")
        .start();
    let client = server.client().await;
    let run = wait_until_within("the run to finish", RUN_DEADLINE, || async {
        let run = client.run(run_id).await.ok()?;
        run.state.is_terminal().then_some(run)
    })
    .await;
    let build = job_id(&run, "build");
    assert_eq!(
        run.state,
        RunState::Succeeded,
        "build log:\n{}\ncheck log:\n{}",
        logs(&server, build).await,
        logs(&server, job_id(&run, "check")).await
    );
    // Only the finished upload is left: no partial file.
    assert_eq!(std::fs::read_dir(&uploads).unwrap().count(), 0);
}
