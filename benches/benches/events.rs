//! The event bus's `emit` beside a `tokio::sync::broadcast` fan-out of the same event to as
//! many receivers: 1, 4 and 16 handlers.
//!
//! Handlers finish without waiting, so each emit completes in one poll (no runtime is
//! measured). The broadcast side sends the event once and takes it off every receiver
//! (`try_recv`, a clone each), which is what a broadcast-based bus does per event before it
//! calls anything.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use palisade_events::{Event, EventBus, Subscription};
use tokio::sync::broadcast;

#[derive(Debug, Clone)]
struct Tick(u64);

impl Event for Tick {
    const NAME: &'static str = "tick";
}

fn bus_with(handlers: usize) -> (EventBus, Vec<Subscription>) {
    let bus = EventBus::new();
    let subscriptions = (0..handlers)
        .map(|_| {
            bus.on(|tick: Tick| async move {
                black_box(tick.0);
            })
        })
        .collect();
    (bus, subscriptions)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("events/fanout");
    group.throughput(Throughput::Elements(1));
    for handlers in [1, 4, 16] {
        let (bus, _subscriptions) = bus_with(handlers);
        let report = bus
            .emit(Tick(0))
            .now_or_never()
            .expect("handlers never wait");
        assert!(report.is_ok() && report.len() == handlers);

        let mut n = 0u64;
        group.bench_function(format!("palisade/emit/{handlers}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                black_box(bus.emit(Tick(black_box(n))).now_or_never())
            })
        });
        group.bench_function(format!("palisade/emit_serial/{handlers}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                black_box(bus.emit_serial(Tick(black_box(n))).now_or_never())
            })
        });

        let (sender, _) = broadcast::channel::<Tick>(16);
        let mut receivers: Vec<_> = (0..handlers).map(|_| sender.subscribe()).collect();
        group.bench_function(format!("tokio/broadcast/{handlers}"), |b| {
            b.iter(|| {
                n = n.wrapping_add(1);
                sender.send(Tick(black_box(n))).expect("receivers alive");
                for receiver in &mut receivers {
                    black_box(receiver.try_recv().expect("just sent").0);
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, fanout);
criterion_main!(benches);
