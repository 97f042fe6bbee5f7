//! Wait mode: waiters go first come, first served; nobody waits past the maximum; a dropped
//! waiter takes nothing; an admitted waiter is charged once.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::num::NonZeroU32;
use std::time::Duration;

use palisade_core::{BoxError, Rejection, RetryAfter};
use palisade_ratelimit::{Quota, RateLimit, RateLimitConfig, RateLimitHandle, RateLimitLayer};
use tokio::time::Instant;
use tokio_test::task::spawn;
use tokio_test::{assert_pending, assert_ready};
use tower::util::ServiceFn;
use tower::{Layer, Service, ServiceExt};

type Echo = ServiceFn<fn(u32) -> Ready<Result<u32, Infallible>>>;

/// One per second, one at a time, waiting up to `max_wait`.
fn service(max_wait: Duration) -> (RateLimit<Echo>, RateLimitHandle) {
    let config = RateLimitConfig::builder(Quota::per_second(NonZeroU32::new(1).unwrap()))
        .wait_up_to(max_wait)
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(config);
    let handle = layer.handle();
    let echo: Echo = tower::service_fn(|n| ready(Ok(n)));
    (layer.layer(echo), handle)
}

fn retry_after(error: &BoxError) -> Duration {
    match Rejection::find(&**error) {
        Some(Rejection::RateLimited(limited)) => limited.retry_after().unwrap(),
        _ => panic!("expected RateLimited, got {error}"),
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_arrival_order_one_interval_apart() {
    let (mut service, handle) = service(Duration::from_secs(10));
    assert_eq!(service.ready().await.unwrap().call(0).await.unwrap(), 0);

    let start = Instant::now();
    let mut waiting = Vec::new();
    for n in 1..=3 {
        let future = service.ready().await.unwrap().call(n);
        waiting.push(tokio::spawn(async move {
            let response = future.await.unwrap();
            (response, start.elapsed())
        }));
    }
    tokio::task::yield_now().await;
    assert_eq!(handle.waiting(), 3);

    let mut done = Vec::new();
    for task in waiting {
        done.push(task.await.unwrap());
    }
    assert_eq!(
        done,
        [
            (1, Duration::from_secs(1)),
            (2, Duration::from_secs(2)),
            (3, Duration::from_secs(3)),
        ]
    );
    assert_eq!(handle.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn new_requests_queue_behind_waiters_even_when_capacity_is_free() {
    let (mut service, _handle) = service(Duration::from_secs(10));
    service.ready().await.unwrap().call(0).await.unwrap();

    let mut first = spawn(service.ready().await.unwrap().call(1));
    assert_pending!(first.poll());
    tokio::time::advance(Duration::from_secs(1)).await;

    // A unit is free now, but `first` has been waiting for it.
    let mut late = spawn(service.ready().await.unwrap().call(2));
    assert_pending!(late.poll());
    assert_eq!(assert_ready!(first.poll()).unwrap(), 1);
    assert!(
        late.is_woken(),
        "the next in line is woken when the front leaves"
    );
    assert_pending!(late.poll());
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(assert_ready!(late.poll()).unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_cannot_be_admitted_within_the_maximum_is_refused_at_once() {
    let (mut service, handle) = service(Duration::from_millis(500));
    service.ready().await.unwrap().call(0).await.unwrap();

    let start = Instant::now();
    let error = service.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(retry_after(&error), Duration::from_secs(1));
    assert_eq!(start.elapsed(), Duration::ZERO, "refused without waiting");
    assert_eq!(handle.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_cannot_make_its_deadline_behind_others_is_refused_when_that_is_known() {
    let (mut service, handle) = service(Duration::from_millis(1500));
    service.ready().await.unwrap().call(0).await.unwrap();

    let start = Instant::now();
    let first = tokio::spawn(service.ready().await.unwrap().call(1));
    let second = tokio::spawn(service.ready().await.unwrap().call(2));
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(start.elapsed(), Duration::from_secs(1));

    // At the front at 1 s, it would need until 2 s: past its deadline of 1.5 s.
    let error = second.await.unwrap().unwrap_err();
    assert_eq!(retry_after(&error), Duration::from_secs(1));
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert_eq!(handle.waiting(), 0);
    // It took nothing: the next unit is still there at 2 s.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.snapshot().remaining(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_behind_others_is_refused_at_its_deadline() {
    let config = RateLimitConfig::builder(Quota::per_minute(NonZeroU32::new(1).unwrap()))
        .wait_up_to(Duration::from_secs(90))
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(config);
    let handle = layer.handle();
    let mut service = layer.layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    service.ready().await.unwrap().call(0).await.unwrap();

    let start = Instant::now();
    let mut first = spawn(service.ready().await.unwrap().call(1));
    assert_pending!(first.poll());
    tokio::time::advance(Duration::from_secs(30)).await;
    let mut second = spawn(service.ready().await.unwrap().call(2));
    assert_pending!(second.poll());
    assert_eq!(handle.waiting(), 2);

    // The front is stuck (a handler that never polls it again, say): `second` gives up at
    // its own deadline, 90 s after it arrived.
    tokio::time::advance(Duration::from_secs(90)).await;
    assert!(second.is_woken());
    let error = assert_ready!(second.poll()).unwrap_err();
    assert!(matches!(
        Rejection::find(&*error),
        Some(Rejection::RateLimited(_))
    ));
    assert_eq!(start.elapsed(), Duration::from_secs(120));
    assert_eq!(handle.waiting(), 1);
    drop(first);
    assert_eq!(handle.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_refused_behind_others_with_capacity_free_retries_after_the_queue_ahead() {
    let config = RateLimitConfig::builder(Quota::per_minute(NonZeroU32::new(1).unwrap()))
        .wait_up_to(Duration::from_secs(90))
        .build()
        .unwrap();
    let layer = RateLimitLayer::new(config);
    let handle = layer.handle();
    let mut service = layer.layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    service.ready().await.unwrap().call(0).await.unwrap();

    let mut first = spawn(service.ready().await.unwrap().call(1));
    assert_pending!(first.poll());
    tokio::time::advance(Duration::from_secs(30)).await;
    let mut second = spawn(service.ready().await.unwrap().call(2));
    assert_pending!(second.poll());

    // At `second`'s deadline (120 s) the unit is free, but `first`, ahead of it, takes it:
    // not `Retry-After: 0`, but the minute the next unit takes.
    tokio::time::advance(Duration::from_secs(90)).await;
    assert_eq!(handle.snapshot().remaining(), 1);
    let error = assert_ready!(second.poll()).unwrap_err();
    assert_eq!(retry_after(&error), Duration::from_secs(60));
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_takes_nothing_and_an_admitted_one_is_charged_once() {
    let (mut service, handle) = service(Duration::from_secs(10));
    service.ready().await.unwrap().call(0).await.unwrap();

    let start = Instant::now();
    let mut cancelled = spawn(service.ready().await.unwrap().call(1));
    assert_pending!(cancelled.poll());
    let next = tokio::spawn(service.ready().await.unwrap().call(2));
    tokio::time::advance(Duration::from_millis(500)).await;
    drop(cancelled);

    // Had the dropped waiter reserved anything, `next` would wait until 2 s.
    assert_eq!(next.await.unwrap().unwrap(), 2);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    // Charged once: the limit is full again one interval later, not two.
    let snapshot = handle.snapshot();
    assert_eq!(
        (snapshot.remaining(), snapshot.reset()),
        (0, Duration::from_secs(1))
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(handle.snapshot().remaining(), 1);
}

#[tokio::test(start_paused = true)]
async fn raising_the_quota_wakes_the_front_waiter_at_once() {
    let (mut service, handle) = service(Duration::from_secs(10));
    service.ready().await.unwrap().call(0).await.unwrap();

    let mut waiting = spawn(service.ready().await.unwrap().call(1));
    assert_pending!(waiting.poll());
    tokio::time::advance(Duration::from_millis(100)).await;
    handle
        .set_quota(Quota::per_second(NonZeroU32::new(10).unwrap()))
        .unwrap();
    assert!(waiting.is_woken());
    assert_eq!(assert_ready!(waiting.poll()).unwrap(), 1);
}
