//! Reading and steering a breaker at runtime.

use std::sync::Arc;

use crate::event::State;
use crate::state::{Control, Metrics};

/// Reads a breaker's state and window, and forces or resets its state at runtime (from an
/// admin endpoint, a feature flag, a test). Cheap to clone; every clone steers the same
/// breaker. Get one from [`CircuitBreakerLayer::handle`](crate::CircuitBreakerLayer::handle).
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    breaker: Arc<dyn Control>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(breaker: Arc<dyn Control>) -> Self {
        Self { breaker }
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.breaker.name()
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.breaker.state()
    }

    /// The window's counts and the rejections so far.
    pub fn metrics(&self) -> Metrics {
        self.breaker.metrics()
    }

    /// Rejects every call until another method of the handle changes the state.
    pub fn force_open(&self) {
        self.breaker.set(State::ForcedOpen);
    }

    /// Lets every call through and records nothing, until the state is changed again.
    pub fn disable(&self) {
        self.breaker.set(State::Disabled);
    }

    /// Lets every call through and records outcomes (readable through
    /// [`metrics`](Self::metrics)), but never trips.
    pub fn metrics_only(&self) {
        self.breaker.set(State::MetricsOnly);
    }

    /// Closes the breaker with an empty window and a restarted open-wait backoff, from any
    /// state (also ends a forced state).
    pub fn reset(&self) {
        self.breaker.set(State::Closed);
    }

    /// Opens the breaker now, as if it had tripped: it waits its next open-wait delay, then
    /// probes as usual.
    pub fn trip(&self) {
        self.breaker.set(State::Open);
    }
}

impl std::fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}
