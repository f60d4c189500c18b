//! Where answers go. A [`Responder`] answers one request, straight onto the
//! requester's protocol session or into a channel (the REST adapter); an
//! [`EventSink`] receives a subscription's events the same two ways. The
//! core never waits on either. An answer is never lost for want of room
//! (`SessionSender::push`: a requester that stops reading is disconnected
//! instead); an event for a full subscriber is, and the subscriber is told
//! with `Skipped`.

use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use valkyrie::message::{Ack, Event, Message, RequestFailed};
use valkyrie::{ErrorCode, SendError, SessionSender};

#[derive(Debug)]
enum ReplyTo {
    Session { sender: SessionSender, correlation: u64 },
    Channel(Mutex<Option<oneshot::Sender<Message>>>),
    Nowhere,
}

/// Events a subscriber's connection may hold behind its full lane channel
/// (256) before the subscriber counts as behind and gets `Skipped`: one
/// turn of the core sends an event for each job it changed, often more
/// than the channel holds, to a subscriber that reads as fast as it can.
pub const EVENT_BACKLOG: usize = 4096;

/// Where the answer to one request goes.
#[derive(Debug)]
pub struct Responder {
    to: ReplyTo,
}

impl Responder {
    /// Answers `correlation` on `sender`.
    pub fn new(sender: SessionSender, correlation: u64) -> Self {
        let to = if correlation == 0 {
            ReplyTo::Nowhere
        } else {
            ReplyTo::Session { sender, correlation }
        };
        Self { to }
    }

    /// Answers into a channel; the receiver gets exactly one message.
    pub fn channel() -> (Self, oneshot::Receiver<Message>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                to: ReplyTo::Channel(Mutex::new(Some(tx))),
            },
            rx,
        )
    }

    /// A responder whose answers go nowhere (work the server starts itself,
    /// such as cancelling the jobs of a cancelled run).
    pub fn detached() -> Self {
        Self { to: ReplyTo::Nowhere }
    }

    /// Sends the reply.
    pub fn reply(&self, message: impl Into<Message>) {
        match &self.to {
            ReplyTo::Session { sender, correlation } => {
                if let Err(err) = sender.push(*correlation, message) {
                    tracing::debug!(%err, "no reply: the requester's connection is closed or closing");
                }
            }
            ReplyTo::Channel(tx) => {
                if let Some(tx) = tx.lock().expect("responder lock").take() {
                    let _ = tx.send(message.into());
                }
            }
            ReplyTo::Nowhere => {}
        }
    }

    /// Acknowledges a request that returns nothing.
    pub fn ack(&self) {
        self.reply(Ack {});
    }

    /// Refuses the request; the connection stays open.
    /// Answers with the core's refusal: its code and its reason.
    pub fn refuse(&self, err: crate::core::CoreError) {
        self.fail(err.code(), err.to_string())
    }

    /// Answers with RequestFailed: `code` and a reason for a person.
    pub fn fail(&self, code: ErrorCode, message: impl Into<String>) {
        self.reply(RequestFailed {
            code,
            message: message.into(),
        });
    }
}

/// Where a subscription's events go.
#[derive(Clone, Debug)]
pub enum EventSink {
    /// Event frames carrying `correlation` on a protocol session.
    Session {
        /// The subscriber's session.
        sender: SessionSender,
        /// Its Subscribe request's correlation id.
        correlation: u64,
    },
    /// A bounded channel.
    Channel(mpsc::Sender<Event>),
}

impl EventSink {
    /// Queues an event without waiting: `QueueFull` when the subscriber
    /// is behind, `Closed` when it is gone.
    pub fn try_send(&self, event: Event) -> Result<(), SendError> {
        match self {
            EventSink::Session { sender, correlation } => sender.try_push(*correlation, event, EVENT_BACKLOG),
            EventSink::Channel(tx) => tx.try_send(event).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SendError::QueueFull(valkyrie::Lane::Bulk),
                mpsc::error::TrySendError::Closed(_) => SendError::Closed,
            }),
        }
    }

    /// Sends an event, waiting while the subscriber's queue is full.
    pub async fn send(&self, event: Event) -> Result<(), SendError> {
        match self {
            EventSink::Session { sender, correlation } => sender.reply(*correlation, event).await,
            EventSink::Channel(tx) => tx.send(event).await.map_err(|_| SendError::Closed),
        }
    }

    /// A responder for the subscription's own errors.
    pub fn responder(&self) -> Responder {
        match self {
            EventSink::Session { sender, correlation } => Responder::new(sender.clone(), *correlation),
            EventSink::Channel(_) => Responder::detached(),
        }
    }
}
