//! Per-attempt timeouts and the overall deadline, under the paused clock.

mod support;

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::{AttemptTimedOut, DeadlineExceeded, RetryConfig, RetryEvent, RetryLayer};
use support::{Calls, Events};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

type BoxFuture = Pin<Box<dyn Future<Output = Result<usize, BoxError>> + Send>>;

/// Each call takes `took(n)` (for the `n`-th call) and then fails, or succeeds from call
/// `succeed_from` on.
fn slow_service(
    calls: Calls,
    took: fn(usize) -> Duration,
    succeed_from: usize,
) -> impl tower::Service<(), Response = usize, Error = BoxError, Future = BoxFuture> + Clone {
    tower::service_fn(move |()| {
        let n = calls.record();
        Box::pin(async move {
            tokio::time::sleep(took(n)).await;
            if n >= succeed_from {
                Ok(n)
            } else {
                Err::<usize, BoxError>("unavailable".into())
            }
        }) as BoxFuture
    })
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_cancelled_and_retried() {
    let events = Events::default();
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .attempt_timeout(Duration::from_secs(1))
        .listener(events.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    // The first call would take an hour; the second answers in 10 ms.
    let took = |n| {
        if n == 1 {
            Duration::from_secs(3600)
        } else {
            Duration::from_millis(10)
        }
    };
    let service = RetryLayer::new(config).layer(slow_service(calls.clone(), took, 2));

    let started = Instant::now();
    assert_eq!(service.oneshot(()).await.unwrap(), 2);
    assert_eq!(calls.gaps(), [Duration::from_millis(1100)]);
    assert_eq!(started.elapsed(), Duration::from_millis(1110));
}

#[tokio::test(start_paused = true)]
async fn attempts_that_keep_timing_out_end_with_attempt_timed_out() {
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .attempt_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let calls = Calls::default();
    let service = RetryLayer::new(config).layer(slow_service(
        calls.clone(),
        |_| Duration::from_secs(3600),
        usize::MAX,
    ));
    let started = Instant::now();
    let error = service.oneshot(()).await.unwrap_err();
    let timed_out = error.downcast_ref::<AttemptTimedOut>().expect("a timeout");
    assert_eq!(timed_out.timeout(), Duration::from_millis(500));
    assert_eq!(calls.count(), 3);
    assert_eq!(started.elapsed(), Duration::from_millis(3 * 500 + 2 * 100));
}

/// Counts futures dropped before they completed.
#[derive(Clone, Default)]
struct Cancelled(Arc<AtomicUsize>);

/// Lives in a future that never completes: dropping it means the future was cancelled.
struct Guard(Cancelled);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.0.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_dropped() {
    let cancelled = Cancelled::default();
    let counter = cancelled.clone();
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(2).unwrap())
        .attempt_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let service = RetryLayer::new(config).layer(tower::service_fn(move |()| {
        let guard = Guard(counter.clone());
        async move {
            let _guard = guard;
            std::future::pending::<Result<(), BoxError>>().await
        }
    }));
    service.oneshot(()).await.unwrap_err();
    assert_eq!(cancelled.0.load(Ordering::Relaxed), 2);
}

#[tokio::test(start_paused = true)]
async fn no_retry_starts_after_the_deadline() {
    let deadline = Duration::from_secs(1);
    let events = Events::default();
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(100).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(300)))
        .deadline(deadline)
        .unbudgeted()
        .listener(events.clone())
        .build()
        .unwrap();
    let calls = Calls::default();
    // Each attempt takes 100 ms and fails: attempts at 0, 400 and 800 ms; the next would
    // start at 1200 ms, past the deadline, so the third attempt's error is returned at 900.
    let service = RetryLayer::new(config).layer(slow_service(
        calls.clone(),
        |_| Duration::from_millis(100),
        usize::MAX,
    ));
    let started = Instant::now();
    let error = service.oneshot(()).await.unwrap_err();
    assert_eq!(error.to_string(), "unavailable", "the last real outcome");
    let offsets: Vec<Duration> = calls.times().iter().map(|t| *t - started).collect();
    assert_eq!(offsets, [0, 400, 800].map(Duration::from_millis));
    assert_eq!(started.elapsed(), Duration::from_millis(900));
    assert_eq!(
        events.all().last(),
        Some(&RetryEvent::GaveUp { attempts: 3 })
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_that_would_start_exactly_at_the_deadline_does_not() {
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(10).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(500)))
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = Calls::default();
    // Instant failures: attempts at 0 and 500 ms; one at 1000 ms would start at the deadline.
    let service =
        RetryLayer::new(config).layer(slow_service(calls.clone(), |_| Duration::ZERO, usize::MAX));
    let started = Instant::now();
    service.oneshot(()).await.unwrap_err();
    assert_eq!(calls.count(), 2);
    assert_eq!(started.elapsed(), Duration::from_millis(500));
}

#[tokio::test(start_paused = true)]
async fn an_attempt_running_at_the_deadline_is_cut_off() {
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(10).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .attempt_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(1))
        .build()
        .unwrap();
    let calls = Calls::default();
    // The first attempt fails at 300 ms; the second would take an hour.
    let took = |n| {
        if n == 1 {
            Duration::from_millis(300)
        } else {
            Duration::from_secs(3600)
        }
    };
    let service = RetryLayer::new(config).layer(slow_service(calls.clone(), took, usize::MAX));
    let started = Instant::now();
    let error = service.oneshot(()).await.unwrap_err();
    let exceeded = error
        .downcast_ref::<DeadlineExceeded>()
        .expect("deadline exceeded");
    assert_eq!(exceeded.deadline(), Duration::from_secs(1));
    assert_eq!(calls.count(), 2, "not retried after the deadline");
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(1),
        "never past the deadline"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_deadline_is_not_waited_for() {
    let config = RetryConfig::builder()
        .deadline(Duration::from_secs(2))
        .build()
        .unwrap();
    let calls = Calls::default();
    let counter = calls.clone();
    let service = RetryLayer::new(config).layer(tower::service_fn(move |()| {
        counter.record();
        async {
            Err::<(), BoxError>(palisade_core::RateLimited::new(Duration::from_secs(5)).into())
        }
    }));
    let started = Instant::now();
    let error = service.oneshot(()).await.unwrap_err();
    assert!(error.is::<palisade_core::RateLimited>());
    assert_eq!(calls.count(), 1);
    assert_eq!(started.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_is_never_exceeded_whatever_the_attempt_durations() {
    // A small deterministic sweep: attempt durations and delays of every size around the
    // deadline; the call never ends after it.
    let deadline = Duration::from_millis(1000);
    for step in [1u64, 7, 99, 250, 333, 999, 1000, 1001, 5000] {
        for delay in [0u64, 1, 100, 499, 1000] {
            let config = RetryConfig::builder()
                .max_attempts(NonZeroU32::new(50).unwrap())
                .backoff(Backoff::constant(Duration::from_millis(delay)))
                .deadline(deadline)
                .unbudgeted()
                .build()
                .unwrap();
            let service = RetryLayer::new(config).layer(tower::service_fn(move |()| async move {
                tokio::time::sleep(Duration::from_millis(step)).await;
                Err::<(), BoxError>("unavailable".into())
            }));
            let started = Instant::now();
            service.oneshot(()).await.unwrap_err();
            assert!(
                started.elapsed() <= deadline,
                "attempts of {step} ms, delays of {delay} ms: ended after {:?}",
                started.elapsed()
            );
        }
    }
}
