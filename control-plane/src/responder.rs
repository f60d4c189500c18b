//! [`Responder`]: answers one request straight onto the requester's session,
//! so the core never waits on a client and no task is spawned per request.

use valkyrie::message::{Ack, Message, RequestFailed};
use valkyrie::{ErrorCode, SessionSender};

/// Where the answer to one request goes.
#[derive(Clone, Debug)]
pub struct Responder {
    sender: Option<SessionSender>,
    correlation: u64,
}

impl Responder {
    /// Answers `correlation` on `sender`.
    pub fn new(sender: SessionSender, correlation: u64) -> Self {
        Self {
            sender: Some(sender),
            correlation,
        }
    }

    /// A responder whose answers go nowhere (work the server starts itself,
    /// such as cancelling the jobs of a cancelled run).
    pub fn detached() -> Self {
        Self {
            sender: None,
            correlation: 0,
        }
    }

    /// Sends the reply. A requester whose queue is full or gone loses only
    /// its own reply; the core goes on.
    pub fn reply(&self, message: impl Into<Message>) {
        let Some(sender) = self.sender.as_ref().filter(|_| self.correlation != 0) else {
            return;
        };
        if let Err(err) = sender.try_reply(self.correlation, message) {
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
