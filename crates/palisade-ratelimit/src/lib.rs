//! A rate limiter for any tower [`Service`](tower_service::Service), and for direct use.
//!
//! - **Quotas that read as they mean**: [`Quota::per_second`]`(n)` is n per second;
//!   [`allow_burst`](Quota::allow_burst) sets how many may go at once.
//! - **Every common algorithm** ([`Algorithm`]): GCRA (the default: the whole state in one
//!   atomic, updated by a compare-exchange loop, no lock), token bucket, sliding-window log,
//!   sliding-window counter, and fixed window (with its documented 2× edge burst).
//! - **Weighted requests**: a [`Cost`] per request ([`RateLimitLayer::cost`]), and
//!   [`RateLimiter::check_n`]. A cost the limiter can never hold is refused at once with
//!   [`InsufficientCapacity`], not left waiting forever.
//! - **Reject or wait**: by default a request over the limit fails at once with core's
//!   [`RateLimited`] (it implements [`RetryAfter`](palisade_core::RetryAfter)); in wait mode
//!   ([`RateLimitConfigBuilder::wait_up_to`]) it waits for capacity, up to a maximum, first
//!   come first served. A waiting request that is dropped takes nothing.
//! - **Honest readiness**: `poll_ready` takes nothing from the limiter; admission is decided
//!   in `call`, so idle keep-alive connections cannot hoard capacity.
//! - **One layer value is one limiter**, shared by every service it builds and their clones;
//!   a [`RateLimitHandle`] reads it and changes its quota at runtime.
//! - **Keyed limits** ([`KeyedRateLimitLayer`], [`KeyedRateLimiter`]): a limit per key picked
//!   by a [`KeyExtractor`] (a closure via [`key_fn`]; with `http`, the peer's IP, the
//!   client's IP behind trusted proxies, a header such as an API key). Memory stays
//!   bounded: idle keys are swept on their own and a cap on the keys holds under a flood,
//!   with a typed outcome at the cap ([`AtCapacity`]).
//! - **Cluster-wide limits** (feature `redis`): `RedisRateLimiter` keeps one GCRA limit per
//!   key in Redis (a Lua script on the server's clock), so N server processes share it;
//!   `RedisRateLimitLayer` puts it in front of any service, keyed by the same
//!   [`KeyExtractor`]s, answered like the local layers, and decided by a fail-open /
//!   fail-closed / local policy while Redis is unavailable.
//! - **Observable**: [`RateLimitEvent`]s (admitted, waited with the wait time, rejected) to a
//!   core [`Listener`](palisade_core::Listener) (metrics through core's `MetricsListener`),
//!   and `tracing` events on rejections, waits and quota changes.
//! - Time is tokio's clock by default: everything works under `tokio::time::pause()`. A
//!   faster [`Clock`] (feature `quanta`) that does not follow it is there for hot paths.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use palisade_core::{Rejection, RetryAfter};
//! use palisade_ratelimit::{Quota, RateLimitLayer};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limit = RateLimitLayer::new(Quota::per_second(NonZeroU32::new(2).unwrap()));
//! let handle = limit.handle();
//! let service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service_fn(|name: &'static str| async move { Ok::<_, std::io::Error>(name.len()) });
//!
//! assert_eq!(service.clone().oneshot("first").await.unwrap(), 5);
//! assert_eq!(service.clone().oneshot("second").await.unwrap(), 6);
//! assert_eq!(handle.snapshot().remaining(), 0);
//!
//! // The third in the same second is refused, with when to come back.
//! let error = service.clone().oneshot("third").await.unwrap_err();
//! let Some(Rejection::RateLimited(limited)) = Rejection::find(&*error) else {
//!     panic!("expected a rate limit rejection, got {error}");
//! };
//! assert!(limited.retry_after().unwrap() <= std::time::Duration::from_millis(500));
//! # }
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `redis` | [`RedisRateLimiter`]: one GCRA limit per key shared by every process through Redis (a Lua script on the server's clock), with a fail-open / fail-closed / local policy while Redis is unavailable; [`RedisRateLimitLayer`]: the same limits as a tower layer in front of any service, keyed by a [`KeyExtractor`] (see its example) |
//! | `quanta` | [`Clock::quanta`]: the CPU's time-stamp counter, cheaper than tokio's clock but blind to `tokio::time::pause` |
//! | `axum` | `PeerIp` and `ClientIp` also read axum's `ConnectInfo<SocketAddr>` (implies `http`) |
//! | `http` | key extractors `PeerIp`, `ClientIp` (behind trusted proxies), `HeaderKey`; `UpstreamLimitLayer` (clients pause while the upstream's limit is spent: `429` + `Retry-After`, `RateLimit: ...;r=0;t=N`); `TooManyRequests` (module `http`): answer refused requests with `429`, `Retry-After` and the IETF `RateLimit` / `RateLimit-Policy` headers instead of an error |

mod algorithm;
mod clock;
mod config;
mod decision;
mod event;
mod future;
mod handle;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "http")]
mod key;
mod keyed;
mod layer;
mod limiter;
mod queue;
mod quota;
#[cfg(feature = "redis")]
mod redis_layer;
#[cfg(feature = "redis")]
mod redis_store;
mod respond;
mod service;
#[cfg(feature = "http")]
mod upstream;

pub use crate::algorithm::Algorithm;
pub use crate::clock::Clock;
pub use crate::config::{ConfigError, RateLimitConfig, RateLimitConfigBuilder};
pub use crate::decision::{
    InsufficientCapacity, KeysExhausted, Limited, Refusal, Snapshot, StoreUnavailable,
};
pub use crate::event::RateLimitEvent;
pub use crate::future::ResponseFuture;
pub use crate::handle::RateLimitHandle;
#[cfg(feature = "http")]
pub use crate::http::TooManyRequests;
#[cfg(feature = "http")]
pub use crate::key::{ClientIp, ForwardedHeader, HeaderKey, InvalidNetwork, PeerIp, TrustedProxy};
pub use crate::keyed::{
    AtCapacity, DEFAULT_MAX_KEYS, DEFAULT_SWEEP_EVERY, KeyExtractor, KeyFn, KeyedRateLimit,
    KeyedRateLimitLayer, KeyedRateLimiter, key_fn,
};
pub use crate::layer::RateLimitLayer;
pub use crate::limiter::{MAX_LOG_ENTRIES, RateLimiter};
pub use crate::quota::{MAX_WINDOW, Quota, QuotaError};
#[cfg(feature = "redis")]
pub use crate::redis_layer::{RedisKey, RedisRateLimit, RedisRateLimitLayer, RedisResponseFuture};
#[cfg(feature = "redis")]
pub use crate::redis_store::{
    Checked, DecidedBy, OnUnavailable, REDIS_GCRA_SCRIPT, RedisConfigError, RedisRateLimiter,
    RedisRateLimiterBuilder,
};
pub use crate::respond::{Cost, RaiseError, Respond, UnitCost};
pub use crate::service::RateLimit;
#[cfg(feature = "http")]
pub use crate::upstream::{
    DEFAULT_BARE_429_PAUSE, DEFAULT_UPSTREAM_MAX_WAIT, UpstreamFuture, UpstreamLimit,
    UpstreamLimitLayer, upstream_pause,
};
pub use palisade_core::reject::RateLimited;

/// Adds `.rate_limiter(config)` to [`tower::ServiceBuilder`].
///
/// (Not `.rate_limit`: tower's `ServiceBuilder` has an inherent `rate_limit(num, per)` when
/// its `limit` feature is on, and an inherent method always wins over a trait's.)
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{Quota, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// let service = ServiceBuilder::new()
///     .rate_limiter(Quota::per_second(NonZeroU32::new(100).unwrap()))
///     .service_fn(|name: String| async move { Ok::<_, std::io::Error>(name.len()) });
/// # let _ = service;
/// ```
pub trait ServiceBuilderExt<L> {
    /// Wraps the services built so far in a [`RateLimitLayer`] made from `config` (or a
    /// [`Quota`]).
    fn rate_limiter(
        self,
        config: impl Into<RateLimitConfig>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<RateLimitLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    fn rate_limiter(
        self,
        config: impl Into<RateLimitConfig>,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<RateLimitLayer, L>> {
        self.layer(RateLimitLayer::new(config))
    }
}
