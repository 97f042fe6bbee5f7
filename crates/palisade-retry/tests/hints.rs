//! Server hints: palisade rejections' retry-after, and `CircuitOpen`, never retried.

mod support;

use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_core::reject::{CircuitOpen, Overloaded, RateLimited, Rejection, ShuttingDown};
use palisade_retry::{BudgetConfig, RetryConfig, RetryEvent, RetryLayer};
use support::{Calls, Events};
use tower::{Layer, ServiceExt};

/// Fails its first call with `first`, then succeeds.
fn failing_once(
    calls: Calls,
    first: fn() -> BoxError,
) -> impl tower::Service<(), Response = usize, Error = BoxError, Future: Send> + Clone {
    tower::service_fn(move |()| {
        let n = calls.record();
        async move { if n == 1 { Err(first()) } else { Ok(n) } }
    })
}

fn config(events: &Events) -> RetryConfig {
    RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .listener(events.clone())
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn retry_after_overrides_the_backoff() {
    let cases: [(fn() -> BoxError, u64); 3] = [
        (|| RateLimited::new(Duration::from_secs(3)).into(), 3000),
        (
            || {
                Overloaded::new()
                    .with_retry_after(Duration::from_millis(1500))
                    .into()
            },
            1500,
        ),
        (
            || {
                ShuttingDown::new()
                    .with_retry_after(Duration::from_secs(2))
                    .into()
            },
            2000,
        ),
    ];
    for (error, wait) in cases {
        let events = Events::default();
        let calls = Calls::default();
        let service = RetryLayer::new(config(&events)).layer(failing_once(calls.clone(), error));
        assert_eq!(service.oneshot(()).await.unwrap(), 2);
        assert_eq!(calls.gaps(), [Duration::from_millis(wait)]);
        assert_eq!(
            events.all(),
            [RetryEvent::Retrying {
                attempt: 2,
                delay: Duration::from_millis(wait)
            }]
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_rejection_without_a_hint_follows_the_backoff() {
    let events = Events::default();
    let calls = Calls::default();
    let service = RetryLayer::new(config(&events))
        .layer(failing_once(calls.clone(), || Overloaded::new().into()));
    assert_eq!(service.oneshot(()).await.unwrap(), 2);
    assert_eq!(calls.gaps(), [Duration::from_millis(100)]);
}

/// The hint is found anywhere in the error's source chain.
#[derive(Debug, thiserror::Error)]
#[error("upstream call failed")]
struct Wrapped(#[source] RateLimited);

#[tokio::test(start_paused = true)]
async fn a_rejection_is_found_in_the_source_chain() {
    let events = Events::default();
    let calls = Calls::default();
    let service = RetryLayer::new(config(&events)).layer(failing_once(calls.clone(), || {
        Wrapped(RateLimited::new(Duration::from_secs(7))).into()
    }));
    assert_eq!(service.oneshot(()).await.unwrap(), 2);
    assert_eq!(calls.gaps(), [Duration::from_secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn circuit_open_is_passed_through_untouched() {
    let events = Events::default();
    // A budget with room for exactly one retry: if the rejections spent any, the last
    // call's retry would be refused.
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .budget(BudgetConfig::new(0.0, 1, Duration::from_secs(1)))
        .listener(events.clone())
        .build()
        .unwrap();
    let layer = RetryLayer::new(config);
    for _ in 0..5 {
        let calls = Calls::default();
        let service = layer.layer(failing_once(calls.clone(), || {
            CircuitOpen::new(Duration::from_secs(5)).into()
        }));
        let error = service.oneshot(()).await.unwrap_err();
        assert_eq!(calls.count(), 1, "never retried");
        let open = error
            .downcast_ref::<CircuitOpen>()
            .expect("the breaker's own error");
        assert_eq!(*open, CircuitOpen::new(Duration::from_secs(5)));
        assert!(matches!(
            Rejection::find(&*error),
            Some(Rejection::CircuitOpen(_))
        ));
    }
    assert_eq!(
        events.all(),
        [],
        "no retry, no budget spent, nothing given up"
    );

    let calls = Calls::default();
    let service = layer.layer(failing_once(calls.clone(), || "unavailable".into()));
    assert_eq!(
        service.oneshot(()).await.unwrap(),
        2,
        "the budget is intact"
    );
}
