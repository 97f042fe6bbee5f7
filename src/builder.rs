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
/// Each layer's HTTP variant (`http_rate_limiter`, `http_keyed_rate_limiter`,
/// `http_redis_rate_limiter`, `http_concurrency_pool`, `http_circuit_breaker`, `http_retry`,
/// with feature `http`) answers refusals with responses
/// (`429` / `503` + `Retry-After`), so an axum router whose error is `Infallible` needs no
/// `HandleErrorLayer`, and classifies by status.
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

    /// A [`KeyedRateLimitLayer`](crate::rate_limit::KeyedRateLimitLayer): one limit of
    /// `quota` per key that `extractor` picks (a closure through
    /// [`key_fn`](crate::rate_limit::key_fn); with `http`, `PeerIp`, `ClientIp`, `HeaderKey`).
    #[cfg(feature = "rate-limit")]
    fn keyed_rate_limiter<K, X>(
        self,
        quota: crate::rate_limit::Quota,
        extractor: X,
    ) -> tower::ServiceBuilder<Stack<crate::rate_limit::KeyedRateLimitLayer<K, X>, L>>
    where
        K: std::hash::Hash + Eq;

    /// A [`RedisRateLimitLayer`](crate::rate_limit::RedisRateLimitLayer): one limit per key
    /// that `extractor` picks, kept in Redis by `limiter` and shared by every process that
    /// uses the same Redis and prefix (feature `rate-limit-redis`).
    #[cfg(feature = "rate-limit-redis")]
    fn redis_rate_limiter<X>(
        self,
        limiter: crate::rate_limit::RedisRateLimiter,
        extractor: X,
    ) -> tower::ServiceBuilder<Stack<crate::rate_limit::RedisRateLimitLayer<X>, L>>;

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

    /// A rate limiter for an HTTP server: a refusal is a `429` response with `Retry-After`
    /// and the IETF `RateLimit` headers instead of an error (feature `http`).
    #[cfg(all(feature = "rate-limit", feature = "http"))]
    fn http_rate_limiter(
        self,
        config: impl Into<crate::rate_limit::RateLimitConfig>,
    ) -> tower::ServiceBuilder<
        Stack<
            crate::rate_limit::RateLimitLayer<
                crate::rate_limit::UnitCost,
                crate::rate_limit::TooManyRequests,
            >,
            L,
        >,
    >;

    /// Keyed limits for an HTTP server: a refusal is a `429` response with `Retry-After`
    /// and the IETF `RateLimit` headers (feature `http`).
    #[cfg(all(feature = "rate-limit", feature = "http"))]
    fn http_keyed_rate_limiter<K, X>(
        self,
        quota: crate::rate_limit::Quota,
        extractor: X,
    ) -> tower::ServiceBuilder<
        Stack<
            crate::rate_limit::KeyedRateLimitLayer<
                K,
                X,
                crate::rate_limit::UnitCost,
                crate::rate_limit::TooManyRequests,
            >,
            L,
        >,
    >
    where
        K: std::hash::Hash + Eq;

    /// Limits in Redis for an HTTP server: a refusal is a `429` response with `Retry-After`
    /// and the IETF `RateLimit` headers, or a `503` when Redis is unavailable and `limiter`
    /// fails closed (features `rate-limit-redis` and `http`).
    #[cfg(all(feature = "rate-limit-redis", feature = "http"))]
    fn http_redis_rate_limiter<X>(
        self,
        limiter: crate::rate_limit::RedisRateLimiter,
        extractor: X,
    ) -> tower::ServiceBuilder<
        Stack<
            crate::rate_limit::RedisRateLimitLayer<
                X,
                crate::rate_limit::UnitCost,
                crate::rate_limit::TooManyRequests,
            >,
            L,
        >,
    >;

    /// A concurrency pool for an HTTP server: shedding is a `503` response with
    /// `Retry-After`, and a permit is held until the response body ends (feature `http`).
    #[cfg(all(feature = "pool", feature = "http"))]
    fn http_concurrency_pool(
        self,
        config: crate::pool::PoolConfig,
    ) -> tower::ServiceBuilder<Stack<crate::pool::http::HttpConcurrencyPoolLayer, L>>;

    /// A circuit breaker for HTTP: `5xx` responses count as failures, and an open breaker
    /// answers `503` with `Retry-After` instead of an error (feature `http`).
    #[cfg(all(feature = "breaker", feature = "http"))]
    fn http_circuit_breaker(
        self,
        config: crate::breaker::CircuitBreakerConfig,
    ) -> tower::ServiceBuilder<Stack<crate::breaker::HttpCircuitBreakerLayer, L>>;

    /// Retries for an HTTP client: `5xx` (but `501`), `429`, `408` and errors, idempotent
    /// methods only, `Retry-After` honoured (feature `http`).
    #[cfg(all(feature = "retry", feature = "http"))]
    fn http_retry(
        self,
        config: crate::retry::RetryConfig,
    ) -> tower::ServiceBuilder<Stack<crate::retry::http::HttpRetryLayer, L>>;
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

    #[cfg(feature = "rate-limit")]
    fn keyed_rate_limiter<K, X>(
        self,
        quota: crate::rate_limit::Quota,
        extractor: X,
    ) -> tower::ServiceBuilder<Stack<crate::rate_limit::KeyedRateLimitLayer<K, X>, L>>
    where
        K: std::hash::Hash + Eq,
    {
        self.layer(crate::rate_limit::KeyedRateLimitLayer::new(
            quota, extractor,
        ))
    }

    #[cfg(feature = "rate-limit-redis")]
    fn redis_rate_limiter<X>(
        self,
        limiter: crate::rate_limit::RedisRateLimiter,
        extractor: X,
    ) -> tower::ServiceBuilder<Stack<crate::rate_limit::RedisRateLimitLayer<X>, L>> {
        self.layer(crate::rate_limit::RedisRateLimitLayer::new(
            limiter, extractor,
        ))
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

    #[cfg(all(feature = "rate-limit", feature = "http"))]
    fn http_rate_limiter(
        self,
        config: impl Into<crate::rate_limit::RateLimitConfig>,
    ) -> tower::ServiceBuilder<
        Stack<
            crate::rate_limit::RateLimitLayer<
                crate::rate_limit::UnitCost,
                crate::rate_limit::TooManyRequests,
            >,
            L,
        >,
    > {
        self.layer(
            crate::rate_limit::RateLimitLayer::new(config)
                .respond_with(crate::rate_limit::TooManyRequests::new()),
        )
    }

    #[cfg(all(feature = "rate-limit", feature = "http"))]
    fn http_keyed_rate_limiter<K, X>(
        self,
        quota: crate::rate_limit::Quota,
        extractor: X,
    ) -> tower::ServiceBuilder<
        Stack<
            crate::rate_limit::KeyedRateLimitLayer<
                K,
                X,
                crate::rate_limit::UnitCost,
                crate::rate_limit::TooManyRequests,
            >,
            L,
        >,
    >
    where
        K: std::hash::Hash + Eq,
    {
        self.layer(
            crate::rate_limit::KeyedRateLimitLayer::new(quota, extractor)
                .respond_with(crate::rate_limit::TooManyRequests::new()),
        )
    }

    #[cfg(all(feature = "rate-limit-redis", feature = "http"))]
    fn http_redis_rate_limiter<X>(
        self,
        limiter: crate::rate_limit::RedisRateLimiter,
        extractor: X,
    ) -> tower::ServiceBuilder<
        Stack<
            crate::rate_limit::RedisRateLimitLayer<
                X,
                crate::rate_limit::UnitCost,
                crate::rate_limit::TooManyRequests,
            >,
            L,
        >,
    > {
        self.layer(
            crate::rate_limit::RedisRateLimitLayer::new(limiter, extractor)
                .respond_with(crate::rate_limit::TooManyRequests::new()),
        )
    }

    #[cfg(all(feature = "pool", feature = "http"))]
    fn http_concurrency_pool(
        self,
        config: crate::pool::PoolConfig,
    ) -> tower::ServiceBuilder<Stack<crate::pool::http::HttpConcurrencyPoolLayer, L>> {
        self.layer(crate::pool::http::HttpConcurrencyPoolLayer::new(config))
    }

    #[cfg(all(feature = "breaker", feature = "http"))]
    fn http_circuit_breaker(
        self,
        config: crate::breaker::CircuitBreakerConfig,
    ) -> tower::ServiceBuilder<Stack<crate::breaker::HttpCircuitBreakerLayer, L>> {
        self.layer(crate::breaker::HttpCircuitBreakerLayer::new(config))
    }

    #[cfg(all(feature = "retry", feature = "http"))]
    fn http_retry(
        self,
        config: crate::retry::RetryConfig,
    ) -> tower::ServiceBuilder<Stack<crate::retry::http::HttpRetryLayer, L>> {
        self.layer(crate::retry::RetryLayer::http(config))
    }
}

mod sealed {
    pub trait Sealed {}
    impl<L> Sealed for tower::ServiceBuilder<L> {}
}
