//! Helpers shared by the integration tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use palisade_core::BoxError;
use palisade_core::event::Listener;
use palisade_retry::RetryEvent;
use tokio::time::Instant;

/// Records when each call started, under tokio's (paused) clock.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Instant>>>);

impl Calls {
    pub fn record(&self) -> usize {
        let mut calls = self.0.lock().unwrap();
        calls.push(Instant::now());
        calls.len()
    }

    pub fn count(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn times(&self) -> Vec<Instant> {
        self.0.lock().unwrap().clone()
    }

    /// The gaps between consecutive calls.
    pub fn gaps(&self) -> Vec<std::time::Duration> {
        self.times().windows(2).map(|w| w[1] - w[0]).collect()
    }
}

/// Collects a layer's events.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<RetryEvent>>>);

impl Events {
    pub fn all(&self) -> Vec<RetryEvent> {
        self.0.lock().unwrap().clone()
    }
}

impl Listener<RetryEvent> for Events {
    fn on_event(&self, event: &RetryEvent) {
        self.0.lock().unwrap().push(*event);
    }
}

pub fn boxed(message: &'static str) -> BoxError {
    message.into()
}
