//! What a shutdown reports to its [`Listener`](palisade_core::Listener).

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

use palisade_core::event::{Event, Reading};

use crate::hook::HookOutcome;
use crate::phase::Phase;

/// Something a [`Shutdown`](crate::Shutdown) reports; see
/// [`ShutdownBuilder::listener`](crate::ShutdownBuilder::listener). Requests that complete
/// normally are not reported one by one: the in-flight gauge comes with each phase change
/// and is read at any time through [`Shutdown::in_flight`](crate::Shutdown::in_flight).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ShutdownEvent {
    /// The shutdown was triggered: `count` is 1 for the first trigger (the graceful
    /// shutdown starts) and 2 for the second (the stop is forced).
    Triggered {
        /// How many times it has been triggered.
        count: u32,
    },
    /// The shutdown moved to another phase.
    PhaseChanged {
        /// The phase it left.
        from: Phase,
        /// The phase it entered.
        to: Phase,
        /// Requests in flight at the change.
        in_flight: usize,
        /// Registered tasks alive at the change.
        tasks: usize,
    },
    /// A request was rejected with [`ShuttingDown`](crate::ShuttingDown) (or its `503`).
    Rejected {
        /// The phase that rejected it.
        phase: Phase,
    },
    /// A server run by `serve` (feature `serve`) stopped accepting: its listener is
    /// closed, so new connections are refused.
    StoppedAccepting {
        /// The listener's address, if the socket could tell.
        local_addr: Option<SocketAddr>,
        /// Connections still open at that moment, which drain on their own.
        open_connections: usize,
    },
    /// A server run by `serve` (feature `serve`) dropped connections that were still open
    /// at the drain deadline (or at a forced stop); reported once all its connections are
    /// gone.
    ConnectionsCut {
        /// How many connections were dropped.
        count: usize,
    },
    /// A request handler panicked and `CatchPanicLayer` (feature `http`) answered `500`
    /// (or, once the response had started, ended its body with an error).
    HandlerPanicked {
        /// The panic's message.
        message: String,
    },
    /// A cleanup hook finished (or was skipped).
    HookFinished {
        /// The hook's name.
        name: Cow<'static, str>,
        /// How it ended.
        outcome: HookOutcome,
        /// How long it ran.
        elapsed: Duration,
    },
}

impl Event for ShutdownEvent {
    fn component(&self) -> &'static str {
        "shutdown"
    }

    fn kind(&self) -> &'static str {
        match self {
            ShutdownEvent::Triggered { .. } => "triggered",
            ShutdownEvent::PhaseChanged { .. } => "phase_changed",
            ShutdownEvent::Rejected { .. } => "rejected",
            ShutdownEvent::StoppedAccepting { .. } => "stopped_accepting",
            ShutdownEvent::ConnectionsCut { .. } => "connections_cut",
            ShutdownEvent::HandlerPanicked { .. } => "handler_panicked",
            ShutdownEvent::HookFinished { .. } => "hook_finished",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            ShutdownEvent::PhaseChanged {
                to,
                in_flight,
                tasks,
                ..
            } => {
                record(Reading::gauge("palisade_shutdown_phase", to.as_gauge()));
                record(Reading::gauge(
                    "palisade_shutdown_in_flight",
                    *in_flight as f64,
                ));
                record(Reading::gauge("palisade_shutdown_tasks", *tasks as f64));
            }
            ShutdownEvent::HookFinished { elapsed, .. } => record(Reading::histogram(
                "palisade_shutdown_hook_seconds",
                elapsed.as_secs_f64(),
            )),
            ShutdownEvent::StoppedAccepting {
                open_connections, ..
            } => record(Reading::gauge(
                "palisade_shutdown_open_connections",
                *open_connections as f64,
            )),
            ShutdownEvent::Triggered { .. }
            | ShutdownEvent::Rejected { .. }
            | ShutdownEvent::ConnectionsCut { .. }
            | ShutdownEvent::HandlerPanicked { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_changes_carry_the_phase_and_in_flight_gauges() {
        let event = ShutdownEvent::PhaseChanged {
            from: Phase::StopAccepting,
            to: Phase::Draining,
            in_flight: 3,
            tasks: 1,
        };
        assert_eq!(
            (event.component(), event.kind()),
            ("shutdown", "phase_changed")
        );
        let mut readings = Vec::new();
        event.readings(&mut |r| readings.push((r.name(), r.value())));
        assert_eq!(
            readings,
            [
                ("palisade_shutdown_phase", 4.0),
                ("palisade_shutdown_in_flight", 3.0),
                ("palisade_shutdown_tasks", 1.0),
            ]
        );
        let rejected = ShutdownEvent::Rejected {
            phase: Phase::Draining,
        };
        assert_eq!(rejected.kind(), "rejected");
        rejected.readings(&mut |_| panic!("a rejection carries no reading"));
    }
}
