//! The tower contract: readiness is the inner service's and reserves nothing, so a service
//! that is ready but never called (an idle keep-alive connection) holds no permit.

use std::time::Duration;

use palisade_core::{BoxError, Rejection};
use palisade_pool::{ConcurrencyPoolLayer, PoolConfig};
use tokio_test::{assert_pending, assert_ready, assert_ready_ok};
use tower_test::mock;

fn layer(limit: u32) -> ConcurrencyPoolLayer {
    let config = PoolConfig::builder(std::num::NonZeroU32::new(limit).unwrap())
        .queue_capacity(4)
        .queue_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    ConcurrencyPoolLayer::new(config)
}

fn is_overloaded(error: &BoxError) -> bool {
    matches!(Rejection::find(&**error), Some(Rejection::Overloaded(_)))
}

#[tokio::test(start_paused = true)]
async fn ready_services_hold_no_permit() {
    let layer = layer(1);
    let handle = layer.handle();
    let (mut idle, mut upstream_idle) =
        mock::spawn_layer::<&'static str, &'static str, _>(layer.clone());
    let (mut busy, mut upstream_busy) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    upstream_idle.allow(1);
    upstream_busy.allow(1);
    // Both are ready; neither took the pool's one permit.
    assert_ready_ok!(idle.poll_ready());
    assert_ready_ok!(busy.poll_ready());
    assert_eq!(handle.in_flight(), 0);

    // The one that is called gets it, at once.
    let response = busy.call("request");
    assert_eq!(handle.in_flight(), 1);
    let (request, reply) = upstream_busy.next_request().await.unwrap();
    assert_eq!(request, "request");
    reply.send_response("response");
    assert_eq!(response.await.unwrap(), "response");
    assert_eq!(handle.in_flight(), 0);
    drop(idle);
}

#[tokio::test(start_paused = true)]
async fn readiness_follows_the_inner_service_even_when_the_pool_is_full() {
    let layer = layer(1);
    let handle = layer.handle();
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    upstream.allow(0);
    assert_pending!(service.poll_ready());
    upstream.allow(2);
    assert!(
        service.is_woken(),
        "the inner service's wake-up reaches the caller"
    );
    assert_ready_ok!(service.poll_ready());
    let mut first = tokio_test::task::spawn(service.call("first"));
    assert_pending!(first.poll());
    assert_eq!(handle.in_flight(), 1);

    // Full, yet ready: admission waits in the response future, not in `poll_ready`.
    assert_ready_ok!(service.poll_ready());
    let mut second = tokio_test::task::spawn(service.call("second"));
    assert_pending!(second.poll());
    assert_eq!(handle.queued(), 1);

    let (_, reply) = upstream.next_request().await.unwrap();
    reply.send_response("one");
    assert_eq!(assert_ready!(first.poll()).unwrap(), "one");
    assert!(
        second.is_woken(),
        "the waiter is woken when it is granted the permit"
    );
    assert_pending!(second.poll());
    let (request, reply) = upstream.next_request().await.unwrap();
    assert_eq!(request, "second");
    reply.send_response("two");
    assert_eq!(assert_ready!(second.poll()).unwrap(), "two");
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn inner_readiness_errors_pass_through() {
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer(1));
    upstream.send_error("connection refused");
    let error = assert_ready!(service.poll_ready()).unwrap_err();
    assert_eq!(error.to_string(), "connection refused");
    assert!(!is_overloaded(&error));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_shed_by_its_timeout_is_woken_and_never_reaches_the_service() {
    let layer = layer(1);
    let handle = layer.handle();
    let (mut service, mut upstream) = mock::spawn_layer::<&'static str, &'static str, _>(layer);
    upstream.allow(2);
    assert_ready_ok!(service.poll_ready());
    let mut first = tokio_test::task::spawn(service.call("first"));
    assert_pending!(first.poll());
    assert_ready_ok!(service.poll_ready());
    let mut late = tokio_test::task::spawn(service.call("late"));
    assert_pending!(late.poll());

    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(late.is_woken(), "the queue timeout wakes the waiter");
    let error = assert_ready!(late.poll()).unwrap_err();
    assert!(is_overloaded(&error), "{error}");
    assert_eq!(handle.queued(), 0);
    let (request, _reply) = upstream.next_request().await.unwrap();
    assert_eq!(request, "first");
    assert_pending!(upstream.poll_request());
}
