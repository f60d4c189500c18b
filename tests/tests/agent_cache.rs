//! `$VALKYRIE_CACHE_DIR`: a cache directory per job that persists across
//! jobs on the agent and is never used by two running jobs at once.

mod support;

use support::{sh_path, wait_file, wait_final, Harness};
use valkyrie_sdk::{JobSpec, JobState};

/// A job named `build` that records its cache directory (and its
/// `CARGO_HOME`, set from it) in `<dir>/<tag>`, leaves a file in the cache
/// and, with `hold`, waits for `<dir>/go`.
fn build_job(dir: &std::path::Path, tag: &str, hold: bool) -> JobSpec {
    let wait = if hold {
        format!(
            "while [ ! -e {go} ]; do sleep 0.05; done",
            go = sh_path(&dir.join("go"))
        )
    } else {
        "true".into()
    };
    let line = format!(
        "ls \"$VALKYRIE_CACHE_DIR\" > {out}.seen; touch \"$VALKYRIE_CACHE_DIR/{tag}\"; \
         printf '%s\\n%s\\n' \"$VALKYRIE_CACHE_DIR\" \"$CARGO_HOME\" > {out}.tmp; mv {out}.tmp {out}; {wait}",
        out = sh_path(&dir.join(tag)),
    );
    let mut spec = JobSpec::shell("build", line);
    spec.env = vec![("CARGO_HOME".into(), "$VALKYRIE_CACHE_DIR/cargo".into())];
    spec
}

fn recorded(dir: &std::path::Path, tag: &str) -> (String, String) {
    let text = std::fs::read_to_string(dir.join(tag)).unwrap();
    let mut lines = text.lines();
    (lines.next().unwrap().to_owned(), lines.next().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_jobs_get_different_cache_dirs_and_a_later_job_reuses_one() {
    let h = Harness::new();
    let server = h.server().start();
    let client = server.client().await;
    let _agent = h.agent(&server).slots(2).start(&client).await;
    let dir = h.path();

    let a = client.submit(build_job(dir, "a", true)).await.expect("submit");
    let b = client.submit(build_job(dir, "b", true)).await.expect("submit");
    wait_file(&dir.join("a")).await;
    wait_file(&dir.join("b")).await;
    let (cache_a, cargo_a) = recorded(dir, "a");
    let (cache_b, _) = recorded(dir, "b");
    assert_ne!(cache_a, cache_b, "two running jobs never share a cache directory");
    assert_eq!(
        cargo_a,
        format!("{cache_a}/cargo"),
        "env values expand $VALKYRIE_CACHE_DIR"
    );
    std::fs::write(dir.join("go"), "").unwrap();
    for id in [a, b] {
        assert_eq!(wait_final(&client, id).await.state, JobState::Succeeded);
    }

    let c = client.submit(build_job(dir, "c", false)).await.expect("submit");
    let job = wait_final(&client, c).await;
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let (cache_c, _) = recorded(dir, "c");
    assert!(
        cache_c == cache_a || cache_c == cache_b,
        "a later job reuses a cache directory: {cache_c} (earlier {cache_a}, {cache_b})"
    );
    // What an earlier job left is there.
    let seen = std::fs::read_to_string(dir.join("c.seen")).unwrap();
    assert!(seen.lines().any(|l| l == "a" || l == "b"), "{seen}");

    // Another job name has a pool of its own.
    let other_line = format!("echo \"$VALKYRIE_CACHE_DIR\" > {}", sh_path(&dir.join("other")));
    let other = client
        .submit(JobSpec::shell("test", other_line))
        .await
        .expect("submit");
    assert_eq!(wait_final(&client, other).await.state, JobState::Succeeded);
    let other_dir = std::fs::read_to_string(dir.join("other")).unwrap();
    assert_ne!(other_dir.trim(), cache_a);
    assert_ne!(other_dir.trim(), cache_b);
}
