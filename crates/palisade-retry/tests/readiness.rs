//! The tower contract: the inner service is made ready before every attempt.

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_core::backoff::Backoff;
use palisade_retry::{RetryConfig, RetryLayer};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok, task};
use tower_test::mock;

fn layer() -> RetryLayer {
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .build()
        .unwrap();
    RetryLayer::new(config)
}

#[tokio::test(start_paused = true)]
async fn poll_ready_is_called_before_every_attempt() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer());

    // First attempt: readiness comes from the inner service.
    upstream.allow(0);
    assert_pending!(service.poll_ready());
    upstream.allow(1);
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("ping"));
    assert_pending!(response.poll());
    let (request, reply) = upstream.next_request().await.unwrap();
    assert_eq!(request, "ping");
    reply.send_error("unavailable");

    // The retry waits out its delay, then for the inner service to be ready again:
    // the mock panics if it is called without a successful `poll_ready` first.
    assert_pending!(response.poll());
    tokio::time::advance(Duration::from_millis(100)).await;
    assert!(response.is_woken());
    assert_pending!(response.poll());
    assert_pending!(upstream.poll_request());

    upstream.allow(1);
    assert!(
        response.is_woken(),
        "the inner service's wake-up reaches the retry"
    );
    assert_pending!(response.poll());
    let (request, reply) = upstream.next_request().await.unwrap();
    assert_eq!(request, "ping", "the request is sent again");
    reply.send_response("pong");
    assert_eq!(assert_ready!(response.poll()).unwrap(), "pong");
}

#[tokio::test(start_paused = true)]
async fn a_readiness_error_during_a_retry_is_returned() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer());
    upstream.allow(1);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("ping"));
    assert_pending!(response.poll());
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_error("unavailable");
    assert_pending!(response.poll());

    upstream.send_error("connection refused");
    tokio::time::advance(Duration::from_millis(100)).await;
    let error = assert_ready!(response.poll()).unwrap_err();
    assert_eq!(error.to_string(), "connection refused");
}

#[tokio::test(start_paused = true)]
async fn readiness_errors_of_the_first_attempt_pass_through() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer());
    upstream.send_error("connection refused");
    let error = assert_ready!(service.poll_ready()).unwrap_err();
    assert_eq!(error.to_string(), "connection refused");
}

#[tokio::test(start_paused = true)]
async fn a_retry_waiting_for_readiness_gives_up_at_the_deadline() {
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let (mut service, mut upstream) =
        mock::spawn_layer::<&'static str, &'static str, _>(RetryLayer::new(config));
    let started = tokio::time::Instant::now();
    upstream.allow(1);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("ping"));
    assert_pending!(response.poll());
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_error("unavailable");
    assert_pending!(response.poll());

    // The delay is over, but the inner service stays unready.
    tokio::time::advance(Duration::from_millis(100)).await;
    assert_pending!(response.poll());
    tokio::time::advance(Duration::from_millis(899)).await;
    assert_pending!(response.poll());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(response.is_woken());
    let error = assert_ready!(response.poll()).unwrap_err();
    assert!(error.is::<palisade_retry::DeadlineExceeded>(), "{error}");
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert_pending!(upstream.poll_request(), "the retry never started");
}
