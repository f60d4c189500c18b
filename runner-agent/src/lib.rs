//! Valkyrie runner agent: the process that runs on a build machine, takes
//! jobs from the control plane and executes their steps.
//!
//! This crate holds the agent's library code; the `valkyrie-agent` binary is
//! a thin wrapper around it. [`executor`] runs a job's steps as local child
//! processes and streams their output as events; it does no networking.
//! [`supervisor`] runs each attempt in a process of its own that outlives
//! the agent, so that a restarted agent re-attaches to it; [`cache`] gives
//! each job its `$VALKYRIE_CACHE_DIR`.

pub mod artifacts;
pub mod cache;
pub mod checkout;
pub mod executor;
pub mod job;
pub mod leftovers;
pub mod session;
pub mod supervisor;

pub use session::{Agent, AgentConfig, AgentError};
