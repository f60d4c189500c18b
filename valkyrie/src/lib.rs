//! Valkyrie: the framed binary protocol between the control plane, runner
//! agents and clients.
//!
//! The crate has two halves. The sans-I/O half ([`frame`], [`message`],
//! [`connection`]) turns bytes into frames and messages and runs the
//! handshake, heartbeats and lanes as a state machine driven by the caller's
//! clock; it never touches a socket or reads the time. The I/O half
//! ([`transport`]) drives that state machine over Unix sockets, TCP, TLS 1.3
//! and QUIC, chosen by URI.
//!
//! [`private_fs`] creates the files and directories of the server and the
//! agent private to their user (0600/0700).
//!
//! The wire format is specified in `spec/protocol.md`; `spec/vectors/` holds
//! the test vectors every implementation must pass.

#![warn(missing_docs)]

#[cfg(feature = "binary")]
pub mod binary;
#[cfg(feature = "config-file")]
pub mod config_file;
pub mod connection;
pub mod error;
pub mod frame;
pub mod message;
pub mod private_fs;
pub mod transport;

pub use connection::{Connection, ConnectionConfig, Event as ConnectionEvent, Side};
pub use error::{ConnectionError, DecodeError, SendError};
pub use frame::{ErrorCode, Flags, Frame, FrameDecoder, FrameKind, Lane};
pub use message::Message;
pub use transport::{connect, ClientOptions, Endpoint, Listener, ListenerOptions, Session, SessionSender};
