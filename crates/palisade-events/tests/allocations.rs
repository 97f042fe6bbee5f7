//! An emit to handlers that finish without waiting allocates nothing.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

mod support;

use std::hint::black_box;

use palisade_events::EventBus;
use palisade_testkit::alloc::{CountingAllocator, allocations, now};
use support::OrderPlaced;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn emits_allocate_nothing(bus: &EventBus, serial: bool) {
    // Warm up: the first emit allocates the pooled slots.
    for order_id in 0..100 {
        let _ = now(bus.emit(OrderPlaced { order_id }));
    }
    let before = allocations();
    for order_id in 0..10_000 {
        let report = if serial {
            now(bus.emit_serial(OrderPlaced { order_id }))
        } else {
            now(bus.emit(OrderPlaced { order_id }))
        };
        assert!(report.is_ok());
        assert_eq!(report.len(), 4);
    }
    let allocated = allocations() - before;
    assert_eq!(allocated, 0, "10 000 emits allocated {allocated} times");
}

fn four_handlers(bus: &EventBus) {
    for _ in 0..4 {
        bus.on(|event: OrderPlaced| async move {
            black_box(event.order_id);
        })
        .detach();
    }
}

#[test]
fn emit_to_handlers_that_do_not_wait_allocates_nothing() {
    let bus = EventBus::new();
    four_handlers(&bus);
    emits_allocate_nothing(&bus, false);
    emits_allocate_nothing(&bus, true);
}

#[test]
fn emit_with_a_listener_allocates_nothing() {
    // The listener itself stores events; count only the bus's own allocations.
    let bus = EventBus::builder()
        .listener(palisade_core::event::listener_fn(
            |event: &palisade_events::BusEvent| {
                black_box(event);
            },
        ))
        .build();
    four_handlers(&bus);
    emits_allocate_nothing(&bus, false);
}

#[test]
fn service_handlers_that_do_not_wait_allocate_nothing() {
    let bus = EventBus::new();
    for _ in 0..4 {
        bus.on_service(tower::service_fn(|event: OrderPlaced| {
            black_box(event);
            std::future::ready(Ok::<(), std::convert::Infallible>(()))
        }))
        .detach();
    }
    emits_allocate_nothing(&bus, false);
}
