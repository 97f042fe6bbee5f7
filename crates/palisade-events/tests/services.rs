//! Tower services as handlers: wrapped in palisade-retry's `RetryLayer`, readiness.

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_events::{EventBus, HandlerOutcome, HandlerStatus};
use palisade_retry::{RetryConfig, RetryLayer};
use support::OrderPlaced;
use tokio::time::Instant;
use tower::ServiceBuilder;

fn retry(attempts: u32) -> RetryLayer {
    let config = RetryConfig::builder()
        .max_attempts(NonZeroU32::new(attempts).unwrap())
        .backoff(Backoff::constant(Duration::from_millis(100)))
        .unbudgeted()
        .build()
        .unwrap();
    RetryLayer::new(config)
}

/// A handler that fails its first `failures` calls.
fn flaky(
    calls: Arc<AtomicU32>,
    failures: u32,
) -> impl tower::Service<OrderPlaced, Response = (), Error = BoxError, Future: Send> + Clone + Send
{
    tower::service_fn(move |_: OrderPlaced| {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if call <= failures {
                Err::<(), BoxError>(format!("attempt {call} failed").into())
            } else {
                Ok(())
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_handler_wrapped_in_a_retry_layer_retries() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let handler = ServiceBuilder::new()
        .layer(retry(3))
        .service(flaky(Arc::clone(&calls), 2));
    let subscription = bus.on_service(handler);

    let began = Instant::now();
    let report = bus.emit(OrderPlaced { order_id: 1 }).await;

    assert!(report.is_ok(), "{report:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "two retries");
    assert_eq!(
        began.elapsed(),
        Duration::from_millis(200),
        "the backoff's delays"
    );
    assert!(report.outcome(subscription.id()).is_some());
}

#[tokio::test(start_paused = true)]
async fn a_retried_handler_that_keeps_failing_reports_its_last_error() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    bus.on_service(
        ServiceBuilder::new()
            .layer(retry(3))
            .service(flaky(Arc::clone(&calls), 10)),
    )
    .detach();

    let report = bus.emit(OrderPlaced { order_id: 1 }).await;

    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let failure = report.failures().next().unwrap();
    assert_eq!(failure.outcome().to_string(), "failed: attempt 3 failed");
}

#[tokio::test(start_paused = true)]
async fn the_bus_timeout_bounds_a_retried_handler() {
    let bus = EventBus::builder()
        .handler_timeout(Duration::from_millis(150))
        .build();
    let calls = Arc::new(AtomicU32::new(0));
    bus.on_service(
        ServiceBuilder::new()
            .layer(retry(5))
            .service(flaky(Arc::clone(&calls), 10)),
    )
    .detach();

    let report = bus.emit(OrderPlaced { order_id: 1 }).await;

    assert_eq!(
        report.outcomes().next().unwrap().status(),
        HandlerStatus::TimedOut
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "cancelled during the second delay"
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_emits_call_separate_clones_of_a_service() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&calls);
    let slow = tower::service_fn(move |_: OrderPlaced| {
        count.fetch_add(1, Ordering::SeqCst);
        async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<(), BoxError>(())
        }
    });
    bus.on_service(slow).detach();

    let began = Instant::now();
    let (a, b) = tokio::join!(
        bus.emit(OrderPlaced { order_id: 1 }),
        bus.emit(OrderPlaced { order_id: 2 })
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(
        began.elapsed(),
        Duration::from_secs(1),
        "the calls overlapped"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// Not ready until `ready_after` polls; then always fails readiness if `broken`.
#[derive(Clone)]
struct Picky {
    polls: u32,
    ready_after: u32,
    broken: bool,
    calls: Arc<AtomicU32>,
}

impl tower::Service<OrderPlaced> for Picky {
    type Response = ();
    type Error = &'static str;
    type Future = std::future::Ready<Result<(), &'static str>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.broken {
            return Poll::Ready(Err("connection refused"));
        }
        self.polls += 1;
        if self.polls > self.ready_after {
            Poll::Ready(Ok(()))
        } else {
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }

    fn call(&mut self, _: OrderPlaced) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(()))
    }
}

#[tokio::test]
async fn a_service_handler_is_called_only_when_ready() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    bus.on_service(Picky {
        polls: 0,
        ready_after: 3,
        broken: false,
        calls: Arc::clone(&calls),
    })
    .detach();
    assert!(bus.emit(OrderPlaced { order_id: 1 }).await.is_ok());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_readiness_failure_is_the_handlers_outcome() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicU32::new(0));
    bus.on_service(Picky {
        polls: 0,
        ready_after: 0,
        broken: true,
        calls: Arc::clone(&calls),
    })
    .detach();
    let report = bus.emit(OrderPlaced { order_id: 1 }).await;
    assert!(matches!(
        report.outcomes().next().unwrap().outcome(),
        HandlerOutcome::Failed(error) if error.to_string() == "connection refused"
    ));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}
