//! Every file and directory the server and the agent create is private to
//! their user (files 0600, directories 0700), with the real binaries (run
//! under the test's umask, typically 022): the data directory (and parents
//! it had to make), tokens, jwt-secret, the secrets key, the store, the
//! development certificate and key; the agent's work directory and job
//! workspaces.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use support::{text, Harness};

/// (path, mode) of `root` and everything under it, sockets excepted.
fn modes(root: &Path) -> Vec<(PathBuf, u32, bool)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_socket() {
            continue;
        }
        out.push((path.clone(), meta.permissions().mode() & 0o777, meta.is_dir()));
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).unwrap() {
                stack.push(entry.unwrap().path());
            }
        }
    }
    out
}

fn assert_private(root: &Path, skip: impl Fn(&Path) -> bool) -> usize {
    let mut checked = 0;
    for (path, mode, is_dir) in modes(root) {
        if skip(&path) {
            continue;
        }
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(mode, want, "{} is {mode:o}, not {want:o}", path.display());
        checked += 1;
    }
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_and_agent_create_only_private_files() {
    let h = Harness::new();
    let data = h.path().join("made/by/server");
    let socket = format!("unix://{}", h.path().join("p.sock").display());
    let server = h
        .server()
        .listen(&[&socket, "tls://127.0.0.1:0"])
        .data_dir(&data)
        .args(&["--http", "127.0.0.1:0"])
        .start();
    let client = server.client().await;
    let agent = h.agent(&server).start(&client).await;
    // The job reports its workspace's mode (workspaces go when jobs end).
    let out = server.vk(&["exec", "--", "stat", "-c", "%a", "."]).await;
    assert_eq!(
        text(&out.stdout),
        "700\n",
        "the job workspace: {}",
        text(&out.stderr)
    );

    let files = assert_private(&h.path().join("made"), |_| false);
    for name in [
        "api-token",
        "runner-token",
        "jwt-secret",
        "secrets-key",
        "valkyrie.redb",
        "dev-cert.pem",
        "dev-key.pem",
    ] {
        assert!(data.join(name).is_file(), "{name} was made");
    }
    assert!(files >= 10, "checked {files} entries");

    // The agent's work directory (what jobs write in their workspaces is
    // their business: their own umask).
    let work = h.path().join(format!("work-{}", agent.name));
    let mode = std::fs::metadata(&work).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} is {mode:o}", work.display());
}
