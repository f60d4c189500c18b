//! Artifacts end to end, with the real server, agent and `vk`: a build
//! job's files reach the job that needs it and `vk artifacts`, survive a
//! server restart, an upload cut by a server crash and one cut by a
//! dropped connection (a TCP proxy that closes it mid-upload); escapes and
//! over-size artifacts fail their job with a message in its log.

mod support;

use std::path::Path;
use std::time::Duration;

use support::s3::S3Server;
use support::{job_id, run_pipeline, text, wait_until_within, Harness, Server, ServerBuilder};
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

async fn run_pipeline_in(client: &Client, yaml: &str) -> RunInfo {
    run_pipeline(client, yaml, RUN_DEADLINE).await
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

/// Runs [`PIPELINE`] on `server` and checks what every job and `vk
/// artifacts` saw. Returns the build job's id and its `vk artifacts --list
/// --json`.
async fn hand_files_on(h: &Harness, server: &Server) -> (u64, serde_json::Value) {
    let client = server.client().await;
    let _agent = h.agent(server).slots(2).start(&client).await;

    let run = run_pipeline_in(&client, PIPELINE).await;
    let build = job_id(&run, "build");
    let test = job_id(&run, "test");
    assert_eq!(
        run.state,
        RunState::Succeeded,
        "build log:\n{}\ntest log:\n{}\npackage log:\n{}",
        logs(server, build).await,
        logs(server, test).await,
        logs(server, job_id(&run, "package")).await
    );
    let build_log = logs(server, build).await;
    assert!(
        build_log.contains("[valkyrie] uploaded artifacts: 303 file(s)"),
        "{build_log}"
    );
    let test_log = logs(server, test).await;
    assert!(
        test_log.contains(&format!(
            "[valkyrie] downloaded the artifacts of job {build}: 303 file(s)"
        )),
        "{test_log}"
    );

    // `vk artifacts --list`: one archive, with its size and checksum.
    let listed = list_artifacts(server, build).await;
    assert_eq!(listed[0]["name"], "artifacts.tar", "{listed}");
    let size = listed[0]["size"].as_u64().unwrap();
    assert!(size > 50 << 20, "{listed}");
    assert_eq!(listed[0]["sha256"].as_str().unwrap().len(), 64, "{listed}");
    assert_eq!(list_artifacts(server, test).await, serde_json::json!([]));

    // `vk artifacts --output DIR`: the files, intact.
    let out_dir = h.path().join(format!("downloaded-{build}"));
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
    (build, listed)
}

/// `vk artifacts JOB --list --json`, parsed.
async fn list_artifacts(server: &Server, job: u64) -> serde_json::Value {
    let out = server
        .vk(&["artifacts", &job.to_string(), "--list", "--json"])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_hands_its_files_to_the_jobs_that_need_them_and_to_vk() {
    let h = Harness::new();
    let socket = h.path().join("art.sock");
    let listen = format!("unix://{}", socket.display());
    let data = h.path().join("data");
    let server = h.server().listen(&[&listen]).data_dir(&data).start();
    let (build, listed) = hand_files_on(&h, &server).await;

    // After a restart the artifacts are still there.
    drop(server);
    let server = h.server().listen(&[&listen]).data_dir(&data).start();
    assert_eq!(list_artifacts(&server, build).await, listed);
}

/// The bucket and prefix of the S3 tests.
const BUCKET: &str = "vk-artifacts";
const PREFIX: &str = "ci";

/// `builder` storing artifacts in [`BUCKET`]/[`PREFIX`] on `s3`.
fn on_s3<'a>(builder: ServerBuilder<'a>, s3: &S3Server) -> ServerBuilder<'a> {
    let url = format!("s3://{BUCKET}/{PREFIX}");
    s3.env()
        .into_iter()
        .fold(builder.args(&["--artifacts", &url]), |b, (name, value)| {
            b.env(name, &value)
        })
}

/// The object key of blob `sha256` in the S3 tests.
fn blob_key(sha256: &str) -> String {
    format!("{PREFIX}/blobs/{}/{sha256}", &sha256[..2])
}

/// With `--artifacts s3://…` on a real S3-compatible server (moto): the
/// same three jobs; the archive is an object in the bucket, none is in
/// the data directory; a restart keeps them; an expired artifact's object
/// is deleted from the bucket and the others stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_s3_the_files_reach_later_jobs_survive_a_restart_and_expire() {
    let s3 = S3Server::start();
    s3.create_bucket(BUCKET).await;
    let h = Harness::new();
    let socket = h.path().join("s3.sock");
    let listen = format!("unix://{}", socket.display());
    let data = h.path().join("data");
    let start = || on_s3(h.server().listen(&[&listen]).data_dir(&data), &s3).start();
    let server = start();
    let (build, listed) = hand_files_on(&h, &server).await;
    let sha = listed[0]["sha256"].as_str().unwrap().to_owned();
    let size = listed[0]["size"].as_u64().unwrap();
    let objects = s3.objects(BUCKET, PREFIX).await;
    assert!(objects.contains(&(blob_key(&sha), size)), "{objects:?}");
    assert!(
        !data.join("artifacts/blobs").exists(),
        "no blob in the data directory"
    );

    // A short-lived artifact: stored, then expired.
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;
    let run = run_pipeline_in(
        &client,
        "jobs:\n  brief:\n    steps:\n      - run: mkdir o && echo short-lived > o/f\n    artifacts:\n      paths: [o]\n      expire_in: 1s\n",
    )
    .await;
    let brief = job_id(&run, "brief");
    assert_eq!(run.state, RunState::Succeeded, "{}", logs(&server, brief).await);
    let brief_sha = {
        let listed = list_artifacts(&server, brief).await;
        // It may have expired already; its object is in the bucket either way
        // (the sweeper runs at start and then every 10 minutes). Objects of
        // earlier attempts of the build, no longer referenced, may be there
        // too until the next sweep.
        let objects = s3.objects(BUCKET, PREFIX).await;
        let small: Vec<_> = objects.iter().filter(|(_, size)| *size < 1 << 20).collect();
        assert_eq!(small.len(), 1, "the brief archive: {objects:?}");
        if let Some(sha) = listed[0]["sha256"].as_str() {
            assert_eq!(small[0].0, blob_key(sha));
        }
        small[0].0.rsplit('/').next().unwrap().to_owned()
    };
    wait_until_within("the brief artifact to expire", RUN_DEADLINE, || async {
        (list_artifacts(&server, brief).await == serde_json::json!([])).then_some(())
    })
    .await;

    // After a restart (which sweeps at once): the build's archive is listed
    // and in the bucket, the expired one is gone from the bucket.
    drop(client);
    drop(server);
    let server = start();
    assert_eq!(list_artifacts(&server, build).await, listed);
    wait_until_within(
        "the unreferenced blobs to leave the bucket",
        RUN_DEADLINE,
        || async {
            let objects = s3.objects(BUCKET, PREFIX).await;
            (objects == vec![(blob_key(&sha), size)]).then_some(())
        },
    )
    .await;
    assert_ne!(brief_sha, sha);
    // And it still downloads, streamed from the bucket.
    let out_dir = h.path().join("after-restart");
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

    let run = run_pipeline_in(
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

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs (it needs root): {}",
            text(&out.stderr)
        );
        Self(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a process of the test may still hold a file there.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The artifact store on a 20 MiB tmpfs: a 30 MB artifact cannot fit.
/// Its upload fails with a clear message in the job's log, the job beside
/// it succeeds, the artifact stored before is intact, and a later upload
/// is stored (the failed one left no partial file behind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_fails_the_upload_saying_so_and_loses_nothing_else() {
    let h = Harness::new();
    let data = h.path().join("data");
    let _tmpfs = Tmpfs::mount(&data.join("artifacts"), "20m");
    let server = h.server().data_dir(&data).start();
    let client = server.client().await;
    let _agent = h.agent(&server).slots(2).start(&client).await;
    let small = "jobs:\n  small:\n    steps:\n      - run: mkdir s && head -c 4000000 /dev/urandom > s/f && sha256sum s/f > SUM\n    artifacts:\n      paths: [s, SUM]\n";

    let first = run_pipeline_in(&client, small).await;
    let stored = job_id(&first, "small");
    assert_eq!(
        first.state,
        RunState::Succeeded,
        "{}",
        logs(&server, stored).await
    );
    let before = list_artifacts(&server, stored).await;

    let run = run_pipeline_in(
        &client,
        "jobs:\n  big:\n    steps:\n      - run: mkdir b && head -c 30000000 /dev/urandom > b/f\n    artifacts:\n      paths: [b]\n  beside:\n    steps:\n      - run: echo still running\n",
    )
    .await;
    let big = job_id(&run, "big");
    let big_log = logs(&server, big).await;
    assert_eq!(run.state, RunState::Failed, "{big_log}");
    assert!(
        big_log.contains("the server refused it: the artifact store is full (No space left on device"),
        "{big_log}"
    );
    assert!(big_log.contains("stored artifacts are unharmed"), "{big_log}");
    let beside = run.jobs.iter().find(|j| j.name == "beside").unwrap();
    assert_eq!(beside.state, valkyrie_sdk::RunJobState::Succeeded, "{run:?}");
    assert_eq!(list_artifacts(&server, big).await, serde_json::json!([]));
    assert_eq!(
        std::fs::read_dir(data.join("artifacts/uploads")).unwrap().count(),
        0
    );

    // What was stored before is listed the same and downloads intact.
    assert_eq!(list_artifacts(&server, stored).await, before);
    let out_dir = h.path().join("small");
    let out = server
        .vk(&[
            "artifacts",
            &stored.to_string(),
            "--output",
            out_dir.to_str().unwrap(),
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    std::fs::rename(out_dir.join("SUM"), out_dir.join("SHA256SUMS")).unwrap();
    check_sums(&out_dir);

    // The space the failed upload took is free again.
    let again = run_pipeline_in(&client, small).await;
    let later = job_id(&again, "small");
    assert_eq!(again.state, RunState::Succeeded, "{}", logs(&server, later).await);
    assert_eq!(list_artifacts(&server, later).await[0]["name"], "artifacts.tar");
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

/// A TCP proxy to `target` that cuts the connection it carries once more
/// than `cut_after` bytes went through it towards `target` (once: later
/// connections are carried whole). Returns its address and whether it cut.
async fn cutting_proxy(
    target: std::net::SocketAddr,
    cut_after: u64,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = std::sync::Arc::new(AtomicBool::new(false));
    let cutting = cut.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                continue;
            };
            let cut = cutting.clone();
            tokio::spawn(async move {
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                let back = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let mut buf = vec![0u8; 64 << 10];
                let mut sent = 0u64;
                loop {
                    let n = match from_client.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    if to_server.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    sent += n as u64;
                    if sent > cut_after && !cut.swap(true, Ordering::SeqCst) {
                        // Both directions end here: both sockets close.
                        break;
                    }
                }
                back.abort();
            });
        }
    });
    (addr, cut)
}

/// The agent's connection is cut (a TCP proxy closes it) in the middle of
/// a 64 MiB upload while the server keeps running: the agent reconnects,
/// uploads the artifact again from its start, the job's result is kept,
/// and the job that needs the artifact gets it intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_a_dropped_connection_is_done_again_after_reconnecting() {
    let h = Harness::new();
    let server = h
        .server()
        .listen(&["tcp://127.0.0.1:0"])
        .tokens("api-drop", "runner-drop")
        .start();
    let target = server
        .endpoint()
        .strip_prefix("tcp://")
        .expect("a tcp endpoint")
        .parse()
        .expect("an address");
    // Registration and logs are a few KiB: past 16 MiB, the upload is
    // under way (and 48 MiB from its end).
    let (proxy, cut) = cutting_proxy(target, 16 << 20).await;
    let client = server.client().await;
    let agent = h
        .agent(&server)
        .endpoint(&format!("tcp://{proxy}"))
        .start(&client)
        .await;
    let yaml = "jobs:\n  build:\n    steps:\n      - run: mkdir d && head -c 67108864 /dev/urandom > d/blob && sha256sum d/blob > d.sum && mv d.sum d/\n    artifacts:\n      paths: [d]\n  check:\n    needs: [build]\n    steps:\n      - run: sha256sum -c d/d.sum\n";
    let run = run_pipeline_in(&client, yaml).await;
    let build = job_id(&run, "build");
    let build_log = logs(&server, build).await;
    assert_eq!(
        run.state,
        RunState::Succeeded,
        "build log:\n{build_log}\ncheck log:\n{}",
        logs(&server, job_id(&run, "check")).await
    );
    assert!(
        cut.load(std::sync::atomic::Ordering::SeqCst),
        "the proxy cut the connection"
    );
    assert!(
        agent
            .process
            .log()
            .contains("connection lost during an artifact upload; starting it again"),
        "the upload was cut and done again:\n{}",
        agent.process.log()
    );
    assert!(
        build_log.contains("[valkyrie] uploaded artifacts: 2 file(s)"),
        "{build_log}"
    );
    let listed = list_artifacts(&server, build).await;
    assert_eq!(listed[0]["name"], "artifacts.tar", "{listed}");
}
