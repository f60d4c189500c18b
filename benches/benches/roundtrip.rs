//! Request/response round trip over a valkyrie Session (client `request(GetJob)`
//! → server replies `JobDetails`) next to a raw-socket ping-pong of 32 bytes on
//! the same transport, in one criterion group per transport, so the protocol's
//! overhead reads as a ratio.
//!
//! QUIC's baseline is a UDP datagram echo, not a raw quinn stream: quinn is
//! not a dependency of this crate (only of valkyrie). A quinn baseline needs
//! `quinn` and `rustls` as dev-dependencies in benches/Cargo.toml.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::runtime::Runtime;
use valkyrie::message::{GetJob, JobDetails, JobInfo, JobState, Message, Role};
use valkyrie::transport::{
    connect, dev_certificate, hello, ClientOptions, ClientTls, Endpoint, Listener, ListenerOptions,
    ServerTls, SessionSender,
};

fn details(job_id: u64) -> JobDetails {
    JobDetails {
        job: JobInfo {
            job_id,
            name: "build".into(),
            project: "bench".into(),
            priority: 5,
            tags: vec![],
            state: JobState::Running,
            attempt: 1,
            runner: None,
            reason: String::new(),
            exit_code: None,
            submitted_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
        },
        steps: Vec::new(),
    }
}

struct Tls {
    server: ServerTls,
    client: ClientTls,
}

/// Binds a valkyrie listener answering every GetJob; returns a client sender.
async fn valkyrie_pair(endpoint: Endpoint, tls: &Tls) -> SessionSender {
    let options = ListenerOptions {
        tls: Some(tls.server.clone()),
        ..ListenerOptions::default()
    };
    let mut listener = Listener::bind(&endpoint, options).await.expect("bind");
    let local = listener.local_endpoint().clone();
    let client_options = ClientOptions {
        tls: Some(tls.client.clone()),
        ..ClientOptions::default()
    };
    let client = connect(&local, hello(Role::Client, "bench", "bench"), &client_options)
        .await
        .expect("connect");
    let mut server = listener.accept().await.expect("accept");
    tokio::spawn(async move {
        let _listener = listener;
        let tx = server.sender();
        while let Some(req) = server.recv().await {
            if let Message::GetJob(GetJob { job_id }) = req.message {
                let _ = tx.reply(req.correlation, details(job_id)).await;
            }
        }
    });
    let sender = client.sender();
    // Keep the session alive for the whole run.
    std::mem::forget(client);
    sender
}

/// A plain-socket echo of 32-byte messages.
async fn raw_stream_echo<S>(server: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut s = server;
    let mut buf = [0u8; 32];
    while s.read_exact(&mut buf).await.is_ok() {
        if s.write_all(&buf).await.is_err() {
            return;
        }
    }
}

fn bench_roundtrip(c: &mut Criterion) {
    let rt = Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let cert = dev_certificate(dir.path(), &["localhost", "127.0.0.1"]).expect("cert");
    let tls = Tls {
        server: ServerTls::from_pem_files(&cert.cert, &cert.key).expect("server tls"),
        client: ClientTls::from_ca_file(&cert.cert).expect("client tls"),
    };

    // ---- unix ----
    {
        let mut group = c.benchmark_group("roundtrip/unix");
        let path = dir.path().join("v.sock");
        let sender = rt.block_on(valkyrie_pair(
            format!("unix://{}", path.display()).parse().unwrap(),
            &tls,
        ));
        group.bench_function("valkyrie_request", |b| {
            b.iter(|| rt.block_on(sender.request(GetJob { job_id: 1 })).unwrap())
        });
        let raw_path = dir.path().join("raw.sock");
        let mut client = rt.block_on(async {
            let listener = tokio::net::UnixListener::bind(&raw_path).unwrap();
            let client = tokio::net::UnixStream::connect(&raw_path).await.unwrap();
            let (server, _) = listener.accept().await.unwrap();
            tokio::spawn(raw_stream_echo(server));
            client
        });
        group.bench_function("raw_pingpong_32b", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut buf = [7u8; 32];
                    client.write_all(&buf).await.unwrap();
                    client.read_exact(&mut buf).await.unwrap();
                })
            })
        });
        group.finish();
    }

    // ---- tcp ----
    {
        let mut group = c.benchmark_group("roundtrip/tcp");
        let sender = rt.block_on(valkyrie_pair("tcp://127.0.0.1:0".parse().unwrap(), &tls));
        group.bench_function("valkyrie_request", |b| {
            b.iter(|| rt.block_on(sender.request(GetJob { job_id: 1 })).unwrap())
        });
        let mut client = rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            client.set_nodelay(true).unwrap();
            let (server, _) = listener.accept().await.unwrap();
            server.set_nodelay(true).unwrap();
            tokio::spawn(raw_stream_echo(server));
            client
        });
        group.bench_function("raw_pingpong_32b", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut buf = [7u8; 32];
                    client.write_all(&buf).await.unwrap();
                    client.read_exact(&mut buf).await.unwrap();
                })
            })
        });
        group.finish();
    }

    // ---- quic ----
    {
        let mut group = c.benchmark_group("roundtrip/quic");
        let sender = rt.block_on(valkyrie_pair("quic://127.0.0.1:0".parse().unwrap(), &tls));
        group.bench_function("valkyrie_request", |b| {
            b.iter(|| rt.block_on(sender.request(GetJob { job_id: 1 })).unwrap())
        });
        // The baseline is a plain UDP datagram echo: this crate cannot depend
        // on quinn directly (see the module doc), and UDP is the floor QUIC
        // itself runs on.
        let client = rt.block_on(async {
            let server = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
            client.connect(server.local_addr().unwrap()).await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while let Ok((n, from)) = server.recv_from(&mut buf).await {
                    let _ = server.send_to(&buf[..n], from).await;
                }
            });
            client
        });
        group.bench_function("raw_udp_pingpong_32b", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut buf = [7u8; 32];
                    client.send(&buf).await.unwrap();
                    client.recv(&mut buf).await.unwrap();
                })
            })
        });
        group.finish();
    }
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! { name = benches; config = config(); targets = bench_roundtrip }
criterion_main!(benches);
