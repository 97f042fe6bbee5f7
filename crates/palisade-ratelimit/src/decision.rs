//! What a check decides: [`Snapshot`] when admitted, [`Refusal`] when not.

use std::time::Duration;

use palisade_core::reject::{RateLimited, RetryAfter};

/// The limiter's state as a check left it: what the IETF `RateLimit` and `RateLimit-Policy`
/// headers report.
///
/// - [`limit`](Self::limit) per [`window`](Self::window) is the policy (`q` and `w`): `count`
///   per window, or for GCRA and token bucket with a [burst](crate::Quota::allow_burst) other
///   than the count, `burst` per the time it takes to refill `burst` units.
/// - [`remaining`](Self::remaining) units could be admitted right now (`r`).
/// - [`reset`](Self::reset) is how long until the whole quota is available again (`t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub(crate) limit: u32,
    pub(crate) window_nanos: u64,
    pub(crate) reset_nanos: u64,
    pub(crate) remaining: Remaining,
}

/// Remaining units, computed when asked: GCRA's hot path only records its spare time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remaining {
    Units(u32),
    /// `spare` nanoseconds of capacity, one unit per `interval` nanoseconds, at most `limit`.
    Spare {
        spare: u64,
        interval: u64,
    },
}

impl Snapshot {
    /// The policy's quota: units per [`window`](Self::window).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// The policy's window.
    pub const fn window(&self) -> Duration {
        Duration::from_nanos(self.window_nanos)
    }

    /// Units that could be admitted now.
    pub fn remaining(&self) -> u32 {
        match self.remaining {
            Remaining::Units(n) => n,
            Remaining::Spare { spare, interval } => {
                u32::try_from(spare / interval.max(1)).unwrap_or(u32::MAX)
            }
        }
    }

    /// How long until the whole quota is available again (zero when it is now).
    pub const fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset_nanos)
    }
}

/// The limit is spent: the request was not admitted, and could be in
/// [`retry_after`](Self::retry_after).
///
/// Carries the [`Snapshot`] at the time of the check, for headers. Convert it into core's
/// [`RateLimited`] (what the layer raises) with [`rejection`](Self::rejection) or `into()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry in {:?}", self.retry_after())]
pub struct Limited {
    pub(crate) retry_after_nanos: u64,
    pub(crate) snapshot: Snapshot,
}

impl Limited {
    /// How long until the same check would be admitted, if nothing else is admitted first.
    pub const fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after_nanos)
    }

    /// The limiter's state at the check.
    pub const fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Core's [`RateLimited`] with the same retry-after.
    pub const fn rejection(&self) -> RateLimited {
        RateLimited::new(self.retry_after())
    }
}

impl RetryAfter for Limited {
    fn retry_after(&self) -> Option<Duration> {
        Some(Limited::retry_after(self))
    }
}

impl From<Limited> for RateLimited {
    fn from(limited: Limited) -> Self {
        limited.rejection()
    }
}

/// A request costs more than the limiter can ever hold: it can never be admitted, so it is
/// refused at once instead of waiting forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "a cost of {cost} exceeds the rate limit's capacity of {capacity}; it can never be admitted"
)]
pub struct InsufficientCapacity {
    pub(crate) cost: u32,
    pub(crate) capacity: u32,
}

impl InsufficientCapacity {
    /// The request's cost.
    pub const fn cost(&self) -> u32 {
        self.cost
    }

    /// The most the limiter admits at once: the burst (GCRA, token bucket) or the count per
    /// window (window algorithms).
    pub const fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// Why a weighted check ([`RateLimiter::check_n`](crate::RateLimiter::check_n)) did not admit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not now: try again after its retry-after.
    #[error(transparent)]
    Limited(#[from] Limited),
    /// Never: the cost is above the capacity.
    #[error(transparent)]
    InsufficientCapacity(#[from] InsufficientCapacity),
}

impl Refusal {
    /// The retry-after of a [`Refusal::Limited`]; `None` for a cost that can never be
    /// admitted.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Limited(limited) => Some(limited.retry_after()),
            Refusal::InsufficientCapacity(_) => None,
        }
    }
}

impl RetryAfter for Refusal {
    fn retry_after(&self) -> Option<Duration> {
        Refusal::retry_after(self)
    }
}
