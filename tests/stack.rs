//! Full stacks over real loopback TCP: an axum app behind the recommended server layers
//! (HTTP shutdown, keyed rate limit, concurrency pool, circuit breaker), called by hyper-util
//! clients, bare or behind the client stack (retry with its budget, circuit breaker, the
//! limiter that honours the server's `429`, a rate limit of its own).
//!
//! Every test runs on tokio's paused clock: waits such as a `Retry-After` pass at once and
//! are measured exactly, on tokio's clock, by the server's request log.

#![cfg(all(
    feature = "shutdown",
    feature = "http",
    feature = "rate-limit",
    feature = "pool",
    feature = "breaker",
    feature = "retry"
))]

#[path = "stack/support.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{StatusCode, header};
use http_body_util::Full;
use palisade::core::Backoff;
use palisade::prelude::*;
use palisade::rate_limit::Algorithm;
use palisade::retry::{Attempts, BudgetConfig, RetryEvent};
use support::{
    ClientStack, Limits, TestServer, get_request, http_client, is_circuit_open, n, send,
};
use tower::{ServiceBuilder, ServiceExt};

fn header<'a>(parts: &'a http::response::Parts, name: &str) -> Option<&'a str> {
    parts.headers.get(name).map(|value| value.to_str().unwrap())
}

fn retry_every_100ms() -> palisade::retry::RetryConfigBuilder {
    RetryConfig::builder()
        .max_attempts(n(3))
        .backoff(Backoff::constant(Duration::from_millis(100)))
}

fn breaker_after(failures: u32) -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .consecutive_failures(n(failures))
        .open_wait(Backoff::constant(Duration::from_secs(30)))
        .build()
        .unwrap()
}

fn retrying(attempt: u32, delay: Duration) -> RetryEvent {
    RetryEvent::Retrying { attempt, delay }
}

// --- The server stack ---------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn the_recommended_server_stack_passes_normal_requests_with_their_bodies() {
    let server = TestServer::start(Limits::generous()).await;
    let client = http_client();

    let (parts, body) = send(&client, get_request(&server.uri("/hello"), "alice"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "hello");

    // A body larger than one read buffer goes through every layer both ways, byte for byte.
    let payload: Bytes = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let echo = http::Request::post(server.uri("/echo"))
        .header(support::API_KEY, "alice")
        .body(Full::new(payload.clone()))
        .unwrap();
    let (parts, body) = send(&client, echo).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, payload);

    // The health endpoint sits outside the stack.
    let (parts, body) = send(&client, get_request(&server.uri("/health"), "probe"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert!(body.starts_with(br#"{"status":"healthy""#), "{body:?}");

    assert_eq!(server.handled(), 2);
    assert_eq!(
        server.log.statuses(),
        [
            ("/hello".into(), 200),
            ("/echo".into(), 200),
            ("/health".into(), 200)
        ]
    );
    assert_eq!(server.breaker.state(), palisade::breaker::State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_spent_key_gets_429_with_retry_after_and_ratelimit_headers_while_other_keys_pass() {
    let server = TestServer::start(Limits {
        rate: Quota::per_minute(n(2)).into(),
        ..Limits::generous()
    })
    .await;
    let client = http_client();
    let hello = |key: &str| get_request(&server.uri("/hello"), key);

    for _ in 0..2 {
        let (parts, _) = send(&client, hello("alice")).await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
    }
    let (parts, body) = send(&client, hello("alice")).await.unwrap();
    assert_eq!(parts.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(body.is_empty());
    // Two per minute (GCRA): the next unit comes 30 s after the burst.
    assert_eq!(header(&parts, "retry-after"), Some("30"));
    assert_eq!(
        header(&parts, "ratelimit-policy"),
        Some(r#""default";q=2;w=60"#)
    );
    // `t`: until the whole quota is back (the ratelimit crate's documented reading).
    assert_eq!(header(&parts, "ratelimit"), Some(r#""default";r=0;t=60"#));

    // Another key has its own limit.
    let (parts, body) = send(&client, hello("bob")).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "hello");

    assert_eq!(
        server.handled(),
        3,
        "the refused request reached no handler"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_answers_503_with_retry_after() {
    let server = TestServer::start(Limits {
        pool: PoolConfig::builder(n(1)).queue_capacity(0).build().unwrap(),
        ..Limits::generous()
    })
    .await;
    let client = http_client();

    let holder = {
        let (client, request) = (client.clone(), get_request(&server.uri("/hold"), "alice"));
        tokio::spawn(async move { send(&client, request).await })
    };
    server.held().await;
    assert_eq!(server.pool.in_flight(), 1);

    let (parts, body) = send(&client, get_request(&server.uri("/hello"), "bob"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&parts, "retry-after"), Some("1"));
    assert!(body.is_empty());
    assert_eq!(server.handled(), 1, "the shed request reached no handler");

    server.release();
    let (parts, body) = holder.await.unwrap().unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert_eq!(body, "held");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_answers_503_with_retry_after_without_calling_the_handler() {
    let server = TestServer::start(Limits {
        breaker: breaker_after(2),
        ..Limits::generous()
    })
    .await;
    let client = http_client();

    for _ in 0..2 {
        let (parts, body) = send(&client, get_request(&server.uri("/fail"), "alice"))
            .await
            .unwrap();
        assert_eq!(parts.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(body, "upstream down");
    }
    assert_eq!(server.breaker.state(), palisade::breaker::State::Open);

    let (parts, body) = send(&client, get_request(&server.uri("/hello"), "alice"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&parts, "retry-after"), Some("30"));
    assert!(body.is_empty());
    assert_eq!(server.handled(), 2, "the open breaker called no handler");
}

#[tokio::test(start_paused = true)]
async fn a_shut_down_server_answers_503_with_retry_after_and_closes_the_connection() {
    let server = TestServer::start(Limits::generous()).await;
    let client = http_client();
    let (parts, _) = send(&client, get_request(&server.uri("/hello"), "alice"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::OK);
    assert!(parts.headers.get(header::CONNECTION).is_none());

    server.shut_down().await;

    let (parts, body) = send(&client, get_request(&server.uri("/health"), "probe"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, r#"{"status":"shutting-down"}"#);

    let (parts, body) = send(&client, get_request(&server.uri("/hello"), "alice"))
        .await
        .unwrap();
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&parts, "retry-after"), Some("5"));
    assert_eq!(header(&parts, "connection"), Some("close"));
    assert!(body.is_empty());
    assert_eq!(server.handled(), 1, "after the shutdown no handler ran");
}

// --- The client stack against the server stack ----------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_retrying_client_stops_at_a_429_and_resumes_after_its_retry_after() {
    // Two per fixed minute: the third request of the minute is refused until the next one.
    let rate = RateLimitConfig::builder(Quota::per_minute(n(2)))
        .algorithm(Algorithm::FixedWindow)
        .build()
        .unwrap();
    let server = TestServer::start(Limits {
        rate,
        ..Limits::generous()
    })
    .await;
    let stack = ClientStack::new(retry_every_100ms(), breaker_after(5));
    let client = stack.service(http_client());
    let hello = || get_request(&server.uri("/hello"), "alice");

    for _ in 0..2 {
        let (parts, _) = send(&client, hello()).await.unwrap();
        assert_eq!(parts.status, StatusCode::OK);
    }
    let third = {
        let (client, request) = (client.clone(), hello());
        tokio::spawn(async move { send(&client, request).await })
    };
    // The 429 went back through the whole client stack; its retry waits.
    stack.events.retrying().await;
    let refused = server.log.all()[2].clone();
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    let retry_after = Duration::from_secs(refused.retry_after.unwrap().parse().unwrap());
    assert_eq!(retry_after, Duration::from_secs(60));
    assert_eq!(stack.events.all(), [retrying(2, retry_after)]);
    // Every other call of the client holds off as well.
    assert_eq!(stack.upstream.pause_left(), retry_after);
    let fourth = {
        let (client, request) = (client.clone(), hello());
        tokio::spawn(async move { send(&client, request).await })
    };

    let (third, fourth) = (
        third.await.unwrap().unwrap(),
        fourth.await.unwrap().unwrap(),
    );
    assert_eq!(
        (third.0.status, &third.1[..]),
        (StatusCode::OK, &b"hello"[..])
    );
    assert_eq!(third.0.extensions.get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(
        (fourth.0.status, &fourth.1[..]),
        (StatusCode::OK, &b"hello"[..])
    );
    assert_eq!(fourth.0.extensions.get::<Attempts>(), Some(&Attempts(1)));

    // The server saw one 429, and nothing from this client until its Retry-After was over.
    let seen = server.log.all();
    let statuses: Vec<u16> = seen.iter().map(|s| s.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 429, 200, 200]);
    for resumed in &seen[3..] {
        assert_eq!(resumed.at - refused.at, retry_after);
    }
    assert_eq!(stack.events.all(), [retrying(2, retry_after)]);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_never_retried_and_spends_no_retry_budget() {
    let server = TestServer::start(Limits::generous()).await;
    // A budget of a single retry in the window (no share of calls, a floor of 1 per second
    // over 1 s): had any of the rejections below spent it, the last call could not retry.
    let retry = retry_every_100ms().budget(BudgetConfig::new(0.0, 1, Duration::from_secs(1)));
    let stack = ClientStack::new(retry, breaker_after(5));
    let client = stack.service(http_client());
    let flaky = || get_request(&server.uri("/flaky"), "alice");

    stack.breaker.force_open();
    for _ in 0..5 {
        let error = send(&client, flaky()).await.unwrap_err();
        assert!(is_circuit_open(&error), "{error}");
    }
    assert!(server.log.all().is_empty(), "no request left the client");
    assert!(
        stack.events.all().is_empty(),
        "the retry layer did not even consider them: {:?}",
        stack.events.all()
    );

    stack.breaker.reset();
    server.script([StatusCode::SERVICE_UNAVAILABLE]);
    let (parts, body) = send(&client, flaky()).await.unwrap();
    assert_eq!((parts.status, &body[..]), (StatusCode::OK, &b"flaky"[..]));
    assert_eq!(parts.extensions.get::<Attempts>(), Some(&Attempts(2)));
    assert_eq!(
        stack.events.all(),
        [retrying(2, Duration::from_millis(100))]
    );
    assert_eq!(
        server.log.statuses(),
        [("/flaky".into(), 503), ("/flaky".into(), 200)]
    );
}

#[tokio::test(start_paused = true)]
async fn a_breaker_tripping_between_attempts_ends_the_retries_with_circuit_open() {
    let server = TestServer::start(Limits::generous()).await;
    let stack = ClientStack::new(retry_every_100ms(), breaker_after(2));
    let client = stack.service(http_client());

    let error = send(&client, get_request(&server.uri("/fail"), "alice"))
        .await
        .unwrap_err();
    assert!(is_circuit_open(&error), "{error}");
    // Two real attempts tripped the client's breaker; the third was refused by it, inside
    // the client, and not retried.
    assert_eq!(
        server.log.statuses(),
        [("/fail".into(), 500), ("/fail".into(), 500)]
    );
    let delay = Duration::from_millis(100);
    assert_eq!(stack.events.all(), [retrying(2, delay), retrying(3, delay)]);
}

#[tokio::test(start_paused = true)]
async fn a_shutting_down_503_is_retried_after_its_retry_after() {
    let server = TestServer::start(Limits::generous()).await;
    let stack = ClientStack::new(retry_every_100ms(), breaker_after(5));
    let client = stack.service(http_client());
    let hello = || get_request(&server.uri("/hello"), "alice");
    let (parts, _) = send(&client, hello()).await.unwrap();
    assert_eq!(parts.status, StatusCode::OK);

    server.shut_down().await;
    let (parts, _) = send(&client, hello()).await.unwrap();
    // Every attempt was answered 503; the last one is handed back.
    assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(parts.extensions.get::<Attempts>(), Some(&Attempts(3)));

    // `Retry-After: 5` replaced the 100 ms backoff, twice.
    let after = Duration::from_secs(5);
    assert_eq!(
        stack.events.all(),
        [
            retrying(2, after),
            retrying(3, after),
            RetryEvent::GaveUp { attempts: 3 }
        ]
    );
    let seen = server.log.all();
    assert_eq!(seen.len(), 4);
    for pair in seen[1..].windows(2) {
        assert_eq!(pair[0].status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(pair[0].retry_after.as_deref(), Some("5"));
        assert_eq!(pair[1].at - pair[0].at, after);
    }
    assert_eq!(server.handled(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_shutting_down_rejection_is_retried_after_its_retry_after_or_else_on_the_backoff() {
    for (retry_after, delay) in [
        (Some(Duration::from_secs(2)), Duration::from_secs(2)),
        (None, Duration::from_millis(100)),
    ] {
        let shutdown = Shutdown::new();
        let mut layer = palisade::shutdown::ShutdownLayer::new(&shutdown);
        if let Some(after) = retry_after {
            layer = layer.retry_after(after);
        }
        let events = support::Events::default();
        let config = support::with_listener(retry_every_100ms(), &events);
        let service = ServiceBuilder::new()
            .retry_with(config)
            .layer(layer)
            .service_fn(|name: &'static str| async move {
                Ok::<_, std::convert::Infallible>(name.len())
            });
        assert_eq!(service.clone().oneshot("before").await.unwrap(), 6);

        shutdown.trigger();
        shutdown.run().await.unwrap();
        let error = service.oneshot("after").await.unwrap_err();
        assert!(
            matches!(
                palisade::core::Rejection::find(&*error),
                Some(palisade::core::Rejection::ShuttingDown(_))
            ),
            "{error}"
        );
        assert_eq!(
            events.all(),
            [
                retrying(2, delay),
                retrying(3, delay),
                RetryEvent::GaveUp { attempts: 3 }
            ],
            "retry-after {retry_after:?}"
        );
    }
}
