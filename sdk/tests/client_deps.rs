//! The client alone (`default-features = false`) compiles without the
//! server and the agent: none of their crates, nor the heavy dependencies
//! only they need, is in its dependency graph.

use std::process::Command;

/// Crates a program that only submits and watches jobs must not compile.
const SERVER_SIDE: [&str; 7] = [
    "valkyrie-control-plane",
    "valkyrie-runner-agent",
    "axum",
    "mongodb",
    "redb",
    "bollard",
    "jsonwebtoken",
];

fn tree(features: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "tree",
            "--offline",
            "--locked",
            "-p",
            "valkyrie-sdk",
            "-e",
            "normal",
        ])
        .args(["--prefix", "none", "--format", "{p}"])
        .args(features);
    let out = cmd.output().expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

#[test]
fn the_client_alone_has_no_server_dependencies() {
    let client = tree(&["--no-default-features"]);
    assert!(
        client.iter().any(|c| c == "valkyrie"),
        "the protocol crate is there: {client:?}"
    );
    for name in SERVER_SIDE {
        assert!(
            !client.iter().any(|c| c == name),
            "{name} is in the client's graph"
        );
    }
    // The check can fail: the default features (the vk program) do pull them in.
    let cli = tree(&[]);
    assert!(cli.iter().any(|c| c == "valkyrie-control-plane"), "{cli:?}");
}
