//! What a limiter reports to its [`Listener`](palisade_core::Listener).

use std::time::Duration;

use palisade_core::event::{Event, Reading};

use crate::decision::Snapshot;

/// Something a rate limiter reports, per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum RateLimitEvent {
    /// A request was admitted at once.
    Admitted {
        /// Its cost.
        cost: u32,
        /// The limiter after admitting it.
        snapshot: Snapshot,
    },
    /// A request was admitted after waiting (wait mode).
    Waited {
        /// Its cost.
        cost: u32,
        /// How long it waited.
        waited: Duration,
        /// The limiter after admitting it.
        snapshot: Snapshot,
    },
    /// A request was refused: over the limit (after waiting as long as it could, in wait
    /// mode).
    Rejected {
        /// Its cost.
        cost: u32,
        /// When it could have been admitted.
        retry_after: Duration,
        /// How long it waited before being refused (zero in reject mode).
        waited: Duration,
    },
    /// A request cost more than the limiter ever holds and was refused for good.
    TooCostly {
        /// Its cost.
        cost: u32,
        /// The most the limiter holds.
        capacity: u32,
    },
}

impl Event for RateLimitEvent {
    fn component(&self) -> &'static str {
        "ratelimit"
    }

    fn kind(&self) -> &'static str {
        match self {
            RateLimitEvent::Admitted { .. } => "admitted",
            RateLimitEvent::Waited { .. } => "waited",
            RateLimitEvent::Rejected { .. } => "rejected",
            RateLimitEvent::TooCostly { .. } => "too_costly",
        }
    }

    /// `palisade_ratelimit_remaining` (gauge) on admissions; `palisade_ratelimit_wait_seconds`
    /// (histogram) on admissions after a wait and on rejections after one.
    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            RateLimitEvent::Admitted { snapshot, .. } => {
                record(Reading::gauge(
                    "palisade_ratelimit_remaining",
                    f64::from(snapshot.remaining()),
                ));
            }
            RateLimitEvent::Waited {
                waited, snapshot, ..
            } => {
                record(Reading::gauge(
                    "palisade_ratelimit_remaining",
                    f64::from(snapshot.remaining()),
                ));
                record(Reading::histogram(
                    "palisade_ratelimit_wait_seconds",
                    waited.as_secs_f64(),
                ));
            }
            RateLimitEvent::Rejected { waited, .. } if !waited.is_zero() => {
                record(Reading::histogram(
                    "palisade_ratelimit_wait_seconds",
                    waited.as_secs_f64(),
                ));
            }
            RateLimitEvent::Rejected { .. } | RateLimitEvent::TooCostly { .. } => {}
        }
    }
}
