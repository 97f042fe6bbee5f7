//! What a check decides: [`Snapshot`] when admitted, [`Refusal`] when not.

use std::time::Duration;

use palisade_core::reject::{Overloaded, RateLimited, RetryAfter};

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
    pub(crate) remaining: u32,
    pub(crate) window_nanos: u64,
    pub(crate) reset_nanos: u64,
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
    pub const fn remaining(&self) -> u32 {
        self.remaining
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
// `repr(C)`, snapshot first: a check's `Result<Snapshot, Limited>` then has the snapshot at
// the same offset either way, which saves the hot path a few moves.
#[repr(C)]
pub struct Limited {
    pub(crate) snapshot: Snapshot,
    pub(crate) retry_after_nanos: u64,
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

/// A keyed limiter's map of keys is full and its policy refuses new keys
/// ([`AtCapacity::Refuse`](crate::AtCapacity::Refuse)): the request was not checked against
/// any limit.
///
/// Its [source](std::error::Error::source) is core's [`Overloaded`]: the request was shed,
/// and [`Rejection::find`](palisade_core::Rejection::find) says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rate limiter tracks its maximum of {max_keys} keys; new keys are refused")]
pub struct KeysExhausted {
    pub(crate) max_keys: usize,
    #[source]
    pub(crate) overloaded: Overloaded,
}

impl KeysExhausted {
    /// The most keys the limiter tracks.
    pub const fn max_keys(&self) -> usize {
        self.max_keys
    }
}

/// A shared store (Redis, feature `redis`) could not decide a check and its policy is to
/// fail closed: the request was refused without a limit being checked.
///
/// Its [source](std::error::Error::source) is core's [`Overloaded`]: the request was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the rate limit store is unavailable; failing closed")]
pub struct StoreUnavailable {
    #[source]
    pub(crate) overloaded: Overloaded,
}

/// Why a check did not admit: over the limit, a cost it can never hold, or (keyed) no room
/// for a new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Not now: try again after its retry-after.
    #[error(transparent)]
    Limited(#[from] Limited),
    /// Never: the cost is above the capacity.
    #[error(transparent)]
    InsufficientCapacity(#[from] InsufficientCapacity),
    /// A keyed limiter is full of keys and refuses new ones
    /// ([`AtCapacity::Refuse`](crate::AtCapacity::Refuse)).
    #[error(transparent)]
    KeysExhausted(#[from] KeysExhausted),
    /// A shared store could not decide and fails closed (feature `redis`).
    #[error(transparent)]
    StoreUnavailable(#[from] StoreUnavailable),
}

impl Refusal {
    /// The retry-after of a [`Refusal::Limited`]; `None` for a cost that can never be
    /// admitted, a full key map and an unavailable store.
    pub const fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::Limited(limited) => Some(limited.retry_after()),
            Refusal::InsufficientCapacity(_)
            | Refusal::KeysExhausted(_)
            | Refusal::StoreUnavailable(_) => None,
        }
    }
}

impl RetryAfter for Refusal {
    fn retry_after(&self) -> Option<Duration> {
        Refusal::retry_after(self)
    }
}
