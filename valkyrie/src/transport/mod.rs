//! Transports behind one API, chosen by URI: [`connect`] to an [`Endpoint`],
//! or [`Listener::bind`] one. Unix sockets, TCP and TLS 1.3 share the
//! byte-stream driver; QUIC gets one unidirectional stream per lane.

mod endpoint;
pub(crate) mod listener;
mod quic;
mod session;
mod stream;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{info_span, Instrument};

pub use endpoint::{Endpoint, HostPort, ParseEndpointError};
pub use listener::{BindError, Listener, ListenerOptions};
/// The longest an agent waits between two attempts to reach an unreachable
/// server (spec §6.2): its reconnect back-off doubles up to this. A server
/// that restarts gives the runners it knew this much more than
/// `runner_lost_after` to come back, so no attempt is retried only because
/// its agent was waiting out its back-off.
pub const MAX_RECONNECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

pub use session::{
    Authenticator, Hooked, InboundHook, Incoming, IncomingReceiver, PendingReply, Redirector, RequestError,
    RingBatch, SentMessages, Session, SessionSender, MAX_PUSHED_WAITING,
};
pub use tls::{dev_certificate, ClientTls, DevCertificate, ServerTls, TlsSetupError, ALPN};

use crate::connection::{Connection, ConnectionConfig};
use crate::error::{ConnectionError, DecodeError};
use crate::frame::ErrorCode;
use crate::message::{Hello, Redirect, Role};
use session::{session_pair, Handshake};
use stream::DriverSetup;

/// Why a connection could not be established.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The endpoint needs TLS settings that were not given.
    #[error("{0} needs TLS settings: pass a CA certificate to trust (e.g. --ca-cert)")]
    MissingTls(Endpoint),
    /// TLS could not be configured.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The address did not resolve.
    #[error("cannot resolve {0}")]
    Resolve(String),
    /// The socket could not be opened, or the TLS or QUIC handshake failed.
    #[error("cannot connect to {endpoint}: {reason}")]
    Io {
        /// Where.
        endpoint: Endpoint,
        /// Why.
        reason: String,
    },
    /// The server refused the handshake with a Close frame.
    #[error("server refused the connection: {code}: {reason}")]
    Refused {
        /// The server's code (e.g. UNAUTHENTICATED).
        code: ErrorCode,
        /// The server's reason.
        reason: String,
    },
    /// The connection ended during the handshake for another reason.
    #[error("handshake failed: {0}")]
    Handshake(ConnectionError),
    /// The server answered in HTTP (its first byte, `H`, read as a frame
    /// version of 72): the address is a REST port, not a protocol listener.
    #[error("{0} answered in HTTP, not the Valkyrie protocol: that looks like the server's --http (REST) port; use one of its --listen addresses (e.g. tcp://host:7700)")]
    AnsweredHttp(Endpoint),
    /// The server is a standby of a group and named its leader (spec §6.4);
    /// [`connect_following`] follows it.
    #[error("{endpoint}: {}", ConnectionError::Redirected(.redirect.clone()))]
    Redirected {
        /// The standby.
        endpoint: Endpoint,
        /// Its answer: the leader's id, epoch and advertised URIs.
        redirect: Redirect,
    },
}

/// How many Redirects [`connect_following`] follows from one starting
/// server before it gives up (a group in the middle of a takeover may point
/// at a server that has just lost the lead).
pub const MAX_REDIRECT_HOPS: usize = 3;

/// Connects to `endpoint` like [`connect`] and, when it is a standby of a
/// group that names its leader, follows the Redirect to the leader's
/// advertised URIs (those of `endpoint`'s transport first), at most
/// [`MAX_REDIRECT_HOPS`] times. A hop after the first waits a short,
/// jittered while: leadership is changing hands. Returns the session and
/// the endpoint it reached. A Redirect without URIs (no leader yet), or one
/// past the last hop, is returned as [`ConnectError::Redirected`]: the
/// caller tries its other servers or backs off.
pub async fn connect_following(
    endpoint: &Endpoint,
    hello: Hello,
    options: &ClientOptions,
) -> Result<(Session, Endpoint), ConnectError> {
    let mut redirect = match connect(endpoint, hello.clone(), options).await {
        Ok(session) => return Ok((session, endpoint.clone())),
        Err(ConnectError::Redirected { redirect, .. }) => redirect,
        Err(err) => return Err(err),
    };
    let mut from = endpoint.clone();
    for hop in 1..=MAX_REDIRECT_HOPS {
        if redirect.uris.is_empty() {
            break;
        }
        if hop > 1 {
            let wait = std::time::Duration::from_millis(50 * hop as u64);
            tokio::time::sleep(wait.mul_f64(0.5 + fastrand::f64())).await;
        }
        let mut targets: Vec<Endpoint> = redirect.uris.iter().filter_map(|u| u.parse().ok()).collect();
        // The transport the caller chose first (a stable sort).
        targets.sort_by_key(|t| t.transport() != from.transport());
        tracing::debug!(%from, leader = %redirect.leader, epoch = redirect.epoch, "following a redirect");
        let mut next = None;
        let mut last = None;
        for target in targets {
            match connect(&target, hello.clone(), options).await {
                Ok(session) => return Ok((session, target)),
                Err(ConnectError::Redirected { redirect, .. }) => {
                    next = Some((target, redirect));
                    break;
                }
                Err(err) => last = Some(err),
            }
        }
        match (next, last) {
            (Some((target, again)), _) => {
                from = target;
                redirect = again;
            }
            (None, Some(err)) => return Err(err),
            (None, None) => break,
        }
    }
    Err(ConnectError::Redirected {
        endpoint: from,
        redirect,
    })
}

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Connection limits and timers.
    pub config: ConnectionConfig,
    /// TLS trust for `tls://` and `quic://`.
    pub tls: Option<ClientTls>,
}

/// A Hello for `role` with `token`; limits are filled in from the config.
pub fn hello(role: Role, token: impl Into<String>, agent: impl Into<String>) -> Hello {
    Hello {
        min_version: 1,
        max_version: 1,
        role,
        token: token.into(),
        max_frame_bytes: 0,
        heartbeat_interval_ms: 0,
        agent: agent.into(),
    }
}

async fn resolve(hp: &HostPort) -> Result<SocketAddr, ConnectError> {
    tokio::net::lookup_host((hp.host.as_str(), hp.port))
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| ConnectError::Resolve(hp.to_string()))
}

/// Connects to `endpoint` and completes the handshake.
pub async fn connect(
    endpoint: &Endpoint,
    hello: Hello,
    options: &ClientOptions,
) -> Result<Session, ConnectError> {
    let io_err = |e: &dyn std::fmt::Display| ConnectError::Io {
        endpoint: endpoint.clone(),
        reason: e.to_string(),
    };
    let span = info_span!("connection", transport = endpoint.transport(), peer = %endpoint, side = "client");
    let streams = if matches!(endpoint, Endpoint::Quic(_)) {
        3
    } else {
        1
    };
    let conn = Connection::client(options.config.clone(), hello, streams, Instant::now());
    let (parts, ends, lanes) = session_pair(endpoint.to_string());
    let (hs_tx, hs_rx) = oneshot::channel();
    let shared_closed = parts_closed_watch(&parts);
    let setup = DriverSetup {
        conn,
        ends,
        lanes,
        authenticate: None,
        redirect: None,
        server_id: String::new(),
        handshake: hs_tx,
    };
    match endpoint {
        Endpoint::Unix(path) => {
            let sock = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| io_err(&e))?;
            let (r, w) = sock.into_split();
            tokio::spawn(stream::drive_stream(r, w, setup).instrument(span));
        }
        Endpoint::Tcp(hp) => {
            let sock = tokio::net::TcpStream::connect(resolve(hp).await?)
                .await
                .map_err(|e| io_err(&e))?;
            let _ = sock.set_nodelay(true);
            let (r, w) = sock.into_split();
            tokio::spawn(stream::drive_stream(r, w, setup).instrument(span));
        }
        Endpoint::Tls(hp) => {
            let tls = options
                .tls
                .as_ref()
                .ok_or_else(|| ConnectError::MissingTls(endpoint.clone()))?;
            let sock = tokio::net::TcpStream::connect(resolve(hp).await?)
                .await
                .map_err(|e| io_err(&e))?;
            let _ = sock.set_nodelay(true);
            let name = rustls::pki_types::ServerName::try_from(hp.host.clone()).map_err(|e| io_err(&e))?;
            let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
            let tls_stream =
                tokio::time::timeout(options.config_handshake_timeout(), connector.connect(name, sock))
                    .await
                    .map_err(|_| io_err(&"TLS handshake timed out"))?
                    .map_err(|e| io_err(&e))?;
            let (r, w) = tokio::io::split(tls_stream);
            tokio::spawn(stream::drive_stream(r, w, setup).instrument(span));
        }
        Endpoint::Quic(hp) => {
            let tls = options
                .tls
                .as_ref()
                .ok_or_else(|| ConnectError::MissingTls(endpoint.clone()))?;
            let addr = resolve(hp).await?;
            let bind: SocketAddr = if addr.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
                .parse()
                .expect("literal");
            let mut quic_endpoint = quinn::Endpoint::client(bind).map_err(|e| io_err(&e))?;
            let crypto = quinn::crypto::rustls::QuicClientConfig::try_from((*tls.config).clone())
                .map_err(|e| io_err(&e))?;
            quic_endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
            let quic = tokio::time::timeout(
                options.config_handshake_timeout(),
                quic_endpoint.connect(addr, &hp.host).map_err(|e| io_err(&e))?,
            )
            .await
            .map_err(|_| io_err(&"QUIC handshake timed out"))?
            .map_err(|e| io_err(&e))?;
            tokio::spawn(
                async move {
                    quic::drive_quic(quic, setup).await;
                    // The endpoint must outlive the connection's driver.
                    quic_endpoint.wait_idle().await;
                }
                .instrument(span),
            );
        }
    }
    match hs_rx.await {
        Ok(Handshake::Client(welcome)) => Ok(parts.finish(None, Some(welcome))),
        Ok(Handshake::Server(_)) => unreachable!("a client driver reports a Welcome"),
        Err(_) => {
            let result = shared_closed.borrow().clone();
            Err(match result {
                Some(Err(ConnectionError::ClosedByPeer { code, reason })) => {
                    ConnectError::Refused { code, reason }
                }
                Some(Err(ConnectionError::Redirected(redirect))) => ConnectError::Redirected {
                    endpoint: endpoint.clone(),
                    redirect,
                },
                Some(Err(ConnectionError::Decode(DecodeError::UnsupportedVersion(b'H')))) => {
                    ConnectError::AnsweredHttp(endpoint.clone())
                }
                Some(Err(err)) => ConnectError::Handshake(err),
                _ => ConnectError::Handshake(ConnectionError::Reset),
            })
        }
    }
}

fn parts_closed_watch(
    parts: &session::SessionParts,
) -> tokio::sync::watch::Receiver<Option<Result<(), ConnectionError>>> {
    parts.closed_watch()
}

impl ClientOptions {
    fn config_handshake_timeout(&self) -> std::time::Duration {
        self.config.handshake_timeout_value()
    }
}
