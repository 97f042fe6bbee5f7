//! Shared helpers for the Palisade benches.
