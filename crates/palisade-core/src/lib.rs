//! The shared vocabulary of the Palisade suite.
//!
//! Every Palisade crate speaks these few types, so that a concept is configured once and means
//! the same thing everywhere:
//!
//! - [`backoff`]: [`Backoff`] and [`Jitter`], the delays of every retry loop in the suite
//!   (constant, linear, exponential; none, full, equal, decorrelated jitter; attempt and
//!   elapsed-time limits; seedable for tests).
//! - [`classify`]: [`Classify`], which decides whether a call's result is a success, a
//!   failure, or ignored, from the result and the call's duration.
//! - [`reject`]: the suite's typed rejections ([`CircuitOpen`], [`RateLimited`],
//!   [`Overloaded`], [`ShuttingDown`]), the [`RetryAfter`] trait they implement, and
//!   [`Rejection::find`] to recognise them in a [`BoxError`].
//! - [`event`]: the [`Listener`] hook for component events and, with `metrics`, a listener that
//!   records them through the `metrics` facade.
//!
//! It does no I/O and needs no runtime.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `http` | `StatusClassify` for `http::Response`s; rejections as 429/503 responses with `Retry-After` |
//! | `metrics` | `MetricsListener`, recording events through the `metrics` facade |
//!
//! # Example
//!
//! A hand-written retry loop: the delays come from a [`Backoff`], what to retry from a
//! [`Classify`]. (The suite's `RetryLayer` does this for any tower `Service`.)
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::{Duration, Instant};
//! use palisade_core::{Backoff, Classify, DefaultClassify, Jitter, Outcome};
//!
//! # fn main() -> Result<(), palisade_core::backoff::BackoffError> {
//! let backoff = Backoff::exponential(Duration::from_millis(1), 2.0, Duration::from_millis(8))?
//!     .with_jitter(Jitter::Full)
//!     .with_max_attempts(NonZeroU32::new(4).unwrap());
//!
//! let mut calls = 0;
//! let mut flaky = || {
//!     calls += 1;
//!     if calls < 3 { Err("unavailable") } else { Ok(calls) }
//! };
//!
//! let mut delays = backoff.delays();
//! let result = loop {
//!     let started = Instant::now();
//!     let result = flaky();
//!     let outcome = DefaultClassify.classify(result.as_ref(), started.elapsed());
//!     match (outcome, delays.next()) {
//!         (Outcome::Failure, Some(delay)) => std::thread::sleep(delay),
//!         _ => break result,
//!     }
//! };
//! assert_eq!(result, Ok(3));
//! # Ok(())
//! # }
//! ```

pub mod backoff;
pub mod classify;
pub mod event;
pub mod reject;

pub use crate::backoff::{Backoff, Jitter};
pub use crate::classify::{Classify, DefaultClassify, Outcome};
pub use crate::event::{Event, Listener};
pub use crate::reject::{
    CircuitOpen, Overloaded, RateLimited, Rejection, RetryAfter, ShuttingDown,
};

/// The error type layers use when they add errors of their own to an inner service's:
/// a boxed, thread-safe error, as in tower.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
