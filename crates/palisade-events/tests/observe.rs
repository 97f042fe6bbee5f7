//! What a bus reports: listener events (with handler latency) and tracing.

mod support;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::event::{Event as _, Reading};
use palisade_events::{BusEvent, EventBus, HandlerStatus};
use support::{Events, OrderPlaced};
use tokio::time::sleep;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

#[tokio::test(start_paused = true)]
async fn the_listener_hears_each_emit_and_each_handlers_outcome_and_latency() {
    let events = Events::default();
    let bus = EventBus::builder()
        .handler_timeout(Duration::from_secs(2))
        .listener(events.clone())
        .build();
    let quick = bus.subscribe().name("quick").on(|_: OrderPlaced| async {});
    let slow = bus
        .subscribe()
        .name("slow")
        .on(|_: OrderPlaced| sleep(Duration::from_millis(250)));
    let failing = bus
        .subscribe()
        .name("failing")
        .on(|_: OrderPlaced| async { Err::<(), _>("no") });
    let hanging = bus
        .subscribe()
        .name("hanging")
        .on(|_: OrderPlaced| std::future::pending::<()>());

    bus.emit(OrderPlaced { order_id: 1 }).await;

    let all = events.all();
    assert_eq!(
        all[0],
        BusEvent::Emitted {
            event: "order.placed",
            handlers: 4
        }
    );
    let finished = |id| {
        all.iter()
            .find_map(|event| match event {
                BusEvent::HandlerFinished {
                    handler,
                    status,
                    latency,
                    name,
                    ..
                } if *handler == id => Some((name.to_string(), *status, *latency)),
                _ => None,
            })
            .unwrap()
    };
    let ms = Duration::from_millis;
    assert_eq!(
        finished(quick.id()),
        ("quick".into(), HandlerStatus::Ok, ms(0))
    );
    assert_eq!(
        finished(slow.id()),
        ("slow".into(), HandlerStatus::Ok, ms(250))
    );
    assert_eq!(
        finished(failing.id()),
        ("failing".into(), HandlerStatus::Failed, ms(0))
    );
    assert_eq!(
        finished(hanging.id()),
        ("hanging".into(), HandlerStatus::TimedOut, ms(2000))
    );
    assert_eq!(all.len(), 5);
}

#[tokio::test(start_paused = true)]
async fn each_handlers_latency_is_its_own_call_also_in_a_serial_emit() {
    let events = Events::default();
    let bus = EventBus::builder().listener(events.clone()).build();
    for ms in [100, 200, 300] {
        bus.on(move |_: OrderPlaced| sleep(Duration::from_millis(ms)))
            .detach();
    }

    bus.emit_serial(OrderPlaced { order_id: 1 }).await;
    bus.emit(OrderPlaced { order_id: 2 }).await;

    let latencies: Vec<_> = events
        .all()
        .into_iter()
        .filter_map(|event| match event {
            BusEvent::HandlerFinished { latency, .. } => Some(latency.as_millis()),
            _ => None,
        })
        .collect();
    assert_eq!(
        latencies,
        [100, 200, 300, 100, 200, 300],
        "serially, then concurrently: not counted from the start of the emit"
    );
}

#[test]
fn bus_events_name_themselves_for_metrics() {
    let finished = BusEvent::HandlerFinished {
        event: "order.placed",
        handler: EventBus::new().on(|_: OrderPlaced| async {}).id(),
        name: Arc::from("mailer"),
        status: HandlerStatus::TimedOut,
        latency: Duration::from_millis(1500),
    };
    assert_eq!(
        (finished.component(), finished.kind()),
        ("events", "handler_timed_out")
    );
    let mut readings = Vec::new();
    finished.readings(&mut |r: Reading| readings.push((r.name(), r.value())));
    assert_eq!(readings, [("palisade_events_handler_seconds", 1.5)]);

    let published = BusEvent::Published {
        event: "order.placed",
        queued: 3,
    };
    let mut readings = Vec::new();
    published.readings(&mut |r: Reading| readings.push((r.name(), r.value())));
    assert_eq!(readings, [("palisade_events_queue_depth", 3.0)]);

    let kinds = [
        BusEvent::Emitted {
            event: "e",
            handlers: 1,
        },
        BusEvent::PublishRejected { event: "e" },
        BusEvent::DeadLetter {
            event: "e",
            failures: 1,
        },
        BusEvent::Lost { event: "e" },
    ]
    .map(|event| event.kind());
    assert_eq!(
        kinds,
        ["emitted", "publish_rejected", "dead_letter", "lost"]
    );
}

/// An event's fields, and the span it happened in.
type Message = (Option<String>, String);

/// Records span names and event messages with their span.
#[derive(Clone, Default)]
struct Recorder {
    next_id: Arc<AtomicU64>,
    spans: Arc<Mutex<Vec<(u64, String)>>>,
    current: Arc<Mutex<Vec<u64>>>,
    messages: Arc<Mutex<Vec<Message>>>,
}

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _metadata: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = Fields(format!("{} ", span.metadata().name()));
        span.record(&mut fields);
        self.spans.lock().unwrap().push((id, fields.0));
        Id::from_u64(id)
    }
    fn record(&self, _span: &Id, _values: &Record<'_>) {}
    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let current = self.current.lock().unwrap().last().copied();
        let span = current.and_then(|id| {
            let spans = self.spans.lock().unwrap();
            spans
                .iter()
                .find(|(i, _)| *i == id)
                .map(|(_, name)| name.clone())
        });
        self.messages.lock().unwrap().push((span, fields.0));
    }
    fn enter(&self, span: &Id) {
        self.current.lock().unwrap().push(span.into_u64());
    }
    fn exit(&self, _span: &Id) {
        self.current.lock().unwrap().pop();
    }
}

#[test]
fn each_emit_runs_in_a_span_and_failures_are_logged_in_it() {
    let recorder = Recorder::default();
    let bus = EventBus::new();
    bus.subscribe()
        .name("mailer")
        .on(|_: OrderPlaced| async { Err::<(), _>("smtp down") })
        .detach();

    tracing::subscriber::with_default(recorder.clone(), || {
        palisade_testkit::alloc::now(bus.emit(OrderPlaced { order_id: 1 }));
    });

    let spans = recorder.spans.lock().unwrap();
    assert!(
        spans
            .iter()
            .any(|(_, span)| span.starts_with("emit event=\"order.placed\" handlers=1")),
        "{spans:?}"
    );
    let messages = recorder.messages.lock().unwrap();
    let failure = messages
        .iter()
        .find(|(_, message)| message.contains("event handler failed"))
        .expect("a warning for the failure");
    assert!(
        failure.0.as_deref().unwrap().starts_with("emit "),
        "{failure:?}"
    );
    assert!(failure.1.contains("name=\"mailer\""), "{failure:?}");
    assert!(failure.1.contains("error=smtp down"), "{failure:?}");
}
