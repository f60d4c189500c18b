//! [`Responder`]: answers one request straight onto the requester's session,
//! so the core never waits on a client and no task is spawned per request.

use valkyrie::message::{Ack, Message, RequestFailed};
use valkyrie::{ErrorCode, SessionSender};

/// Where the answer to one request goes.
#[derive(Clone, Debug)]
pub struct Responder {
    sender: SessionSender,
    correlation: u64,
}

impl Responder {
    /// Answers `correlation` on `sender`.
    pub fn new(sender: SessionSender, correlation: u64) -> Self {
        Self { sender, correlation }
    }

    /// Sends the reply. A requester whose queue is full or gone loses only
    /// its own reply; the core goes on.
    pub fn reply(&self, message: impl Into<Message>) {
        if self.correlation == 0 {
            return;
        }
        if let Err(err) = self.sender.try_reply(self.correlation, message) {
            tracing::debug!(%err, "reply dropped");
        }
    }

    /// Acknowledges a request that returns nothing.
    pub fn ack(&self) {
        self.reply(Ack {});
    }

    /// Refuses the request; the connection stays open.
    pub fn fail(&self, code: ErrorCode, message: impl Into<String>) {
        self.reply(RequestFailed {
            code,
            message: message.into(),
        });
    }
}
