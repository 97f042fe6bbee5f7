//! HTTP retries (feature `http`): statuses, methods, bodies, headers.

#![cfg(feature = "http")]

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::Full;
use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::http::HttpReplay;
use palisade_retry::{Attempts, RetryConfig, RetryLayer};
use support::Calls;
use tower::{Layer, ServiceExt};

fn config() -> RetryConfig {
    RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .build()
        .unwrap()
}

/// Answers the `n`-th call with `answer(n)`.
fn upstream<B: Send + 'static>(
    calls: Calls,
    answer: fn(usize) -> Response<()>,
) -> impl tower::Service<Request<B>, Response = Response<()>, Error = BoxError, Future: Send> + Clone
{
    tower::service_fn(move |_request: Request<B>| {
        let n = calls.record();
        async move { Ok::<_, BoxError>(answer(n)) }
    })
}

fn status(code: u16) -> Response<()> {
    Response::builder().status(code).body(()).unwrap()
}

fn with_header(code: u16, name: &str, value: &str) -> Response<()> {
    Response::builder()
        .status(code)
        .header(name, value)
        .body(())
        .unwrap()
}

fn get() -> Request<String> {
    Request::get("http://upstream/")
        .body(String::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn statuses_that_are_retried() {
    for (code, expected_calls) in [
        (500, 3),
        (502, 3),
        (503, 3),
        (504, 3),
        (429, 3),
        (408, 3),
        (501, 1),
        (404, 1),
        (400, 1),
        (200, 1),
    ] {
        let calls = Calls::default();
        let answer: fn(usize) -> Response<()> = match code {
            500 => |_| status(500),
            502 => |_| status(502),
            503 => |_| status(503),
            504 => |_| status(504),
            429 => |_| status(429),
            408 => |_| status(408),
            501 => |_| status(501),
            404 => |_| status(404),
            400 => |_| status(400),
            _ => |_| status(200),
        };
        let service = RetryLayer::http(config()).layer(upstream(calls.clone(), answer));
        let response = service.oneshot(get()).await.unwrap();
        assert_eq!(response.status(), code, "the last response is returned");
        assert_eq!(calls.count(), expected_calls, "status {code}");
        assert_eq!(
            response.extensions().get::<Attempts>(),
            Some(&Attempts(expected_calls as u32))
        );
    }
}

#[tokio::test(start_paused = true)]
async fn connection_errors_are_retried() {
    let calls = Calls::default();
    let counter = calls.clone();
    let service = RetryLayer::http(config()).layer(tower::service_fn(move |_: Request<String>| {
        let n = counter.record();
        async move {
            if n == 1 {
                Err::<Response<()>, BoxError>(
                    std::io::Error::from(std::io::ErrorKind::ConnectionReset).into(),
                )
            } else {
                Ok(status(200))
            }
        }
    }));
    assert_eq!(service.oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(calls.count(), 2);
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_are_not_retried_by_default() {
    for method in [Method::POST, Method::PATCH] {
        let calls = Calls::default();
        let service = RetryLayer::http(config()).layer(upstream(calls.clone(), |_| status(503)));
        let request = Request::builder()
            .method(method.clone())
            .uri("http://upstream/orders")
            .body(String::from("{}"))
            .unwrap();
        assert_eq!(service.oneshot(request).await.unwrap().status(), 503);
        assert_eq!(calls.count(), 1, "{method} is sent once");
    }
    for method in [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::PUT,
        Method::DELETE,
        Method::TRACE,
    ] {
        let calls = Calls::default();
        let service = RetryLayer::http(config()).layer(upstream(calls.clone(), |_| status(503)));
        let request = Request::builder()
            .method(method.clone())
            .body(String::new())
            .unwrap();
        service.oneshot(request).await.unwrap();
        assert_eq!(calls.count(), 3, "{method} is retried");
    }
}

#[tokio::test(start_paused = true)]
async fn non_idempotent_requests_are_retried_when_the_caller_opts_in() {
    let calls = Calls::default();
    let layer = RetryLayer::with_policy(
        config(),
        palisade_retry::http::status_classify(),
        HttpReplay::default().retry_non_idempotent(),
    );
    let service = layer.layer(upstream(calls.clone(), |_| status(503)));
    let request = Request::post("http://upstream/orders")
        .body(String::from("{}"))
        .unwrap();
    service.oneshot(request).await.unwrap();
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn a_request_with_an_idempotency_key_is_retried() {
    let calls = Calls::default();
    let service = RetryLayer::http(config()).layer(upstream(calls.clone(), |_| status(503)));
    let request = Request::post("http://upstream/orders")
        .header("idempotency-key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
        .body(String::from("{}"))
        .unwrap();
    service.oneshot(request).await.unwrap();
    assert_eq!(calls.count(), 3);
}

#[tokio::test(start_paused = true)]
async fn oversized_bodies_are_not_retried() {
    let layer = RetryLayer::with_policy(
        config(),
        palisade_retry::http::status_classify(),
        HttpReplay::default().max_body(16),
    );
    for (size, expected_calls) in [(16, 3), (17, 1)] {
        let calls = Calls::default();
        let service = layer.layer(upstream(calls.clone(), |_| status(503)));
        let body = Full::new(Bytes::from(vec![b'x'; size]));
        let request = Request::put("http://upstream/blob").body(body).unwrap();
        assert_eq!(service.oneshot(request).await.unwrap().status(), 503);
        assert_eq!(calls.count(), expected_calls, "a body of {size} bytes");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_header_overrides_the_backoff() {
    for (answer, gap) in [
        (
            (|n| {
                if n == 1 {
                    with_header(503, "retry-after", "2")
                } else {
                    status(200)
                }
            }) as fn(usize) -> Response<()>,
            2000,
        ),
        (
            |n| {
                if n == 1 {
                    with_header(429, "retry-after", " 3 ")
                } else {
                    status(200)
                }
            },
            3000,
        ),
        // Only 429 and 503 carry a meaningful Retry-After.
        (
            |n| {
                if n == 1 {
                    with_header(500, "retry-after", "9")
                } else {
                    status(200)
                }
            },
            100,
        ),
        // An HTTP-date in the past: retry at once.
        (
            |n| {
                if n == 1 {
                    with_header(503, "retry-after", "Fri, 31 Dec 1999 23:59:59 GMT")
                } else {
                    status(200)
                }
            },
            0,
        ),
        // An obsolete date form is not read: the backoff applies.
        (
            |n| {
                if n == 1 {
                    with_header(503, "retry-after", "Friday, 31-Dec-99 23:59:59 GMT")
                } else {
                    status(200)
                }
            },
            100,
        ),
    ] {
        let calls = Calls::default();
        let service = RetryLayer::http(config()).layer(upstream(calls.clone(), answer));
        assert_eq!(service.oneshot(get()).await.unwrap().status(), 200);
        assert_eq!(calls.gaps(), [Duration::from_millis(gap)]);
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_retry_pushback_sets_the_delay_or_stops_retries() {
    let calls = Calls::default();
    let service = RetryLayer::http(config()).layer(upstream(calls.clone(), |n| {
        if n == 1 {
            with_header(503, "grpc-retry-pushback-ms", "250")
        } else {
            status(200)
        }
    }));
    assert_eq!(service.oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(calls.gaps(), [Duration::from_millis(250)]);

    for value in ["-1", "soon"] {
        let calls = Calls::default();
        let answer: fn(usize) -> Response<()> = if value == "-1" {
            |_| with_header(503, "grpc-retry-pushback-ms", "-1")
        } else {
            |_| with_header(503, "grpc-retry-pushback-ms", "soon")
        };
        let service = RetryLayer::http(config()).layer(upstream(calls.clone(), answer));
        assert_eq!(service.oneshot(get()).await.unwrap().status(), 503);
        assert_eq!(calls.count(), 1, "pushback {value:?} means do not retry");
    }
}
