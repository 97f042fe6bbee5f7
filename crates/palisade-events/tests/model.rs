//! Property test: after any sequence of subscribes, unsubscribes and emits, each emit
//! reaches exactly the handlers a simple model says are subscribed to its type, in
//! registration order, and `once` handlers run once.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use palisade_events::{AnyEvent, EventBus, HandlerId, HandlerStatus, Subscription};
use palisade_testkit::alloc::now;
use proptest::prelude::*;
use support::{OrderCancelled, OrderPlaced};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Placed,
    Cancelled,
    Any,
}

#[derive(Debug, Clone)]
enum Op {
    Subscribe { target: Target, once: bool },
    Unsubscribe(usize),
    Emit { placed: bool, serial: bool },
}

fn op() -> impl Strategy<Value = Op> {
    let target = prop_oneof![
        Just(Target::Placed),
        Just(Target::Cancelled),
        Just(Target::Any)
    ];
    prop_oneof![
        (target, any::<bool>()).prop_map(|(target, once)| Op::Subscribe { target, once }),
        any::<usize>().prop_map(Op::Unsubscribe),
        (any::<bool>(), any::<bool>()).prop_map(|(placed, serial)| Op::Emit { placed, serial }),
    ]
}

struct Model {
    target: Target,
    once: bool,
}

proptest! {
    #[test]
    fn emits_reach_exactly_the_subscribed_handlers(ops in prop::collection::vec(op(), 1..60)) {
        let bus = EventBus::new();
        let calls: Arc<Mutex<Vec<HandlerId>>> = Arc::default();
        // Live subscriptions, by id, with what the model knows of them.
        let mut live: BTreeMap<HandlerId, (Subscription, Model)> = BTreeMap::new();

        for op in ops {
            match op {
                Op::Subscribe { target, once } => {
                    let calls = Arc::clone(&calls);
                    let id_cell: Arc<Mutex<Option<HandlerId>>> = Arc::default();
                    let id_seen = Arc::clone(&id_cell);
                    let record = move || {
                        let id = id_seen.lock().unwrap().expect("id set before any emit");
                        calls.lock().unwrap().push(id);
                    };
                    let mut subscribe = bus.subscribe();
                    if once {
                        subscribe = subscribe.once();
                    }
                    let subscription = match target {
                        Target::Placed => subscribe.on(move |_: OrderPlaced| {
                            record();
                            async {}
                        }),
                        Target::Cancelled => subscribe.on(move |_: OrderCancelled| {
                            record();
                            async {}
                        }),
                        Target::Any => subscribe.on_any(move |_: AnyEvent| {
                            record();
                            async {}
                        }),
                    };
                    *id_cell.lock().unwrap() = Some(subscription.id());
                    live.insert(subscription.id(), (subscription, Model { target, once }));
                }
                Op::Unsubscribe(pick) => {
                    if !live.is_empty() {
                        let id = *live.keys().nth(pick % live.len()).unwrap();
                        live.remove(&id);
                    }
                }
                Op::Emit { placed, serial } => {
                    let wanted = if placed { Target::Placed } else { Target::Cancelled };
                    let expected: Vec<HandlerId> = live
                        .iter()
                        .filter(|(_, (_, m))| m.target == wanted || m.target == Target::Any)
                        .map(|(id, _)| *id)
                        .collect();
                    calls.lock().unwrap().clear();
                    let report = match (placed, serial) {
                        (true, false) => now(bus.emit(OrderPlaced { order_id: 1 })),
                        (true, true) => now(bus.emit_serial(OrderPlaced { order_id: 1 })),
                        (false, false) => now(bus.emit(OrderCancelled { order_id: 1 })),
                        (false, true) => now(bus.emit_serial(OrderCancelled { order_id: 1 })),
                    };
                    prop_assert_eq!(&*calls.lock().unwrap(), &expected);
                    let reported: Vec<HandlerId> = report.outcomes().map(|o| o.id()).collect();
                    prop_assert_eq!(&reported, &expected);
                    prop_assert_eq!(report.count(HandlerStatus::Ok), expected.len());
                    // Fired `once` handlers are gone; their subscriptions say so.
                    for id in &expected {
                        if live[id].1.once {
                            prop_assert!(!live[id].0.is_active());
                            live.remove(id);
                        }
                    }
                }
            }
        }
    }
}
