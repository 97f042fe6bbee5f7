//! `publish`: the bounded queue, back-pressure and overflow, the dispatcher, dead letters.

mod support;

use std::future::{Future, poll_fn};
use std::num::NonZeroUsize;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use palisade_core::Rejection;
use palisade_events::{BusEvent, DeadLetter, EventBus, HandlerStatus, PublishError, WhenFull};
use support::{Events, Log, OrderPlaced, PaymentSucceeded};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{Instant, sleep};

fn order(order_id: u64) -> OrderPlaced {
    OrderPlaced { order_id }
}

fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// Polls `future` once.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await
}

/// A handler that logs each order, signals `started`, and waits for a permit of `gate`.
fn gated_handler(bus: &EventBus, log: &Log, started: &Arc<Notify>, gate: &Arc<Semaphore>) {
    let (log, started, gate) = (log.clone(), Arc::clone(started), Arc::clone(gate));
    bus.on(move |event: OrderPlaced| {
        let (log, started, gate) = (log.clone(), Arc::clone(&started), Arc::clone(&gate));
        async move {
            started.notify_one();
            gate.acquire().await.unwrap().forget();
            log.push(format!("order {}", event.order_id));
        }
    })
    .detach();
}

#[tokio::test(start_paused = true)]
async fn published_events_are_dispatched_in_the_background_in_order() {
    let bus = EventBus::new();
    let log = Log::default();
    let entries = log.clone();
    bus.on(move |event: OrderPlaced| {
        let log = entries.clone();
        async move {
            sleep(Duration::from_millis(10)).await;
            log.push(format!("order {}", event.order_id));
        }
    })
    .detach();

    let began = Instant::now();
    for n in 1..=3 {
        bus.publish(order(n)).await.unwrap();
    }
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "publish does not wait for handlers"
    );
    assert_eq!(bus.queued(), 3);

    bus.flush().await;
    assert_eq!(log.entries(), ["order 1", "order 2", "order 3"]);
    assert_eq!(bus.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn publish_waits_for_room_when_the_queue_is_full() {
    let bus = EventBus::builder().queue_capacity(capacity(1)).build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Notify::new()),
        Arc::new(Semaphore::new(0)),
    );
    gated_handler(&bus, &log, &started, &gate);

    bus.publish(order(1)).await.unwrap();
    started.notified().await; // the dispatcher took order 1: the queue is empty
    bus.publish(order(2)).await.unwrap(); // fills the queue

    let mut third = pin!(bus.publish(order(3)));
    assert!(
        poll_once(third.as_mut()).await.is_pending(),
        "back-pressure"
    );

    gate.add_permits(1); // order 1 finishes; the dispatcher takes order 2
    third.await.unwrap();
    gate.add_permits(2);
    bus.flush().await;
    assert_eq!(log.entries(), ["order 1", "order 2", "order 3"]);
}

#[tokio::test(start_paused = true)]
async fn publish_fails_when_the_queue_is_full_and_configured_to_reject() {
    let events = Events::default();
    let bus = EventBus::builder()
        .queue_capacity(capacity(1))
        .when_full(WhenFull::Reject)
        .listener(events.clone())
        .build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Notify::new()),
        Arc::new(Semaphore::new(0)),
    );
    gated_handler(&bus, &log, &started, &gate);

    bus.publish(order(1)).await.unwrap();
    started.notified().await;
    bus.publish(order(2)).await.unwrap();
    let error = bus.publish(order(3)).await.unwrap_err();

    assert!(
        matches!(
            error,
            PublishError::QueueFull {
                event: "order.placed",
                capacity: 1,
                ..
            }
        ),
        "{error:?}"
    );
    assert_eq!(
        error.to_string(),
        "event queue full (1 events waiting); `order.placed` was not published"
    );
    assert!(
        matches!(Rejection::find(&error), Some(Rejection::Overloaded(_))),
        "recognised as the suite's Overloaded"
    );
    assert!(events.all().contains(&BusEvent::PublishRejected {
        event: "order.placed"
    }));

    gate.add_permits(2);
    bus.flush().await;
    assert_eq!(
        log.entries(),
        ["order 1", "order 2"],
        "the rejected event was not queued"
    );
}

#[tokio::test(start_paused = true)]
async fn try_publish_never_waits() {
    let bus = EventBus::builder().queue_capacity(capacity(1)).build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Notify::new()),
        Arc::new(Semaphore::new(0)),
    );
    gated_handler(&bus, &log, &started, &gate);

    bus.try_publish(order(1)).unwrap();
    started.notified().await;
    bus.try_publish(order(2)).unwrap();
    assert!(matches!(
        bus.try_publish(order(3)),
        Err(PublishError::QueueFull { .. })
    ));
    gate.add_permits(2);
    bus.flush().await;
}

#[tokio::test(start_paused = true)]
async fn failures_of_published_events_go_to_dead_letters_the_listener_and_the_report() {
    let events = Events::default();
    let letters: Arc<Mutex<Vec<DeadLetter>>> = Arc::default();
    let inbox = Arc::clone(&letters);
    let bus = EventBus::builder()
        .handler_timeout(Duration::from_secs(1))
        .listener(events.clone())
        .on_dead_letter(move |letter| inbox.lock().unwrap().push(letter))
        .build();
    bus.on(|event: OrderPlaced| async move {
        if event.order_id == 2 {
            Err("payment declined")
        } else {
            Ok(())
        }
    })
    .detach();
    bus.subscribe()
        .name("slow")
        .on(|event: OrderPlaced| async move {
            if event.order_id == 3 {
                sleep(Duration::from_secs(60)).await;
            }
        })
        .detach();

    for n in 1..=3 {
        bus.publish(order(n)).await.unwrap();
    }
    bus.flush().await;

    let letters = letters.lock().unwrap();
    assert_eq!(letters.len(), 2, "order 1 succeeded");
    assert_eq!(letters[0].event().downcast_ref(), Some(&order(2)));
    let failure = letters[0].report().failures().next().unwrap();
    assert_eq!(failure.outcome().to_string(), "failed: payment declined");
    assert_eq!(letters[1].event().name(), "order.placed");
    let failure = letters[1].report().failures().next().unwrap();
    assert_eq!(
        (failure.name(), failure.status()),
        ("slow", HandlerStatus::TimedOut)
    );

    let dead: Vec<_> = events
        .all()
        .into_iter()
        .filter(|event| matches!(event, BusEvent::DeadLetter { .. }))
        .collect();
    assert_eq!(dead.len(), 2);
    assert!(events.kinds().contains(&"handler_timed_out"));
}

#[tokio::test(start_paused = true)]
async fn a_panicking_dead_letter_callback_does_not_stop_the_dispatcher() {
    let bus = EventBus::builder()
        .on_dead_letter(|_| panic!("dead-letter store unavailable"))
        .build();
    let log = Log::default();
    let entries = log.clone();
    bus.on(move |event: OrderPlaced| {
        entries.push(format!("order {}", event.order_id));
        async { Err::<(), _>("always fails") }
    })
    .detach();

    bus.publish(order(1)).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    bus.flush().await;
    assert_eq!(log.entries(), ["order 1", "order 2"]);
}

#[tokio::test(start_paused = true)]
async fn dispatch_concurrency_lets_published_events_overlap() {
    let bus = EventBus::builder()
        .dispatch_concurrency(capacity(3))
        .build();
    bus.on(|_: OrderPlaced| sleep(Duration::from_secs(1)))
        .detach();

    let began = Instant::now();
    for n in 1..=3 {
        bus.publish(order(n)).await.unwrap();
    }
    bus.flush().await;
    assert_eq!(began.elapsed(), Duration::from_secs(1));
}

#[test]
fn publish_outside_a_runtime_is_an_error() {
    let bus = EventBus::new();
    assert!(matches!(
        bus.try_publish(order(1)),
        Err(PublishError::NoRuntime {
            event: "order.placed"
        })
    ));
    assert_eq!(bus.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn events_still_queued_when_the_bus_is_dropped_are_reported_lost() {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let listener = palisade_core::event::listener_fn(move |event: &BusEvent| {
        if let BusEvent::Lost { event } = event {
            let _ = sender.send(*event);
        }
    });
    let bus = EventBus::builder().listener(listener).build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Notify::new()),
        Arc::new(Semaphore::new(0)),
    );
    gated_handler(&bus, &log, &started, &gate);

    bus.publish(order(1)).await.unwrap();
    started.notified().await;
    bus.publish(order(2)).await.unwrap();
    bus.publish(order(3)).await.unwrap();
    drop(bus);
    gate.add_permits(3);

    assert_eq!(receiver.recv().await, Some("order.placed"));
    assert_eq!(receiver.recv().await, Some("order.placed"));
    assert_eq!(receiver.recv().await, None, "the dispatcher stopped");
    assert_eq!(
        log.entries(),
        ["order 1"],
        "the event in flight was delivered"
    );
}

/// Logs each order after a permit of `gate` and, for order 1 (or every order when
/// `every` is set), publishes its payment from inside the handler.
fn publishing_handler(
    bus: &EventBus,
    log: &Log,
    started: &Arc<Semaphore>,
    gate: &Arc<Semaphore>,
    every: bool,
) {
    let (next, entries, started, gate) = (
        bus.downgrade(),
        log.clone(),
        Arc::clone(started),
        Arc::clone(gate),
    );
    bus.on(move |event: OrderPlaced| {
        let (bus, log, started, gate) = (
            next.upgrade(),
            entries.clone(),
            Arc::clone(&started),
            Arc::clone(&gate),
        );
        async move {
            started.add_permits(1);
            gate.acquire().await.unwrap().forget();
            log.push(format!("order {}", event.order_id));
            if let Some(bus) = bus.filter(|_| every || event.order_id == 1) {
                bus.publish(PaymentSucceeded {
                    order_id: event.order_id,
                })
                .await?;
            }
            Ok::<_, PublishError>(())
        }
    })
    .detach();
    let log = log.clone();
    bus.on(move |event: PaymentSucceeded| {
        log.push(format!("payment {}", event.order_id));
        async {}
    })
    .detach();
}

#[tokio::test(start_paused = true)]
async fn a_handler_of_a_published_event_can_publish_while_the_queue_is_full() {
    let bus = EventBus::builder().queue_capacity(capacity(1)).build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Semaphore::new(0)),
        Arc::new(Semaphore::new(0)),
    );
    publishing_handler(&bus, &log, &started, &gate, false);

    bus.publish(order(1)).await.unwrap();
    started.acquire().await.unwrap().forget(); // the dispatcher runs order 1's handler
    bus.publish(order(2)).await.unwrap(); // fills the queue
    let mut third = pin!(bus.publish(order(3)));
    assert!(
        poll_once(third.as_mut()).await.is_pending(),
        "back-pressure"
    );

    // Order 1's handler publishes its payment while the queue is full: waiting for room
    // would wait for the dispatcher, which is busy running this very handler.
    gate.add_permits(10);
    let began = Instant::now();
    third.await.unwrap();
    bus.flush().await;
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "no handler waited for room (until its timeout)"
    );
    assert_eq!(
        log.entries(),
        ["order 1", "order 2", "payment 1", "order 3"],
        "dispatched in the order they were queued: the payment before order 3, \
         which was still waiting for room"
    );
    assert_eq!(bus.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn handlers_of_events_dispatched_concurrently_can_publish_while_the_queue_is_full() {
    let bus = EventBus::builder()
        .queue_capacity(capacity(1))
        .dispatch_concurrency(capacity(2))
        .build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Semaphore::new(0)),
        Arc::new(Semaphore::new(0)),
    );
    publishing_handler(&bus, &log, &started, &gate, true);

    bus.publish(order(1)).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    started.acquire_many(2).await.unwrap().forget(); // both in flight
    bus.publish(order(3)).await.unwrap(); // taken by the dispatcher, waiting for a turn
    bus.publish(order(4)).await.unwrap(); // fills the queue

    gate.add_permits(10);
    let began = Instant::now();
    bus.flush().await;
    assert_eq!(
        began.elapsed(),
        Duration::ZERO,
        "no handler waited for room (until its timeout)"
    );
    let mut entries = log.entries();
    entries.sort();
    assert_eq!(
        entries,
        [
            "order 1",
            "order 2",
            "order 3",
            "order 4",
            "payment 1",
            "payment 2",
            "payment 3",
            "payment 4"
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_listener_does_not_stop_the_dispatcher() {
    let panicked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let once = Arc::clone(&panicked);
    let listener = palisade_core::event::listener_fn(move |event: &BusEvent| {
        if matches!(event, BusEvent::Emitted { .. })
            && !once.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            panic!("metrics backend unavailable");
        }
    });
    let bus = EventBus::builder().listener(listener).build();
    let log = Log::default();
    let entries = log.clone();
    bus.on(move |event: OrderPlaced| {
        entries.push(format!("order {}", event.order_id));
        async {}
    })
    .detach();

    bus.publish(order(1)).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    let flushed = tokio::time::timeout(Duration::from_secs(60), bus.flush()).await;
    assert!(flushed.is_ok(), "flush hangs: the dispatcher died");
    assert!(panicked.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(log.entries(), ["order 1", "order 2"], "nothing lost");
    bus.publish(order(3))
        .await
        .expect("the dispatcher still runs");
    bus.flush().await;
    assert_eq!(log.len(), 3);
}

/// An event whose `Clone` panics: a panic in the dispatcher's own work, outside handlers.
#[derive(Debug)]
struct Fragile;

impl Clone for Fragile {
    fn clone(&self) -> Self {
        panic!("cannot clone a fragile event")
    }
}

impl palisade_events::Event for Fragile {
    const NAME: &'static str = "fragile";
}

#[tokio::test(start_paused = true)]
async fn a_panic_while_dispatching_is_reported_lost_and_the_dispatcher_keeps_going() {
    let events = Events::default();
    let bus = EventBus::builder().listener(events.clone()).build();
    // Two handlers: the emit clones the event for the first.
    for _ in 0..2 {
        bus.on(|_: Fragile| async {}).detach();
    }
    let log = Log::default();
    let entries = log.clone();
    bus.on(move |event: OrderPlaced| {
        entries.push(format!("order {}", event.order_id));
        async {}
    })
    .detach();

    bus.publish(Fragile).await.unwrap();
    bus.publish(order(2)).await.unwrap();
    let flushed = tokio::time::timeout(Duration::from_secs(60), bus.flush()).await;
    assert!(flushed.is_ok(), "flush hangs: the dispatcher died");
    assert!(events.all().contains(&BusEvent::Lost { event: "fragile" }));
    assert_eq!(log.entries(), ["order 2"]);
    assert_eq!(bus.queued(), 0);
}

#[test]
fn events_queued_when_the_dispatchers_runtime_shuts_down_are_reported_lost() {
    // One at a time (in the dispatcher task), and concurrently (in tasks of their own).
    for concurrency in [1, 3] {
        let events = Events::default();
        let bus = EventBus::builder()
            .dispatch_concurrency(capacity(concurrency))
            .listener(events.clone())
            .build();
        let (log, started, gate) = (
            Log::default(),
            Arc::new(Notify::new()),
            Arc::new(Semaphore::new(0)),
        );
        gated_handler(&bus, &log, &started, &gate);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            bus.publish(order(1)).await.unwrap();
            started.notified().await; // in flight
            bus.publish(order(2)).await.unwrap();
            bus.publish(order(3)).await.unwrap();
        });
        drop(runtime);

        let lost = events
            .all()
            .iter()
            .filter(|event| {
                **event
                    == BusEvent::Lost {
                        event: "order.placed",
                    }
            })
            .count();
        assert_eq!(lost, 3, "the one in flight and the two queued");
        assert_eq!(bus.queued(), 0, "flush does not wait for them");
        palisade_testkit::alloc::now(bus.flush());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime.block_on(bus.publish(order(4))).unwrap_err();
        assert!(matches!(error, PublishError::Closed { .. }), "{error:?}");
        assert!(log.entries().is_empty());
    }
}

#[tokio::test(start_paused = true)]
async fn a_handler_holding_a_weak_bus_lets_the_bus_go_and_queued_events_be_reported_lost() {
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
    let listener = palisade_core::event::listener_fn(move |event: &BusEvent| {
        if let BusEvent::Lost { event } = event {
            let _ = sender.send(*event);
        }
    });
    let bus = EventBus::builder().listener(listener).build();
    let (log, started, gate) = (
        Log::default(),
        Arc::new(Semaphore::new(0)),
        Arc::new(Semaphore::new(0)),
    );
    publishing_handler(&bus, &log, &started, &gate, true);

    bus.publish(order(1)).await.unwrap();
    started.acquire().await.unwrap().forget();
    bus.publish(order(2)).await.unwrap();
    let probe = bus.downgrade();
    drop(bus);
    assert!(
        probe.upgrade().is_some(),
        "order 1's dispatch holds the bus"
    );
    gate.add_permits(10);

    // Order 1's handler published payment 1 after order 2 was queued.
    assert_eq!(receiver.recv().await, Some("order.placed"), "order 2");
    assert_eq!(receiver.recv().await, Some("payment.succeeded"));
    assert_eq!(receiver.recv().await, None, "the dispatcher stopped");
    assert!(
        probe.upgrade().is_none(),
        "the handlers did not keep the bus alive"
    );
    assert_eq!(
        log.entries(),
        ["order 1"],
        "the event in flight was delivered"
    );
}
