//! The pipeline file format (`spec/pipeline.md`): YAML in, a validated
//! [`Pipeline`] out, or every problem at once with its file:line:column and
//! a hint. The CLI validates with this before submitting, and the server
//! validates the same text with the same code.
//!
//! A crate of its own, apart from the protocol crate `valkyrie`: peers that
//! only speak the protocol (agents, SDK users) need none of its YAML stack,
//! and the format changes on its own schedule. It depends on `valkyrie` for
//! the [`JobSpec`](valkyrie::message::JobSpec) a pipeline job becomes.

#![warn(missing_docs)]

mod error;
mod expr;
mod graph;
mod hints;
pub mod limits;
mod model;
mod parse;

pub use error::{PipelineError, PipelineErrors};
pub use expr::{Expr, ExprError, Status};
pub use model::{Condition, Pipeline, PipelineJob};
pub use parse::parse;

#[cfg(test)]
mod tests;
