//! The connection state machine, with no I/O: the transport feeds it the
//! bytes it reads and the current time; it hands back bytes to write, the
//! next instant it wants to be woken, and events.
//!
//! ```text
//!  client                                   server
//!  ------                                   ------
//!  AwaitingWelcome --Hello-->               AwaitingHello
//!                                           | Hello ok     -> AwaitingAccept (app checks credentials)
//!                                           | anything else, bad version, timeout -> Close, Closed
//!                  <--Welcome--             AwaitingAccept --accept()--> Open
//!  Open                                     | refuse()     -> Close, Closed
//!                                           | redirect()   -> Redirect, Closed (a standby)
//!  | Close from peer, idle timeout, bad frame, close() -> Closing -> Closed
//! ```
//!
//! Guarantees: before the handshake completes a server reads nothing but a
//! Hello; every refusal sends a Close frame with a code and reason before the
//! transport closes the socket; frames leave in lane priority order (control,
//! then dispatch, then bulk) at frame granularity, so a queued log flood never
//! delays a Ping by more than one write; each lane's send queue is bounded.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tracing::debug;

use crate::error::{ConnectionError, DecodeError, SendError};
use crate::frame::{
    encode_frame, ErrorCode, Flags, Frame, FrameDecoder, FrameKind, Lane, DEFAULT_MAX_FRAME_BYTES,
    HEADER_LEN, MIN_MAX_FRAME_BYTES, PROTOCOL_VERSION,
};
use crate::message::{Close, Hello, Message, Ping, Pong, Redirect, Welcome};

/// Which end of the connection this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Sends Hello (clients and agents).
    Client,
    /// Answers Hello with Welcome or Close (the control plane).
    Server,
}

/// Limits and timers of a connection.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    max_frame_bytes: u32,
    heartbeat_interval: Duration,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    lane_queue_frames: usize,
    lane_queue_bytes: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            heartbeat_interval: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            lane_queue_frames: 4096,
            lane_queue_bytes: 8 << 20,
        }
    }
}

impl ConnectionConfig {
    /// Largest payload this side accepts. Default 1 MiB; at least 4096.
    pub fn max_frame_bytes(mut self, bytes: u32) -> Self {
        self.max_frame_bytes = bytes.max(MIN_MAX_FRAME_BYTES);
        self
    }

    /// How often this side pings a silent peer: after this long without a
    /// frame from it (a server waits twice this long). Default 2 s.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How long the peer may stay silent before it is presumed dead.
    /// Default 10 s; never less than three of the peer's heartbeat intervals.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// How long the handshake may take. Default 10 s.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Bound of each lane's send queue, in frames and bytes. Default 4096
    /// frames and 8 MiB.
    pub fn lane_queue(mut self, frames: usize, bytes: usize) -> Self {
        self.lane_queue_frames = frames.max(1);
        self.lane_queue_bytes = bytes.max(1);
        self
    }

    /// The configured payload limit.
    pub fn max_frame_bytes_value(&self) -> u32 {
        self.max_frame_bytes
    }

    /// The configured handshake timeout.
    pub fn handshake_timeout_value(&self) -> Duration {
        self.handshake_timeout
    }

    /// The configured heartbeat interval.
    pub fn heartbeat_interval_value(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The configured idle timeout.
    pub fn idle_timeout_value(&self) -> Duration {
        self.idle_timeout
    }
}

/// What the connection tells its owner.
// Events live only between `handle_bytes` and the owner's `poll_event`, a
// few at a time; boxing the message would cost an allocation per frame on
// the receive path to save bytes nothing keeps.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Server side: a valid Hello arrived. Check its credentials, then call
    /// [`Connection::accept`] or [`Connection::refuse`].
    HelloReceived(Hello),
    /// Client side: the server's Welcome arrived; the connection is open.
    Established(Welcome),
    /// An application message.
    Message {
        /// The frame's correlation id.
        correlation: u64,
        /// The frame's flags: [`Flags::REPLY`] marks an answer to one of our
        /// requests (both peers number their requests from 1, so the id
        /// alone does not say whose request it belongs to).
        flags: Flags,
        /// The message.
        message: Message,
    },
    /// The connection is over. `Ok` for an orderly Close with code NORMAL.
    Closed(Result<(), ConnectionError>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    AwaitingHello,
    AwaitingAccept,
    AwaitingWelcome,
    Open,
    /// A Close frame is queued; once written, the transport closes.
    Closing,
    Closed,
}

/// Encoded frames waiting to be written on one lane.
#[derive(Debug, Default)]
struct LaneQueue {
    bytes: BytesMut,
    frame_lens: VecDeque<usize>,
}

impl LaneQueue {
    fn is_empty(&self) -> bool {
        self.frame_lens.is_empty()
    }
}

/// One Valkyrie connection, without I/O.
#[derive(Debug)]
pub struct Connection {
    side: Side,
    config: ConnectionConfig,
    state: State,
    /// One decoder per inbound byte stream: one for Unix/TCP/TLS, one per
    /// lane for QUIC.
    decoders: Vec<FrameDecoder>,
    lanes: [LaneQueue; 3],
    events: VecDeque<Event>,
    peer_max_frame_bytes: u32,
    peer_heartbeat: Duration,
    handshake_deadline: Instant,
    last_received: Instant,
    /// When this side last sent a Ping (or the connection opened).
    last_ping: Instant,
    next_nonce: u64,
}

impl Connection {
    /// A client connection; queues its Hello at once.
    pub fn client(config: ConnectionConfig, mut hello: Hello, streams: usize, now: Instant) -> Self {
        let mut conn = Self::new(Side::Client, config, streams, now);
        conn.state = State::AwaitingWelcome;
        hello.min_version = PROTOCOL_VERSION;
        hello.max_version = PROTOCOL_VERSION;
        hello.max_frame_bytes = conn.config.max_frame_bytes;
        hello.heartbeat_interval_ms = duration_ms_u32(conn.config.heartbeat_interval);
        conn.queue_internal(Message::Hello(hello), 0);
        conn
    }

    /// A server connection, waiting for the peer's Hello.
    pub fn server(config: ConnectionConfig, streams: usize, now: Instant) -> Self {
        Self::new(Side::Server, config, streams, now)
    }

    fn new(side: Side, config: ConnectionConfig, streams: usize, now: Instant) -> Self {
        let decoders = (0..streams.max(1))
            .map(|_| FrameDecoder::new(config.max_frame_bytes))
            .collect();
        Self {
            side,
            state: State::AwaitingHello,
            decoders,
            lanes: Default::default(),
            // Room for one: a read usually completes one frame, and the
            // queue keeps the room it grew to, on every connection, idle or
            // not (an event is ~270 bytes; a first push would take four).
            events: VecDeque::with_capacity(1),
            // Until the peer says otherwise, assume the minimum it must accept.
            peer_max_frame_bytes: MIN_MAX_FRAME_BYTES,
            peer_heartbeat: config.heartbeat_interval,
            handshake_deadline: now + config.handshake_timeout,
            last_received: now,
            last_ping: now,
            next_nonce: 1,
            config,
        }
    }

    /// Which end this is.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether the handshake completed and the connection is usable.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the connection is finished and everything it had to say
    /// (such as a Close frame) has been handed to the transport.
    pub fn is_drained(&self) -> bool {
        self.state == State::Closed
            || (self.state == State::Closing && self.lanes.iter().all(LaneQueue::is_empty))
    }

    /// Whether the connection has ended (a Close was sent or received).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closing | State::Closed)
    }

    /// The peer's payload limit (after the handshake).
    pub fn peer_max_frame_bytes(&self) -> u32 {
        self.peer_max_frame_bytes
    }

    // ---- input ----

    /// The receive buffer of inbound stream `stream`, for transports that read
    /// straight into it. Call [`handle_buffered`](Self::handle_buffered) after.
    pub fn receive_buffer(&mut self, stream: usize) -> &mut BytesMut {
        self.decoders[stream].buffer_mut()
    }

    /// Feeds bytes read from inbound stream `stream` (always 0 except on QUIC).
    pub fn handle_bytes(&mut self, stream: usize, data: &[u8], now: Instant) {
        if self.is_closed() {
            return;
        }
        self.decoders[stream].extend(data);
        self.handle_buffered(stream, now);
    }

    /// The receive buffer of `stream`, for a transport that reads straight
    /// into it (no copy); call [`handle_buffered`](Self::handle_buffered)
    /// after filling it.
    pub fn recv_buffer(&mut self, stream: usize) -> &mut BytesMut {
        self.decoders[stream].buffer_mut()
    }

    /// Processes whatever complete frames are buffered on `stream`.
    pub fn handle_buffered(&mut self, stream: usize, now: Instant) {
        loop {
            // While the application decides on a Hello, later frames stay
            // buffered: they are judged once accept() or refuse() has set the
            // state (a refusal then discards them unread).
            if self.is_closed() || self.state == State::AwaitingAccept {
                return;
            }
            match self.decoders[stream].next_frame() {
                Ok(Some(frame)) => {
                    self.last_received = now;
                    self.handle_frame(frame, now);
                }
                Ok(None) => return,
                Err(err) => {
                    self.fail(ConnectionError::Decode(err.clone()), err.code(), err.to_string());
                    return;
                }
            }
        }
    }

    /// The byte stream ended (EOF). Without a Close first, that is a reset.
    pub fn handle_eof(&mut self, stream: usize) {
        if self.is_closed() {
            // A Close frame may still wait to be written (the peer may only
            // have shut its write half): stay Closing until it is handed over.
            return;
        }
        let err = match self.decoders[stream].finish() {
            Err(err) => ConnectionError::Decode(err),
            Ok(()) => ConnectionError::Reset,
        };
        self.state = State::Closed;
        self.events.push_back(Event::Closed(Err(err)));
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) {
        let message = match frame.message() {
            Ok(m) => m,
            Err(err) => {
                self.fail(ConnectionError::Decode(err.clone()), err.code(), err.to_string());
                return;
            }
        };
        // spec: a frame MUST travel on its kind's lane.
        if let Err(err) = crate::frame::check_lane(&frame, &message) {
            self.fail(ConnectionError::Decode(err.clone()), err.code(), err.to_string());
            return;
        }
        match (self.state, message) {
            (_, Message::Close(close)) => {
                debug!(code = %close.code, reason = %close.reason, "peer closed");
                self.state = State::Closed;
                let result = if close.code == ErrorCode::NORMAL {
                    Ok(())
                } else {
                    Err(ConnectionError::ClosedByPeer {
                        code: close.code,
                        reason: close.reason,
                    })
                };
                self.events.push_back(Event::Closed(result));
            }
            (State::AwaitingHello, Message::Hello(hello)) => self.on_hello(hello, now),
            (State::AwaitingHello | State::AwaitingAccept, other) => self.unexpected(
                other.kind(),
                "before the handshake completed (only Hello is allowed)",
            ),
            (State::AwaitingWelcome, Message::Welcome(welcome)) => {
                if welcome.version != PROTOCOL_VERSION || welcome.max_frame_bytes < MIN_MAX_FRAME_BYTES {
                    let reason = format!(
                        "Welcome names version {} and max_frame_bytes {}; expected version 1 and at least 4096",
                        welcome.version, welcome.max_frame_bytes
                    );
                    self.fail(
                        ConnectionError::UnexpectedMessage {
                            kind: FrameKind::WELCOME,
                            when: "with invalid limits",
                        },
                        ErrorCode::PROTOCOL_ERROR,
                        reason,
                    );
                    return;
                }
                self.set_peer_limits(welcome.max_frame_bytes, welcome.heartbeat_interval_ms, now);
                self.state = State::Open;
                self.events.push_back(Event::Established(welcome));
            }
            // spec §6.4: a standby answers the Hello with Redirect, its
            // last frame; the client follows it elsewhere.
            (State::AwaitingWelcome, Message::Redirect(redirect)) => {
                debug!(leader = %redirect.leader, uris = ?redirect.uris, "redirected");
                self.state = State::Closed;
                self.events
                    .push_back(Event::Closed(Err(ConnectionError::Redirected(redirect))));
            }
            (State::AwaitingWelcome, other) => self.unexpected(other.kind(), "before Welcome"),
            (State::Open, Message::Ping(ping)) => {
                self.queue_internal(Message::Pong(Pong { nonce: ping.nonce }), frame.correlation)
            }
            (State::Open, Message::Pong(_)) => {}
            (State::Open, Message::Hello(_) | Message::Welcome(_) | Message::Redirect(_)) => {
                self.unexpected(frame.kind, "after the handshake")
            }
            (State::Open, message) => self.events.push_back(Event::Message {
                correlation: frame.correlation,
                flags: frame.flags,
                message,
            }),
            (State::Closing | State::Closed, _) => {}
        }
    }

    fn on_hello(&mut self, hello: Hello, now: Instant) {
        // spec: the server MUST refuse a Hello whose range excludes its version.
        if !(hello.min_version..=hello.max_version).contains(&PROTOCOL_VERSION) {
            let reason = format!(
                "no common protocol version: peer speaks {}..={}, this server speaks {PROTOCOL_VERSION}",
                hello.min_version, hello.max_version
            );
            self.fail(
                ConnectionError::Decode(DecodeError::UnsupportedVersion(hello.max_version)),
                ErrorCode::UNSUPPORTED_VERSION,
                reason,
            );
            return;
        }
        if hello.max_frame_bytes < MIN_MAX_FRAME_BYTES {
            let reason = format!(
                "Hello max_frame_bytes {} is below the minimum of 4096",
                hello.max_frame_bytes
            );
            self.fail(
                ConnectionError::UnexpectedMessage {
                    kind: FrameKind::HELLO,
                    when: "with invalid limits",
                },
                ErrorCode::PROTOCOL_ERROR,
                reason,
            );
            return;
        }
        self.set_peer_limits(hello.max_frame_bytes, hello.heartbeat_interval_ms, now);
        self.state = State::AwaitingAccept;
        self.events.push_back(Event::HelloReceived(hello));
    }

    fn set_peer_limits(&mut self, max_frame_bytes: u32, heartbeat_interval_ms: u32, now: Instant) {
        self.peer_max_frame_bytes = max_frame_bytes;
        self.peer_heartbeat = Duration::from_millis(heartbeat_interval_ms.into());
        self.last_ping = now;
    }

    /// Server side: accept the Hello; queues Welcome and opens the connection.
    pub fn accept(&mut self, server_id: &str, now: Instant) {
        if self.state != State::AwaitingAccept {
            return;
        }
        let welcome = Welcome {
            version: PROTOCOL_VERSION,
            max_frame_bytes: self.config.max_frame_bytes,
            heartbeat_interval_ms: duration_ms_u32(self.config.heartbeat_interval),
            server_id: server_id.to_owned(),
        };
        self.queue_internal(Message::Welcome(welcome), 0);
        self.state = State::Open;
        self.last_received = now;
        // Frames that arrived behind the Hello can be judged now.
        for stream in 0..self.decoders.len() {
            self.handle_buffered(stream, now);
        }
    }

    /// Server side: answer the Hello with Redirect instead of Welcome (a
    /// standby of a group, spec §6.4). Like a Close, it is the last frame:
    /// the connection closes once it is written.
    pub fn redirect(&mut self, redirect: Redirect) {
        if self.state != State::AwaitingAccept {
            return;
        }
        debug!(leader = %redirect.leader, "redirecting the peer to the leader");
        for lane in &mut self.lanes {
            lane.bytes.clear();
            lane.frame_lens.clear();
        }
        self.queue_internal(Message::Redirect(redirect), 0);
        self.state = State::Closing;
        self.events.push_back(Event::Closed(Ok(())));
    }

    /// Server side: refuse the Hello (e.g. wrong token) with a code and reason.
    pub fn refuse(&mut self, code: ErrorCode, reason: impl Into<String>) {
        let reason = reason.into();
        self.fail(
            ConnectionError::ClosedLocally {
                code,
                reason: reason.clone(),
            },
            code,
            reason,
        );
    }

    /// Closes the connection: queues a Close frame; nothing is sent after it.
    pub fn close(&mut self, code: ErrorCode, reason: impl Into<String>) {
        if self.is_closed() {
            return;
        }
        let reason = reason.into();
        let result = if code == ErrorCode::NORMAL {
            Ok(())
        } else {
            Err(ConnectionError::ClosedLocally {
                code,
                reason: reason.clone(),
            })
        };
        self.shut(code, reason, result);
    }

    fn unexpected(&mut self, kind: FrameKind, when: &'static str) {
        let reason = format!("unexpected {kind} {when}");
        self.fail(
            ConnectionError::UnexpectedMessage { kind, when },
            ErrorCode::UNEXPECTED_MESSAGE,
            reason,
        );
    }

    fn fail(&mut self, err: ConnectionError, code: ErrorCode, reason: String) {
        if self.is_closed() {
            return;
        }
        debug!(%code, %reason, "closing connection");
        self.shut(code, reason, Err(err));
    }

    fn shut(&mut self, code: ErrorCode, reason: String, result: Result<(), ConnectionError>) {
        // Drop what was queued: after a Close nothing else may be sent, and a
        // refused peer gets no data it was not entitled to.
        for lane in &mut self.lanes {
            lane.bytes.clear();
            lane.frame_lens.clear();
        }
        self.queue_internal(
            Message::Close(Close {
                code,
                reason: truncate_reason(reason),
            }),
            0,
        );
        self.state = State::Closing;
        self.events.push_back(Event::Closed(result));
    }

    // ---- timers ----

    /// When the connection next wants [`handle_timeout`](Self::handle_timeout).
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitingHello | State::AwaitingAccept | State::AwaitingWelcome => {
                Some(self.handshake_deadline)
            }
            State::Open => Some(self.ping_at().min(self.dead_at())),
            State::Closing | State::Closed => None,
        }
    }

    /// When to ping (spec §6.2): after a heartbeat interval in which nothing
    /// arrived, since a frame from the peer already proves it alive. A
    /// server waits two intervals, so that a client pinging on its own
    /// schedule is not pinged back as well: an idle connection costs one
    /// Ping and one Pong per interval, not two of each.
    fn ping_at(&self) -> Instant {
        let silence = match self.side {
            Side::Client => self.config.heartbeat_interval,
            Side::Server => self.config.heartbeat_interval * 2,
        };
        self.last_received.max(self.last_ping) + silence
    }

    fn dead_at(&self) -> Instant {
        let idle = self.config.idle_timeout.max(self.peer_heartbeat * 3);
        self.last_received + idle
    }

    /// Advances timers: handshake timeout, heartbeat, dead-peer detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::AwaitingHello | State::AwaitingAccept | State::AwaitingWelcome
                if now >= self.handshake_deadline =>
            {
                let reason = format!(
                    "handshake not completed within {:?}",
                    self.config.handshake_timeout
                );
                self.fail(
                    ConnectionError::HandshakeTimeout,
                    ErrorCode::HANDSHAKE_TIMEOUT,
                    reason,
                );
            }
            State::Open if now >= self.dead_at() => {
                let reason = format!(
                    "nothing received for {:?}; peer presumed dead",
                    now - self.last_received
                );
                self.fail(ConnectionError::IdleTimeout, ErrorCode::IDLE_TIMEOUT, reason);
            }
            State::Open if now >= self.ping_at() => {
                let nonce = self.next_nonce;
                self.next_nonce += 1;
                self.queue_internal(Message::Ping(Ping { nonce }), 0);
                self.last_ping = now;
            }
            _ => {}
        }
    }

    // ---- output ----

    /// Whether `lane`'s send queue has room for another frame.
    pub fn can_send(&self, lane: Lane) -> bool {
        let q = &self.lanes[lane.index()];
        q.frame_lens.len() < self.config.lane_queue_frames && q.bytes.len() < self.config.lane_queue_bytes
    }

    /// Queues an application message on its lane.
    pub fn send(&mut self, correlation: u64, flags: Flags, message: &Message) -> Result<(), SendError> {
        match self.state {
            State::Open => {}
            State::Closing | State::Closed => return Err(SendError::Closed),
            _ => return Err(SendError::NotEstablished),
        }
        let lane = message.lane();
        if !self.can_send(lane) {
            return Err(SendError::QueueFull(lane));
        }
        match self.push(lane, correlation, flags, message) {
            // spec §3.2: a listing is truncated to fit the peer's limit; an
            // Event too large for it becomes a `skipped` marker.
            Err(err @ SendError::TooLarge { .. }) => match message.fitted(self.peer_max_frame_bytes as usize)
            {
                Some(fitted) => self.push(lane, correlation, flags, &fitted),
                None => Err(err),
            },
            other => other,
        }
    }

    fn queue_internal(&mut self, message: Message, correlation: u64) {
        let flags = if matches!(message, Message::Pong(_)) {
            Flags::REPLY
        } else {
            Flags::NONE
        };
        // Handshake and control frames are tiny; the minimum limit always fits.
        let _ = self.push(message.lane(), correlation, flags, &message);
    }

    fn push(
        &mut self,
        lane: Lane,
        correlation: u64,
        flags: Flags,
        message: &Message,
    ) -> Result<(), SendError> {
        let q = &mut self.lanes[lane.index()];
        let before = q.bytes.len();
        encode_frame(
            message,
            correlation,
            flags,
            self.peer_max_frame_bytes,
            &mut q.bytes,
        )?;
        q.frame_lens.push_back(q.bytes.len() - before);
        Ok(())
    }

    /// Appends queued frames to `out`, highest-priority lane first, whole
    /// frames only, until `out` holds at least `max_bytes` (one frame always
    /// goes if any is queued). Returns how many frames were appended.
    pub fn poll_transmit(&mut self, out: &mut BytesMut, max_bytes: usize) -> usize {
        let mut frames = 0;
        for lane in Lane::ALL {
            frames += self.transmit_lane(lane, out, max_bytes, frames == 0);
            if out.len() >= max_bytes {
                break;
            }
        }
        self.after_transmit();
        frames
    }

    /// Like [`poll_transmit`](Self::poll_transmit) for one lane only (QUIC,
    /// where each lane is its own stream).
    pub fn poll_transmit_lane(&mut self, lane: Lane, out: &mut BytesMut, max_bytes: usize) -> usize {
        let frames = self.transmit_lane(lane, out, max_bytes, true);
        self.after_transmit();
        frames
    }

    /// `first` lets one frame through even when it is over `max_bytes` (so a
    /// large frame is never stuck); only the first frame of a poll gets that,
    /// otherwise every lane would add one oversized frame.
    fn transmit_lane(&mut self, lane: Lane, out: &mut BytesMut, max_bytes: usize, first: bool) -> usize {
        let q = &mut self.lanes[lane.index()];
        let mut take = 0;
        let mut frames = 0;
        while let Some(&len) = q.frame_lens.front() {
            let may_overflow = first && frames == 0;
            if !may_overflow && out.len() + take + len > max_bytes.max(HEADER_LEN) {
                break;
            }
            take += len;
            frames += 1;
            q.frame_lens.pop_front();
        }
        out.extend_from_slice(&q.bytes.split_to(take));
        frames
    }

    fn after_transmit(&mut self) {
        if self.state == State::Closing && self.lanes.iter().all(LaneQueue::is_empty) {
            self.state = State::Closed;
        }
    }

    /// Whether any frame waits to be written.
    pub fn has_pending_output(&self) -> bool {
        self.lanes.iter().any(|q| !q.is_empty())
    }

    /// Whether frames wait on `lane`.
    pub fn has_pending_lane(&self, lane: Lane) -> bool {
        !self.lanes[lane.index()].is_empty()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }
}

fn duration_ms_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

/// Close reasons are for people; keep them well under the minimum frame size.
fn truncate_reason(mut reason: String) -> String {
    const MAX: usize = 1024;
    if reason.len() > MAX {
        let mut cut = MAX;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    reason
}
