//! `cache:` end to end, with the real server, agent and `vk`: run 1 saves
//! (miss), run 2 restores (hit, content checked), a changed key misses and
//! a fallback key hits; `policy: pull` saves nothing; `hashFiles` changes
//! the key with the lock file; caches are per project; an escaping path is
//! refused; `/metrics` counts hits, fallback hits and misses.

mod support;

use std::time::Duration;

use support::{free_port, http_client, job_id, run_pipeline, text, Harness, Server};
use valkyrie_sdk::{Client, RunInfo, RunState};

const RUN_DEADLINE: Duration = Duration::from_secs(120);

/// A job `build` in `project` that keeps `deps/` under `key` (with
/// `fallback`, if any); its step prints what a restored `deps/stamp`
/// holds, or writes one with `stamp` in it.
fn pipeline(project: &str, key: &str, fallback: Option<&str>, policy: &str, stamp: &str) -> String {
    let fallback = fallback.map_or(String::new(), |f| format!("      fallback_keys: ['{f}']\n"));
    format!(
        r#"env: {{ VERSION: v1 }}
jobs:
  build:
    project: {project}
    cache:
      key: '{key}'
      paths: [deps/]
      policy: {policy}
{fallback}    steps:
      - run: |
          if [ -f deps/stamp ]; then echo "restored stamp: $(cat deps/stamp)"; else mkdir -p deps/sub && echo {stamp} > deps/stamp && echo tree > deps/sub/f; fi
"#
    )
}

async fn run(client: &Client, yaml: &str) -> RunInfo {
    run_pipeline(client, yaml, RUN_DEADLINE).await
}

/// The log of the run's job `name`, checking the run succeeded.
async fn log_of(server: &Server, run: &RunInfo, name: &str) -> String {
    let log = text(&server.vk(&["logs", &job_id(run, name).to_string()]).await.stdout);
    assert_eq!(run.state, RunState::Succeeded, "{name} log:\n{log}");
    log
}

fn sha256_hex(data: &str) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("printf '%s' '{data}' | sha256sum"))
        .output()
        .expect("sha256sum");
    text(&out.stdout).split_whitespace().next().unwrap().to_owned()
}

/// A metric's value in a `/metrics` text.
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_is_saved_then_restored_and_a_fallback_key_finds_it() {
    let h = Harness::new();
    let http = format!("127.0.0.1:{}", free_port());
    let server = h
        .server()
        .listen(&["tcp://127.0.0.1:0"])
        .data_dir(h.path().join("data"))
        .args(&["--http", &http])
        .start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    // Run 1: nothing to restore; deps/ is saved under `deps-v1`.
    let yaml = pipeline("web", "deps-$VERSION", None, "pull-push", "first");
    let first = run(&client, &yaml).await;
    let log = log_of(&server, &first, "build").await;
    assert!(
        log.contains("[valkyrie] cache miss: no entry for key `deps-v1`"),
        "{log}"
    );
    assert!(
        log.contains("[valkyrie] cache saved: key `deps-v1`, 2 file(s)"),
        "{log}"
    );

    // Run 2: the same key restores what run 1 saved, and saves nothing.
    let yaml2 = pipeline("web", "deps-$VERSION", None, "pull-push", "second");
    let log = log_of(&server, &run(&client, &yaml2).await, "build").await;
    assert!(
        log.contains("[valkyrie] cache hit: restored key `deps-v1`: 2 file(s)"),
        "{log}"
    );
    assert!(log.contains("restored stamp: first"), "{log}");
    assert!(
        log.contains("cache `deps-v1` not saved: an entry of that key exists"),
        "{log}"
    );

    // Another project does not see it.
    let other = pipeline("api", "deps-$VERSION", None, "pull", "other");
    let log = log_of(&server, &run(&client, &other).await, "build").await;
    assert!(log.contains("cache miss: no entry for key `deps-v1`"), "{log}");

    // A changed key misses; with a fallback key it finds run 1's entry.
    let changed = pipeline("web", "deps-v2", None, "pull", "third");
    let log = log_of(&server, &run(&client, &changed).await, "build").await;
    assert!(log.contains("cache miss: no entry for key `deps-v2`"), "{log}");
    assert!(!log.contains("cache saved"), "policy pull saves nothing:\n{log}");
    let with_fallback = pipeline("web", "deps-v2", Some("deps-"), "pull-push", "fourth");
    let log = log_of(&server, &run(&client, &with_fallback).await, "build").await;
    assert!(
        log.contains("[valkyrie] cache fallback hit: restored key `deps-v1` for key `deps-v2`"),
        "{log}"
    );
    assert!(log.contains("restored stamp: first"), "{log}");
    assert!(log.contains("cache saved: key `deps-v2`"), "{log}");

    // What the fallback run saved under `deps-v2` is found exactly.
    let again = pipeline("web", "deps-v2", None, "pull", "fifth");
    let log = log_of(&server, &run(&client, &again).await, "build").await;
    assert!(log.contains("cache hit: restored key `deps-v2`"), "{log}");

    // Restores counted: hits for the run 2 and the last run; a fallback
    // hit; misses for run 1, the other project and the changed key.
    let metrics = http_client()
        .get(format!("http://{http}/metrics"))
        .bearer_auth(&server.api_token)
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap();
    assert_eq!(
        metric(&metrics, "valkyrie_cache_hit_lookups_total"),
        2,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "valkyrie_cache_fallback_hit_lookups_total"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "valkyrie_cache_miss_lookups_total"),
        3,
        "{metrics}"
    );

    // The entry is an artifact of the job that saved it.
    let job = first.jobs[0].job_id.expect("job id").to_string();
    let out = server.vk(&["artifacts", &job, "--list", "--json"]).await;
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(listed[0]["name"], "cache.deps-v1.tar", "{listed}");
}

/// A job that makes `Cargo.lock` from `$LOCK` and hands it on as an
/// artifact; `build` keys its cache on the file's hash.
fn lock_pipeline(lock: &str) -> String {
    format!(
        r#"jobs:
  lock:
    steps:
      - run: printf '%s' '{lock}' > Cargo.lock
    artifacts:
      paths: [Cargo.lock]
  build:
    needs: [lock]
    cache:
      key: lock-${{{{ hashFiles('Cargo.lock') }}}}
      paths: [target/]
    steps:
      - run: mkdir -p target && echo built > target/out
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_files_keys_follow_the_lock_file_and_escapes_are_refused() {
    let h = Harness::new();
    let server = h.server().listen(&["tcp://127.0.0.1:0"]).start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;

    let (a, b) = (sha256_hex("a"), sha256_hex("b"));
    let log = log_of(&server, &run(&client, &lock_pipeline("a")).await, "build").await;
    assert!(
        log.contains(&format!("cache miss: no entry for key `lock-{a}`")),
        "{log}"
    );
    assert!(log.contains(&format!("cache saved: key `lock-{a}`")), "{log}");
    let log = log_of(&server, &run(&client, &lock_pipeline("b")).await, "build").await;
    assert!(
        log.contains(&format!("cache miss: no entry for key `lock-{b}`")),
        "{log}"
    );
    let log = log_of(&server, &run(&client, &lock_pipeline("a")).await, "build").await;
    assert!(
        log.contains(&format!("cache hit: restored key `lock-{a}`")),
        "{log}"
    );

    // A path out of the workspace is a validation error, with its position.
    let err = client
        .submit_pipeline(
            "ci.yaml",
            "jobs:\n  j:\n    cache: {key: k, paths: [../up]}\n    steps: [true]\n",
        )
        .await
        .expect_err("an escaping path is refused");
    let err = err.to_string();
    assert!(err.contains("ci.yaml:3:"), "{err}");
    assert!(
        err.contains("job `j` cache paths `../up` leaves the workspace"),
        "{err}"
    );

    // A link pointing out is not saved; the job still succeeds.
    let yaml = "jobs:\n  j:\n    cache: {key: links, paths: [deps]}\n    steps:\n      - run: mkdir deps && echo ok > deps/ok && ln -s /etc/passwd deps/pw\n";
    let log = log_of(&server, &run(&client, yaml).await, "j").await;
    assert!(
        log.contains("cache `links` not saved: artifact `deps/pw` is a symbolic link to `/etc/passwd`, outside the workspace"),
        "{log}"
    );
    let log = log_of(&server, &run(&client, yaml).await, "j").await;
    assert!(log.contains("cache miss: no entry for key `links`"), "{log}");
}

/// Two jobs of one project save the same key at once (both missed it
/// before their steps, which wait for each other): the first save stays,
/// and only its job's log says "cache saved"; the other says which job
/// saved the key first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_saves_of_one_key_only_the_first_is_logged_as_saved() {
    let h = Harness::new();
    let server = h.server().listen(&["tcp://127.0.0.1:0"]).start();
    let client = server.client().await;
    let _agent = h.agent(&server).slots(2).start(&client).await;
    let dir = support::sh_path(h.path());
    let job = |name: &str| {
        format!(
            r#"  {name}:
    project: web
    cache:
      key: race-1
      paths: [deps/]
    steps:
      - run: |
          mkdir -p deps && echo {name} > deps/who && touch {dir}/{name}
          while [ ! -e {dir}/a ] || [ ! -e {dir}/b ]; do sleep 0.05; done
"#
        )
    };
    let yaml = format!("jobs:\n{}{}", job("a"), job("b"));
    let run = run(&client, &yaml).await;
    let a = log_of(&server, &run, "a").await;
    let b = log_of(&server, &run, "b").await;
    for log in [&a, &b] {
        assert!(log.contains("cache miss: no entry for key `race-1`"), "{log}");
    }
    let saved: Vec<&str> = [("a", &a), ("b", &b)]
        .into_iter()
        .filter(|(_, log)| log.contains("[valkyrie] cache saved: key `race-1`"))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        saved.len(),
        1,
        "exactly one save is logged as saved:\n{a}\n---\n{b}"
    );
    let (winner, loser) = if saved[0] == "a" { ("a", &b) } else { ("b", &a) };
    let first = job_id(&run, winner);
    assert!(
        loser.contains(&format!(
            "[valkyrie] cache `race-1` not saved: job {first} saved that key first"
        )),
        "{loser}"
    );

    // The entry is the winner's: a later job restores its file.
    let later = pipeline("web", "race-1", None, "pull", "unused");
    let log = log_of(
        &server,
        &run_pipeline(&client, &later, RUN_DEADLINE).await,
        "build",
    )
    .await;
    assert!(log.contains("cache hit: restored key `race-1`"), "{log}");
}
