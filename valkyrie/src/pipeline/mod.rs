//! The pipeline file format (`spec/pipeline.md`): YAML in, a validated
//! [`Pipeline`] out, or every problem at once with its file:line:column and
//! a hint. The CLI validates with this before submitting, and the server
//! validates the same text with the same code.

mod error;
mod graph;
mod hints;
pub mod limits;
mod model;
mod parse;

pub use error::{PipelineError, PipelineErrors};
pub use model::{Condition, Pipeline, PipelineJob};
pub use parse::parse;

#[cfg(test)]
mod tests;
