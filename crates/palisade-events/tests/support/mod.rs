//! Events and helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use palisade_core::event::Listener;
use palisade_events::{BusEvent, Event};

#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlaced {
    pub order_id: u64,
}

impl Event for OrderPlaced {
    const NAME: &'static str = "order.placed";
}

#[derive(Debug, Clone, PartialEq)]
pub struct PaymentSucceeded {
    pub order_id: u64,
}

impl Event for PaymentSucceeded {
    const NAME: &'static str = "payment.succeeded";
}

#[derive(Debug, Clone, PartialEq)]
pub struct OrderCompleted {
    pub order_id: u64,
}

impl Event for OrderCompleted {
    const NAME: &'static str = "order.completed";
}

/// Shaped exactly like `OrderPlaced`, to prove delivery is by type.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderCancelled {
    pub order_id: u64,
}

impl Event for OrderCancelled {
    const NAME: &'static str = "order.cancelled";
}

/// A shared, ordered log of what happened.
#[derive(Clone, Default)]
pub struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub fn push(&self, entry: impl Into<String>) {
        self.0.lock().unwrap().push(entry.into());
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// Collects a bus's events.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<BusEvent>>>);

impl Events {
    pub fn all(&self) -> Vec<BusEvent> {
        self.0.lock().unwrap().clone()
    }

    pub fn kinds(&self) -> Vec<&'static str> {
        use palisade_core::event::Event as _;
        self.all().iter().map(|event| event.kind()).collect()
    }
}

impl Listener<BusEvent> for Events {
    fn on_event(&self, event: &BusEvent) {
        self.0.lock().unwrap().push(event.clone());
    }
}
