//! What a breaker reports to its [`Listener`](palisade_core::Listener).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::{Event, Reading};

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum State {
    /// Calls go through; outcomes are recorded and may trip the breaker.
    Closed,
    /// Calls are rejected with [`CircuitOpen`](crate::CircuitOpen) until the wait is over.
    Open,
    /// A few probe calls go through; their outcomes close or reopen the breaker.
    HalfOpen,
    /// Forced open by a [handle](crate::CircuitBreakerHandle): every call is rejected until
    /// the handle changes the state.
    ForcedOpen,
    /// Disabled by a handle: every call goes through and nothing is recorded.
    Disabled,
    /// Every call goes through and outcomes are recorded, but the breaker never trips.
    MetricsOnly,
}

impl State {
    /// A stable number for gauges: closed 0, open 1, half-open 2, forced-open 3, disabled 4,
    /// metrics-only 5.
    pub const fn as_gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::Open => 1.0,
            State::HalfOpen => 2.0,
            State::ForcedOpen => 3.0,
            State::Disabled => 4.0,
            State::MetricsOnly => 5.0,
        }
    }

    /// The state's snake_case name: `"closed"`, `"open"`, `"half_open"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::Disabled => "disabled",
            State::MetricsOnly => "metrics_only",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a breaker reports. Per-call successes are not reported: they are counted in the
/// window, which a [handle](crate::CircuitBreakerHandle) reads.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BreakerEvent {
    /// The breaker moved from one state to another.
    StateChanged {
        /// The breaker's name.
        name: Arc<str>,
        /// The state it left.
        from: State,
        /// The state it entered.
        to: State,
        /// For a move to [`State::Open`]: how long it stays open.
        open_for: Option<Duration>,
    },
    /// A call was rejected without reaching the service.
    Rejected {
        /// The breaker's name.
        name: Arc<str>,
        /// The state that rejected it.
        state: State,
        /// The retry-after the rejection carried.
        retry_after: Duration,
    },
}

impl Event for BreakerEvent {
    fn component(&self) -> &'static str {
        "breaker"
    }

    fn kind(&self) -> &'static str {
        match self {
            BreakerEvent::StateChanged { .. } => "state_changed",
            BreakerEvent::Rejected { .. } => "rejected",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        if let BreakerEvent::StateChanged { to, .. } = self {
            record(Reading::gauge("palisade_breaker_state", to.as_gauge()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_themselves_for_metrics_and_state_changes_carry_the_state_gauge() {
        let name: Arc<str> = Arc::from("payments");
        let opened = BreakerEvent::StateChanged {
            name: Arc::clone(&name),
            from: State::Closed,
            to: State::Open,
            open_for: Some(Duration::from_secs(5)),
        };
        let rejected = BreakerEvent::Rejected {
            name,
            state: State::Open,
            retry_after: Duration::from_secs(5),
        };
        assert_eq!(
            (opened.component(), opened.kind()),
            ("breaker", "state_changed")
        );
        assert_eq!(rejected.kind(), "rejected");

        let mut readings = Vec::new();
        opened.readings(&mut |r| readings.push((r.name(), r.value())));
        assert_eq!(readings, [("palisade_breaker_state", 1.0)]);
        rejected.readings(&mut |_| panic!("a rejection carries no reading"));

        let gauges: Vec<f64> = [
            State::Closed,
            State::Open,
            State::HalfOpen,
            State::ForcedOpen,
            State::Disabled,
            State::MetricsOnly,
        ]
        .map(State::as_gauge)
        .to_vec();
        assert_eq!(gauges, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
}
