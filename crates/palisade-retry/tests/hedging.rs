//! Hedging: a second attempt beside a slow one; the first success wins, the loser is
//! cancelled, and hedges draw on the retry budget.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::{BudgetConfig, Hedge, RetryConfig, RetryEvent, RetryLayer};
use support::{Calls, Events};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};

type BoxFuture = Pin<Box<dyn Future<Output = Result<usize, BoxError>> + Send>>;

/// Counts the calls whose futures were dropped before they completed.
#[derive(Clone, Default)]
struct Cancelled(Arc<AtomicUsize>);

impl Cancelled {
    fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

struct Guard(Option<Cancelled>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(cancelled) = self.0.take() {
            cancelled.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The `n`-th call takes `plan(n).0` and then succeeds (`Ok(n)`) if `plan(n).1`.
fn upstream(
    calls: Calls,
    cancelled: Cancelled,
    plan: fn(usize) -> (Duration, bool),
) -> impl tower::Service<(), Response = usize, Error = BoxError, Future = BoxFuture> + Clone {
    tower::service_fn(move |()| {
        let n = calls.record();
        let mut guard = Guard(Some(cancelled.clone()));
        Box::pin(async move {
            let (took, ok) = plan(n);
            tokio::time::sleep(took).await;
            guard.0.take();
            if ok {
                Ok(n)
            } else {
                Err::<usize, BoxError>(format!("failure {n}").into())
            }
        }) as BoxFuture
    })
}

fn config(events: &Events) -> RetryConfig {
    RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .hedge(Duration::from_millis(100))
        .listener(events.clone())
        .build()
        .unwrap()
}

const HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn hedging_cancels_the_loser_and_returns_the_first_success() {
    let (events, calls, cancelled) = (Events::default(), Calls::default(), Cancelled::default());
    let service =
        RetryLayer::new(config(&events)).layer(upstream(calls.clone(), cancelled.clone(), |n| {
            if n == 1 {
                (HOUR, true)
            } else {
                (Duration::from_millis(10), true)
            }
        }));
    let started = Instant::now();
    assert_eq!(service.oneshot(()).await.unwrap(), 2, "the hedge won");
    assert_eq!(started.elapsed(), Duration::from_millis(110));
    assert_eq!(calls.gaps(), [Duration::from_millis(100)]);
    assert_eq!(cancelled.count(), 1, "the slow first attempt was cancelled");
    assert_eq!(events.all(), [RetryEvent::Hedged { attempt: 2 }]);
}

#[tokio::test(start_paused = true)]
async fn the_first_attempt_wins_if_it_answers_first() {
    let (events, calls, cancelled) = (Events::default(), Calls::default(), Cancelled::default());
    let service =
        RetryLayer::new(config(&events)).layer(upstream(calls.clone(), cancelled.clone(), |n| {
            if n == 1 {
                (Duration::from_millis(150), true)
            } else {
                (HOUR, true)
            }
        }));
    let started = Instant::now();
    assert_eq!(service.oneshot(()).await.unwrap(), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(150));
    assert_eq!(calls.count(), 2);
    assert_eq!(cancelled.count(), 1, "the hedge was cancelled");
}

#[tokio::test(start_paused = true)]
async fn a_fast_answer_sends_no_hedge() {
    let (events, calls, cancelled) = (Events::default(), Calls::default(), Cancelled::default());
    let service =
        RetryLayer::new(config(&events)).layer(upstream(calls.clone(), cancelled.clone(), |_| {
            (Duration::from_millis(99), true)
        }));
    assert_eq!(service.oneshot(()).await.unwrap(), 1);
    assert_eq!(calls.count(), 1);
    assert_eq!(events.all(), []);
}

#[tokio::test(start_paused = true)]
async fn a_failure_while_the_hedge_runs_waits_for_the_hedge() {
    let (events, calls, cancelled) = (Events::default(), Calls::default(), Cancelled::default());
    let service =
        RetryLayer::new(config(&events)).layer(upstream(calls.clone(), cancelled.clone(), |n| {
            if n == 1 {
                (Duration::from_millis(150), false)
            } else {
                (Duration::from_millis(200), true)
            }
        }));
    let started = Instant::now();
    assert_eq!(service.oneshot(()).await.unwrap(), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(calls.count(), 2);
    assert_eq!(cancelled.count(), 0);
}

#[tokio::test(start_paused = true)]
async fn when_both_fail_the_call_is_retried_within_its_attempts() {
    let (events, calls, cancelled) = (Events::default(), Calls::default(), Cancelled::default());
    // Three attempts: the first, its hedge, and one retry (which has no hedge left).
    let service =
        RetryLayer::new(config(&events)).layer(upstream(calls.clone(), cancelled.clone(), |_| {
            (Duration::from_millis(150), false)
        }));
    let error = service.oneshot(()).await.unwrap_err();
    assert_eq!(error.to_string(), "failure 3");
    assert_eq!(calls.count(), 3);
    assert_eq!(
        events.all(),
        [
            RetryEvent::Hedged { attempt: 2 },
            RetryEvent::Retrying {
                attempt: 3,
                delay: Duration::from_millis(10)
            },
            RetryEvent::GaveUp { attempts: 3 },
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn hedges_draw_on_the_retry_budget() {
    let events = Events::default();
    // Room for exactly one retry or hedge.
    let config = RetryConfig::builder()
        .hedge(Duration::from_millis(100))
        .budget(BudgetConfig::new(0.0, 1, Duration::from_secs(1)))
        .listener(events.clone())
        .build()
        .unwrap();
    let layer = RetryLayer::new(config);
    let slow = |_| (Duration::from_millis(500), true);

    let calls = Calls::default();
    let service = layer.layer(upstream(calls.clone(), Cancelled::default(), slow));
    assert_eq!(service.oneshot(()).await.unwrap(), 1);
    assert_eq!(calls.count(), 2, "hedged once");

    let calls = Calls::default();
    let service = layer.layer(upstream(calls.clone(), Cancelled::default(), slow));
    assert_eq!(service.oneshot(()).await.unwrap(), 1);
    assert_eq!(calls.count(), 1, "the budget is spent: no hedge");
}

/// Upstream for percentile hedging: a request `(id, latency)` takes `latency` (none: ready at
/// its first poll), unless the call before had the same id (it is that call's hedge): then it
/// takes 1 ms.
fn by_latency(
    calls: Calls,
) -> impl tower::Service<(u32, Duration), Response = usize, Error = BoxError, Future = BoxFuture> + Clone
{
    let last = Arc::new(std::sync::Mutex::new(None));
    tower::service_fn(move |(id, latency): (u32, Duration)| {
        calls.record();
        let hedge = last.lock().unwrap().replace(id) == Some(id);
        let took = if hedge {
            Duration::from_millis(1)
        } else {
            latency
        };
        if took.is_zero() {
            // Ready at its first poll, without a timer.
            return Box::pin(std::future::ready(Ok::<_, BoxError>(id as usize))) as BoxFuture;
        }
        Box::pin(async move {
            tokio::time::sleep(took).await;
            Ok::<_, BoxError>(id as usize)
        }) as BoxFuture
    })
}

fn percentile_config(events: &Events, percentile: f64) -> RetryConfig {
    RetryConfig::builder()
        .hedge_with(Hedge::at_percentile(percentile, Duration::from_secs(2)))
        .unbudgeted()
        .listener(events.clone())
        .build()
        .unwrap()
}

/// Sends 100 calls taking `latency(n)`, then one whose first attempt would take an hour,
/// and returns how long that one waited before it was hedged.
async fn hedge_delay_after_warm_up(percentile: f64, latency: fn(u32) -> Duration) -> Duration {
    let (events, calls) = (Events::default(), Calls::default());
    let service = RetryLayer::new(percentile_config(&events, percentile)).layer(by_latency(calls));
    for n in 1..=100 {
        service.clone().oneshot((n, latency(n))).await.unwrap();
    }
    let started = Instant::now();
    assert_eq!(service.oneshot((0, HOUR)).await.unwrap(), 0);
    started.elapsed() - Duration::from_millis(1)
}

#[tokio::test(start_paused = true)]
async fn a_percentile_hedge_waits_for_the_fallback_until_latencies_are_known() {
    let (events, calls) = (Events::default(), Calls::default());
    let service =
        RetryLayer::new(percentile_config(&events, 90.0)).layer(by_latency(calls.clone()));
    let started = Instant::now();
    assert_eq!(service.oneshot((7, HOUR)).await.unwrap(), 7);
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(2_001),
        "hedged after the fallback"
    );
    assert_eq!(calls.count(), 2);
    assert_eq!(events.all(), [RetryEvent::Hedged { attempt: 2 }]);
}

#[tokio::test(start_paused = true)]
async fn a_percentile_hedge_follows_recent_latencies() {
    // Every call took 10 ms: a slow one is hedged after about 10 ms (rounded up by the
    // histogram by at most 19 %), not after the 2 s fallback.
    let delay = hedge_delay_after_warm_up(90.0, |_| Duration::from_millis(10)).await;
    assert!(
        delay >= Duration::from_millis(10) && delay <= Duration::from_millis(12),
        "hedged after {delay:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_percentile_hedge_learns_from_calls_that_answer_at_their_first_poll() {
    // Each first attempt is ready at its first poll (the response future's fast path), 10 ms
    // after the call: its latency counts as much as a slow attempt's.
    let (events, calls) = (Events::default(), Calls::default());
    let service = RetryLayer::new(percentile_config(&events, 90.0)).layer(by_latency(calls));
    for n in 1..=100 {
        let mut caller = service.clone();
        let future = caller.ready().await.unwrap().call((n, Duration::ZERO));
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(future.await.unwrap(), n as usize);
    }
    let started = Instant::now();
    assert_eq!(service.oneshot((0, HOUR)).await.unwrap(), 0);
    let delay = started.elapsed() - Duration::from_millis(1);
    assert!(
        delay >= Duration::from_millis(10) && delay <= Duration::from_millis(12),
        "hedged after {delay:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_percentile_decides_how_slow_an_attempt_is_before_it_is_hedged() {
    // Half the calls take 10 ms, half 100 ms.
    let mixed = |n: u32| Duration::from_millis(if n.is_multiple_of(2) { 10 } else { 100 });
    let p90 = hedge_delay_after_warm_up(90.0, mixed).await;
    assert!(
        p90 >= Duration::from_millis(100) && p90 <= Duration::from_millis(119),
        "p90 hedged after {p90:?}"
    );
    let p40 = hedge_delay_after_warm_up(40.0, mixed).await;
    assert!(
        p40 >= Duration::from_millis(10) && p40 <= Duration::from_millis(12),
        "p40 hedged after {p40:?}"
    );
}

#[test]
fn a_percentile_outside_0_to_100_is_refused() {
    for percentile in [0.0, 100.0, -1.0, f64::NAN, 250.0] {
        let error = RetryConfig::builder()
            .hedge_with(Hedge::at_percentile(percentile, Duration::from_secs(1)))
            .build()
            .unwrap_err();
        assert!(
            matches!(
                error,
                palisade_retry::ConfigError::InvalidHedgePercentile(_)
            ),
            "{percentile}: {error}"
        );
    }
}
