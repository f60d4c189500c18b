//! Valkyrie control plane.
pub mod scheduler;
