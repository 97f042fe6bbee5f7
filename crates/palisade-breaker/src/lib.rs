//! A circuit breaker for any tower [`Service`](tower_service::Service).
//!
//! When the service behind it keeps failing, a breaker stops calling it for a while and
//! fails fast instead, giving it room to recover; then it lets a few probe calls through to
//! see whether it has.
//!
//! ```text
//!            failure rate ≥ threshold            wait over: next call probes
//!   Closed ───────────────────────────▶ Open ─────────────────────────────▶ HalfOpen
//!     ▲                                  ▲                                    │
//!     │                                  └──────── a probe fails ─────────────┤
//!     └───────────────────── N probes succeed ───────────────────────────────┘
//! ```
//!
//! - **Closed**: calls go through and their outcomes go into a window: the last N calls
//!   ([`Window::Count`]) or the last T ([`Window::Time`], in buckets). Once the window holds
//!   the minimum number of calls, a failure rate (or slow-call rate) at its threshold trips
//!   the breaker. Or, simpler, N failures in a row trip it
//!   ([`consecutive_failures`](CircuitBreakerConfigBuilder::consecutive_failures)).
//! - **Open**: calls fail at once with [`CircuitOpen`], which carries the time left and
//!   implements [`RetryAfter`](palisade_core::RetryAfter). The wait grows on repeated trips
//!   (a core [`Backoff`](palisade_core::Backoff), with jitter).
//! - **Half-open**: exactly N probe calls are admitted, reserved atomically; all others are
//!   rejected, with the latest open wait as their retry-after (what a failing probe would
//!   cost). A probe that is cancelled frees its slot. Any failed (or slow) probe reopens
//!   the breaker; N successes close it.
//! - **Forced open** (rejections carry the latest open wait), **disabled** and
//!   **metrics-only** are set at runtime through a [`CircuitBreakerHandle`], which also reads
//!   the state and the window.
//! - **Keyed**: [`KeyedCircuitBreakerLayer`] keeps one breaker per key (upstream host,
//!   route) that a [`KeyExtractor`] picks, in a map bounded in size, evicting idle keys.
//!
//! What counts as a failure is a core [`Classify`](palisade_core::Classify): by default every
//! `Err`; outcomes classified as ignored count for nothing.
//!
//! While closed, a call takes no lock and allocates nothing; in a healthy service (a full
//! window of successes) it only reads the breaker's state, and its response future keeps the
//! breaker alive with a reference count (taken in `call`, given back when the call completes)
//! on the service's own slot: services and clones are given slots in turn, so that threads
//! sharing a breaker do not contend on one count. See the crate's bench numbers in the
//! repository's `benches/README.md`.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
//! use palisade_core::Rejection;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = CircuitBreakerConfig::builder()
//!     .name("inventory")
//!     .consecutive_failures(NonZeroU32::new(3).unwrap())
//!     .build()?;
//! let breaker = CircuitBreakerLayer::new(config);
//! let handle = breaker.handle();
//!
//! let service = ServiceBuilder::new()
//!     .layer(breaker)
//!     .service_fn(|fail: bool| async move {
//!         if fail { Err("upstream unavailable") } else { Ok::<_, &str>("in stock") }
//!     });
//!
//! for _ in 0..3 {
//!     assert!(service.clone().oneshot(true).await.is_err());
//! }
//! assert_eq!(handle.state(), State::Open);
//!
//! // Now calls fail fast, without reaching the service.
//! let error = service.clone().oneshot(false).await.unwrap_err();
//! assert!(matches!(Rejection::find(&*error), Some(Rejection::CircuitOpen(_))));
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `http` | `HttpCircuitBreakerLayer` (module `http`): answer an open circuit with `503` + `Retry-After`, or a fallback's response (serve from cache), instead of an error |

mod config;
mod event;
mod future;
mod handle;
#[cfg(feature = "http")]
pub mod http;
mod keyed;
mod layer;
mod service;
mod state;
mod window;

pub use crate::config::{
    CircuitBreakerConfig, CircuitBreakerConfigBuilder, ConfigError, MAX_BUCKETS, MAX_PROBES,
    MAX_WINDOW_CALLS, Window,
};
pub use crate::event::{BreakerEvent, State};
pub use crate::future::ResponseFuture;
pub use crate::handle::CircuitBreakerHandle;
#[cfg(feature = "http")]
pub use crate::http::{HttpCircuitBreaker, HttpCircuitBreakerLayer};
#[cfg(feature = "http")]
pub use crate::keyed::HostKey;
pub use crate::keyed::{
    KeyExtractor, KeyFn, KeyedCircuitBreaker, KeyedCircuitBreakerLayer, key_fn,
};
pub use crate::layer::{CircuitBreakerLayer, PerServiceCircuitBreakerLayer};
pub use crate::service::CircuitBreaker;
pub use crate::state::Metrics;
pub use palisade_core::reject::CircuitOpen;

/// Adds `.circuit_breaker(config)` to [`tower::ServiceBuilder`].
///
/// ```
/// use palisade_breaker::{CircuitBreakerConfig, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .circuit_breaker(CircuitBreakerConfig::default())
///     .service_fn(|name: String| async move { Ok::<_, std::io::Error>(name.len()) });
/// # let _ = service;
/// ```
pub trait ServiceBuilderExt<L> {
    /// Wraps the services built so far in a [`CircuitBreakerLayer`] made from `config`.
    fn circuit_breaker(
        self,
        config: CircuitBreakerConfig,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<CircuitBreakerLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    fn circuit_breaker(
        self,
        config: CircuitBreakerConfig,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<CircuitBreakerLayer, L>> {
        self.layer(CircuitBreakerLayer::new(config))
    }
}
