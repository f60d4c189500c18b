//! [`Session`]: an established connection as the application sees it, with
//! bounded per-lane send queues, request/reply by correlation id, and the
//! reason it ended.

use std::cell::RefCell;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use foldhash::{HashMap, HashMapExt};
use futures_util::task::AtomicWaker;
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::{Connection, Event};
use crate::error::{ConnectionError, SendError};
use crate::frame::{ErrorCode, Flags, Lane};
use crate::message::{Hello, Message, Redirect, Welcome};

/// Frames an application message can wait for in a lane's channel before
/// the driver takes it into the connection's own bounded queue.
const LANE_CHANNEL: usize = 256;
/// Incoming messages buffered for the application.
const INCOMING_CHANNEL: usize = 1024;
/// Messages [`SessionSender::push`] may leave waiting behind a full lane
/// channel, per lane, before the peer counts as not reading and the
/// connection is closed.
pub const MAX_PUSHED_WAITING: usize = 16_384;

/// A message received from the peer.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// The frame's correlation id (0 when not a request or reply).
    pub correlation: u64,
    /// The message.
    pub message: Message,
}

/// The receiving end of a session's incoming messages
/// ([`Session::into_parts`]).
#[derive(Debug)]
pub struct IncomingReceiver(mpsc::Receiver<Box<Incoming>>);

impl IncomingReceiver {
    /// The next message from the peer; `None` once the session ended and
    /// everything received was taken.
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.0.recv().await.map(|incoming| *incoming)
    }
}

/// Why a request got no reply.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request could not be sent.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The peer answered with RequestFailed.
    #[error("request failed: {code}: {message}")]
    Failed {
        /// Error code.
        code: ErrorCode,
        /// The peer's explanation.
        message: String,
    },
    /// The connection ended before the reply arrived.
    #[error("connection closed before the reply arrived")]
    Closed,
}

pub(crate) enum Route {
    /// A single reply, or why the request could not be sent.
    Once(oneshot::Sender<Result<Message, SendError>>),
    Stream(mpsc::Sender<Message>),
}

/// What the application asks of the driver. Each goes boxed through its
/// lane's channel: a channel allocates room for 32 entries up front, so an
/// entry of one pointer keeps an idle session's three lanes small (about
/// 300 bytes each instead of 1.3 KiB; thousands of agents connect to one
/// server), at the one allocation per message that boxing the message
/// alone cost before.
pub(crate) enum Command {
    Send {
        correlation: u64,
        flags: Flags,
        message: Message,
    },
    Request {
        correlation: u64,
        message: Message,
        route: Route,
    },
    Close {
        code: ErrorCode,
        reason: String,
    },
}

/// Takes the peer's messages (not the replies to our requests) in the
/// connection's own task, before they are queued for [`Session::recv`]: a
/// message it takes ([`Hooked::Taken`], [`Hooked::Reply`]) is never
/// queued; one it gives back ([`Hooked::Queue`]) is queued as usual. It
/// runs between two reads of the socket, so it must never wait (send with
/// `try_send`, `try_reserve`).
///
/// Its second argument is how many messages were queued for
/// [`Session::recv`] before this one, since the session began. An
/// application that counts the messages it has finished with can tell
/// whether any is still ahead of this one: only when none is may the hook
/// handle it without reordering.
///
/// What it is for: a server can hand a frame straight to the task that
/// applies it (its core), one hop fewer than through the session's task,
/// and answer what needs no one else (a heartbeat) in the same turn of the
/// connection that read it.
pub type InboundHook = Box<dyn FnMut(Incoming, u64) -> Hooked + Send>;

/// What an [`InboundHook`] did with a message.
#[derive(Debug)]
pub enum Hooked {
    /// Not taken: queued for [`Session::recv`].
    Queue(Incoming),
    /// Taken: handled elsewhere, or nothing to do.
    Taken,
    /// Taken and answered with this message, carrying the given
    /// correlation id (a reply when it is not 0). The answer is queued on
    /// its lane by the connection's task itself, ahead of whatever still
    /// waits in the lane's channel.
    Reply(u64, Message),
}

/// What the driver and the handles share.
pub(crate) struct Shared {
    next_correlation: AtomicU64,
    closed: watch::Sender<Option<Result<(), ConnectionError>>>,
    hook: std::sync::Mutex<Option<InboundHook>>,
    /// Rung after every command queued on a lane, and when the last handle
    /// goes.
    pub(crate) outbound: Doorbell,
    /// Per lane: what [`SessionSender::push`] queued while the lane's
    /// channel was full, in order.
    overflow: [Overflow; 3],
    /// A lane's overflow went past [`MAX_PUSHED_WAITING`]: the driver
    /// closes the connection.
    overflowed: AtomicBool,
}

/// Messages waiting behind a full lane channel. While any waits, every
/// later [`SessionSender::push`] on the lane waits here too, so pushed
/// messages keep their order; the driver takes them after the channel.
#[derive(Default)]
struct Overflow {
    waiting: AtomicBool,
    queue: std::sync::Mutex<std::collections::VecDeque<Box<Command>>>,
}

/// One wake-up for the three lanes. The stream driver waits on it instead
/// of on each lane's channel, then reads the lanes without waiting: a turn
/// that brings nothing to send (most of them, for an idle agent's
/// heartbeats) touches no channel at all.
#[derive(Default)]
pub(crate) struct Doorbell {
    rung: AtomicBool,
    waker: AtomicWaker,
}

impl Doorbell {
    /// A bell already rung is not rung again: the driver takes it before
    /// it waits (`poll_rung` looks after registering), so the one wake-up
    /// it was given is enough for every command queued until then.
    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            self.waker.wake();
        }
    }

    /// Whether the bell rang since it was last taken (or seen rung).
    pub(crate) fn take(&self) -> bool {
        self.rung.swap(false, Ordering::Acquire)
    }

    /// Ready once the bell rang since it was last taken.
    pub(crate) fn poll_rung(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.take() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        match self.take() {
            true => Poll::Ready(()),
            false => Poll::Pending,
        }
    }
}

thread_local! {
    /// The doorbells this thread holds back (see [`RingBatch`]).
    static HELD: RefCell<Held> = const {
        RefCell::new(Held {
            depth: 0,
            bells: Vec::new(),
        })
    };
}

struct Held {
    /// Batches open on this thread (they may nest).
    depth: u32,
    /// Sessions sent to in the open batch, each once in a row.
    bells: Vec<Arc<Shared>>,
}

/// Rings `shared`'s doorbell, or holds the ring back until this thread's
/// batch ends.
fn ring_or_hold(shared: &Arc<Shared>) {
    let held = HELD.with(|held| {
        let mut held = held.borrow_mut();
        if held.depth == 0 {
            return false;
        }
        if !held.bells.last().is_some_and(|last| Arc::ptr_eq(last, shared)) {
            held.bells.push(shared.clone());
        }
        true
    });
    if !held {
        shared.outbound.ring();
    }
}

/// Holds back the wake-ups of the sessions this thread sends to until it
/// is dropped, then rings each session's doorbell: a batch of messages
/// computed in one go (a turn of the control plane's core: a reply, the
/// events that follow it, an assignment) wakes each connection's driver
/// once, after the last of its messages is queued, so the driver writes
/// them together instead of waking for the first alone. Only for work that
/// does not wait: it cannot be held across an `.await` (it is not `Send`),
/// and messages sent meanwhile wait in their lanes until it ends.
#[must_use = "the held rings go out when the batch is dropped"]
pub struct RingBatch {
    _not_send: PhantomData<*const ()>,
}

impl RingBatch {
    /// Starts holding this thread's rings (batches nest: the outermost
    /// one's end rings).
    pub fn hold() -> Self {
        HELD.with(|held| held.borrow_mut().depth += 1);
        Self {
            _not_send: PhantomData,
        }
    }
}

impl Drop for RingBatch {
    fn drop(&mut self) {
        let mut bells = HELD.with(|held| {
            let mut held = held.borrow_mut();
            held.depth -= 1;
            match held.depth {
                0 => std::mem::take(&mut held.bells),
                _ => Vec::new(),
            }
        });
        for shared in bells.drain(..) {
            shared.outbound.ring();
        }
        // The emptied vector is kept for the next batch.
        if bells.capacity() > 0 {
            HELD.with(|held| held.borrow_mut().bells = bells);
        }
    }
}

/// What the senders share: the session's state, and a doorbell rung when
/// the last sender is dropped, so that the driver reads the closed lanes
/// and ends the session.
struct Handles(Arc<Shared>);

impl std::ops::Deref for Handles {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.outbound.ring();
    }
}

/// Cloneable handle for sending on a session.
#[derive(Clone)]
pub struct SessionSender {
    lanes: [mpsc::Sender<Box<Command>>; 3],
    shared: Arc<Handles>,
}

impl std::fmt::Debug for SessionSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSender").finish_non_exhaustive()
    }
}

impl SessionSender {
    /// Queues `command` on `lane`, waiting while it is full.
    async fn queue(&self, lane: Lane, command: Command) -> Result<(), SendError> {
        self.lanes[lane.index()]
            .send(Box::new(command))
            .await
            .map_err(|_| SendError::Closed)?;
        ring_or_hold(&self.shared.0);
        Ok(())
    }

    /// Sends a message, waiting while its lane's queue is full.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.reply(0, message).await
    }

    /// Sends a message carrying `correlation` (a reply or subscription event),
    /// waiting while its lane's queue is full.
    pub async fn reply(&self, correlation: u64, message: impl Into<Message>) -> Result<(), SendError> {
        let message = message.into();
        let flags = reply_flags(correlation);
        let lane = message.lane();
        self.queue(
            lane,
            Command::Send {
                correlation,
                flags,
                message,
            },
        )
        .await
    }

    /// Sends without waiting and without losing the message: when the
    /// lane's channel is full, it waits in the session's own queue behind
    /// it (where every later `push` on the lane waits too, so pushed
    /// messages keep their order; messages sent otherwise may overtake
    /// them). For what must reach the peer but cannot wait: an answer to
    /// its request, an assignment, a cancel. A peer that leaves more than
    /// [`MAX_PUSHED_WAITING`] of them unread on a lane has its connection
    /// closed (`INTERNAL`), so memory stays bounded; the message is then
    /// refused with [`SendError::QueueFull`], and with
    /// [`SendError::Closed`] once the session ended.
    pub fn push(&self, correlation: u64, message: impl Into<Message>) -> Result<(), SendError> {
        self.push_within(correlation, message.into(), MAX_PUSHED_WAITING, true)
    }

    /// Sends without waiting, as [`push`](Self::push) does, but lets at
    /// most `backlog` messages wait behind the full channel: past that it
    /// fails with [`SendError::QueueFull`] and the connection stays open.
    /// For what may be dropped when the peer falls behind (a
    /// subscription's events, which the server then replaces with one
    /// `Skipped`), so that a burst larger than the channel is not mistaken
    /// for a peer that is behind.
    pub fn try_push(
        &self,
        correlation: u64,
        message: impl Into<Message>,
        backlog: usize,
    ) -> Result<(), SendError> {
        self.push_within(
            correlation,
            message.into(),
            backlog.min(MAX_PUSHED_WAITING),
            false,
        )
    }

    fn push_within(
        &self,
        correlation: u64,
        message: Message,
        limit: usize,
        close_past: bool,
    ) -> Result<(), SendError> {
        let lane = message.lane();
        let overflow = &self.shared.overflow[lane.index()];
        let mut command = Box::new(Command::Send {
            correlation,
            flags: reply_flags(correlation),
            message,
        });
        if !overflow.waiting.load(Ordering::Acquire) {
            match self.lanes[lane.index()].try_send(command) {
                Ok(()) => {
                    ring_or_hold(&self.shared.0);
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(SendError::Closed),
                Err(mpsc::error::TrySendError::Full(back)) => command = back,
            }
        }
        if self.is_closed() {
            return Err(SendError::Closed);
        }
        let mut queue = overflow.queue.lock().expect("session overflow");
        if queue.len() >= limit {
            drop(queue);
            if close_past {
                self.shared.overflowed.store(true, Ordering::Release);
                self.shared.outbound.ring();
            }
            return Err(SendError::QueueFull(lane));
        }
        queue.push_back(command);
        overflow.waiting.store(true, Ordering::Release);
        drop(queue);
        ring_or_hold(&self.shared.0);
        Ok(())
    }

    /// Sends without waiting: fails with [`SendError::QueueFull`] when the
    /// lane's queue is full (the peer reads slower than we write), or
    /// while pushed messages wait behind it ([`try_push`](Self::try_push)
    /// with no backlog).
    pub fn try_reply(&self, correlation: u64, message: impl Into<Message>) -> Result<(), SendError> {
        self.try_push(correlation, message, 0)
    }

    fn correlation(&self) -> u64 {
        self.shared.next_correlation.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends a request and waits for the frame that answers it. A
    /// RequestFailed answer becomes [`RequestError::Failed`].
    pub async fn request(&self, message: impl Into<Message>) -> Result<Message, RequestError> {
        self.request_queued(message).await?.answer().await
    }

    /// Queues a request (waiting while its lane is full) and returns as
    /// soon as it is queued, with the answer to await later. Requests
    /// queued one after the other from one task go out in that order, so a
    /// transfer can keep a window of them unanswered.
    pub async fn request_queued(&self, message: impl Into<Message>) -> Result<PendingReply, RequestError> {
        let message = message.into();
        let (tx, rx) = oneshot::channel();
        let correlation = self.correlation();
        // On its own lane's queue, behind what was sent before it on that
        // lane: a JobResult (dispatch) must not overtake the AssignAck and
        // StepResults queued before it.
        let lane = message.lane();
        self.queue(
            lane,
            Command::Request {
                correlation,
                message,
                route: Route::Once(tx),
            },
        )
        .await?;
        Ok(PendingReply(rx))
    }

    /// Sends a request whose answers are a stream of frames (a subscription):
    /// every frame carrying its correlation id goes to the returned receiver.
    pub async fn stream(
        &self,
        message: impl Into<Message>,
        buffer: usize,
    ) -> Result<mpsc::Receiver<Message>, SendError> {
        let message = message.into();
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let correlation = self.correlation();
        let lane = message.lane();
        self.queue(
            lane,
            Command::Request {
                correlation,
                message,
                route: Route::Stream(tx),
            },
        )
        .await?;
        Ok(rx)
    }

    /// Closes the session with a code and reason (sent in a Close frame).
    pub async fn close(&self, code: ErrorCode, reason: impl Into<String>) {
        let _ = self
            .queue(
                Lane::Control,
                Command::Close {
                    code,
                    reason: reason.into(),
                },
            )
            .await;
    }

    /// Waits until the session has ended and returns how: `Ok` for an
    /// orderly close.
    pub async fn closed(&self) -> Result<(), ConnectionError> {
        let mut rx = self.shared.closed.subscribe();
        loop {
            if let Some(result) = rx.borrow_and_update().clone() {
                return result;
            }
            if rx.changed().await.is_err() {
                return Err(ConnectionError::Reset);
            }
        }
    }

    /// How the session ended, if it has.
    pub fn close_reason(&self) -> Option<Result<(), ConnectionError>> {
        self.shared.closed.borrow().clone()
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some() || self.lanes[0].is_closed()
    }
}

/// The answer to a request queued with [`SessionSender::request_queued`].
#[derive(Debug)]
pub struct PendingReply(oneshot::Receiver<Result<Message, SendError>>);

impl PendingReply {
    /// Waits for the answer. A RequestFailed answer becomes
    /// [`RequestError::Failed`].
    pub async fn answer(self) -> Result<Message, RequestError> {
        match self.0.await {
            Ok(Ok(Message::RequestFailed(f))) => Err(RequestError::Failed {
                code: f.code,
                message: f.message,
            }),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(err)) => Err(RequestError::Send(err)),
            Err(_) => Err(RequestError::Closed),
        }
    }
}

/// An established connection.
pub struct Session {
    sender: SessionSender,
    incoming: IncomingReceiver,
    hello: Option<Hello>,
    welcome: Option<Welcome>,
    peer: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A handle for sending; clone it freely.
    pub fn sender(&self) -> SessionSender {
        self.sender.clone()
    }

    /// The next message that is not a reply to one of our requests; `None`
    /// once the session has ended (see [`SessionSender::closed`]).
    pub async fn recv(&mut self) -> Option<Incoming> {
        self.incoming.recv().await
    }

    /// Lets `hook` take the peer's messages before they are queued for
    /// [`Session::recv`], from the next one received on (see
    /// [`InboundHook`]). Messages queued already stay queued.
    pub fn set_inbound_hook(&self, hook: InboundHook) {
        *self.sender.shared.hook.lock().expect("inbound hook") = Some(hook);
    }

    /// Server side: the Hello the peer opened with.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// Client side: the server's Welcome.
    pub fn welcome(&self) -> Option<&Welcome> {
        self.welcome.as_ref()
    }

    /// The peer's address, for logs.
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Splits into the sending handle and the receiver of incoming messages.
    pub fn into_parts(self) -> (SessionSender, IncomingReceiver) {
        (self.sender, self.incoming)
    }
}

/// What was sent on a [`SessionSender`] made by
/// [`SessionSender::in_memory`], in the order each lane received it.
pub struct SentMessages {
    lanes: LaneReceivers,
}

impl std::fmt::Debug for SentMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentMessages").finish_non_exhaustive()
    }
}

impl SentMessages {
    /// The next message waiting, control lane first, with its correlation
    /// id; `None` when nothing is waiting. Requests get no answer.
    pub fn try_next(&mut self) -> Option<Incoming> {
        self.lanes.iter_mut().find_map(|rx| match *rx.try_recv().ok()? {
            Command::Send {
                correlation, message, ..
            }
            | Command::Request {
                correlation, message, ..
            } => Some(Incoming { correlation, message }),
            Command::Close { code, reason } => Some(Incoming {
                correlation: 0,
                message: Message::Close(crate::message::Close { code, reason }),
            }),
        })
    }

    /// Every message waiting now.
    pub fn drain(&mut self) -> Vec<Incoming> {
        std::iter::from_fn(|| self.try_next()).collect()
    }
}

impl SessionSender {
    /// A sender with no connection behind it: what is sent waits in the
    /// returned [`SentMessages`]. For tests of code that talks on sessions
    /// (a sans-IO core driven on a virtual clock); dropping the
    /// `SentMessages` makes later sends fail as on a closed connection.
    pub fn in_memory() -> (Self, SentMessages) {
        let (parts, _ends, lanes) = session_pair("in-memory".into());
        (parts.sender, SentMessages { lanes })
    }
}

/// The driver's end of a session.
pub(crate) struct DriverEnds {
    pub incoming: mpsc::Sender<Box<Incoming>>,
    pub shared: Arc<Shared>,
    pub routes: HashMap<u64, Route>,
    /// Messages queued for the application so far.
    pub queued: u64,
}

pub(crate) type LaneReceivers = [mpsc::Receiver<Box<Command>>; 3];

/// A driver's end of the three lanes: which are still open, and which may
/// hold commands. Every lane may at the start and again each time the
/// session's doorbell rings; a lane leaves that set once it is found
/// empty, so a turn reads no channel it has no reason to.
pub(crate) struct Lanes {
    rx: LaneReceivers,
    open: [bool; 3],
    unread: [bool; 3],
}

impl Lanes {
    pub(crate) fn new(rx: LaneReceivers) -> Self {
        Self {
            rx,
            open: [true; 3],
            unread: [true; 3],
        }
    }

    /// Whether every sender is gone.
    pub(crate) fn all_closed(&self) -> bool {
        self.open.iter().all(|open| !open)
    }

    /// Whether a lane may hold commands that `conn` can take now: the
    /// driver reads again at once instead of waiting.
    pub(crate) fn pending(&self, conn: &Connection) -> bool {
        conn.is_open()
            && Lane::ALL
                .into_iter()
                .any(|lane| self.open[lane.index()] && self.unread[lane.index()] && conn.can_send(lane))
    }

    /// The doorbell rang: every lane may hold commands.
    pub(crate) fn rung(&mut self) {
        self.unread = [true; 3];
    }

    /// Moves a batch from each lane that may hold commands and that `conn`
    /// has room for into `conn`, in lane order. The bell is taken first: one
    /// rung while the driver read without waiting (a control frame queued
    /// behind a bulk flood) is seen now, not once the flood is over.
    pub(crate) fn read(&mut self, ends: &mut DriverEnds, conn: &mut Connection) {
        if ends.shared.outbound.take() {
            self.rung();
        }
        if ends.shared.overflowed.swap(false, Ordering::AcqRel) && conn.is_open() {
            conn.close(
                ErrorCode::INTERNAL,
                format!("the peer left more than {MAX_PUSHED_WAITING} answers and orders unread on one lane"),
            );
        }
        for lane in Lane::ALL {
            let i = lane.index();
            if !(self.open[i] && self.unread[i] && conn.can_send(lane)) {
                continue;
            }
            let rx = &mut self.rx[i];
            match rx.try_recv() {
                // More may wait behind the batch: the lane stays unread.
                Ok(cmd) => ends.apply_batch(conn, *cmd, rx, lane),
                // What waits behind the channel goes once it is empty.
                Err(mpsc::error::TryRecvError::Empty) => self.unread[i] = ends.apply_overflow(conn, lane),
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.open[i] = ends.apply_overflow(conn, lane);
                }
            }
        }
    }
}

pub(crate) fn session_pair(peer: String) -> (SessionParts, DriverEnds, LaneReceivers) {
    let (c_tx, c_rx) = mpsc::channel(LANE_CHANNEL);
    let (d_tx, d_rx) = mpsc::channel(LANE_CHANNEL);
    let (b_tx, b_rx) = mpsc::channel(LANE_CHANNEL);
    let (in_tx, in_rx) = mpsc::channel(INCOMING_CHANNEL);
    let (closed, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        next_correlation: AtomicU64::new(1),
        closed,
        hook: std::sync::Mutex::new(None),
        outbound: Doorbell::default(),
        overflow: Default::default(),
        overflowed: AtomicBool::new(false),
    });
    let sender = SessionSender {
        lanes: [c_tx, d_tx, b_tx],
        shared: Arc::new(Handles(shared.clone())),
    };
    (
        SessionParts {
            sender,
            incoming: IncomingReceiver(in_rx),
            peer,
        },
        DriverEnds {
            incoming: in_tx,
            shared,
            routes: HashMap::new(),
            queued: 0,
        },
        [c_rx, d_rx, b_rx],
    )
}

/// A session before its handshake finished.
pub(crate) struct SessionParts {
    sender: SessionSender,
    incoming: IncomingReceiver,
    peer: String,
}

impl SessionParts {
    pub(crate) fn closed_watch(&self) -> watch::Receiver<Option<Result<(), ConnectionError>>> {
        self.sender.shared.closed.subscribe()
    }

    pub(crate) fn finish(self, hello: Option<Hello>, welcome: Option<Welcome>) -> Session {
        Session {
            sender: self.sender,
            incoming: self.incoming,
            hello,
            welcome,
            peer: self.peer,
        }
    }
}

/// How the application answers a Hello (server side).
pub type Authenticator = Arc<dyn Fn(&Hello) -> Result<(), (ErrorCode, String)> + Send + Sync>;

/// Asked about each authenticated Hello (server side): `Some` answers it
/// with that Redirect instead of Welcome (a standby of a group, spec §6.4).
pub type Redirector = Arc<dyn Fn(&Hello) -> Option<Redirect> + Send + Sync>;

/// Handshake progress reported by a driver to whoever waits for it.
pub(crate) enum Handshake {
    Server(Hello),
    Client(Welcome),
}

impl DriverEnds {
    /// Applies one command from the application to the connection.
    pub fn apply(&mut self, conn: &mut Connection, command: Command) {
        match command {
            Command::Send {
                correlation,
                flags,
                message,
            } => {
                if let Err(err) = conn.send(correlation, flags, &message) {
                    tracing::debug!(%err, kind = %message.kind(), "dropping message");
                }
            }
            Command::Request {
                correlation,
                message,
                route,
            } => match conn.send(correlation, Flags::NONE, &message) {
                Ok(()) => {
                    self.routes.insert(correlation, route);
                }
                Err(err) => {
                    // Tell the caller why (e.g. TooLarge) instead of a bare Closed.
                    if let Route::Once(tx) = route {
                        let _ = tx.send(Err(err));
                    }
                }
            },
            Command::Close { code, reason } => conn.close(code, reason),
        }
    }

    /// Applies what waits in `lane`'s overflow while the lane has room;
    /// whether some is still waiting.
    fn apply_overflow(&mut self, conn: &mut Connection, lane: Lane) -> bool {
        if !self.shared.overflow[lane.index()].waiting.load(Ordering::Acquire) {
            return false;
        }
        let shared = self.shared.clone();
        let overflow = &shared.overflow[lane.index()];
        let mut queue = overflow.queue.lock().expect("session overflow");
        while conn.can_send(lane) {
            match queue.pop_front() {
                Some(command) => self.apply(conn, *command),
                None => break,
            }
        }
        let left = !queue.is_empty();
        overflow.waiting.store(left, Ordering::Release);
        left
    }

    /// Applies `first` and then whatever else is already waiting on the same
    /// lane (up to a batch, while the lane has room), so that under load many
    /// frames go out in one write instead of one write per frame.
    pub fn apply_batch(
        &mut self,
        conn: &mut Connection,
        first: Command,
        rx: &mut mpsc::Receiver<Box<Command>>,
        lane: crate::frame::Lane,
    ) {
        self.apply(conn, first);
        for _ in 0..256 {
            if !conn.can_send(lane) {
                return;
            }
            match rx.try_recv() {
                Ok(command) => self.apply(conn, *command),
                Err(_) => return,
            }
        }
    }

    /// Handles the connection's events. Returns the handshake result when it
    /// happens; `accept` is consulted for a server's Hello.
    pub async fn drain_events(
        &mut self,
        conn: &mut Connection,
        authenticate: Option<&Authenticator>,
        redirect: Option<&Redirector>,
        server_id: &str,
        now: std::time::Instant,
    ) -> Option<Handshake> {
        let mut handshake = None;
        while let Some(event) = conn.poll_event() {
            match event {
                Event::HelloReceived(hello) => {
                    let verdict = authenticate.map_or(Ok(()), |auth| auth(&hello));
                    match verdict {
                        Ok(()) => match redirect.and_then(|r| r(&hello)) {
                            Some(to) => conn.redirect(to),
                            None => {
                                conn.accept(server_id, now);
                                handshake = Some(Handshake::Server(hello));
                            }
                        },
                        Err((code, reason)) => conn.refuse(code, reason),
                    }
                }
                Event::Established(welcome) => handshake = Some(Handshake::Client(welcome)),
                Event::Message {
                    correlation,
                    flags,
                    message,
                } => self.deliver(conn, correlation, flags, message).await,
                Event::Closed(result) => {
                    self.routes.clear();
                    self.drop_hook();
                    self.shared.closed.send_replace(Some(result));
                    self.drop_overflow();
                }
            }
        }
        handshake
    }

    /// The hook may hold handles of this very session: dropped with the
    /// connection, so that nothing keeps the session alive in a cycle.
    fn drop_hook(&self) {
        self.shared.hook.lock().expect("inbound hook").take();
    }

    async fn deliver(&mut self, conn: &mut Connection, correlation: u64, flags: Flags, message: Message) {
        // Only a reply answers one of our requests: the peer numbers its own
        // requests from 1 too, so a bare id match would steal its request.
        // spec §5: the REPLY flag is optional (implied by the kind), so a
        // reply kind counts as a reply with or without it.
        if correlation != 0 && (flags.contains(Flags::REPLY) || message.is_reply()) {
            if let Some(route) = self.routes.remove(&correlation) {
                match route {
                    Route::Once(tx) => {
                        let _ = tx.send(Ok(message));
                    }
                    Route::Stream(tx) => {
                        // Awaiting here pushes back on the peer through the
                        // transport's flow control when the consumer is slow.
                        if send_or_wait(&tx, message).await {
                            self.routes.insert(correlation, Route::Stream(tx));
                        }
                    }
                }
                return;
            }
        }
        let mut incoming = Incoming { correlation, message };
        if let Some(hook) = self.shared.hook.lock().expect("inbound hook").as_mut() {
            match hook(incoming, self.queued) {
                Hooked::Queue(rest) => incoming = rest,
                Hooked::Taken => return,
                Hooked::Reply(correlation, answer) => {
                    let flags = reply_flags(correlation);
                    if let Err(err) = conn.send(correlation, flags, &answer) {
                        tracing::debug!(%err, kind = %answer.kind(), "dropping a hook's answer");
                    }
                    return;
                }
            }
        }
        self.queued += 1;
        send_or_wait(&self.incoming, Box::new(incoming)).await;
    }

    /// Nothing pushed is sent once the session ended.
    fn drop_overflow(&self) {
        for overflow in &self.shared.overflow {
            overflow.queue.lock().expect("session overflow").clear();
        }
    }

    /// Marks the session ended if the connection did not say how.
    pub fn finish(&mut self, fallback: ConnectionError) {
        self.routes.clear();
        self.drop_hook();
        self.drop_overflow();
        self.shared.closed.send_if_modified(|state| {
            if state.is_none() {
                *state = Some(Err(fallback));
                true
            } else {
                false
            }
        });
    }
}

/// Sends on `tx`, waiting for room only when it is full; `false` once the
/// receiver is gone. The wait is boxed: its state would otherwise sit in
/// every connection's task, idle or not.
async fn send_or_wait<T: Send>(tx: &mpsc::Sender<T>, value: T) -> bool {
    match tx.try_send(value) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Closed(_)) => false,
        Err(mpsc::error::TrySendError::Full(value)) => Box::pin(tx.send(value)).await.is_ok(),
    }
}

/// The flags of a frame carrying `correlation`: a reply when it is not 0.
fn reply_flags(correlation: u64) -> Flags {
    if correlation != 0 {
        Flags::REPLY
    } else {
        Flags::NONE
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    use super::*;
    use crate::message::Ack;

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// A session whose driver waits on its doorbell (as the stream driver
    /// does), and what counts the driver's wake-ups.
    fn waiting_session() -> (SessionParts, DriverEnds, LaneReceivers, Arc<Wakes>) {
        let (parts, ends, lanes) = session_pair("test".into());
        let wakes = Arc::new(Wakes::default());
        let waker = std::task::Waker::from(wakes.clone());
        assert!(ends
            .shared
            .outbound
            .poll_rung(&mut Context::from_waker(&waker))
            .is_pending());
        (parts, ends, lanes, wakes)
    }

    #[test]
    fn a_batch_wakes_each_driver_once_when_the_outermost_batch_ends() {
        let (a, a_ends, _a_lanes, a_wakes) = waiting_session();
        let (b, b_ends, _b_lanes, b_wakes) = waiting_session();
        {
            let _outer = RingBatch::hold();
            {
                let _inner = RingBatch::hold();
                a.sender.try_reply(7, Ack {}).unwrap();
                b.sender.try_reply(8, Ack {}).unwrap();
                a.sender.try_reply(9, Ack {}).unwrap();
            }
            // The inner batch's end rings nothing: the outer one still holds.
            assert_eq!((a_wakes.count(), b_wakes.count()), (0, 0));
        }
        assert_eq!((a_wakes.count(), b_wakes.count()), (1, 1));
        assert!(a_ends.shared.outbound.take() && b_ends.shared.outbound.take());
    }

    #[test]
    fn outside_a_batch_a_send_wakes_the_driver_at_once() {
        let (a, a_ends, mut a_lanes, a_wakes) = waiting_session();
        a.sender.try_reply(7, Ack {}).unwrap();
        assert_eq!(a_wakes.count(), 1);
        assert!(a_ends.shared.outbound.take());
        let lane = Message::from(Ack {}).lane().index();
        assert!(matches!(
            *a_lanes[lane].try_recv().unwrap(),
            Command::Send { correlation: 7, .. }
        ));
    }
}
