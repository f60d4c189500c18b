//! The audit log with the real binaries: what `vk` does is recorded under
//! the API token and the client software, a JWT minted with
//! `valkyrie-server token` under the local user, and `vk audit` shows it
//! all, newest first, across a restart, without a secret value.

mod support;

use support::{text, wait_until, Harness};

const SECRET: &str = "audit-e2e-secret-3307";

fn records(stdout: &[u8]) -> Vec<serde_json::Value> {
    serde_json::from_slice::<serde_json::Value>(stdout)
        .expect("vk audit --json prints JSON")
        .as_array()
        .expect("an array")
        .clone()
}

fn find<'a>(all: &'a [serde_json::Value], action: &str) -> Option<&'a serde_json::Value> {
    all.iter().find(|r| r["action"] == action)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vk_actions_and_minted_tokens_show_in_vk_audit() {
    let h = Harness::new();
    let data = h.path().join("data");
    let socket = format!("unix://{}", h.path().join("audit.sock").display());
    let start = || h.server().listen(&[&socket]).data_dir(&data).start();
    let mut server = start();
    let file = h.path().join("p.yaml");
    std::fs::write(
        &file,
        format!("name: audited\nsecrets: {{TOKEN: {SECRET}}}\njobs:\n  a:\n    steps: [{{run: echo}}]\n"),
    )
    .unwrap();
    let out = server.vk(&["run", "--detach", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = text(&out.stdout).trim().to_owned();
    let job = server.vk_detach(&["--", "echo", "hi"]).await;
    let out = server.vk(&["cancel", &job.to_string()]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let minted = std::process::Command::new(support::binary("valkyrie-server"))
        .args([
            "token",
            "--role",
            "viewer",
            "--ttl",
            "1h",
            "--subject",
            "dashboard",
        ])
        .arg("--data-dir")
        .arg(&data)
        .env("USER", "release-manager")
        .output()
        .unwrap();
    assert!(minted.status.success(), "{}", text(&minted.stderr));

    let all = wait_until("the minted token to reach the audit log", || async {
        let out = server.vk(&["audit", "--json"]).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        let all = records(&out.stdout);
        find(&all, "mint_token").is_some().then_some(all)
    })
    .await;
    let sdk = format!("valkyrie-sdk/{}", env!("CARGO_PKG_VERSION"));
    let submit = find(&all, "submit_pipeline").expect("the run is audited");
    assert_eq!(submit["actor_kind"], "api_token");
    assert_eq!(submit["actor"], sdk.as_str());
    assert_eq!(submit["target"], format!("run {}", run.trim_start_matches('r')));
    let submit_job = find(&all, "submit_job").expect("the job is audited");
    assert_eq!(submit_job["target"], format!("job {job}"));
    let cancel = find(&all, "cancel_job").expect("the cancel is audited");
    assert_eq!(cancel["target"], format!("job {job}"));
    assert_eq!(cancel["actor_kind"], "api_token");
    let mint = find(&all, "mint_token").unwrap();
    assert_eq!(mint["actor_kind"], "local");
    let uid = std::fs::metadata(&data)
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    assert_eq!(mint["actor"], format!("release-manager (uid {uid})"));
    let detail = mint["detail"].as_str().unwrap();
    assert!(
        detail.contains("dashboard") && detail.contains("viewer"),
        "{detail}"
    );
    assert!(
        !text(&minted.stdout).trim().is_empty() && !detail.contains(text(&minted.stdout).trim()),
        "the token itself is never recorded"
    );
    // Newest first.
    let ids: Vec<u64> = all.iter().map(|r| r["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let raw = server.vk(&["audit", "--json"]).await;
    assert!(!text(&raw.stdout).contains(SECRET), "{}", text(&raw.stdout));
    // Imported once: the inbox is emptied.
    let inbox: Vec<_> = std::fs::read_dir(data.join("audit-inbox")).unwrap().collect();
    assert!(inbox.is_empty(), "{inbox:?}");

    // Kept in the store: the same records after a restart, and the table.
    server.process.kill_now();
    let server = start();
    let out = server.vk(&["audit", "--json", "--limit", "1000"]).await;
    let again = records(&out.stdout);
    assert_eq!(again, all);
    let table = server.vk(&["audit", "--limit", "2"]).await;
    let table = text(&table.stdout);
    assert_eq!(table.lines().count(), 3, "a header and two records: {table}");
    assert!(table.contains("local:release-manager"), "{table}");
}
