//! The retry budget shared by a layer's services.

mod support;

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::{BudgetConfig, RetryConfig, RetryEvent, RetryLayer};
use support::{Calls, Events};
use tokio::task::JoinSet;
use tower::{Layer, ServiceExt};

fn always_failing(
    calls: Calls,
) -> impl tower::Service<(), Response = (), Error = BoxError, Future: Send> + Clone + Send + 'static
{
    tower::service_fn(move |()| {
        calls.record();
        async { Err::<(), BoxError>("unavailable".into()) }
    })
}

#[tokio::test(start_paused = true)]
async fn a_failure_storm_stays_within_the_budget() {
    const REQUESTS: usize = 1_000;
    let budget = BudgetConfig::default();
    assert_eq!(budget.ratio(), 0.2);
    assert_eq!(budget.min_per_second(), 10);
    assert_eq!(budget.ttl(), Duration::from_secs(10));

    let events = Events::default();
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(5).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(budget)
        .listener(events.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer(always_failing(calls.clone()));

    let started = tokio::time::Instant::now();
    let mut storm = JoinSet::new();
    for _ in 0..REQUESTS {
        let service = service.clone();
        storm.spawn(async move { service.oneshot(()).await });
    }
    while let Some(result) = storm.join_next().await {
        assert_eq!(result.unwrap().unwrap_err().to_string(), "unavailable");
    }
    // The whole storm fits in one budget window, so the bound is exact: every request
    // deposits, retries may add `ratio` of them plus `min_per_second × ttl`.
    assert!(started.elapsed() < budget.ttl());
    let floor = u64::from(budget.min_per_second()) * budget.ttl().as_secs();
    let bound = REQUESTS + (REQUESTS as f64 * budget.ratio()) as usize + floor as usize;
    assert_eq!(bound, 1_300);

    let attempts = calls.count();
    assert!(
        attempts <= bound,
        "{attempts} attempts for {REQUESTS} requests"
    );
    assert!(attempts > REQUESTS, "retries happened");
    // All requests arrive before the first retry, so the budget is spent exactly.
    assert_eq!(attempts, bound);

    let events = events.all();
    let retries = events
        .iter()
        .filter(|e| matches!(e, RetryEvent::Retrying { .. }))
        .count();
    let exhausted = events
        .iter()
        .filter(|e| matches!(e, RetryEvent::BudgetExhausted { .. }))
        .count();
    assert_eq!(retries, attempts - REQUESTS);
    assert_eq!(exhausted, REQUESTS, "every request ends on a refused retry");
}

#[tokio::test(start_paused = true)]
async fn budget_exhaustion_returns_the_last_outcome() {
    let events = Events::default();
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .budget(BudgetConfig::new(0.0, 0, Duration::from_secs(10)))
        .listener(events.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer(always_failing(calls.clone()));
    let error = service.oneshot(()).await.unwrap_err();
    assert_eq!(error.to_string(), "unavailable", "no new error kind");
    assert_eq!(calls.count(), 1);
    assert_eq!(events.all(), [RetryEvent::BudgetExhausted { attempts: 1 }]);
}

#[tokio::test(start_paused = true)]
async fn the_budget_refills_once_the_window_has_passed() {
    // One retry per second of floor, a 1 s window: one retry, then none, then one again.
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(2).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(BudgetConfig::new(0.0, 1, Duration::from_secs(1)))
        .build()
        .unwrap();
    let layer = RetryLayer::new(config);
    let attempts = |calls: Calls| {
        let service = layer.layer(always_failing(calls.clone()));
        async move {
            service.oneshot(()).await.unwrap_err();
            calls.count()
        }
    };
    assert_eq!(attempts(Calls::default()).await, 2);
    assert_eq!(attempts(Calls::default()).await, 1);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(attempts(Calls::default()).await, 2);
}

#[tokio::test(start_paused = true)]
async fn layer_clones_share_one_budget_and_layers_do_not() {
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(2).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .budget(BudgetConfig::new(0.0, 1, Duration::from_secs(1)))
        .build()
        .unwrap();
    let first = RetryLayer::new(config.clone());
    let clone = first.clone();
    let other = RetryLayer::new(config);

    let run = |layer: &RetryLayer| {
        let calls = Calls::default();
        let service = layer.layer(always_failing(calls.clone()));
        async move {
            service.oneshot(()).await.unwrap_err();
            calls.count()
        }
    };
    assert_eq!(run(&first).await, 2);
    assert_eq!(
        run(&clone).await,
        1,
        "the clone's budget is the same, now spent"
    );
    assert_eq!(run(&other).await, 2, "another layer has its own budget");
}

#[tokio::test(start_paused = true)]
async fn unbudgeted_retries_are_limited_only_by_attempts() {
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(4).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(1)))
        .unbudgeted()
        .build()
        .unwrap();
    let layer = RetryLayer::new(config);
    for _ in 0..50 {
        let calls = Calls::default();
        layer
            .layer(always_failing(calls.clone()))
            .oneshot(())
            .await
            .unwrap_err();
        assert_eq!(calls.count(), 4);
    }
}
