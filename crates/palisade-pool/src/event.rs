//! What a pool reports to its [`Listener`](palisade_core::Listener).

use std::fmt;
use std::time::Duration;

use palisade_core::event::{Event, Reading};

use crate::priority::Priority;

/// Why a pool shed a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ShedReason {
    /// The wait queue was full when the call came.
    QueueFull,
    /// The call waited the whole queue timeout without a permit.
    QueueTimeout,
}

impl ShedReason {
    /// The reason's snake_case name: `"queue_full"`, `"queue_timeout"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ShedReason::QueueFull => "queue_full",
            ShedReason::QueueTimeout => "queue_timeout",
        }
    }
}

impl fmt::Display for ShedReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a pool reports.
///
/// Every call is reported twice (admitted, released), so a listener sees the in-flight level
/// move; [`readings`](Event::readings) give the metric names below.
///
/// | event | readings |
/// |---|---|
/// | `admitted` | gauge `palisade_pool_in_flight`, histogram `palisade_pool_wait_seconds` |
/// | `released` | gauge `palisade_pool_in_flight` |
/// | `queued` | gauge `palisade_pool_queued` |
/// | `left_queue` | gauge `palisade_pool_queued` |
/// | `shed` | gauge `palisade_pool_queued` |
/// | `limit_changed` | gauge `palisade_pool_limit` |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PoolEvent {
    /// A call got a permit and goes to the service.
    Admitted {
        /// How long it waited in the queue (zero when admitted at once).
        waited: Duration,
        /// Calls in flight, this one included.
        in_flight: u32,
    },
    /// A call finished (completed, failed, was cancelled or, with `http`, its response body
    /// ended) and gave its permit back.
    Released {
        /// Calls in flight afterwards (a permit handed straight to a waiter stays counted).
        in_flight: u32,
    },
    /// A call found the pool full and waits in the queue.
    Queued {
        /// Its priority.
        priority: Priority,
        /// Waiters in the queue, this one included.
        queued: usize,
    },
    /// A waiting call was dropped by its caller before it got a permit.
    LeftQueue {
        /// Its priority.
        priority: Priority,
        /// Waiters left in the queue.
        queued: usize,
    },
    /// A call was rejected with [`Overloaded`](crate::Overloaded).
    Shed {
        /// Its priority.
        priority: Priority,
        /// Why.
        reason: ShedReason,
        /// The retry-after hint the rejection carried.
        retry_after: Duration,
        /// Waiters in the queue afterwards.
        queued: usize,
    },
    /// The limit was changed through a [`PoolHandle`](crate::PoolHandle).
    LimitChanged {
        /// The limit before.
        from: u32,
        /// The limit now.
        to: u32,
    },
}

impl Event for PoolEvent {
    fn component(&self) -> &'static str {
        "pool"
    }

    fn kind(&self) -> &'static str {
        match self {
            PoolEvent::Admitted { .. } => "admitted",
            PoolEvent::Released { .. } => "released",
            PoolEvent::Queued { .. } => "queued",
            PoolEvent::LeftQueue { .. } => "left_queue",
            PoolEvent::Shed { .. } => "shed",
            PoolEvent::LimitChanged { .. } => "limit_changed",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match *self {
            PoolEvent::Admitted { waited, in_flight } => {
                record(Reading::gauge(
                    "palisade_pool_in_flight",
                    f64::from(in_flight),
                ));
                record(Reading::histogram(
                    "palisade_pool_wait_seconds",
                    waited.as_secs_f64(),
                ));
            }
            PoolEvent::Released { in_flight } => {
                record(Reading::gauge(
                    "palisade_pool_in_flight",
                    f64::from(in_flight),
                ));
            }
            PoolEvent::Queued { queued, .. }
            | PoolEvent::LeftQueue { queued, .. }
            | PoolEvent::Shed { queued, .. } => {
                record(Reading::gauge("palisade_pool_queued", queued as f64));
            }
            PoolEvent::LimitChanged { to, .. } => {
                record(Reading::gauge("palisade_pool_limit", f64::from(to)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(event: PoolEvent) -> Vec<(&'static str, f64)> {
        let mut readings = Vec::new();
        event.readings(&mut |r| readings.push((r.name(), r.value())));
        readings
    }

    #[test]
    fn events_name_themselves_and_carry_gauges_and_wait_times() {
        let admitted = PoolEvent::Admitted {
            waited: Duration::from_millis(250),
            in_flight: 3,
        };
        assert_eq!(
            (admitted.component(), admitted.kind()),
            ("pool", "admitted")
        );
        assert_eq!(
            readings(admitted),
            [
                ("palisade_pool_in_flight", 3.0),
                ("palisade_pool_wait_seconds", 0.25)
            ]
        );
        let shed = PoolEvent::Shed {
            priority: Priority::DEFAULT,
            reason: ShedReason::QueueFull,
            retry_after: Duration::from_secs(1),
            queued: 7,
        };
        assert_eq!(shed.kind(), "shed");
        assert_eq!(readings(shed), [("palisade_pool_queued", 7.0)]);
        assert_eq!(
            readings(PoolEvent::LimitChanged { from: 2, to: 4 }),
            [("palisade_pool_limit", 4.0)]
        );
        assert_eq!(ShedReason::QueueTimeout.to_string(), "queue_timeout");
    }
}
