//! The tower contract: readiness is the inner service's and takes nothing from the limiter
//! (an idle connection cannot hoard capacity); refused calls never reach the inner service;
//! clones and services of one layer share one limiter.

use std::num::NonZeroU32;

use palisade_core::{BoxError, Rejection};
use palisade_ratelimit::{Quota, RateLimitLayer};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower_test::mock;

fn layer(per_minute: u32) -> RateLimitLayer {
    RateLimitLayer::new(Quota::per_minute(NonZeroU32::new(per_minute).unwrap()))
}

fn is_rate_limited(error: &BoxError) -> bool {
    matches!(Rejection::find(&**error), Some(Rejection::RateLimited(_)))
}

#[tokio::test(start_paused = true)]
async fn readiness_is_the_inner_services_and_takes_nothing() {
    let layer = layer(1);
    let handle = layer.handle();
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    upstream.allow(0);
    assert_pending!(service.poll_ready());
    upstream.allow(1);
    assert!(
        service.is_woken(),
        "the inner service's wake-up reaches the caller"
    );
    for _ in 0..10 {
        assert_ready_ok!(service.poll_ready());
    }
    assert_eq!(handle.snapshot().remaining(), 1, "poll_ready took nothing");

    let response = service.call("ping");
    let (request, reply) = upstream.next_request().await.unwrap();
    assert_eq!(request, "ping");
    reply.send_response("pong");
    assert_eq!(response.await.unwrap(), "pong");
    assert_eq!(handle.snapshot().remaining(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_idle_ready_connection_hoards_no_capacity() {
    let layer = layer(1);
    let (mut idle, mut idle_upstream) =
        mock::spawn_layer::<&'static str, &'static str, _>(layer.clone());
    let (mut busy, mut busy_upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    idle_upstream.allow(1);
    busy_upstream.allow(1);
    // hyper readies every keep-alive connection before a request arrives.
    assert_ready_ok!(idle.poll_ready());
    assert_ready_ok!(busy.poll_ready());

    let response = busy.call("work");
    let (_, reply) = busy_upstream.next_request().await.unwrap();
    reply.send_response("done");
    assert_eq!(response.await.unwrap(), "done");
}

#[tokio::test(start_paused = true)]
async fn refused_calls_never_reach_the_inner_service() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer(1));
    upstream.allow(2);
    assert_ready_ok!(service.poll_ready());
    let first = service.call("first");
    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_response("ok");
    first.await.unwrap();

    assert_ready_ok!(service.poll_ready());
    let error = service.call("second").await.unwrap_err();
    assert!(is_rate_limited(&error), "{error}");
    assert_pending!(upstream.poll_request());
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer(1));
    upstream.send_error("connection refused");
    let error = assert_ready!(service.poll_ready()).unwrap_err();
    assert_eq!(error.to_string(), "connection refused");
}

#[tokio::test(start_paused = true)]
async fn clones_and_services_of_one_layer_share_one_limiter() {
    let layer = layer(2);
    let handle = layer.handle();
    let (mut a, mut upstream_a) = mock::spawn_layer::<&'static str, &'static str, _>(layer.clone());
    let (mut b, mut upstream_b) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    let mut a2 = mock::Spawn::new(a.get_ref().clone());
    upstream_a.allow(2);
    upstream_b.allow(1);

    for service in [&mut a, &mut a2] {
        assert_ready_ok!(service.poll_ready());
        let response = service.call("x");
        let (_, reply) = upstream_a.next_request().await.unwrap();
        reply.send_response("ok");
        response.await.unwrap();
    }
    assert_eq!(handle.snapshot().remaining(), 0);
    assert_ready_ok!(b.poll_ready());
    assert!(is_rate_limited(&b.call("y").await.unwrap_err()));
    assert_pending!(upstream_b.poll_request());
}
