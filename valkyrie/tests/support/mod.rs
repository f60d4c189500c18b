//! Shared helpers for the transport tests: one fixture that binds a listener
//! on any transport (with a development certificate for TLS and QUIC), and a
//! raw client that speaks bytes, for peers that misbehave on purpose.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use valkyrie::frame::{encode_to_vec, Flags, Frame, FrameDecoder};
use valkyrie::message::{Hello, JobDetails, JobInfo, JobState, Message, Role};
use valkyrie::transport::{
    connect, dev_certificate, ClientOptions, ClientTls, DevCertificate, Endpoint, Listener, ListenerOptions,
    ServerTls,
};
use valkyrie::{ConnectionConfig, Session};

/// Every test step waits at most this long for its event.
pub const STEP: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`STEP`].
pub async fn within<F: Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(STEP, fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Unix,
    Tcp,
    Tls,
    Quic,
}

pub const ALL: [Transport; 4] = [Transport::Unix, Transport::Tcp, Transport::Tls, Transport::Quic];

/// A temporary directory with a development certificate, and endpoints in it.
pub struct Fixture {
    dir: tempfile::TempDir,
    pub cert: DevCertificate,
    next_socket: AtomicUsize,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dev_certificate(dir.path(), &["localhost", "127.0.0.1"]).expect("dev certificate");
        Self {
            dir,
            cert,
            next_socket: AtomicUsize::new(0),
        }
    }

    /// An endpoint to bind: a fresh socket path, or 127.0.0.1 port 0.
    pub fn endpoint(&self, transport: Transport) -> Endpoint {
        let uri = match transport {
            Transport::Unix => {
                let n = self.next_socket.fetch_add(1, Ordering::Relaxed);
                format!("unix://{}", self.dir.path().join(format!("v{n}.sock")).display())
            }
            Transport::Tcp => "tcp://127.0.0.1:0".into(),
            Transport::Tls => "tls://127.0.0.1:0".into(),
            Transport::Quic => "quic://127.0.0.1:0".into(),
        };
        uri.parse().expect("endpoint")
    }

    pub fn listener_options(&self, config: ConnectionConfig) -> ListenerOptions {
        ListenerOptions {
            config,
            tls: Some(ServerTls::from_pem_files(&self.cert.cert, &self.cert.key).expect("server tls")),
            server_id: "test-server".into(),
            ..ListenerOptions::default()
        }
    }

    pub fn client_options(&self, config: ConnectionConfig) -> ClientOptions {
        ClientOptions {
            config,
            tls: Some(ClientTls::from_ca_file(&self.cert.cert).expect("client tls")),
        }
    }

    pub async fn bind(&self, transport: Transport, options: ListenerOptions) -> Listener {
        Listener::bind(&self.endpoint(transport), options)
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: bind: {e}"))
    }

    /// A listener on `transport` with the default settings, a client
    /// session connected to it with `hello(token)`, and the server's side
    /// of that session. The listener is returned to keep it open.
    pub async fn connected(&self, transport: Transport, token: &str) -> (Listener, Session, Session) {
        let mut listener = self
            .bind(transport, self.listener_options(ConnectionConfig::default()))
            .await;
        let client = within(
            "connect",
            connect(
                listener.local_endpoint(),
                hello(token),
                &self.client_options(ConnectionConfig::default()),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{transport:?}: connect: {e}"));
        let server = within("accept", listener.accept())
            .await
            .unwrap_or_else(|| panic!("{transport:?}: the listener stopped"));
        (listener, client, server)
    }

    /// A raw connection to `listener` that first writes `first_bytes`.
    pub async fn raw(&self, listener: &Listener, first_bytes: &[u8]) -> RawConn {
        RawConn::connect(listener.local_endpoint(), &self.cert, first_bytes).await
    }
}

pub fn hello(token: &str) -> Hello {
    valkyrie::transport::hello(Role::Client, token, "transport-test")
}

pub fn job_details(job_id: u64) -> JobDetails {
    JobDetails {
        job: JobInfo {
            job_id,
            name: "build".into(),
            project: "valkyrie".into(),
            priority: 5,
            tags: vec!["linux".into()],
            state: JobState::Running,
            attempt: 1,
            runner: Some("runner-1".into()),
            reason: String::new(),
            exit_code: None,
            submitted_at_ms: 1_700_000_000_000,
            started_at_ms: Some(1_700_000_000_500),
            finished_at_ms: None,
        },
        steps: Vec::new(),
    }
}

/// The encoded Hello frame a raw client opens with.
pub fn hello_frame(token: &str, heartbeat_interval_ms: u32) -> Vec<u8> {
    let mut h = hello(token);
    h.max_frame_bytes = 1 << 20;
    h.heartbeat_interval_ms = heartbeat_interval_ms;
    encode_to_vec(&Message::Hello(h), 0, Flags::NONE)
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A byte-level client on any transport. On QUIC it writes on the control
/// lane's stream and reads the server's control stream.
pub struct RawConn {
    io: Box<dyn Io>,
    decoder: FrameDecoder,
    reads: usize,
    // Keeps a QUIC connection (and its endpoint) alive.
    _quic: Option<(quinn::Endpoint, quinn::Connection)>,
}

impl RawConn {
    async fn connect(endpoint: &Endpoint, cert: &DevCertificate, first_bytes: &[u8]) -> RawConn {
        let mut quic = None;
        let mut io: Box<dyn Io> = match endpoint {
            Endpoint::Unix(path) => Box::new(tokio::net::UnixStream::connect(path).await.expect("unix")),
            Endpoint::Tcp(hp) => Box::new(
                tokio::net::TcpStream::connect((hp.host.as_str(), hp.port))
                    .await
                    .expect("tcp"),
            ),
            Endpoint::Tls(hp) => {
                let sock = tokio::net::TcpStream::connect((hp.host.as_str(), hp.port))
                    .await
                    .expect("tcp");
                let connector = tokio_rustls::TlsConnector::from(rustls_client_config(cert));
                let name = rustls::pki_types::ServerName::try_from(hp.host.clone()).expect("name");
                Box::new(
                    within("TLS handshake", connector.connect(name, sock))
                        .await
                        .expect("tls"),
                )
            }
            Endpoint::Quic(hp) => {
                let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("quic endpoint");
                let crypto =
                    quinn::crypto::rustls::QuicClientConfig::try_from((*rustls_client_config(cert)).clone())
                        .expect("quic crypto");
                ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
                let addr = format!("{}:{}", hp.host, hp.port).parse().unwrap();
                let conn = within("QUIC handshake", ep.connect(addr, &hp.host).expect("connect"))
                    .await
                    .expect("quic");
                let mut send = conn.open_uni().await.expect("open_uni");
                send.write_all(&[0]).await.expect("lane byte");
                send.write_all(first_bytes).await.expect("first bytes");
                let mut recv = within("server's control stream", conn.accept_uni())
                    .await
                    .expect("accept_uni");
                let mut lane = [0u8; 1];
                recv.read_exact(&mut lane).await.expect("lane byte");
                assert_eq!(lane[0], 0, "server's first stream is the control lane");
                quic = Some((ep, conn));
                return RawConn {
                    io: Box::new(tokio::io::join(recv, send)),
                    decoder: FrameDecoder::new(u32::MAX),
                    reads: 0,
                    _quic: quic,
                };
            }
        };
        io.write_all(first_bytes).await.expect("first bytes");
        RawConn {
            io,
            decoder: FrameDecoder::new(u32::MAX),
            reads: 0,
            _quic: quic,
        }
    }

    /// How many reads the connection has done so far.
    pub fn reads(&self) -> usize {
        self.reads
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// The next frame, or `None` at EOF (or a reset after the last frame).
    pub async fn frame(&mut self) -> Option<Frame> {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        loop {
            if let Some(frame) = self.decoder.next_frame().expect("server sends valid frames") {
                return Some(frame);
            }
            buf.clear();
            self.reads += 1;
            match within("a frame from the server", self.io.read_buf(&mut buf)).await {
                Ok(0) | Err(_) => {
                    assert_eq!(self.decoder.buffered(), 0, "stream ended inside a frame");
                    return None;
                }
                Ok(_) => self.decoder.extend(&buf),
            }
        }
    }

    /// The next message that is not a heartbeat Ping/Pong.
    pub async fn message(&mut self) -> Option<Message> {
        loop {
            let frame = self.frame().await?;
            match frame.message().expect("valid message") {
                Message::Ping(_) | Message::Pong(_) => continue,
                other => return Some(other),
            }
        }
    }
}

fn rustls_client_config(cert: &DevCertificate) -> Arc<rustls::ClientConfig> {
    let pem = std::fs::read(&cert.cert).expect("read cert");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![valkyrie::transport::ALPN.to_vec()];
    Arc::new(config)
}
