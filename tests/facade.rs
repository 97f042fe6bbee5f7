//! The facade re-exports each crate under its feature.

#[cfg(feature = "core")]
#[test]
fn core_is_reexported_with_its_prelude_types() {
    use palisade::core::{Backoff, BoxError, Rejection, reject::RateLimited};
    use std::time::Duration;

    assert_eq!(Backoff::default(), palisade_core_default());
    let error: BoxError = RateLimited::new(Duration::from_secs(1)).into();
    assert!(Rejection::find(&*error).is_some());
}

#[cfg(feature = "core")]
fn palisade_core_default() -> palisade::core::Backoff {
    use palisade::core::{Backoff, Jitter};
    use std::time::Duration;
    Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(10))
        .expect("valid")
        .with_jitter(Jitter::Full)
}

#[cfg(all(feature = "core", feature = "http"))]
#[test]
fn http_feature_reaches_core() {
    use palisade::core::reject::{Rejection, ShuttingDown};
    let shutting_down = ShuttingDown::new();
    let response = Rejection::ShuttingDown(&shutting_down).to_response::<()>();
    assert_eq!(response.status(), 503);
}

#[cfg(feature = "shutdown")]
#[test]
fn shutdown_is_reexported() {
    use palisade::shutdown::{Phase, Shutdown};
    let shutdown = Shutdown::builder().build();
    assert_eq!(shutdown.phase(), Phase::Running);
    shutdown.trigger();
    assert_eq!(shutdown.phase(), Phase::Unhealthy);
}

#[cfg(feature = "rate-limit")]
#[test]
fn rate_limit_is_reexported() {
    use palisade::rate_limit::{Quota, RateLimiter};
    use std::num::NonZeroU32;
    // Two per minute, so that no refill happens while the test runs.
    let limiter = RateLimiter::new(Quota::per_minute(NonZeroU32::new(2).expect("non-zero")));
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_ok());
    assert!(
        limiter.check().is_err(),
        "the third check in a minute is refused"
    );
}

#[cfg(feature = "events")]
#[tokio::test]
async fn events_are_reexported() {
    use palisade::events::{Event, EventBus};

    #[derive(Clone)]
    struct OrderPlaced;
    impl Event for OrderPlaced {
        const NAME: &'static str = "order.placed";
    }

    let bus = EventBus::new();
    let _subscription = bus.on(|_: OrderPlaced| async {});
    let report = bus.emit(OrderPlaced).await;
    assert_eq!(report.len(), 1, "one handler ran");
}

#[cfg(feature = "pool")]
#[test]
fn pool_is_reexported() {
    use palisade::pool::{ConcurrencyPoolLayer, PoolConfig};
    use std::num::NonZeroU32;
    let config = PoolConfig::builder(NonZeroU32::new(4).expect("non-zero"))
        .build()
        .expect("valid");
    let layer = ConcurrencyPoolLayer::new(config);
    assert_eq!(layer.handle().in_flight(), 0);
    assert_eq!(layer.handle().limit(), 4);
}

#[cfg(feature = "lock")]
#[tokio::test]
async fn lock_is_reexported() {
    use palisade::lock::Lock;
    use std::time::Duration;
    let lock = Lock::in_process();
    let first = lock
        .try_acquire("orders", Duration::from_secs(10))
        .await
        .expect("no backend error")
        .expect("free");
    let second = lock
        .try_acquire("orders", Duration::from_secs(10))
        .await
        .expect("no backend error");
    assert!(second.is_none(), "held by the first guard");
    let token = first.token();
    drop(first);
    let third = lock
        .acquire("orders", Duration::from_secs(10), Duration::from_secs(1))
        .await
        .expect("released in the background, then granted");
    assert!(third.token() > token, "every grant has a higher token");
}

#[cfg(feature = "batch")]
#[tokio::test]
async fn batch_is_reexported() {
    use palisade::batch::Batch;
    use std::num::NonZeroUsize;
    let report = Batch::new(NonZeroUsize::new(2).expect("non-zero"))
        .run(
            1..=5u32,
            async |n: &u32| {
                if *n == 3 { Err("three") } else { Ok(n * 10) }
            },
        )
        .await;
    assert_eq!(report.succeeded.len(), 4);
    assert_eq!(report.failed.len(), 1);
}

#[cfg(all(
    feature = "shutdown",
    feature = "rate-limit",
    feature = "pool",
    feature = "breaker",
    feature = "retry"
))]
#[tokio::test(start_paused = true)]
async fn service_builder_ext_stacks_every_layer_in_order() {
    use palisade::core::{BoxError, Rejection};
    use palisade::prelude::*;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tower::{ServiceBuilder, ServiceExt as _};

    static ATTEMPTS: AtomicU32 = AtomicU32::new(0);
    let shutdown = Shutdown::new();
    let service = ServiceBuilder::new()
        .shutdown(&shutdown)
        .rate_limiter(Quota::per_minute(NonZeroU32::new(2).expect("non-zero")))
        .concurrency_pool(
            PoolConfig::builder(NonZeroU32::new(8).expect("non-zero"))
                .build()
                .expect("valid"),
        )
        .circuit_breaker(CircuitBreakerConfig::default())
        .retry_with(RetryConfig::default())
        .service_fn(|n: u32| async move {
            // The first attempt of all fails: only the retry layer can turn it into a success.
            if ATTEMPTS.fetch_add(1, Ordering::SeqCst) == 0 {
                Err::<u32, BoxError>("flaky".into())
            } else {
                Ok(n * 2)
            }
        });
    // The order is the builder's: the first method is the outermost layer.
    let service: palisade::shutdown::ShutdownService<
        palisade::rate_limit::RateLimit<
            palisade::pool::ConcurrencyPool<
                palisade::breaker::CircuitBreaker<palisade::retry::Retry<_>>,
            >,
        >,
    > = service;

    assert_eq!(service.clone().oneshot(1).await.expect("retried"), 2);
    assert_eq!(ATTEMPTS.load(Ordering::SeqCst), 2, "one retry inside");
    assert_eq!(service.clone().oneshot(2).await.expect("second of two"), 4);
    let refused = service
        .clone()
        .oneshot(3)
        .await
        .expect_err("the quota is two a minute");
    assert!(
        matches!(Rejection::find(&*refused), Some(Rejection::RateLimited(_))),
        "{refused}"
    );
    assert_eq!(
        ATTEMPTS.load(Ordering::SeqCst),
        3,
        "the refused call never ran"
    );
    assert_eq!(shutdown.in_flight(), 0, "every call was counted out");
}

#[cfg(all(
    feature = "http",
    feature = "shutdown",
    feature = "rate-limit",
    feature = "pool",
    feature = "breaker"
))]
#[tokio::test]
async fn http_variants_answer_an_infallible_router_with_responses() {
    use palisade::prelude::*;
    use std::num::NonZeroU32;
    use tower::{ServiceBuilder, ServiceExt as _};

    let shutdown = Shutdown::new();
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let app = ServiceBuilder::new()
        .http_shutdown(&shutdown)
        .http_rate_limiter(Quota::per_minute(NonZeroU32::new(1).expect("non-zero")))
        .http_concurrency_pool(
            PoolConfig::builder(NonZeroU32::new(8).expect("non-zero"))
                .build()
                .expect("valid"),
        )
        .http_circuit_breaker(CircuitBreakerConfig::default())
        .service(router);
    let get = || {
        http::Request::get("/")
            .body(axum::body::Body::empty())
            .expect("a valid request")
    };
    let first = app.clone().oneshot(get()).await.expect("infallible");
    assert_eq!(first.status(), http::StatusCode::OK);
    let second = app.clone().oneshot(get()).await.expect("infallible");
    assert_eq!(second.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key(http::header::RETRY_AFTER));
}

#[cfg(feature = "rate-limit")]
#[tokio::test(start_paused = true)]
async fn service_builder_ext_adds_keyed_rate_limits() {
    use palisade::core::{Rejection, RetryAfter as _};
    use palisade::prelude::*;
    use palisade::rate_limit::key_fn;
    use std::num::NonZeroU32;
    use tower::{ServiceBuilder, ServiceExt as _};

    let service = ServiceBuilder::new()
        .keyed_rate_limiter(
            Quota::per_minute(NonZeroU32::new(1).expect("non-zero")),
            key_fn(|tenant: &&'static str| *tenant),
        )
        .service_fn(|tenant: &'static str| async move {
            Ok::<_, std::convert::Infallible>(tenant.len())
        });
    assert_eq!(service.clone().oneshot("a").await.expect("a's first"), 1);
    let refused = service
        .clone()
        .oneshot("a")
        .await
        .expect_err("a has used its quota");
    let Some(Rejection::RateLimited(limited)) = Rejection::find(&*refused) else {
        panic!("expected a rate limit rejection, got {refused}");
    };
    assert_eq!(
        limited.retry_after(),
        Some(std::time::Duration::from_secs(60))
    );
    assert_eq!(
        service.clone().oneshot("bb").await.expect("b has its own"),
        2
    );
}

#[cfg(all(feature = "rate-limit-redis", feature = "http"))]
#[tokio::test]
async fn http_redis_rate_limiter_follows_its_policy_with_redis_unreachable() {
    use palisade::prelude::*;
    use palisade::rate_limit::{OnUnavailable, RedisRateLimiter, key_fn};
    use std::num::NonZeroU32;
    use tower::{ServiceBuilder, ServiceExt as _};

    // Port 1: nothing listens, so the connection is refused and the policy decides.
    let limiter = |policy| {
        RedisRateLimiter::builder(
            "redis://127.0.0.1:1",
            Quota::per_minute(NonZeroU32::new(1).expect("non-zero")),
        )
        .on_unavailable(policy)
        .build()
        .expect("a valid URL and quota")
    };
    let router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
    let global = || key_fn(|_: &http::Request<axum::body::Body>| "global");
    let get = || {
        http::Request::get("/")
            .body(axum::body::Body::empty())
            .expect("a valid request")
    };

    let closed = ServiceBuilder::new()
        .http_redis_rate_limiter(limiter(OnUnavailable::FailClosed), global())
        .service(router.clone());
    let shed = closed.oneshot(get()).await.expect("infallible");
    assert_eq!(shed.status(), http::StatusCode::SERVICE_UNAVAILABLE);

    // The local fallback: one a minute in this process.
    let local = ServiceBuilder::new()
        .http_redis_rate_limiter(limiter(OnUnavailable::Local), global())
        .service(router);
    let first = local.clone().oneshot(get()).await.expect("infallible");
    assert_eq!(first.status(), http::StatusCode::OK);
    let second = local.clone().oneshot(get()).await.expect("infallible");
    assert_eq!(second.status(), http::StatusCode::TOO_MANY_REQUESTS);
    assert!(second.headers().contains_key(http::header::RETRY_AFTER));
    assert!(second.headers().contains_key("ratelimit"));
}
