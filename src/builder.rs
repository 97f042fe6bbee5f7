//! [`ServiceBuilderExt`]: every Palisade layer as a `ServiceBuilder` method.

#[cfg(any(
    feature = "breaker",
    feature = "pool",
    feature = "rate-limit",
    feature = "retry",
    feature = "shutdown"
))]
use tower::layer::util::Stack;

/// Adds Palisade's layers to [`tower::ServiceBuilder`], one method per layer, each behind
/// its crate's feature.
///
/// The rate limiter and retry methods are `rate_limiter` and `retry_with`, not
/// `rate_limit` and `retry`: `ServiceBuilder` has inherent methods by those names when
/// tower's `limit` or `retry` features are on, and an inherent method always wins over a
/// trait's, so ours would be unreachable in most applications.
///
/// The recommended order for a server, outermost first: shutdown (every request is counted
/// for the drain), rate limit (cheap rejections before any queueing), concurrency pool,
/// circuit breaker; a client puts retry outside its breaker and rate limiter, so a retry
/// waits for the server's `Retry-After` and never spends its budget on a `CircuitOpen`.
///
/// # Example
///
/// ```
/// # #[cfg(all(feature = "shutdown", feature = "rate-limit", feature = "pool", feature = "breaker"))]
/// # {
/// use std::convert::Infallible;
/// use std::num::NonZeroU32;
/// use palisade::prelude::*;
/// use tower::ServiceBuilder;
///
/// let shutdown = Shutdown::new();
/// let service = ServiceBuilder::new()
///     .shutdown(&shutdown)
///     .rate_limiter(Quota::per_second(NonZeroU32::new(100).unwrap()))
///     .concurrency_pool(PoolConfig::builder(NonZeroU32::new(64).unwrap()).build().unwrap())
///     .circuit_breaker(CircuitBreakerConfig::default())
///     .service_fn(|request: String| async move { Ok::<_, Infallible>(request.len()) });
/// # let _ = service;
/// # }
/// ```
pub trait ServiceBuilderExt<L>: sealed::Sealed {
    /// Counts every request for `shutdown`'s drain ([`ShutdownLayer`](crate::shutdown::ShutdownLayer)).
    #[cfg(feature = "shutdown")]
    fn shutdown(
        self,
        shutdown: &crate::shutdown::Shutdown,
    ) -> tower::ServiceBuilder<Stack<crate::shutdown::ShutdownLayer, L>>;

    /// Counts every HTTP request until its response body ends, and closes connections once
    /// shutting down ([`HttpShutdownLayer`](crate::shutdown::HttpShutdownLayer)).
    #[cfg(all(feature = "shutdown", feature = "http"))]
    fn http_shutdown(
        self,
        shutdown: &crate::shutdown::Shutdown,
    ) -> tower::ServiceBuilder<Stack<crate::shutdown::HttpShutdownLayer, L>>;

    /// A [`RateLimitLayer`](crate::rate_limit::RateLimitLayer) made from `config` (or a
    /// [`Quota`](crate::rate_limit::Quota)).
    #[cfg(feature = "rate-limit")]
    fn rate_limiter(
        self,
        config: impl Into<crate::rate_limit::RateLimitConfig>,
    ) -> tower::ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer, L>>;

    /// A [`ConcurrencyPoolLayer`](crate::pool::ConcurrencyPoolLayer) made from `config`.
    #[cfg(feature = "pool")]
    fn concurrency_pool(
        self,
        config: crate::pool::PoolConfig,
    ) -> tower::ServiceBuilder<Stack<crate::pool::ConcurrencyPoolLayer, L>>;

    /// A [`CircuitBreakerLayer`](crate::breaker::CircuitBreakerLayer) made from `config`.
    #[cfg(feature = "breaker")]
    fn circuit_breaker(
        self,
        config: crate::breaker::CircuitBreakerConfig,
    ) -> tower::ServiceBuilder<Stack<crate::breaker::CircuitBreakerLayer, L>>;

    /// A [`RetryLayer`](crate::retry::RetryLayer) made from `config`.
    #[cfg(feature = "retry")]
    fn retry_with(
        self,
        config: crate::retry::RetryConfig,
    ) -> tower::ServiceBuilder<Stack<crate::retry::RetryLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    #[cfg(feature = "shutdown")]
    fn shutdown(
        self,
        shutdown: &crate::shutdown::Shutdown,
    ) -> tower::ServiceBuilder<Stack<crate::shutdown::ShutdownLayer, L>> {
        self.layer(shutdown.layer())
    }

    #[cfg(all(feature = "shutdown", feature = "http"))]
    fn http_shutdown(
        self,
        shutdown: &crate::shutdown::Shutdown,
    ) -> tower::ServiceBuilder<Stack<crate::shutdown::HttpShutdownLayer, L>> {
        self.layer(shutdown.http_layer())
    }

    #[cfg(feature = "rate-limit")]
    fn rate_limiter(
        self,
        config: impl Into<crate::rate_limit::RateLimitConfig>,
    ) -> tower::ServiceBuilder<Stack<crate::rate_limit::RateLimitLayer, L>> {
        self.layer(crate::rate_limit::RateLimitLayer::new(config))
    }

    #[cfg(feature = "pool")]
    fn concurrency_pool(
        self,
        config: crate::pool::PoolConfig,
    ) -> tower::ServiceBuilder<Stack<crate::pool::ConcurrencyPoolLayer, L>> {
        self.layer(crate::pool::ConcurrencyPoolLayer::new(config))
    }

    #[cfg(feature = "breaker")]
    fn circuit_breaker(
        self,
        config: crate::breaker::CircuitBreakerConfig,
    ) -> tower::ServiceBuilder<Stack<crate::breaker::CircuitBreakerLayer, L>> {
        self.layer(crate::breaker::CircuitBreakerLayer::new(config))
    }

    #[cfg(feature = "retry")]
    fn retry_with(
        self,
        config: crate::retry::RetryConfig,
    ) -> tower::ServiceBuilder<Stack<crate::retry::RetryLayer, L>> {
        self.layer(crate::retry::RetryLayer::new(config))
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
