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
    /// Keyed: a request with a new key found the key map full, no key idle, and was checked
    /// against the shared overflow limit instead of a limit of its own
    /// ([`AtCapacity::Overflow`](crate::AtCapacity::Overflow)). An `Admitted` or `Rejected`
    /// event follows with the overflow limit's decision.
    Overflowed {
        /// Keys tracked.
        keys: usize,
    },
    /// Keyed: a request with a new key found the key map full, no key idle, and was refused
    /// ([`AtCapacity::Refuse`](crate::AtCapacity::Refuse)).
    KeysExhausted {
        /// The most keys the limiter tracks.
        max_keys: usize,
    },
    /// A shared store (Redis) could not decide a check: its unavailable policy did.
    StoreUnavailable {
        /// The policy: `"local"`, `"fail_open"` or `"fail_closed"`.
        policy: &'static str,
    },
    /// Keyed: a sweep forgot keys back at full capacity.
    Swept {
        /// Keys forgotten.
        evicted: usize,
        /// Keys tracked after the sweep.
        keys: usize,
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
            RateLimitEvent::Overflowed { .. } => "overflowed",
            RateLimitEvent::KeysExhausted { .. } => "keys_exhausted",
            RateLimitEvent::Swept { .. } => "swept",
            RateLimitEvent::StoreUnavailable { .. } => "store_unavailable",
        }
    }

    /// `palisade_ratelimit_remaining` (gauge) on admissions; `palisade_ratelimit_wait_seconds`
    /// (histogram) on admissions after a wait and on rejections after one;
    /// `palisade_ratelimit_keys` (gauge, keyed limiters) on sweeps and overflows.
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
            RateLimitEvent::Overflowed { keys } | RateLimitEvent::Swept { keys, .. } => {
                record(Reading::gauge("palisade_ratelimit_keys", *keys as f64));
            }
            RateLimitEvent::Rejected { .. }
            | RateLimitEvent::TooCostly { .. }
            | RateLimitEvent::KeysExhausted { .. }
            | RateLimitEvent::StoreUnavailable { .. } => {}
        }
    }
}
