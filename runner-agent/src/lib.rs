//! Valkyrie runner agent: the process that runs on a build machine, takes
//! jobs from the control plane and executes their steps.
//!
//! This crate holds the agent's library code; the `valkyrie-agent` binary is
//! a thin wrapper around it. [`executor`] runs a job's steps as local child
//! processes and streams their output as events; it does no networking.

pub mod artifacts;
pub mod executor;
pub mod job;
pub mod leftovers;
pub mod session;

pub use session::{Agent, AgentConfig, AgentError};
