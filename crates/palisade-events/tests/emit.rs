//! `emit` and `emit_serial`: concurrency, isolation of failures, timeouts, the report.

mod support;

use std::future::pending;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_events::{EventBus, HandlerOutcome, HandlerStatus};
use support::{Log, OrderPlaced};
use tokio::time::{Instant, sleep};

const SECOND: Duration = Duration::from_secs(1);

fn order(order_id: u64) -> OrderPlaced {
    OrderPlaced { order_id }
}

#[tokio::test(start_paused = true)]
async fn handlers_run_concurrently() {
    let bus = EventBus::new();
    let log = Log::default();
    for name in ["a", "b", "c"] {
        let log = log.clone();
        bus.on(move |_: OrderPlaced| {
            let log = log.clone();
            async move {
                log.push(format!("{name} started"));
                sleep(SECOND).await;
                log.push(format!("{name} done"));
            }
        })
        .detach();
    }

    let began = Instant::now();
    let report = bus.emit(order(1)).await;

    // Three one-second handlers in one second: they overlapped.
    assert_eq!(began.elapsed(), SECOND);
    assert!(report.is_ok());
    assert_eq!(report.count(HandlerStatus::Ok), 3);
    assert_eq!(
        log.entries()[..3],
        ["a started", "b started", "c started"],
        "every handler starts before any finishes"
    );
}

#[tokio::test(start_paused = true)]
async fn emit_serial_runs_handlers_one_at_a_time_in_registration_order() {
    let bus = EventBus::new();
    let log = Log::default();
    for (name, millis) in [("first", 300), ("second", 100), ("third", 200)] {
        let log = log.clone();
        bus.on(move |_: OrderPlaced| {
            let log = log.clone();
            async move {
                log.push(format!("{name} started"));
                sleep(Duration::from_millis(millis)).await;
                log.push(format!("{name} done"));
            }
        })
        .detach();
    }

    let began = Instant::now();
    let report = bus.emit_serial(order(1)).await;

    assert_eq!(began.elapsed(), Duration::from_millis(600));
    assert!(report.is_ok());
    assert_eq!(
        log.entries(),
        [
            "first started",
            "first done",
            "second started",
            "second done",
            "third started",
            "third done"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_a_panicking_and_a_hanging_handler_do_not_affect_the_others() {
    let bus = EventBus::builder().handler_timeout(5 * SECOND).build();
    let finished = Arc::new(AtomicUsize::new(0));

    let done = Arc::clone(&finished);
    let before = bus.subscribe().name("before").on(move |_: OrderPlaced| {
        let done = Arc::clone(&done);
        async move {
            sleep(SECOND).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    });
    let failing = bus
        .subscribe()
        .name("failing")
        .on(|_: OrderPlaced| async { Err::<(), _>("inventory service unavailable") });
    let panicking = bus
        .subscribe()
        .name("panicking")
        .on(|event: OrderPlaced| async move {
            sleep(SECOND).await;
            if event.order_id > 0 {
                panic!("order {} is corrupt", event.order_id);
            }
        });
    let panicking_at_call = bus
        .subscribe()
        .name("panicking-at-call")
        .on(|_: OrderPlaced| -> std::future::Ready<()> { panic!("cannot even start") });
    let hanging = bus
        .subscribe()
        .name("hanging")
        .on(|_: OrderPlaced| pending::<()>());
    let done = Arc::clone(&finished);
    let after = bus.subscribe().name("after").on(move |_: OrderPlaced| {
        let done = Arc::clone(&done);
        async move {
            sleep(2 * SECOND).await;
            done.fetch_add(1, Ordering::SeqCst);
        }
    });

    let began = Instant::now();
    let report = bus.emit(order(7)).await;

    assert_eq!(began.elapsed(), 5 * SECOND, "the emit ends at the timeout");
    assert_eq!(
        finished.load(Ordering::SeqCst),
        2,
        "the healthy handlers ran"
    );
    assert!(!report.is_ok());
    assert_eq!(report.len(), 6);
    assert_eq!(report.called(), 6);
    assert_eq!(report.count(HandlerStatus::Ok), 2);
    assert_eq!(report.failures().count(), 4);

    let outcome = |subscription: &palisade_events::Subscription| {
        report.outcome(subscription.id()).unwrap().to_string()
    };
    assert_eq!(outcome(&before), "ok");
    assert_eq!(outcome(&failing), "failed: inventory service unavailable");
    assert_eq!(outcome(&panicking), "panicked: order 7 is corrupt");
    assert_eq!(outcome(&panicking_at_call), "panicked: cannot even start");
    assert_eq!(outcome(&hanging), "timed out after 5s");
    assert_eq!(outcome(&after), "ok");

    let names: Vec<_> = report.failures().map(|failure| failure.name()).collect();
    assert_eq!(
        names,
        ["failing", "panicking", "panicking-at-call", "hanging"],
        "failures in registration order"
    );

    // The bus is still healthy: the same handlers run again.
    let again = bus.emit(order(8)).await;
    assert_eq!(again.count(HandlerStatus::Ok), 2);
    assert_eq!(again.failures().count(), 4);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_handler_is_dropped() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let bus = EventBus::builder().handler_timeout(SECOND).build();
    let drops = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&drops);
    bus.on(move |_: OrderPlaced| {
        let guard = Dropped(Arc::clone(&counter));
        async move {
            let _guard = guard;
            pending::<()>().await;
        }
    })
    .detach();

    let report = bus.emit(order(1)).await;

    assert!(matches!(
        report.outcomes().next().unwrap().outcome(),
        HandlerOutcome::TimedOut(timeout) if *timeout == SECOND
    ));
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the future was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_subscription_timeout_overrides_the_bus_default() {
    let bus = EventBus::builder().handler_timeout(SECOND).build();
    let slow = |_: OrderPlaced| sleep(3 * SECOND);
    let default = bus.on(slow);
    let longer = bus.subscribe().timeout(10 * SECOND).on(slow);
    let unlimited = bus.subscribe().no_timeout().on(slow);

    let began = Instant::now();
    let report = bus.emit(order(1)).await;

    assert_eq!(began.elapsed(), 3 * SECOND);
    assert_eq!(
        report.outcome(default.id()).unwrap().status(),
        HandlerStatus::TimedOut
    );
    assert_eq!(
        report.outcome(longer.id()).unwrap().status(),
        HandlerStatus::Ok
    );
    assert_eq!(
        report.outcome(unlimited.id()).unwrap().status(),
        HandlerStatus::Ok
    );
}

#[tokio::test(start_paused = true)]
async fn in_a_serial_emit_each_handler_has_its_own_timeout() {
    let bus = EventBus::builder().handler_timeout(2 * SECOND).build();
    for _ in 0..3 {
        bus.on(|_: OrderPlaced| sleep(SECOND + SECOND / 2)).detach();
    }

    let began = Instant::now();
    let report = bus.emit_serial(order(1)).await;

    assert!(report.is_ok(), "1.5 s each, within 2 s each: {report:?}");
    assert_eq!(began.elapsed(), 4 * SECOND + SECOND / 2);
}

#[tokio::test(start_paused = true)]
async fn the_report_turns_into_an_error_listing_every_failure() {
    let bus = EventBus::new();
    bus.subscribe()
        .name("mailer")
        .on(|_: OrderPlaced| async { Err::<(), _>("smtp down") })
        .detach();
    bus.subscribe()
        .name("ledger")
        .on(|_: OrderPlaced| async { Err::<(), _>(std::io::Error::other("disk full")) })
        .detach();
    bus.on(|_: OrderPlaced| async {}).detach();

    let error = bus.emit(order(1)).await.into_result().unwrap_err();

    let message = error.to_string();
    assert!(
        message.starts_with("2 of 3 handlers of `order.placed` failed: mailer (#1): failed: smtp down; ledger (#2): failed: disk full"),
        "{message}"
    );
    let source = std::error::Error::source(&error).expect("the first error");
    assert_eq!(source.to_string(), "smtp down");
    assert_eq!(error.into_report().len(), 3);
}

#[tokio::test]
async fn an_event_without_handlers_gives_an_empty_report() {
    let bus = EventBus::new();
    let report = bus.emit(order(1)).await;
    assert!(report.is_empty());
    assert!(report.is_ok());
    assert_eq!(report.event(), "order.placed");
    assert!(report.into_result().is_ok());
}

#[tokio::test(start_paused = true)]
async fn dropping_an_emit_cancels_its_running_handlers() {
    let bus = EventBus::new();
    let log = Log::default();
    let entries = log.clone();
    bus.on(move |_: OrderPlaced| {
        let log = entries.clone();
        async move {
            log.push("started");
            sleep(10 * SECOND).await;
            log.push("finished");
        }
    })
    .detach();

    let outcome = tokio::time::timeout(SECOND, bus.emit(order(1))).await;
    assert!(outcome.is_err(), "the emit outlived the caller's timeout");
    sleep(20 * SECOND).await;
    assert_eq!(log.entries(), ["started"]);

    // The next emit runs the handler afresh.
    let report = bus.emit(order(2)).await;
    assert!(report.is_ok());
    assert_eq!(log.entries(), ["started", "started", "finished"]);
}

#[tokio::test(start_paused = true)]
async fn each_handler_gets_the_event() {
    let bus = EventBus::new();
    let seen = Log::default();
    for name in ["a", "b", "c"] {
        let seen = seen.clone();
        bus.on(move |event: OrderPlaced| {
            seen.push(format!("{name}:{}", event.order_id));
            async {}
        })
        .detach();
    }
    bus.emit(order(5)).await;
    bus.emit_serial(order(6)).await;
    assert_eq!(seen.entries(), ["a:5", "b:5", "c:5", "a:6", "b:6", "c:6"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emits_from_many_tasks_share_the_handlers() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    for _ in 0..4 {
        let calls = Arc::clone(&calls);
        bus.on(move |_: OrderPlaced| {
            let calls = Arc::clone(&calls);
            async move {
                tokio::task::yield_now().await;
                calls.fetch_add(1, Ordering::Relaxed);
            }
        })
        .detach();
    }
    let tasks: Vec<_> = (0..16)
        .map(|n| {
            let bus = bus.clone();
            tokio::spawn(async move {
                for i in 0..50 {
                    assert!(bus.emit(order(n * 100 + i)).await.is_ok());
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(calls.load(Ordering::Relaxed), 16 * 50 * 4);
}

#[test]
fn bus_types_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<EventBus>();
    send_sync::<palisade_events::Subscription>();
    send_sync::<palisade_events::EmitReport>();
    send_sync::<palisade_events::EmitError>();
    send_sync::<palisade_events::DeadLetter>();
    send_sync::<palisade_events::PublishError>();
    send::<palisade_events::Emit<'static, OrderPlaced>>();
}
