//! `ShutdownLayer` on any service: requests count until their response future completes;
//! new requests are served or rejected as configured; the deadline cuts what is pending.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_core::{BoxError, Rejection, RetryAfter};
use palisade_shutdown::{
    Phase, RunError, Shutdown, ShutdownEvent, ShutdownLayer, ShutdownReport, ShuttingDown,
};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_test::mock;

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn spawn_run(shutdown: &Shutdown) -> JoinHandle<Result<ShutdownReport, RunError>> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move { shutdown.run().await })
}

/// A handler that takes `delay` to answer.
fn slow(
    delay: Duration,
) -> impl Service<u64, Response = u64, Error = Infallible, Future: Send> + Clone + Send {
    service_fn(move |n: u64| async move {
        sleep(delay).await;
        Ok::<_, Infallible>(n)
    })
}

fn is_shutting_down(error: &BoxError) -> Option<ShuttingDown> {
    match Rejection::find(&**error) {
        Some(Rejection::ShuttingDown(rejection)) => Some(*rejection),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn the_drain_waits_for_in_flight_requests() {
    let shutdown = Shutdown::new();
    let service = shutdown.layer().layer(slow(secs(10)));
    let request = tokio::spawn(service.oneshot(7));
    tokio::task::yield_now().await;
    assert_eq!(shutdown.in_flight(), 1);

    let run = spawn_run(&shutdown);
    sleep(secs(1)).await;
    let triggered = Instant::now();
    shutdown.trigger();
    let cancelling = tokio::spawn({
        let reached = shutdown.wait_for(Phase::Cancelling);
        async move {
            reached.await;
            Instant::now()
        }
    });
    let report = run.await.unwrap().unwrap();

    assert_eq!(request.await.unwrap().unwrap(), 7);
    assert_eq!(
        cancelling.await.unwrap() - triggered,
        secs(9),
        "the drain ended as the request did"
    );
    assert_eq!(report.requests_at_drain, 1);
    assert_eq!(report.requests_cancelled, 0);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_counts_until_its_future_completes_or_is_dropped() {
    let shutdown = Shutdown::new();
    let mut service = shutdown.layer().layer(slow(secs(5)));
    let first = service.ready().await.unwrap().call(1);
    let second = service.ready().await.unwrap().call(2);
    assert_eq!(shutdown.in_flight(), 2);
    drop(second);
    assert_eq!(
        shutdown.in_flight(),
        1,
        "a cancelled call is no longer in flight"
    );
    assert_eq!(first.await.unwrap(), 1);
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn new_requests_are_served_while_draining_by_default() {
    let shutdown = Shutdown::new();
    let service = shutdown.layer().layer(slow(secs(3)));
    // Keeps the drain open.
    let worker = shutdown.guard();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Draining).await;

    let late = tokio::spawn(service.clone().oneshot(9));
    tokio::task::yield_now().await;
    assert_eq!(shutdown.in_flight(), 1);
    drop(worker);
    sleep(secs(1)).await;
    assert_eq!(
        shutdown.phase(),
        Phase::Draining,
        "the drain waits for the late request too"
    );
    assert_eq!(late.await.unwrap().unwrap(), 9);
    let report = run.await.unwrap().unwrap();
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn reject_while_draining_answers_new_requests_with_shutting_down() {
    let rejected = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&rejected);
    let shutdown = Shutdown::builder()
        .grace(secs(5))
        .listener(listener_fn(move |event: &ShutdownEvent| {
            if let ShutdownEvent::Rejected { phase } = event {
                sink.lock().unwrap().push(*phase);
            }
        }))
        .build();
    let layer = ShutdownLayer::new(&shutdown)
        .reject_while_draining()
        .retry_after(secs(2));
    let service = layer.layer(slow(Duration::ZERO));
    let worker = shutdown.guard();
    let run = spawn_run(&shutdown);
    shutdown.trigger();

    // During the grace delay, requests are still served.
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
    shutdown.wait_for(Phase::Draining).await;
    let error = service.clone().oneshot(2).await.unwrap_err();
    let rejection = is_shutting_down(&error).expect("a ShuttingDown rejection");
    assert_eq!(rejection.retry_after(), Some(secs(2)));
    assert_eq!(error.to_string(), "shutting down; retry in 2s");
    assert_eq!(*rejected.lock().unwrap(), [Phase::Draining]);

    drop(worker);
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn new_requests_are_rejected_from_the_deadline_on() {
    let shutdown = Shutdown::builder().drain_deadline(secs(10)).build();
    let service = shutdown.layer().layer(slow(Duration::ZERO));
    let stubborn = shutdown.spawn(|guard| async move {
        guard.cancelled().await;
        sleep(secs(5)).await;
    });
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Cancelling).await;
    let error = service.clone().oneshot(1).await.unwrap_err();
    assert_eq!(is_shutting_down(&error), Some(ShuttingDown::new()));
    run.await.unwrap().unwrap();
    stubborn.abort();
    // And once everything is over.
    assert!(service.oneshot(2).await.is_err());
}

/// Counts the handler futures dropped before they finished.
struct DropCount(Arc<AtomicUsize>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_still_pending_at_the_deadline_fails_and_its_handler_is_dropped() {
    let dropped = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&dropped);
    let shutdown = Shutdown::builder().drain_deadline(secs(30)).build();
    // A long poll that wakes every second (a stream of keep-alives, say).
    let handler = service_fn(move |_: u64| {
        let guard = DropCount(Arc::clone(&counter));
        async move {
            loop {
                sleep(secs(1)).await;
                let _ = &guard;
            }
            #[allow(unreachable_code)]
            Ok::<u64, Infallible>(0)
        }
    });
    let service = shutdown.layer().layer(handler);
    let call = tokio::spawn(async move {
        let result = service.oneshot(1).await;
        (result, Instant::now())
    });
    let run = spawn_run(&shutdown);
    sleep(secs(2)).await;
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();

    let (result, ended) = call.await.unwrap();
    let error = result.unwrap_err();
    assert!(is_shutting_down(&error).is_some(), "{error}");
    assert_eq!(ended - triggered, secs(30), "cut at the deadline");
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    assert_eq!(report.requests_cancelled, 1);
    assert_eq!(report.abandoned, 0);
    assert_eq!(report.code(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_call_waiting_since_before_the_trigger_is_cut_at_the_deadline() {
    // A handler in a long database call: pending since before the trigger, and nothing
    // would poll it again before its ten minutes are up.
    let shutdown = Shutdown::builder()
        .drain_deadline(secs(5))
        .cancel_grace(secs(1))
        .build();
    let call = tokio::spawn({
        let service = shutdown.layer().layer(slow(secs(600)));
        async move { (service.oneshot(1).await, Instant::now()) }
    });
    tokio::task::yield_now().await;
    let run = spawn_run(&shutdown);
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.requests_cancelled, report.abandoned), (1, 0));

    let (result, ended) = call.await.unwrap();
    let error = result.unwrap_err();
    assert!(is_shutting_down(&error).is_some(), "{error}");
    assert_eq!(ended - triggered, secs(5), "cut at the deadline");
    assert_eq!(shutdown.in_flight(), 0);
}

/// A waker that counts its wakes.
#[derive(Default)]
struct CountWakes(AtomicUsize);

impl std::task::Wake for CountWakes {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_waiting_call_is_woken_at_the_deadline_through_its_latest_waker() {
    let shutdown = Shutdown::builder().drain_deadline(secs(5)).build();
    let mut call = Box::pin(
        shutdown
            .layer()
            .layer(service_fn(|_: u64| {
                std::future::pending::<Result<u64, Infallible>>()
            }))
            .oneshot(1),
    );
    let (first, latest) = (
        Arc::new(CountWakes::default()),
        Arc::new(CountWakes::default()),
    );
    for waker in [&first, &latest] {
        let waker = std::task::Waker::from(Arc::clone(waker));
        let polled = call
            .as_mut()
            .poll(&mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending());
    }
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Cancelling).await;
    assert_eq!(latest.0.load(Ordering::SeqCst), 1, "woken at the deadline");
    assert_eq!(
        first.0.load(Ordering::SeqCst),
        0,
        "its first waker is forgotten"
    );
    let waker = std::task::Waker::from(latest);
    let polled = call
        .as_mut()
        .poll(&mut std::task::Context::from_waker(&waker));
    let std::task::Poll::Ready(Err(error)) = polled else {
        panic!("the call fails at the deadline");
    };
    assert!(is_shutting_down(&error).is_some(), "{error}");
    drop(call);
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.requests_cancelled, report.abandoned), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn readiness_comes_from_the_inner_service_while_running() {
    let shutdown = Shutdown::new();
    let (mut service, mut handle) =
        mock::spawn_layer::<u64, u64, _>(shutdown.layer().reject_while_draining());
    handle.allow(0);
    assert_pending!(service.poll_ready());
    handle.allow(1);
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    let response = service.call(3);
    let (request, reply) = handle.next_request().await.unwrap();
    assert_eq!(request, 3);
    reply.send_response(4);
    assert_eq!(response.await.unwrap(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_rejecting_service_is_ready_at_once_without_polling_the_inner_service() {
    let shutdown = Shutdown::new();
    let (mut service, mut handle) =
        mock::spawn_layer::<u64, u64, _>(shutdown.layer().reject_while_draining());
    let worker = shutdown.guard();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Draining).await;

    // The inner service would never be ready; the rejection does not wait for it.
    handle.allow(0);
    assert_ready_ok!(service.poll_ready());
    let error = service.call(1).await.unwrap_err();
    assert!(is_shutting_down(&error).is_some());
    assert_pending!(handle.poll_request());

    drop(worker);
    run.await.unwrap().unwrap();
}

/// Makes a call through `service` (always ready) on a thread of its own, which then exits;
/// the call's future comes back.
fn call_on_another_thread<S>(mut service: S, request: u64) -> S::Future
where
    S: Service<u64> + Send + 'static,
    S::Future: Send + 'static,
{
    std::thread::spawn(move || {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        assert!(service.poll_ready(&mut cx).is_ready());
        service.call(request)
    })
    .join()
    .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_call_finished_on_another_thread_ends_the_drain() {
    let shutdown = Shutdown::new();
    let mut service = shutdown.layer().layer(slow(secs(1)));
    let call = service.ready().await.unwrap().call(7);
    assert_eq!(shutdown.in_flight(), 1);
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Draining).await;

    let answer = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(call)
    })
    .join()
    .unwrap();
    assert_eq!(answer.unwrap(), 7);
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.requests_at_drain, 1);
    assert!(report.is_clean());
}

#[tokio::test(start_paused = true)]
async fn calls_made_on_threads_that_exited_count_until_dropped() {
    let shutdown = Shutdown::new();
    let service = shutdown.layer().layer(slow(secs(1)));
    let calls: Vec<_> = (0..8)
        .map(|n| call_on_another_thread(service.clone(), n))
        .collect();
    assert_eq!(shutdown.in_flight(), 8);
    let mut calls = calls.into_iter();
    let first = calls.next().unwrap();
    assert_eq!(first.await.unwrap(), 0, "polled to its end here");
    assert_eq!(shutdown.in_flight(), 7);
    drop(calls);
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_new_coordinator_starts_clean_whatever_the_ones_before_left() {
    // One dropped with a call still in flight (its counters must not be reused while the
    // call lives), and one that finished cleanly.
    let leftover = {
        let shutdown = Shutdown::new();
        let mut service = shutdown.layer().layer(slow(secs(60)));
        let call = service.ready().await.unwrap().call(1);
        shutdown.trigger();
        assert_eq!(shutdown.run().await.unwrap().abandoned, 1);
        call
    };
    {
        let shutdown = Shutdown::new();
        let service = shutdown.layer().layer(slow(secs(1)));
        assert_eq!(service.oneshot(2).await.unwrap(), 2);
        shutdown.trigger();
        assert!(shutdown.run().await.unwrap().is_clean());
    }

    for n in 0..4 {
        let shutdown = Shutdown::new();
        assert_eq!(shutdown.phase(), Phase::Running);
        assert_eq!(shutdown.in_flight(), 0);
        let service = shutdown.layer().layer(slow(secs(1)));
        assert_eq!(service.oneshot(n).await.unwrap(), n);
        assert_eq!(shutdown.in_flight(), 0);
    }
    drop(leftover);
    assert_eq!(Shutdown::new().in_flight(), 0);
}
