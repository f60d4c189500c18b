//! The Valkyrie control plane: the scheduler, the runner registry, the job
//! state machine, and the session handlers that connect them to clients and
//! agents over the `valkyrie` protocol. The `valkyrie-server` binary wires
//! them to listeners.
//!
//! Not here: the wire format (the `valkyrie` crate), running processes (the
//! runner agent), durable storage (in memory for now).

pub mod artifacts;
pub mod audit;
pub mod auth;
pub mod core;
pub mod group;
pub mod job;
pub mod masking;
pub mod metrics;
pub mod responder;
pub mod rest;
pub mod scheduler;
pub mod server;
pub mod source;
pub mod store;

pub use crate::core::{spawn as spawn_core, CoreConfig, CoreHandle};
pub mod run;
