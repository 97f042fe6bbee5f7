//! The Redis layer (feature `redis`) against a real `redis-server` from the testkit: services
//! built from two layers over two stores share one quota; with Redis killed the store's
//! unavailable policy decides through the layer, and once Redis is back Redis does again; a
//! stopped (SIGSTOP) Redis costs a call the store's response timeout, no more; an axum router
//! with `Infallible` errors answers `429` with `Retry-After` and the `RateLimit` headers.
//!
//! Like tests/redis.rs these run on real time (a paused clock would fire the store's response
//! timeouts while the server answers), but no outcome waits for time to pass: every quota is
//! per minute or slower, and reconnection is allowed at once.

#![cfg(feature = "redis")]

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::event::Listener;
use palisade_core::{BoxError, Rejection, RetryAfter};
use palisade_ratelimit::{
    KeyExtractor, OnUnavailable, Quota, RateLimitEvent, RedisRateLimitLayer, RedisRateLimiter,
    RedisRateLimiterBuilder, key_fn,
};
use palisade_testkit::RedisServer;
use tower::{Service, ServiceBuilder, ServiceExt};

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap())
}

fn builder(redis: &RedisServer, quota: Quota, prefix: &str) -> RedisRateLimiterBuilder {
    RedisRateLimiter::builder(redis.url(), quota)
        .prefix(prefix)
        .reconnect_backoff(palisade_core::Backoff::constant(Duration::ZERO))
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
}

/// A request: a tenant, and what it costs.
#[derive(Debug, Clone, Copy)]
struct Call {
    tenant: &'static str,
    cost: u32,
}

fn call(tenant: &'static str) -> Call {
    Call { tenant, cost: 1 }
}

fn by_tenant() -> impl KeyExtractor<Call, Key = &'static str> + Send + Sync + 'static {
    key_fn(|call: &Call| call.tenant)
}

/// The inner service: answers with the tenant, counting its calls.
#[derive(Clone)]
struct Tenant {
    calls: Arc<AtomicU32>,
}

impl Service<Call> for Tenant {
    type Response = &'static str;
    type Error = BoxError;
    type Future = std::future::Ready<Result<&'static str, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, call: Call) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(call.tenant))
    }
}

/// A service behind `layer` that counts its calls in `calls`.
fn counted<L: tower::Layer<Tenant>>(layer: L, calls: &Arc<AtomicU32>) -> L::Service {
    ServiceBuilder::new().layer(layer).service(Tenant {
        calls: Arc::clone(calls),
    })
}

/// Records every event.
#[derive(Default)]
struct Recorder(Mutex<Vec<RateLimitEvent>>);

impl Listener<RateLimitEvent> for Recorder {
    fn on_event(&self, event: &RateLimitEvent) {
        self.0.lock().unwrap().push(*event);
    }
}

impl Recorder {
    fn take(&self) -> Vec<&'static str> {
        use palisade_core::event::Event;
        self.0.lock().unwrap().drain(..).map(|e| e.kind()).collect()
    }
}

fn rate_limited(error: &BoxError) -> Duration {
    match Rejection::find(&**error) {
        Some(Rejection::RateLimited(limited)) => limited.retry_after().unwrap(),
        _ => panic!("expected a rate limit rejection, got {error}"),
    }
}

#[tokio::test]
async fn services_of_two_layers_over_two_stores_on_one_redis_share_one_quota() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let calls = Arc::new(AtomicU32::new(0));
    // Two "processes": each its own store (and connection), the same Redis and prefix.
    let first = RedisRateLimitLayer::new(
        builder(&redis, per_minute(3), "share:").build().unwrap(),
        by_tenant(),
    );
    let second = RedisRateLimitLayer::new(
        builder(&redis, per_minute(3), "share:").build().unwrap(),
        by_tenant(),
    );
    let first = counted(first, &calls);
    let second = counted(second, &calls);

    let mut admitted = 0;
    for service in [&first, &second, &first, &second, &first, &second] {
        match service.clone().oneshot(call("tenant-1")).await {
            Ok(tenant) => {
                assert_eq!(tenant, "tenant-1");
                admitted += 1;
            }
            Err(error) => {
                // 3 per minute: a unit every 20 s, measured on the server's clock.
                let retry_after = rate_limited(&error);
                assert!(retry_after > Duration::from_secs(15), "{retry_after:?}");
                assert!(retry_after <= Duration::from_secs(20), "{retry_after:?}");
            }
        }
    }
    assert_eq!(admitted, 3, "one quota of 3 between both layers");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "refused requests never reach the inner service"
    );
    // Another key has its own limit.
    assert_eq!(second.oneshot(call("tenant-2")).await.unwrap(), "tenant-2");
}

#[tokio::test]
async fn the_layer_charges_each_request_its_cost() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let calls = Arc::new(AtomicU32::new(0));
    let layer = RedisRateLimitLayer::new(
        builder(&redis, per_minute(3), "cost:").build().unwrap(),
        by_tenant(),
    )
    .cost(|call: &Call| call.cost);
    let service = counted(layer, &calls);
    let costing = |cost| Call { tenant: "t", cost };

    service.clone().oneshot(costing(2)).await.unwrap();
    // One unit left: a cost of 2 is refused, a cost of 1 admitted.
    rate_limited(&service.clone().oneshot(costing(2)).await.unwrap_err());
    service.clone().oneshot(costing(1)).await.unwrap();
    // More than the limit ever holds: refused for good, with no retry-after.
    let error = service.clone().oneshot(costing(4)).await.unwrap_err();
    assert!(
        error
            .downcast_ref::<palisade_ratelimit::InsufficientCapacity>()
            .is_some(),
        "{error}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn poll_ready_takes_nothing_and_the_readied_service_takes_the_request() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let layer = RedisRateLimitLayer::new(
        builder(&redis, per_minute(1), "ready:").build().unwrap(),
        by_tenant(),
    );
    let (mut service, mut handle) = tower_test::mock::spawn_layer::<Call, &str, _>(layer);
    // Readiness, asked again and again (hyper does, on idle keep-alive connections), takes
    // nothing from the limit.
    for _ in 0..5 {
        tokio_test::assert_ready_ok!(service.poll_ready());
    }
    // The mock panics when called unready: the service `poll_ready` readied takes the call.
    let response = service.call(call("t"));
    let inner = async {
        let (request, send) = handle.next_request().await.unwrap();
        assert_eq!(request.tenant, "t");
        send.send_response("done");
    };
    let (answer, ()) = tokio::join!(response, inner);
    assert_eq!(answer.unwrap(), "done");

    // The one unit is spent: the next call is refused without reaching the inner service.
    tokio_test::assert_ready_ok!(service.poll_ready());
    let refused = service.call(call("t")).await.unwrap_err();
    rate_limited(&refused);
    assert!(
        tokio_test::task::spawn(handle.next_request())
            .poll()
            .is_pending(),
        "the refused request never reached the inner service"
    );
}

#[tokio::test]
async fn with_redis_killed_the_policy_decides_through_the_layer_and_after_a_restart_redis_does() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    if redis.pid().is_none() {
        eprintln!("skipped: REDIS_URL points at an external server the test cannot kill");
        return;
    }
    let calls = Arc::new(AtomicU32::new(0));
    let events = Arc::new(Recorder::default());
    let store = |policy| {
        builder(&redis, per_minute(2), "fault:")
            .on_unavailable(policy)
            .listener(Arc::clone(&events))
            .build()
            .unwrap()
    };
    let (local, open, closed) = (
        store(OnUnavailable::Local),
        store(OnUnavailable::FailOpen),
        store(OnUnavailable::FailClosed),
    );
    let services = [&local, &open, &closed].map(|limiter| {
        counted(
            RedisRateLimitLayer::new(limiter.clone(), by_tenant()),
            &calls,
        )
    });
    let [by_local, by_open, by_closed] = &services;
    for (service, key) in services.iter().zip(["warm-up-1", "warm-up-2", "warm-up-3"]) {
        service.clone().oneshot(call(key)).await.unwrap();
    }
    assert!(local.is_connected() && open.is_connected() && closed.is_connected());
    assert_eq!(events.take(), ["admitted"; 3]);

    redis.kill().unwrap();

    // Local: a limit of 2 per minute in this process.
    by_local.clone().oneshot(call("k")).await.unwrap();
    by_local.clone().oneshot(call("k")).await.unwrap();
    let error = by_local.clone().oneshot(call("k")).await.unwrap_err();
    assert!(rate_limited(&error) > Duration::from_secs(25));
    assert_eq!(
        events.take(),
        [
            "store_unavailable",
            "admitted",
            "store_unavailable",
            "admitted",
            "store_unavailable",
            "rejected"
        ]
    );
    // Fail open admits everything.
    for _ in 0..3 {
        by_open.clone().oneshot(call("k")).await.unwrap();
    }
    // Fail closed refuses everything: a shed request, reported once.
    let error = by_closed.clone().oneshot(call("k")).await.unwrap_err();
    assert!(
        matches!(Rejection::find(&*error), Some(Rejection::Overloaded(_))),
        "{error}"
    );
    let _ = events.take();
    by_closed.clone().oneshot(call("k")).await.unwrap_err();
    assert_eq!(events.take(), ["store_unavailable"]);
    assert_eq!(calls.load(Ordering::SeqCst), 3 + 2 + 3);
    assert!(!local.is_connected());

    redis.restart().unwrap();

    // Reconnected on its own on the next call: Redis decides again (it restarted empty).
    let unavailable = [&local, &open, &closed].map(RedisRateLimiter::unavailable_count);
    for (service, key) in services.iter().zip(["after-1", "after-2", "after-3"]) {
        assert_eq!(service.clone().oneshot(call(key)).await.unwrap(), key);
    }
    assert_eq!(
        [&local, &open, &closed].map(RedisRateLimiter::unavailable_count),
        unavailable,
        "decided by Redis"
    );
    assert!(local.is_connected() && open.is_connected() && closed.is_connected());
    // The shared limit again: 2 per minute across the layers.
    by_open.clone().oneshot(call("after-1")).await.unwrap();
    let error = by_closed
        .clone()
        .oneshot(call("after-1"))
        .await
        .unwrap_err();
    rate_limited(&error);
}

#[tokio::test]
async fn a_stopped_redis_costs_a_call_the_response_timeout_then_the_policy_decides() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    if redis.pid().is_none() {
        eprintln!("skipped: REDIS_URL points at an external server the test cannot pause");
        return;
    }
    let limiter = builder(&redis, per_minute(5), "paused:")
        .response_timeout(Duration::from_millis(100))
        .on_unavailable(OnUnavailable::FailClosed)
        .build()
        .unwrap();
    let service = counted(
        RedisRateLimitLayer::new(limiter.clone(), by_tenant()),
        &Arc::new(AtomicU32::new(0)),
    );
    service.clone().oneshot(call("t")).await.unwrap();

    redis.pause().unwrap();
    // Answers once the store's 100 ms response timeout fires. The bound here only turns a
    // hang into a failure; it is far above the timeout and asserts no speed.
    let answer = tokio::time::timeout(Duration::from_secs(60), service.clone().oneshot(call("t")))
        .await
        .expect("a stopped Redis never hangs a call");
    let error = answer.unwrap_err();
    assert!(
        matches!(Rejection::find(&*error), Some(Rejection::Overloaded(_))),
        "{error}"
    );
    assert_eq!(limiter.unavailable_count(), 1);

    redis.resume().unwrap();
    service.clone().oneshot(call("t")).await.unwrap();
    assert_eq!(limiter.unavailable_count(), 1, "decided by Redis again");
}

#[cfg(feature = "http")]
mod http {
    use std::convert::Infallible;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, Response, StatusCode};
    use axum::routing::get;
    use palisade_ratelimit::TooManyRequests;

    use super::*;

    fn router(limiter: RedisRateLimiter) -> Router {
        let global = key_fn(|_: &Request<Body>| "global");
        Router::new()
            .route("/", get(|| async { "hello" }))
            .layer(RedisRateLimitLayer::new(limiter, global).respond_with(TooManyRequests::new()))
    }

    async fn get_root(router: &Router) -> Response<Body> {
        let request = Request::builder().uri("/").body(Body::empty()).unwrap();
        let answer: Result<_, Infallible> = router.clone().oneshot(request).await;
        answer.unwrap()
    }

    fn header<'a>(response: &'a Response<Body>, name: &str) -> Option<&'a str> {
        response.headers().get(name).map(|v| v.to_str().unwrap())
    }

    /// The number after `prefix` in `value`.
    fn number_after(value: &str, prefix: &str) -> u64 {
        value
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("{value:?} does not start with {prefix:?}"))
            .parse()
            .unwrap()
    }

    #[tokio::test]
    async fn an_infallible_router_answers_429_with_retry_after_and_ratelimit_headers() {
        let Some(mut redis) = RedisServer::start_or_skip() else {
            return;
        };
        let app = router(builder(&redis, per_minute(2), "http:").build().unwrap());
        for _ in 0..2 {
            assert_eq!(get_root(&app).await.status(), StatusCode::OK);
        }
        let refused = get_root(&app).await;
        assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
        // 2 per minute: the next unit 30 s after the first, on the server's clock, less the
        // time the calls took (whole seconds, rounded up).
        let retry_after: u64 = header(&refused, "retry-after").unwrap().parse().unwrap();
        assert!((25..=30).contains(&retry_after), "{retry_after}");
        assert_eq!(
            header(&refused, "ratelimit-policy"),
            Some("\"default\";q=2;w=60")
        );
        let reset = number_after(header(&refused, "ratelimit").unwrap(), "\"default\";r=0;t=");
        assert!((55..=60).contains(&reset), "{reset}");

        // Fail closed with Redis gone: a bare `503`, the client did nothing wrong.
        if redis.pid().is_none() {
            return;
        }
        let closed = router(
            builder(&redis, per_minute(2), "http:")
                .on_unavailable(OnUnavailable::FailClosed)
                .build()
                .unwrap(),
        );
        redis.kill().unwrap();
        let shed = get_root(&closed).await;
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&shed, "retry-after"), None);
    }

    #[test]
    fn keys_are_written_the_same_way_by_every_process() {
        use palisade_ratelimit::{HeaderKey, PeerIp, RedisKey};
        use std::net::SocketAddr;

        fn name(key: impl RedisKey) -> String {
            let mut name = String::from("p:");
            key.write_key(&mut name);
            name
        }
        let mut request = Request::builder()
            .header("x-api-key", "k 50%")
            .body(())
            .unwrap();
        request
            .extensions_mut()
            .insert(SocketAddr::from(([192, 0, 2, 7], 4000)));
        assert_eq!(name(PeerIp.extract(&request)), "p:192.0.2.7");
        let api_key = HeaderKey::new(axum::http::HeaderName::from_static("x-api-key"));
        assert_eq!(name(api_key.extract(&request)), "p:k 50%25");
        let opaque = axum::http::HeaderValue::from_bytes(b"\xffa").unwrap();
        assert_eq!(name(Some(opaque)), "p:%FFa");
        assert_eq!(name(None::<u64>), "p:");
        assert_eq!(name(42_u64), "p:42");
        assert_eq!(name("tenant"), "p:tenant");
    }
}
