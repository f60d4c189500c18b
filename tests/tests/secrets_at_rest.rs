//! Secrets at rest, with the real binaries: a pipeline's secrets are sealed
//! before they reach the store (the redb file never holds their bytes), a
//! restart with the same key reads them back and the job still gets them,
//! and a server started with another key refuses to start, saying why.
//! Nothing `vk` prints (`status --json`, `jobs --json`, `logs`) shows them.

mod support;

use std::path::Path;

use support::{sh_path, text, wait_file, wait_until, within, Harness, MongoServer};

const SECRET: &str = "at-rest-secret-9137";

/// A pipeline whose job checks it got the secret (against `expected`, so
/// that the value is nowhere in the pipeline but its `secrets`) and leaves
/// a marker.
fn pipeline(expected: &Path, marker: &Path) -> String {
    format!(
        "name: sealed\nsecrets:\n  TOKEN: {SECRET}\njobs:\n  check:\n    steps:\n      - run: test \"$TOKEN\" = \"$(cat {})\" && echo \"got $TOKEN\" && touch {}\n",
        sh_path(expected),
        sh_path(marker)
    )
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_holds_secrets_sealed_across_a_restart() {
    secrets_survive_a_restart_sealed(&["--store", "embedded"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mongodb_store_holds_secrets_sealed_across_a_restart() {
    let mongo = MongoServer::start();
    let uri = mongo.uri();
    secrets_survive_a_restart_sealed(&["--store", &uri]).await;
}

async fn secrets_survive_a_restart_sealed(store: &[&str]) {
    let h = Harness::new();
    let data = h.path().join("data");
    let marker = h.path().join("got-the-secret");
    let file = h.path().join("sealed.yaml");
    let expected = h.path().join("expected");
    std::fs::write(&expected, SECRET).unwrap();
    std::fs::write(&file, pipeline(&expected, &marker)).unwrap();
    let socket = format!("unix://{}", h.path().join("sealed.sock").display());
    let start = || h.server().listen(&[&socket]).data_dir(&data).args(store).start();

    // Submitted with no agent: the run waits in the store.
    let mut server = start();
    let out = server.vk(&["run", "--detach", file.to_str().unwrap()]).await;
    assert!(out.status.success(), "vk run: {}", text(&out.stderr));
    let run = text(&out.stdout).trim().to_owned();
    server.process.kill_now();

    let key = data.join("secrets-key");
    assert!(key.is_file(), "the key is generated into the data directory");
    if store[1] == "embedded" {
        let bytes = std::fs::read(data.join("valkyrie.redb")).unwrap();
        assert!(
            !contains(&bytes, SECRET),
            "the redb file holds the secret in the clear"
        );
        assert!(
            contains(&bytes, "vk-sealed:1:"),
            "the redb file holds sealed values"
        );
    }

    // Another key: the server refuses to start, naming the key file.
    let other = h.path().join("other-key");
    std::fs::write(&other, "11".repeat(32)).unwrap();
    let mut command = tokio::process::Command::new(support::binary("valkyrie-server"));
    command
        .arg("--data-dir")
        .arg(&data)
        .arg("--listen")
        .arg(&socket)
        .arg("--secrets-key-file")
        .arg(&other)
        .args(store)
        .env_remove("VALKYRIE_SECRETS_KEY_FILE")
        .kill_on_drop(true);
    let refused = within("the server started with another key to exit", command.output())
        .await
        .unwrap();
    assert!(!refused.status.success());
    let stderr = text(&refused.stderr);
    assert!(
        stderr.contains("another secrets key") && stderr.contains("other-key"),
        "{stderr}"
    );
    let mut command = tokio::process::Command::new(support::binary("valkyrie-server"));
    command
        .arg("--data-dir")
        .arg(&data)
        .arg("--secrets-key-file")
        .arg(h.path().join("missing-key"))
        .args(store)
        .kill_on_drop(true);
    let missing = within(
        "the server started with a missing key file to exit",
        command.output(),
    )
    .await
    .unwrap();
    assert!(!missing.status.success());
    assert!(
        text(&missing.stderr).contains("cannot read the secrets key file"),
        "{}",
        text(&missing.stderr)
    );

    // The same key: the run is read back and its job gets the secret.
    let server = start();
    let client = server.client().await;
    let _agent = h.agent(&server).start(&client).await;
    wait_file(&marker).await;
    let status = wait_until("the run to succeed", || async {
        let out = server.vk(&["status", &run, "--json"]).await;
        let body = text(&out.stdout);
        body.contains("\"succeeded\"").then_some(body)
    })
    .await;
    assert!(
        !status.contains(SECRET),
        "vk status --json shows the secret: {status}"
    );
    let jobs = server.vk(&["jobs", "--json"]).await;
    assert!(!contains(&jobs.stdout, SECRET), "{}", text(&jobs.stdout));
    let logs = server.vk(&["logs", "1"]).await;
    assert!(
        text(&logs.stdout).contains("got ***"),
        "the job's output is masked: {}",
        text(&logs.stdout)
    );
    assert!(!contains(&logs.stdout, SECRET));
    assert!(
        !server.process.log().contains(SECRET),
        "the server's log shows the secret"
    );
}
