//! The tower contract: readiness comes from the inner service while closed, an open breaker
//! fails fast without waiting on it, and clones share the breaker but not readiness.

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
use palisade_core::backoff::Backoff;
use palisade_core::{BoxError, Rejection};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower_test::mock;

type Mock = mock::Mock<&'static str, &'static str>;

fn layer() -> CircuitBreakerLayer {
    let config = CircuitBreakerConfig::builder()
        .consecutive_failures(NonZeroU32::new(1).unwrap())
        .open_wait(Backoff::constant(Duration::from_secs(10)))
        .half_open_probes(NonZeroU32::new(1).unwrap())
        .build()
        .unwrap();
    CircuitBreakerLayer::new(config)
}

fn is_circuit_open(error: &BoxError) -> bool {
    matches!(Rejection::find(&**error), Some(Rejection::CircuitOpen(_)))
}

#[tokio::test(start_paused = true)]
async fn closed_breaker_is_ready_only_when_the_inner_service_is() {
    let (mut service, mut upstream) = mock::spawn_layer::<_, _, _>(layer());
    upstream.allow(0);
    assert_pending!(service.poll_ready());
    upstream.allow(1);
    assert!(
        service.is_woken(),
        "the inner service's wake-up reaches the caller"
    );
    assert_ready_ok!(service.poll_ready());

    let response = service.call("ping");
    let (request, reply) = upstream.next_request().await.unwrap();
    assert_eq!(request, "ping");
    reply.send_response("pong");
    assert_eq!(response.await.unwrap(), "pong");
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer());
    upstream.send_error("connection refused");
    let error = assert_ready!(service.poll_ready()).unwrap_err();
    assert_eq!(error.to_string(), "connection refused");
}

#[tokio::test(start_paused = true)]
async fn open_breaker_is_ready_at_once_and_fails_fast_while_the_inner_service_is_stuck() {
    let layer = layer();
    let handle = layer.handle();
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    upstream.allow(1);
    assert_ready_ok!(service.poll_ready());
    let failing = service.call("a");
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_error("boom");
    assert!(failing.await.is_err());
    assert_eq!(handle.state(), State::Open);

    // The upstream would never be ready again; the breaker does not wait for it.
    upstream.allow(0);
    assert_ready_ok!(service.poll_ready());
    let error = service.call("b").await.unwrap_err();
    assert!(is_circuit_open(&error), "{error}");
    assert_pending!(upstream.poll_request());
}

#[tokio::test(start_paused = true)]
async fn after_the_wait_readiness_comes_from_the_inner_service_again() {
    let layer = layer();
    let handle = layer.handle();
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    handle.trip();
    upstream.allow(0);
    assert_ready_ok!(service.poll_ready());
    assert!(is_circuit_open(
        &service.call("rejected").await.unwrap_err()
    ));

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_pending!(service.poll_ready());
    upstream.allow(1);
    assert_ready_ok!(service.poll_ready());
    let probe = service.call("probe");
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_response("ok");
    assert_eq!(probe.await.unwrap(), "ok");
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn clones_share_the_breaker_but_not_readiness() {
    let layer = layer();
    let handle = layer.handle();
    let (mock, mut upstream): (Mock, _) = mock::pair();
    let mut first = mock::Spawn::new(tower::Layer::layer(&layer, mock));

    handle.trip();
    // `first` decided to fail fast; a clone made now has decided nothing.
    assert_ready_ok!(first.poll_ready());
    let mut second = mock::Spawn::new(first.get_ref().clone());
    handle.reset();
    upstream.allow(1);
    assert_ready_ok!(second.poll_ready());
    let response = second.call("through");
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_response("ok");
    assert_eq!(response.await.unwrap(), "ok");

    // `first` keeps the decision its own `poll_ready` made.
    assert!(is_circuit_open(&first.call("stale").await.unwrap_err()));

    // Both report to the one breaker.
    handle.trip();
    assert_ready_ok!(second.poll_ready());
    assert!(is_circuit_open(&second.call("x").await.unwrap_err()));
    assert_eq!(handle.metrics().rejections, 2);
}

#[tokio::test(start_paused = true)]
async fn services_built_by_one_layer_share_one_breaker() {
    let layer = layer();
    let handle = layer.handle();
    let (mut a, mut upstream_a) = mock::spawn_layer::<&'static str, &'static str, _>(layer.clone());
    let (mut b, _upstream_b) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    upstream_a.allow(1);
    assert_ready_ok!(a.poll_ready());
    let failing = a.call("a");
    let (_, reply) = upstream_a.next_request().await.unwrap();
    reply.send_error("boom");
    assert!(failing.await.is_err());

    // `b` never failed, but its breaker is the same one.
    assert_eq!(handle.state(), State::Open);
    assert_ready_ok!(b.poll_ready());
    assert!(is_circuit_open(&b.call("b").await.unwrap_err()));
}
