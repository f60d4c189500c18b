//! The baselines: plain sockets with no Valkyrie framing, session layer or
//! scheduling. A 64-byte ping-pong (client → echo), and a two-hop relay
//! (client → middle → worker → middle → client), one message in flight;
//! and the relay with as many messages in flight as the dispatch load
//! (one connection chain each), so that its throughput can be compared.
//! Unix and TCP use plain tokio sockets; QUIC uses one raw quinn
//! bidirectional stream per connection (the same library and TLS setup the
//! `quic://` transport uses), since there is no "plain" QUIC socket.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::runtime::Handle;

use crate::stats::Summary;
use crate::wait::WakeMode;
use crate::Transport;

/// Size of every baseline message.
pub const MESSAGE_BYTES: usize = 64;

/// One bidirectional byte stream.
pub struct Duplex {
    read: Box<dyn AsyncRead + Send + Unpin>,
    write: Box<dyn AsyncWrite + Send + Unpin>,
    /// Keeps a QUIC connection open as long as its stream is used.
    _connection: Option<quinn::Connection>,
}

impl Duplex {
    async fn read_message(&mut self, buf: &mut [u8; MESSAGE_BYTES]) -> std::io::Result<()> {
        self.read.read_exact(buf).await.map(|_| ())
    }

    async fn write_message(&mut self, buf: &[u8; MESSAGE_BYTES]) -> std::io::Result<()> {
        self.write.write_all(buf).await?;
        self.write.flush().await
    }
}

/// Where a raw server listens.
#[derive(Clone, Debug)]
pub enum RawAddr {
    Unix(PathBuf),
    Tcp(SocketAddr),
    Quic(SocketAddr),
}

enum RawListener {
    Unix(tokio::net::UnixListener),
    Tcp(tokio::net::TcpListener),
    Quic(quinn::Endpoint),
}

/// TLS material for the raw QUIC baseline (the same development
/// certificate the control plane uses).
#[derive(Clone)]
pub struct QuicTls {
    server: Arc<quinn::crypto::rustls::QuicServerConfig>,
    client: Arc<quinn::crypto::rustls::QuicClientConfig>,
}

impl QuicTls {
    pub fn from_dev_certificate(cert: &Path, key: &Path) -> anyhow::Result<Self> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certs: Vec<_> =
            rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice()).collect::<Result<_, _>>()?;
        let private_key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
            .context("the development key file holds no key")?;
        let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(certs.clone(), private_key)?;
        server.alpn_protocols = vec![b"bench-raw".to_vec()];
        let mut roots = rustls::RootCertStore::empty();
        for c in certs {
            roots.add(c)?;
        }
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"bench-raw".to_vec()];
        Ok(Self {
            server: Arc::new(quinn::crypto::rustls::QuicServerConfig::try_from(server)?),
            client: Arc::new(quinn::crypto::rustls::QuicClientConfig::try_from(client)?),
        })
    }
}

/// Opens raw connections; holds the QUIC client endpoint (one per runtime).
pub struct Connector {
    quic: Option<quinn::Endpoint>,
}

impl Connector {
    /// Must be called inside the runtime the connections will live on.
    pub fn new(tls: Option<&QuicTls>) -> anyhow::Result<Self> {
        let quic = match tls {
            Some(tls) => {
                let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
                endpoint.set_default_client_config(quinn::ClientConfig::new(tls.client.clone()));
                Some(endpoint)
            }
            None => None,
        };
        Ok(Self { quic })
    }

    pub async fn connect(&self, addr: &RawAddr) -> anyhow::Result<Duplex> {
        Ok(match addr {
            RawAddr::Unix(path) => {
                let (r, w) = tokio::net::UnixStream::connect(path).await?.into_split();
                Duplex {
                    read: Box::new(r),
                    write: Box::new(w),
                    _connection: None,
                }
            }
            RawAddr::Tcp(addr) => {
                let sock = tokio::net::TcpStream::connect(addr).await?;
                sock.set_nodelay(true)?;
                let (r, w) = sock.into_split();
                Duplex {
                    read: Box::new(r),
                    write: Box::new(w),
                    _connection: None,
                }
            }
            RawAddr::Quic(addr) => {
                let endpoint = self.quic.as_ref().context("no QUIC client endpoint")?;
                let connection = endpoint.connect(*addr, "localhost")?.await?;
                let (w, r) = connection.open_bi().await?;
                Duplex {
                    read: Box::new(r),
                    write: Box::new(w),
                    _connection: Some(connection),
                }
            }
        })
    }
}

impl RawListener {
    async fn bind(
        transport: Transport,
        dir: &Path,
        name: &str,
        tls: Option<&QuicTls>,
    ) -> anyhow::Result<(Self, RawAddr)> {
        Ok(match transport {
            Transport::Unix => {
                let path = dir.join(format!("{name}.sock"));
                let listener = tokio::net::UnixListener::bind(&path)?;
                (RawListener::Unix(listener), RawAddr::Unix(path))
            }
            Transport::Tcp => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?;
                (RawListener::Tcp(listener), RawAddr::Tcp(addr))
            }
            Transport::Quic => {
                let tls = tls.context("QUIC needs TLS material")?;
                let config = quinn::ServerConfig::with_crypto(tls.server.clone());
                let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse()?)?;
                let addr = endpoint.local_addr()?;
                (RawListener::Quic(endpoint), RawAddr::Quic(addr))
            }
        })
    }

    async fn accept(&self) -> anyhow::Result<Accepted> {
        Ok(match self {
            RawListener::Unix(l) => {
                let (r, w) = l.accept().await?.0.into_split();
                Accepted::Ready(Duplex {
                    read: Box::new(r),
                    write: Box::new(w),
                    _connection: None,
                })
            }
            RawListener::Tcp(l) => {
                let sock = l.accept().await?.0;
                sock.set_nodelay(true)?;
                let (r, w) = sock.into_split();
                Accepted::Ready(Duplex {
                    read: Box::new(r),
                    write: Box::new(w),
                    _connection: None,
                })
            }
            RawListener::Quic(endpoint) => {
                Accepted::Quic(Box::new(endpoint.accept().await.context("QUIC endpoint closed")?))
            }
        })
    }
}

/// An accepted connection, opened by the task that serves it. A QUIC
/// connection's stream reaches the server only with the client's first
/// message: had the accept loop waited for it, a client that connects
/// several times before it sends (the relay at many in flight) would wait
/// forever for its second handshake.
enum Accepted {
    Ready(Duplex),
    Quic(Box<quinn::Incoming>),
}

impl Accepted {
    async fn open(self) -> anyhow::Result<Duplex> {
        match self {
            Accepted::Ready(duplex) => Ok(duplex),
            Accepted::Quic(incoming) => {
                let connection = (*incoming).await?;
                // The client's first message opens the stream for us.
                let (w, r) = connection.accept_bi().await?;
                Ok(Duplex {
                    read: Box::new(r),
                    write: Box::new(w),
                    _connection: Some(connection),
                })
            }
        }
    }
}

/// The raw servers, running on the system runtime.
pub struct RawServers {
    /// Echo server for the ping-pong.
    pub echo: RawAddr,
    /// The middle hop of the relay (which forwards to a worker).
    pub relay: RawAddr,
}

/// Starts an echo server, a worker (also an echo) and a middle hop that
/// forwards each message to the worker and the answer back. Every task is
/// spawned on `system` so the baselines cross the same runtime boundary as
/// the client → control plane → agent path.
pub async fn start_servers(
    system: &Handle,
    transport: Transport,
    dir: PathBuf,
    tls: Option<QuicTls>,
) -> anyhow::Result<RawServers> {
    system
        .spawn(async move {
            let (echo, echo_addr) = RawListener::bind(transport, &dir, "echo", tls.as_ref()).await?;
            let (worker, worker_addr) = RawListener::bind(transport, &dir, "worker", tls.as_ref()).await?;
            let (middle, relay_addr) = RawListener::bind(transport, &dir, "relay", tls.as_ref()).await?;
            tokio::spawn(serve_echo(echo));
            tokio::spawn(serve_echo(worker));
            let connector = Connector::new(tls.as_ref())?;
            tokio::spawn(serve_relay(middle, connector, worker_addr));
            anyhow::Ok(RawServers {
                echo: echo_addr,
                relay: relay_addr,
            })
        })
        .await?
}

async fn serve_echo(listener: RawListener) {
    while let Ok(accepted) = listener.accept().await {
        tokio::spawn(async move {
            let Ok(mut conn) = accepted.open().await else {
                return;
            };
            let mut buf = [0u8; MESSAGE_BYTES];
            while conn.read_message(&mut buf).await.is_ok() {
                if conn.write_message(&buf).await.is_err() {
                    break;
                }
            }
        });
    }
}

async fn serve_relay(listener: RawListener, connector: Connector, worker: RawAddr) {
    let connector = Arc::new(connector);
    while let Ok(accepted) = listener.accept().await {
        let connector = connector.clone();
        let worker = worker.clone();
        tokio::spawn(async move {
            let Ok(mut client) = accepted.open().await else {
                return;
            };
            let Ok(mut upstream) = connector.connect(&worker).await else {
                return;
            };
            let mut buf = [0u8; MESSAGE_BYTES];
            while client.read_message(&mut buf).await.is_ok() {
                if upstream.write_message(&buf).await.is_err()
                    || upstream.read_message(&mut buf).await.is_err()
                    || client.write_message(&buf).await.is_err()
                {
                    break;
                }
            }
        });
    }
}

/// One message in flight: `iterations` timed round trips after `warmup`
/// untimed ones ([`ping_pong_in_flight`] with one client).
pub async fn ping_pong(
    connector: &Connector,
    addr: &RawAddr,
    warmup: usize,
    iterations: usize,
    mode: WakeMode,
) -> anyhow::Result<Summary> {
    ping_pong_in_flight(connector, addr, warmup, iterations, 1, mode).await
}

/// `concurrency` clients at once, each on its own connection (and so its
/// own chain through a relay), each doing its share of `iterations` timed
/// round trips after its share of `warmup`. The rate is every round trip
/// over the wall time.
pub async fn ping_pong_in_flight(
    connector: &Connector,
    addr: &RawAddr,
    warmup: usize,
    iterations: usize,
    concurrency: usize,
    mode: WakeMode,
) -> anyhow::Result<Summary> {
    let concurrency = concurrency.max(1);
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(connector.connect(addr).await?);
    }
    let start = Arc::new(tokio::sync::Barrier::new(concurrency + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let share = |n: usize| n / concurrency + usize::from(i < n % concurrency);
        let (warmup, iterations) = (share(warmup), share(iterations));
        let start = start.clone();
        tasks.spawn(async move {
            let mut buf = [7u8; MESSAGE_BYTES];
            for _ in 0..warmup {
                conn.write_message(&buf).await?;
                mode.wait(conn.read_message(&mut buf)).await?;
            }
            start.wait().await;
            let mut samples = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let t0 = Instant::now();
                conn.write_message(&buf).await?;
                mode.wait(conn.read_message(&mut buf)).await?;
                samples.push(t0.elapsed().as_nanos() as u64);
            }
            anyhow::Ok(samples)
        });
    }
    start.wait().await;
    let started = Instant::now();
    let mut samples = Vec::with_capacity(iterations);
    while let Some(done) = tasks.join_next().await {
        samples.extend(done??);
    }
    let wall = started.elapsed();
    tokio::time::sleep(Duration::from_millis(50)).await;
    Ok(Summary::new(samples, wall))
}
