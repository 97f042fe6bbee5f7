//! The HTTP answer (feature `http`): an axum `Router` with `Infallible` errors takes the
//! layer directly, and a refused request gets `429` with `Retry-After` and the IETF
//! `RateLimit` / `RateLimit-Policy` headers.

#![cfg(feature = "http")]

use std::num::NonZeroU32;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use palisade_ratelimit::{Quota, RateLimitLayer, TooManyRequests};
use tower::ServiceExt;

fn router(respond: TooManyRequests) -> Router {
    let limit =
        RateLimitLayer::new(Quota::per_minute(NonZeroU32::new(2).unwrap())).respond_with(respond);
    Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(limit)
}

async fn get_root(router: &Router) -> axum::http::Response<Body> {
    let request = Request::builder().uri("/").body(Body::empty()).unwrap();
    router.clone().oneshot(request).await.unwrap()
}

fn header<'a>(response: &'a axum::http::Response<Body>, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn refused_requests_get_429_with_retry_after_and_ratelimit_headers() {
    let router = router(TooManyRequests::new());
    for _ in 0..2 {
        let response = get_root(&router).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            header(&response, "ratelimit"),
            None,
            "not on admitted responses by default"
        );
    }
    let refused = get_root(&router).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 2 per minute: the next unit comes 30 s after the first.
    assert_eq!(header(&refused, "retry-after"), Some("30"));
    assert_eq!(
        header(&refused, "ratelimit-policy"),
        Some("\"default\";q=2;w=60")
    );
    assert_eq!(header(&refused, "ratelimit"), Some("\"default\";r=0;t=60"));

    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(get_root(&router).await.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn admitted_responses_carry_the_headers_when_asked() {
    let router = router(TooManyRequests::new().policy("api").unwrap().on_admitted());
    let first = get_root(&router).await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "ratelimit-policy"), Some("\"api\";q=2;w=60"));
    assert_eq!(header(&first, "ratelimit"), Some("\"api\";r=1;t=30"));
    let second = get_root(&router).await;
    assert_eq!(header(&second, "ratelimit"), Some("\"api\";r=0;t=60"));
    tokio::time::advance(Duration::from_millis(12_500)).await;
    let refused = get_root(&router).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    // 17.5 s left, rounded up: a client that waits that long is not early.
    assert_eq!(header(&refused, "retry-after"), Some("18"));
    assert_eq!(header(&refused, "ratelimit"), Some("\"api\";r=0;t=48"));
}

#[tokio::test(start_paused = true)]
async fn sub_second_windows_are_reported_per_second_and_bad_policy_names_are_refused() {
    let limit = RateLimitLayer::new(Quota::with_period(Duration::from_millis(100)).unwrap())
        .respond_with(TooManyRequests::new().on_admitted());
    let router = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(limit);
    let response = get_root(&router).await;
    assert_eq!(
        header(&response, "ratelimit-policy"),
        Some("\"default\";q=10;w=1")
    );
    assert!(TooManyRequests::new().policy("").is_err());
    assert!(TooManyRequests::new().policy("naïve").is_err());
}

#[tokio::test(start_paused = true)]
async fn a_request_costing_more_than_the_capacity_gets_429_without_retry_after() {
    let limit = RateLimitLayer::new(Quota::per_second(NonZeroU32::new(10).unwrap()))
        .cost(|request: &Request<Body>| {
            if request.uri().path() == "/bulk" {
                11
            } else {
                1
            }
        })
        .respond_with(TooManyRequests::new());
    let router = Router::new()
        .route("/", get(|| async { "one" }))
        .route("/bulk", get(|| async { "many" }))
        .layer(limit);
    let request = Request::builder().uri("/bulk").body(Body::empty()).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&response, "retry-after"), None);
    assert_eq!(get_root(&router).await.status(), StatusCode::OK);
}
