//! [`Listener`]: accepts connections on any transport, runs the handshake
//! (asking the application's [`Authenticator`] about each Hello), enforces the
//! connection limit, and yields established [`Session`]s. Whatever one peer
//! sends, the listener keeps serving the others: every connection runs in its
//! own task and every failure ends only that connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info_span, warn, Instrument};

use super::quic::drive_quic;
use super::session::{session_pair, Authenticator, Handshake, Redirector};
use super::stream::{discard_until_eof, drive_stream, DriverSetup, CLOSE_LINGER};
use super::tls::ServerTls;
use super::{Endpoint, HostPort, Session};
use crate::connection::{Connection, ConnectionConfig};
use crate::frame::{encode_frame, ErrorCode, Flags, Lane, MIN_MAX_FRAME_BYTES};
use crate::message::{Close, Message};

/// How to listen.
#[derive(Clone)]
pub struct ListenerOptions {
    /// Connection limits and timers.
    pub config: ConnectionConfig,
    /// Certificate and key for `tls://` and `quic://`.
    pub tls: Option<ServerTls>,
    /// Connections served at once; more are refused with CONNECTION_LIMIT.
    pub max_connections: usize,
    /// Server id sent in Welcome.
    pub server_id: String,
    /// Decides on each Hello; `None` accepts every Hello.
    pub authenticate: Option<Authenticator>,
    /// Asked about each Hello that `authenticate` accepted: `Some` answers
    /// it with a Redirect to the group's leader (a standby, spec §6.4).
    pub redirect: Option<Redirector>,
}

impl Default for ListenerOptions {
    fn default() -> Self {
        Self {
            config: ConnectionConfig::default(),
            tls: None,
            max_connections: 10_000,
            server_id: "valkyrie".into(),
            authenticate: None,
            redirect: None,
        }
    }
}

/// Why binding failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The endpoint needs a certificate that was not given.
    #[error("{0} needs a TLS certificate and key")]
    MissingTls(Endpoint),
    /// The address could not be bound.
    #[error("cannot listen on {endpoint}: {source}")]
    Io {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        source: std::io::Error,
    },
}

/// A bound listener. Dropping it stops accepting (established sessions live on).
pub struct Listener {
    endpoint: Endpoint,
    sessions: mpsc::Receiver<Session>,
    task: tokio::task::JoinHandle<()>,
    socket_path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(path) = &self.socket_path {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl Listener {
    /// Binds `endpoint`. Port 0 picks a free port: see [`local_endpoint`](Self::local_endpoint).
    pub async fn bind(endpoint: &Endpoint, options: ListenerOptions) -> Result<Listener, BindError> {
        let io = |source| BindError::Io {
            endpoint: endpoint.clone(),
            source,
        };
        let (tx, rx) = mpsc::channel(128);
        let limit = Arc::new(Semaphore::new(options.max_connections));
        let options = Arc::new(options);
        let mut socket_path = None;
        let (local, task) = match endpoint {
            Endpoint::Unix(path) => {
                // A stale socket file from a previous run would make bind fail.
                if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
                    let _ = std::fs::remove_file(path);
                }
                let listener = tokio::net::UnixListener::bind(path).map_err(io)?;
                socket_path = Some(path.clone());
                let task = tokio::spawn(async move {
                    loop {
                        let sock = match listener.accept().await {
                            Ok((sock, _)) => sock,
                            Err(err) => {
                                accept_failed(&err).await;
                                continue;
                            }
                        };
                        let (r, w) = sock.into_split();
                        serve_stream(r, w, "unix".into(), "unix", &options, &limit, &tx);
                    }
                });
                (endpoint.clone(), task)
            }
            Endpoint::Tcp(hp) | Endpoint::Tls(hp) => {
                let tls = match endpoint {
                    Endpoint::Tls(_) => Some(
                        options
                            .tls
                            .clone()
                            .ok_or_else(|| BindError::MissingTls(endpoint.clone()))?,
                    ),
                    _ => None,
                };
                let listener = tokio::net::TcpListener::bind((hp.host.as_str(), hp.port))
                    .await
                    .map_err(io)?;
                let addr = listener.local_addr().map_err(io)?;
                let local = with_port(endpoint, addr);
                let task = tokio::spawn(async move {
                    loop {
                        let (sock, peer) = match listener.accept().await {
                            Ok(accepted) => accepted,
                            Err(err) => {
                                accept_failed(&err).await;
                                continue;
                            }
                        };
                        let _ = sock.set_nodelay(true);
                        match &tls {
                            None => {
                                let (r, w) = sock.into_split();
                                serve_stream(r, w, peer.to_string(), "tcp", &options, &limit, &tx);
                            }
                            Some(tls) => {
                                let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
                                let (options, limit, tx) = (options.clone(), limit.clone(), tx.clone());
                                tokio::spawn(async move {
                                    let timeout = options.config.handshake_timeout_value();
                                    match tokio::time::timeout(timeout, acceptor.accept(sock)).await {
                                        Ok(Ok(tls_stream)) => {
                                            let (r, w) = tokio::io::split(tls_stream);
                                            serve_stream(
                                                r,
                                                w,
                                                peer.to_string(),
                                                "tls",
                                                &options,
                                                &limit,
                                                &tx,
                                            );
                                        }
                                        Ok(Err(err)) => debug!(%peer, %err, "TLS handshake failed"),
                                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                                    }
                                });
                            }
                        }
                    }
                });
                (local, task)
            }
            Endpoint::Quic(hp) => {
                let tls = options
                    .tls
                    .clone()
                    .ok_or_else(|| BindError::MissingTls(endpoint.clone()))?;
                let crypto = quinn::crypto::rustls::QuicServerConfig::try_from((*tls.config).clone())
                    .map_err(|e| io(std::io::Error::other(e.to_string())))?;
                let server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                let addr = tokio::net::lookup_host((hp.host.as_str(), hp.port))
                    .await
                    .map_err(io)?
                    .next()
                    .ok_or_else(|| io(std::io::Error::other("address did not resolve")))?;
                let quic = quinn::Endpoint::server(server_config, addr).map_err(io)?;
                let local = with_port(endpoint, quic.local_addr().map_err(io)?);
                let task = tokio::spawn(async move {
                    while let Some(incoming) = quic.accept().await {
                        let (options, limit, tx) = (options.clone(), limit.clone(), tx.clone());
                        tokio::spawn(async move {
                            let peer = incoming.remote_address().to_string();
                            let Ok(conn) = incoming.await else { return };
                            let Ok(permit) = limit.clone().try_acquire_owned() else {
                                refuse_quic_at_limit(conn).await;
                                return;
                            };
                            let span = info_span!("connection", transport = "quic", %peer, side = "server");
                            let (setup, parts, hs) = server_setup(&options, peer, 3);
                            tokio::spawn(
                                async move {
                                    drive_quic(conn, setup).await;
                                    drop(permit);
                                }
                                .instrument(span),
                            );
                            deliver(parts, hs, &tx).await;
                        });
                    }
                });
                (local, task)
            }
        };
        Ok(Listener {
            endpoint: local,
            sessions: rx,
            task,
            socket_path,
        })
    }

    /// The endpoint actually bound (with the real port when 0 was asked).
    pub fn local_endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The next established session; `None` if the listener stopped.
    pub async fn accept(&mut self) -> Option<Session> {
        self.sessions.recv().await
    }
}

/// Accept errors (EMFILE, ENFILE, ECONNABORTED) are per connection or
/// transient: log, pause briefly so a full fd table does not spin a core, and
/// keep listening.
async fn accept_failed(err: &std::io::Error) {
    warn!(%err, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

const LIMIT_REASON: &str = "server is at its connection limit; try again later";

fn limit_close_frame() -> BytesMut {
    let mut buf = BytesMut::new();
    let close = Message::Close(Close {
        code: ErrorCode::CONNECTION_LIMIT,
        reason: LIMIT_REASON.into(),
    });
    let _ = encode_frame(&close, 0, Flags::NONE, MIN_MAX_FRAME_BYTES, &mut buf);
    buf
}

/// spec: a refusal is a Close frame with a code and reason; on QUIC it travels
/// on the control lane's stream like any other Close, before the connection
/// itself is closed (with the same code, for peers that did not read it).
async fn refuse_quic_at_limit(conn: quinn::Connection) {
    let send = async {
        let mut stream = conn.open_uni().await.ok()?;
        stream.write_all(&[Lane::Control as u8]).await.ok()?;
        stream.write_all(&limit_close_frame()).await.ok()?;
        stream.finish().ok()?;
        // Wait until the peer has the bytes: closing first would discard them.
        stream.stopped().await.ok()
    };
    let _ = tokio::time::timeout(CLOSE_LINGER, send).await;
    conn.close(ErrorCode::CONNECTION_LIMIT.0.into(), LIMIT_REASON.as_bytes());
}

fn with_port(endpoint: &Endpoint, addr: SocketAddr) -> Endpoint {
    let hp = |hp: &HostPort| HostPort {
        host: hp.host.clone(),
        port: addr.port(),
    };
    match endpoint {
        Endpoint::Tcp(h) => Endpoint::Tcp(hp(h)),
        Endpoint::Tls(h) => Endpoint::Tls(hp(h)),
        Endpoint::Quic(h) => Endpoint::Quic(hp(h)),
        Endpoint::Unix(p) => Endpoint::Unix(p.clone()),
    }
}

fn server_setup(
    options: &ListenerOptions,
    peer: String,
    streams: usize,
) -> (
    DriverSetup,
    super::session::SessionParts,
    oneshot::Receiver<Handshake>,
) {
    let conn = Connection::server(options.config.clone(), streams, Instant::now());
    let (parts, ends, lanes) = session_pair(peer);
    let (hs_tx, hs_rx) = oneshot::channel();
    let setup = DriverSetup {
        conn,
        ends,
        lanes,
        authenticate: options.authenticate.clone(),
        redirect: options.redirect.clone(),
        server_id: options.server_id.clone(),
        handshake: hs_tx,
    };
    (setup, parts, hs_rx)
}

async fn deliver(
    parts: super::session::SessionParts,
    hs: oneshot::Receiver<Handshake>,
    tx: &mpsc::Sender<Session>,
) {
    if let Ok(Handshake::Server(hello)) = hs.await {
        if tx.send(parts.finish(Some(hello), None)).await.is_err() {
            warn!("listener dropped; closing accepted session");
        }
    }
}

fn serve_stream<R, W>(
    reader: R,
    mut writer: W,
    peer: String,
    transport: &'static str,
    options: &Arc<ListenerOptions>,
    limit: &Arc<Semaphore>,
    tx: &mpsc::Sender<Session>,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let span = info_span!("connection", transport, %peer, side = "server");
    let permit: OwnedSemaphorePermit = match limit.clone().try_acquire_owned() {
        Ok(permit) => permit,
        Err(_) => {
            // spec: a refusal is a Close frame with a code and reason.
            tokio::spawn(
                async move {
                    let mut reader = reader;
                    let linger = async {
                        let _ = writer.write_all(&limit_close_frame()).await;
                        let _ = writer.shutdown().await;
                        // The peer's Hello is unread: dropping the socket now
                        // would send RST and could destroy the Close frame.
                        discard_until_eof(&mut reader).await;
                    };
                    let _ = tokio::time::timeout(CLOSE_LINGER, linger).await;
                }
                .instrument(span),
            );
            return;
        }
    };
    let (setup, parts, hs) = server_setup(options, peer, 1);
    tokio::spawn(
        async move {
            drive_stream(reader, writer, setup).await;
            drop(permit);
        }
        .instrument(span),
    );
    let tx = tx.clone();
    tokio::spawn(async move { deliver(parts, hs, &tx).await });
}
