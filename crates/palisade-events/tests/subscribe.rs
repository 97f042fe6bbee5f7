//! Subscriptions: unsubscribe by drop and explicitly, during an emit, `once`, `on_any`,
//! delivery by type, nested emits.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_events::{AnyEvent, EventBus, HandlerOutcome, HandlerStatus, Subscription};
use support::{Log, OrderCancelled, OrderCompleted, OrderPlaced, PaymentSucceeded};
use tokio::sync::Notify;
use tokio::time::sleep;

fn counter(bus: &EventBus) -> (Subscription, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let subscription = bus.on(move |_: OrderPlaced| {
        count.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    (subscription, calls)
}

fn order(order_id: u64) -> OrderPlaced {
    OrderPlaced { order_id }
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let bus = EventBus::new();
    let (subscription, calls) = counter(&bus);
    bus.emit(order(1)).await;
    drop(subscription);
    let report = bus.emit(order(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(report.is_empty());
    assert_eq!(bus.handler_count::<OrderPlaced>(), 0);
}

#[tokio::test]
async fn unsubscribe_removes_the_handler() {
    let bus = EventBus::new();
    let (subscription, calls) = counter(&bus);
    let (_other, other_calls) = counter(&bus);
    assert!(subscription.is_active());
    subscription.unsubscribe();
    bus.emit(order(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    assert_eq!(other_calls.load(Ordering::SeqCst), 1);
    assert_eq!(bus.handler_count::<OrderPlaced>(), 1);
}

#[tokio::test]
async fn a_detached_subscription_keeps_its_handler() {
    let bus = EventBus::new();
    let (subscription, calls) = counter(&bus);
    subscription.detach();
    bus.emit(order(1)).await;
    bus.emit(order(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unsubscribing_during_a_serial_emit_skips_the_handler_if_not_yet_called() {
    let bus = EventBus::new();
    let victim: Arc<Mutex<Option<Subscription>>> = Arc::default();
    let slot = Arc::clone(&victim);
    let first = bus.on(move |_: OrderPlaced| {
        // Unsubscribes the handler registered after this one.
        drop(slot.lock().unwrap().take());
        async {}
    });
    let (second, calls) = counter(&bus);
    let second_id = second.id();
    *victim.lock().unwrap() = Some(second);

    let report = bus.emit_serial(order(1)).await;

    assert_eq!(calls.load(Ordering::SeqCst), 0, "never called");
    assert_eq!(report.len(), 2, "it was subscribed when the emit began");
    assert_eq!(report.called(), 1);
    assert!(matches!(
        report.outcome(second_id),
        Some(HandlerOutcome::Unsubscribed)
    ));
    assert!(report.is_ok(), "being unsubscribed is not a failure");
    assert_eq!(bus.handler_count::<OrderPlaced>(), 1);
    drop(first);
}

#[tokio::test(start_paused = true)]
async fn unsubscribing_a_running_handler_lets_its_call_finish() {
    let bus = EventBus::new();
    let log = Log::default();
    let entries = log.clone();
    let running = bus.on(move |_: OrderPlaced| {
        let log = entries.clone();
        async move {
            sleep(Duration::from_secs(1)).await;
            log.push("slow handler finished");
        }
    });
    let running = Arc::new(Mutex::new(Some(running)));
    let slot = Arc::clone(&running);
    bus.on(move |_: OrderPlaced| {
        let slot = Arc::clone(&slot);
        async move {
            sleep(Duration::from_millis(100)).await;
            drop(slot.lock().unwrap().take());
        }
    })
    .detach();

    let report = bus.emit(order(1)).await;

    assert!(report.is_ok());
    assert_eq!(report.count(HandlerStatus::Ok), 2);
    assert_eq!(log.entries(), ["slow handler finished"]);
    assert_eq!(bus.handler_count::<OrderPlaced>(), 1);
}

#[tokio::test]
async fn a_handler_can_unsubscribe_itself() {
    let bus = EventBus::new();
    let own: Arc<Mutex<Option<Subscription>>> = Arc::default();
    let slot = Arc::clone(&own);
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let subscription = bus.on(move |_: OrderPlaced| {
        count.fetch_add(1, Ordering::SeqCst);
        drop(slot.lock().unwrap().take());
        async {}
    });
    *own.lock().unwrap() = Some(subscription);

    assert!(bus.emit(order(1)).await.is_ok());
    assert!(bus.emit(order(2)).await.is_empty());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_subscription_dropped_after_the_bus_is_harmless() {
    let bus = EventBus::new();
    let (subscription, _) = counter(&bus);
    drop(bus);
    drop(subscription);
}

#[tokio::test]
async fn no_event_reaches_a_handler_of_another_type() {
    let bus = EventBus::new();
    let log = Log::default();
    let (placed, cancelled) = (log.clone(), log.clone());
    bus.on(move |event: OrderPlaced| {
        placed.push(format!("placed {}", event.order_id));
        async {}
    })
    .detach();
    bus.on(move |event: OrderCancelled| {
        cancelled.push(format!("cancelled {}", event.order_id));
        async {}
    })
    .detach();

    let report = bus.emit(order(1)).await;
    assert_eq!(report.len(), 1);
    bus.emit(OrderCancelled { order_id: 2 }).await;
    let report = bus.emit(OrderCompleted { order_id: 3 }).await;
    assert!(report.is_empty());

    assert_eq!(log.entries(), ["placed 1", "cancelled 2"]);
}

#[tokio::test]
async fn a_handler_may_emit_further_events() {
    // The patterns document's flow: payment succeeded -> order completed.
    let bus = EventBus::new();
    let log = Log::default();
    let next = bus.clone();
    let entries = log.clone();
    bus.on(move |payment: PaymentSucceeded| {
        let bus = next.clone();
        let log = entries.clone();
        async move {
            log.push("payment handled");
            let report = bus
                .emit(OrderCompleted {
                    order_id: payment.order_id,
                })
                .await;
            log.push(format!("completion reached {} handlers", report.len()));
            report.into_result().map(drop)
        }
    })
    .detach();
    let entries = log.clone();
    bus.on(move |done: OrderCompleted| {
        entries.push(format!("order {} completed", done.order_id));
        async {}
    })
    .detach();

    let report = bus.emit(PaymentSucceeded { order_id: 9 }).await;

    assert!(report.is_ok());
    assert_eq!(
        log.entries(),
        [
            "payment handled",
            "order 9 completed",
            "completion reached 1 handlers"
        ]
    );
}

#[tokio::test]
async fn a_handler_may_emit_its_own_event_type_and_subscribe_during_an_emit() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let (inner_bus, count) = (bus.clone(), Arc::clone(&calls));
    bus.on(move |event: OrderPlaced| {
        let bus = inner_bus.clone();
        let count = Arc::clone(&count);
        async move {
            count.fetch_add(1, Ordering::SeqCst);
            if event.order_id < 3 {
                // Recursion through the same snapshot, and a subscription meanwhile.
                bus.on(|_: OrderCompleted| async {}).detach();
                Box::pin(bus.emit(order(event.order_id + 1))).await;
            }
        }
    })
    .detach();

    bus.emit(order(0)).await;

    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(bus.handler_count::<OrderCompleted>(), 3);
}

#[tokio::test]
async fn a_once_handler_runs_once() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let subscription = bus.once(move |_: OrderPlaced| {
        count.fetch_add(1, Ordering::SeqCst);
        async {}
    });
    assert!(subscription.is_active());
    bus.emit(order(1)).await;
    assert!(!subscription.is_active());
    bus.emit(order(2)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(bus.handler_count::<OrderPlaced>(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_once_handler_runs_once_even_with_concurrent_emits() {
    let bus = EventBus::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&calls);
    let gate = Arc::new(Notify::new());
    let wait = Arc::clone(&gate);
    bus.subscribe()
        .once()
        .on(move |_: OrderPlaced| {
            count.fetch_add(1, Ordering::SeqCst);
            let wait = Arc::clone(&wait);
            async move { wait.notified().await }
        })
        .detach();

    // Both emits start while the handler is subscribed; only one may call it.
    let first = bus.emit(order(1));
    let second = bus.emit(order(2));
    let releaser = async {
        sleep(Duration::from_millis(10)).await;
        gate.notify_waiters();
    };
    let (first, second, ()) = tokio::join!(first, second, releaser);

    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let statuses =
        [first.outcomes().next(), second.outcomes().next()].map(|report| report.unwrap().status());
    assert!(
        statuses == [HandlerStatus::Ok, HandlerStatus::Unsubscribed],
        "{statuses:?}"
    );
}

#[tokio::test]
async fn on_any_sees_every_event_with_its_name() {
    let bus = EventBus::new();
    let log = Log::default();
    let entries = log.clone();
    bus.on_any(move |event: AnyEvent| {
        let detail = match event.downcast_ref::<OrderPlaced>() {
            Some(order) => format!("{} #{}", event.name(), order.order_id),
            None => event.name().to_owned(),
        };
        entries.push(detail);
        async {}
    })
    .detach();
    let (_typed, typed_calls) = counter(&bus);

    let report = bus.emit(order(4)).await;
    assert_eq!(report.len(), 2, "typed and any handlers in one report");
    bus.emit(OrderCancelled { order_id: 5 }).await;

    assert_eq!(log.entries(), ["order.placed #4", "order.cancelled"]);
    assert_eq!(typed_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn on_any_handlers_keep_registration_order_with_typed_ones() {
    let bus = EventBus::new();
    let log = Log::default();
    let (a, b, c) = (log.clone(), log.clone(), log.clone());
    let _first = bus.on(move |_: OrderPlaced| {
        a.push("typed 1");
        async {}
    });
    let any = bus.on_any(move |_: AnyEvent| {
        b.push("any");
        async {}
    });
    let _third = bus.on(move |_: OrderPlaced| {
        c.push("typed 2");
        async {}
    });

    bus.emit_serial(order(1)).await;
    assert_eq!(log.entries(), ["typed 1", "any", "typed 2"]);

    drop(any);
    assert_eq!(bus.handler_count::<OrderPlaced>(), 2);
    assert_eq!(bus.handler_count::<OrderCancelled>(), 0);
}

#[test]
fn the_subscribe_builder_names_handlers() {
    let bus = EventBus::new();
    let named = bus.subscribe().name("mailer").on(|_: OrderPlaced| async {});
    let unnamed = bus.on(|_: OrderPlaced| async {});
    let report = futures_now(bus.emit(order(1)));
    let names: Vec<_> = report.outcomes().map(|o| o.name().to_owned()).collect();
    assert_eq!(names[0], "mailer");
    assert!(names[1].contains("{{closure}}"), "{}", names[1]);
    assert!(named.id() < unnamed.id());
}

/// Handlers that never wait: one poll completes the emit, outside any runtime.
fn futures_now<F: std::future::Future>(future: F) -> F::Output {
    palisade_testkit::alloc::now(future)
}
