//! Retention of the audit log with the real server and store: records
//! beyond the count (`--max-finished-jobs`) or older than the age
//! (`--retention`) are deleted from the store, and the rest are kept, across
//! restarts.

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::{text, wait_until, Harness, Server};

/// `(id, action)` of every audit record, newest first.
async fn audit(server: &Server) -> Vec<(u64, String)> {
    let out = server.vk(&["audit", "--json", "--limit", "1000"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("vk audit --json prints JSON")
        .as_array()
        .expect("an array")
        .iter()
        .map(|r| {
            (
                r["id"].as_u64().unwrap(),
                r["action"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Leaves a record of a token minted `ago` in the inbox, as
/// `valkyrie-server token` does (the server imports it when it starts).
fn minted(data: &Path, subject: &str, ago: Duration) {
    let at_ms = (SystemTime::now() - ago)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let dir = data.join("audit-inbox");
    std::fs::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "at_ms": at_ms, "user": "ops", "subject": subject, "role": "viewer", "ttl_secs": 3600,
    });
    std::fs::write(dir.join(format!("{at_ms}-{subject}.json")), record.to_string()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_past_the_retention_are_deleted_and_the_rest_kept_across_restarts() {
    let h = Harness::new();
    let data = h.path().join("data");
    let socket = format!("unix://{}", h.path().join("retention.sock").display());
    let start = |flags: &[&str]| h.server().listen(&[&socket]).data_dir(&data).args(flags).start();
    let submits =
        |ids: &[u64]| -> Vec<(u64, String)> { ids.iter().map(|&id| (id, "submit_job".to_owned())).collect() };

    // By count: six submits, four kept (the newest).
    let mut server = start(&["--max-finished-jobs", "4"]);
    for _ in 0..6 {
        server.vk_detach(&["--", "true"]).await;
    }
    assert_eq!(audit(&server).await, submits(&[6, 5, 4, 3]));
    server.process.kill_now();
    let mut server = start(&["--max-finished-jobs", "4"]);
    assert_eq!(audit(&server).await, submits(&[6, 5, 4, 3]), "after a restart");

    // A lower count at start deletes the oldest from the store: a higher
    // one later does not bring them back.
    server.process.kill_now();
    let mut server = start(&["--max-finished-jobs", "2"]);
    assert_eq!(audit(&server).await, submits(&[6, 5]));
    server.process.kill_now();
    let mut server = start(&["--max-finished-jobs", "100"]);
    assert_eq!(audit(&server).await, submits(&[6, 5]), "deleted, not hidden");

    // By age: of two tokens minted while the server was down, the one
    // older than the retention is not kept; the other is.
    server.process.kill_now();
    minted(&data, "two-days-ago", Duration::from_secs(48 * 3600));
    minted(&data, "an-hour-ago", Duration::from_secs(3600));
    let mut server = start(&["--retention", "1d"]);
    wait_until("the server imports both inbox records", || async {
        let left = std::fs::read_dir(data.join("audit-inbox")).unwrap().count();
        (left == 0).then_some(())
    })
    .await;
    let mut expected = vec![(7, "mint_token".to_owned())];
    expected.extend(submits(&[6, 5]));
    assert_eq!(audit(&server).await, expected);
    server.process.kill_now();
    let mut server = start(&["--retention", "1d"]);
    assert_eq!(audit(&server).await, expected, "after a restart");

    // A shorter retention at start: the token minted an hour ago is past
    // it (though it is the newest record, behind younger ones), the
    // submits of a few seconds ago are not.
    server.process.kill_now();
    let mut server = start(&["--retention", "30m"]);
    assert_eq!(audit(&server).await, submits(&[6, 5]));
    server.process.kill_now();
    let server = start(&[]);
    assert_eq!(audit(&server).await, submits(&[6, 5]), "deleted, not hidden");
}
