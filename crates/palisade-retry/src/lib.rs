//! A retry layer for any tower [`Service`](tower_service::Service), with the policy people
//! actually need built in.
//!
//! - **Attempts and delays**: at most [`max_attempts`](RetryConfigBuilder::max_attempts)
//!   attempts (default 3), with delays from a core [`Backoff`](palisade_core::Backoff)
//!   (default exponential from 100 ms, ×2, capped at 10 s, full jitter).
//! - **What is retried**: a core [`Classify`](palisade_core::Classify) decides; results it
//!   calls a [`Failure`](palisade_core::Outcome::Failure) are retried. The default,
//!   [`DefaultClassify`](palisade_core::DefaultClassify), retries every error.
//! - **Server hints**: a palisade rejection in the error ([`RateLimited`](palisade_core::RateLimited),
//!   [`Overloaded`](palisade_core::Overloaded), [`ShuttingDown`](palisade_core::ShuttingDown))
//!   that carries a retry-after sets the delay instead of the backoff. A
//!   [`CircuitOpen`](palisade_core::CircuitOpen) is never retried and spends no budget: it is
//!   passed through untouched. A [`Replay`] can read hints from responses ([`Hint`]); with
//!   feature `http`, `Retry-After` and `grpc-retry-pushback-ms`.
//! - **Retry budget**: one per layer value, shared by all its services and clones. Retries
//!   may add at most 20 % of recent calls plus 10 per second (the defaults of
//!   [`BudgetConfig`]), so an outage cannot multiply load. A spent budget returns the last
//!   real outcome, not a new error.
//! - **Time limits**: an optional per-attempt timeout ([`AttemptTimedOut`], retried) and an
//!   overall deadline: no retry starts whose delay would end at or after it, and an attempt
//!   still running at the deadline is cancelled ([`DeadlineExceeded`]).
//! - **Hedging** (off by default, [`hedge`](RetryConfigBuilder::hedge)): when an attempt has
//!   not answered after a delay, the request is sent again beside it; the first success wins
//!   and the other attempt is cancelled (dropped). The delay is fixed or a percentile of
//!   recent latencies ([`Hedge::at_percentile`]). Hedges count as attempts and draw on the
//!   same budget.
//! - **Readiness**: `poll_ready` is called on the inner service before every attempt, as in
//!   tower's retry; the inner service must be `Clone`. Requests are sent again through a
//!   [`Replay`]: by default ([`CloneRequest`]) requests must be `Clone` and are cloned per
//!   attempt.
//! - **Observability**: a `retry` `tracing` span per call with the `attempt` number (made
//!   only while a subscriber enables `DEBUG`), debug
//!   events on each retry, and [`RetryEvent`]s for core [`Listener`](palisade_core::Listener)s
//!   (including `MetricsListener`).
//!
//! All waiting uses tokio's clock, so everything works under `tokio::time::pause()`.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU32, Ordering};
//! use std::time::Duration;
//! use palisade_core::Backoff;
//! use palisade_retry::{RetryConfig, RetryLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_core::BoxError> {
//! let config = RetryConfig::builder()
//!     .max_attempts(NonZeroU32::new(4).unwrap())
//!     .backoff(Backoff::constant(Duration::from_millis(1)))
//!     .deadline(Duration::from_secs(2))
//!     .build()?;
//!
//! let calls = Arc::new(AtomicU32::new(0));
//! let counter = Arc::clone(&calls);
//! let service = ServiceBuilder::new()
//!     .layer(RetryLayer::new(config))
//!     .service_fn(move |name: &'static str| {
//!         let call = counter.fetch_add(1, Ordering::Relaxed) + 1;
//!         async move {
//!             if call < 3 { Err("upstream unavailable") } else { Ok(format!("hello, {name}")) }
//!         }
//!     });
//!
//! assert_eq!(service.oneshot("world").await?, "hello, world");
//! assert_eq!(calls.load(Ordering::Relaxed), 3);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `http` | module `http`: a classifier for HTTP responses (5xx but 501, 429, 408), `HttpReplay` (idempotent methods only unless opted in, `Retry-After` and `grpc-retry-pushback-ms` hints, an [`Attempts`] response extension), `BufferBodyLayer` (streaming request bodies buffered up to a limit so they can be sent again) |

#[cfg(feature = "http")]
mod body;
mod budget;
mod config;
mod error;
mod event;
mod future;
#[cfg(feature = "http")]
pub mod http;
mod latency;
mod layer;
mod replay;
mod service;

pub use crate::config::{
    BUDGET_BUCKETS, BudgetConfig, ConfigError, HEDGE_WINDOW, Hedge, RetryConfig, RetryConfigBuilder,
};
pub use crate::error::{AttemptTimedOut, DeadlineExceeded};
pub use crate::event::RetryEvent;
pub use crate::future::ResponseFuture;
pub use crate::layer::RetryLayer;
pub use crate::replay::{Attempts, CloneRequest, Hint, Replay};
pub use crate::service::Retry;

/// Adds `.retry_with(config)` to [`tower::ServiceBuilder`].
///
/// Not `.retry(..)`: tower's own `retry` feature gives `ServiceBuilder` an inherent
/// `retry(policy)` method, which Rust would pick over an extension method of that name.
///
/// ```
/// use palisade_retry::{RetryConfig, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .retry_with(RetryConfig::default())
///     .service_fn(|name: String| async move { Ok::<_, std::io::Error>(name.len()) });
/// # let _ = service;
/// ```
pub trait ServiceBuilderExt<L> {
    /// Wraps the services built so far in a [`RetryLayer`] made from `config`.
    fn retry_with(
        self,
        config: RetryConfig,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<RetryLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    fn retry_with(
        self,
        config: RetryConfig,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<RetryLayer, L>> {
        self.layer(RetryLayer::new(config))
    }
}
