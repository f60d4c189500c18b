//! Cross-crate scenarios.
