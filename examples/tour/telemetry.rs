//! What the gateway's layers report while the load runs, gathered from their listeners.
//!
//! Every number the load table and the report show comes from here, from the layers'
//! handles, or from the responses the load driver received.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use palisade::breaker::{BreakerEvent, State};
use palisade::pool::PoolEvent;
use palisade::rate_limit::RateLimitEvent;
use palisade::retry::RetryEvent;
use tokio::time::Instant;

/// Which of the two breakers an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Breaker {
    /// The server-side breaker around the gateway's handler.
    Gateway,
    /// The client-side breaker around calls to the upstream.
    Upstream,
}

impl Breaker {
    /// Its name in tables.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Breaker::Gateway => "gateway",
            Breaker::Upstream => "upstream",
        }
    }
}

/// A breaker's state change, timed from the start of the load.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Transition {
    /// When, from the start of the load (zero for changes before it).
    pub(crate) at: Duration,
    /// Which breaker.
    pub(crate) breaker: Breaker,
    /// The state it entered.
    pub(crate) to: State,
}

/// Counters and records fed by the layers' listeners.
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    epoch: OnceLock<Instant>,
    transitions: Mutex<Vec<Transition>>,
    peak_in_flight: AtomicU32,
    peak_queued: AtomicUsize,
    /// Requests the gateway's per-client rate limit refused.
    pub(crate) limited: AtomicU64,
    /// Requests the gateway's pool shed (queue full or waited too long).
    pub(crate) shed: AtomicU64,
    /// Requests a breaker refused, per breaker (gateway, upstream).
    pub(crate) breaker_rejections: [AtomicU64; 2],
    /// Retries the client stack made.
    pub(crate) retries: AtomicU64,
    /// Retries the budget refused.
    pub(crate) budget_exhausted: AtomicU64,
}

impl Telemetry {
    /// Starts the clock transitions are timed by.
    pub(crate) fn start(&self, at: Instant) {
        let _ = self.epoch.set(at);
    }

    fn since_start(&self) -> Duration {
        self.epoch
            .get()
            .map_or(Duration::ZERO, |epoch| epoch.elapsed())
    }

    /// The listener of breaker `which`.
    pub(crate) fn on_breaker(&self, which: Breaker, event: &BreakerEvent) {
        match event {
            BreakerEvent::StateChanged { to, .. } => {
                let transition = Transition {
                    at: self.since_start(),
                    breaker: which,
                    to: *to,
                };
                self.transitions
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(transition);
            }
            BreakerEvent::Rejected { .. } => {
                let index = usize::from(which == Breaker::Upstream);
                self.breaker_rejections[index].fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The listener of the gateway's pool.
    pub(crate) fn on_pool(&self, event: &PoolEvent) {
        match event {
            PoolEvent::Admitted { in_flight, .. } => {
                self.peak_in_flight.fetch_max(*in_flight, Ordering::Relaxed);
            }
            PoolEvent::Queued { queued, .. } => {
                self.peak_queued.fetch_max(*queued, Ordering::Relaxed);
            }
            PoolEvent::Shed { .. } => {
                self.shed.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The listener of the gateway's per-client rate limit.
    pub(crate) fn on_rate_limit(&self, event: &RateLimitEvent) {
        if let RateLimitEvent::Rejected { .. } = event {
            self.limited.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The listener of the client stack's retry layer.
    pub(crate) fn on_retry(&self, event: &RetryEvent) {
        match event {
            RetryEvent::Retrying { .. } => {
                self.retries.fetch_add(1, Ordering::Relaxed);
            }
            RetryEvent::BudgetExhausted { .. } => {
                self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// The pool's highest in-flight and queued counts since the last call, then resets them.
    pub(crate) fn take_pool_peaks(&self, in_flight_now: u32, queued_now: usize) -> (u32, usize) {
        let in_flight = self.peak_in_flight.swap(in_flight_now, Ordering::Relaxed);
        let queued = self.peak_queued.swap(queued_now, Ordering::Relaxed);
        (in_flight.max(in_flight_now), queued.max(queued_now))
    }

    /// Every breaker transition so far, in order.
    pub(crate) fn transitions(&self) -> Vec<Transition> {
        self.transitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
