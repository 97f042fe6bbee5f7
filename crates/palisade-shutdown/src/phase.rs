//! The phases of a shutdown.

use std::fmt;

/// Where a [`Shutdown`](crate::Shutdown) is in its sequence.
///
/// A shutdown moves through every phase once, in this order (`Phase` is ordered the same
/// way, so `phase >= Phase::Draining` reads "draining or later"):
///
/// | phase | what happens |
/// |---|---|
/// | [`Running`](Phase::Running) | not triggered: health is `200`, requests go through |
/// | [`Unhealthy`](Phase::Unhealthy) | triggered: health answers `503` from this instant |
/// | [`Grace`](Phase::Grace) | the optional grace delay, so load balancers notice and stop sending traffic; requests are still served |
/// | [`StopAccepting`](Phase::StopAccepting) | servers stop accepting new connections |
/// | [`Draining`](Phase::Draining) | long-lived work is told to stop; in-flight requests and registered work are waited for, up to the drain deadline |
/// | [`Cancelling`](Phase::Cancelling) | what remains is cancelled and given a short while to unwind; new requests are rejected |
/// | [`Hooks`](Phase::Hooks) | cleanup hooks run in order, each with its own timeout |
/// | [`Done`](Phase::Done) | the [report](crate::ShutdownReport) is ready |
///
/// A phase with nothing to do (no grace delay, nothing to cancel) is passed through at once;
/// [events](crate::ShutdownEvent) report every phase, a [`watch`](tokio::sync::watch)
/// receiver may see only the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Phase {
    /// Not shutting down.
    Running = 0,
    /// Triggered: the health endpoint answers `503` from now on.
    Unhealthy = 1,
    /// Waiting the grace delay so load balancers take the instance out of rotation.
    Grace = 2,
    /// Servers stop accepting new connections.
    StopAccepting = 3,
    /// Waiting for in-flight requests and registered work, up to the drain deadline.
    Draining = 4,
    /// The deadline passed (or the stop was forced): what remains is cancelled.
    Cancelling = 5,
    /// Cleanup hooks run.
    Hooks = 6,
    /// Finished.
    Done = 7,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 8] = [
        Phase::Running,
        Phase::Unhealthy,
        Phase::Grace,
        Phase::StopAccepting,
        Phase::Draining,
        Phase::Cancelling,
        Phase::Hooks,
        Phase::Done,
    ];

    /// The phase's snake_case name: `"running"`, `"unhealthy"`, `"stop_accepting"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Unhealthy => "unhealthy",
            Phase::Grace => "grace",
            Phase::StopAccepting => "stop_accepting",
            Phase::Draining => "draining",
            Phase::Cancelling => "cancelling",
            Phase::Hooks => "hooks",
            Phase::Done => "done",
        }
    }

    /// A stable number for gauges: running 0, unhealthy 1, ..., done 7 (the order above).
    pub const fn as_gauge(self) -> f64 {
        self as u8 as f64
    }

    pub(crate) const fn from_u8(value: u8) -> Phase {
        match value {
            0 => Phase::Running,
            1 => Phase::Unhealthy,
            2 => Phase::Grace,
            3 => Phase::StopAccepting,
            4 => Phase::Draining,
            5 => Phase::Cancelling,
            6 => Phase::Hooks,
            _ => Phase::Done,
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Phase;

    #[test]
    fn phases_are_ordered_and_round_trip_through_their_number() {
        for pair in Phase::ALL.windows(2) {
            assert!(pair[0] < pair[1]);
        }
        for phase in Phase::ALL {
            assert_eq!(Phase::from_u8(phase as u8), phase);
            assert_eq!(phase.as_gauge(), f64::from(phase as u8));
        }
        assert_eq!(Phase::StopAccepting.to_string(), "stop_accepting");
    }
}
