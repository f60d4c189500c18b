//! A measurement, not a test (ignored; run by hand, see README
//! "Artifacts"): artifact throughput agent → control plane → agent over
//! unix and tcp, next to a plain socket copy of as many bytes in the same
//! run, and the peak RSS (VmHWM) of the server and the agent.
//!
//! ```sh
//! cargo build --release --bins && \
//!   VKBENCH_MIB=1024 cargo test --release -p valkyrie-tests --test artifacts_bench -- --ignored --nocapture
//! ```

mod support;

use std::time::{Duration, Instant};

use support::{text, wait_until_within, Harness};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkyrie_sdk::RunState;

fn size_bytes() -> u64 {
    std::env::var("VKBENCH_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20
}

/// Copies `bytes` from one end of a connected socket to the other,
/// through 512 KiB buffers; returns MB/s.
async fn socket_copy<R, W>(mut reader: R, mut writer: W, bytes: u64) -> f64
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let started = Instant::now();
    let write = tokio::spawn(async move {
        let buf = vec![7u8; 512 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            writer.write_all(&buf[..n]).await.unwrap();
            left -= n as u64;
        }
        writer.shutdown().await.unwrap();
    });
    let mut buf = vec![0u8; 512 << 10];
    let mut got = 0u64;
    loop {
        let n = reader.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    write.await.unwrap();
    assert_eq!(got, bytes);
    bytes as f64 / started.elapsed().as_secs_f64() / 1e6
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// "in 1.234 s (123.4 MB/s)" → 123.4.
fn rate_in(log: &str, marker: &str) -> f64 {
    let line = log
        .lines()
        .find(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("no `{marker}` line in:\n{log}"));
    let mbs = line
        .rsplit('(')
        .next()
        .unwrap()
        .trim_end_matches(')')
        .trim_end_matches(" MB/s");
    mbs.parse()
        .unwrap_or_else(|_| panic!("cannot read the rate of {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: run by hand (see the module doc)"]
async fn artifact_throughput_and_peak_memory() {
    let bytes = size_bytes();
    let mib = bytes >> 20;
    let h = Harness::new();
    println!("artifact of {mib} MiB; rates in MB/s (10^6 bytes per second)");
    println!(
        "transport | socket copy | upload agent→server | download server→agent | server VmHWM | agent VmHWM"
    );
    for kind in ["unix", "tcp"] {
        let baseline = if kind == "unix" {
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            let (ar, _aw) = a.into_split();
            let (_br, bw) = b.into_split();
            socket_copy(ar, bw, bytes).await
        } else {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (client, accepted) = tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
            let (ar, _aw) = client.unwrap().into_split();
            let (_br, bw) = accepted.unwrap().0.into_split();
            socket_copy(ar, bw, bytes).await
        };
        let listen = if kind == "unix" {
            format!("unix://{}", h.path().join("bench.sock").display())
        } else {
            "tcp://127.0.0.1:0".to_owned()
        };
        let server = h
            .server()
            .listen(&[&listen])
            .data_dir(h.path().join(format!("data-{kind}")))
            .args(&[
                "--max-artifact-bytes",
                &(2 * bytes).to_string(),
                "--durability",
                "none",
            ])
            .start();
        let client = server.client().await;
        let agent = h
            .agent(&server)
            .name(&format!("bench-{kind}"))
            .args(&["--max-artifact-bytes", &(2 * bytes).to_string()])
            .start(&client)
            .await;
        let yaml = format!(
            "jobs:\n  produce:\n    steps:\n      - run: mkdir a && head -c {bytes} /dev/urandom > a/blob\n    artifacts:\n      paths: [a]\n  consume:\n    needs: [produce]\n    steps:\n      - run: test $(stat -c %s a/blob) = {bytes}\n"
        );
        let run_id = client.submit_pipeline("bench.yaml", &yaml).await.unwrap();
        let run = wait_until_within("the bench run", Duration::from_secs(900), || async {
            let run = client.run(run_id).await.ok()?;
            run.state.is_terminal().then_some(run)
        })
        .await;
        let log = |name: &str| {
            let id = run.jobs.iter().find(|j| j.name == name).unwrap().job_id.unwrap();
            let server = &server;
            async move { text(&server.vk(&["logs", &id.to_string()]).await.stdout) }
        };
        let (produce, consume) = (log("produce").await, log("consume").await);
        assert_eq!(run.state, RunState::Succeeded, "{produce}\n{consume}");
        let up = rate_in(&produce, "uploaded artifacts");
        let down = rate_in(&consume, "downloaded the artifacts");
        println!(
            "{kind} | {baseline:.0} | {up:.0} | {down:.0} | {} MiB | {} MiB",
            vm_hwm_kib(server.process.pid()) >> 10,
            vm_hwm_kib(agent.process.pid()) >> 10
        );
    }
}
