//! What a lock reports to its [`Listener`](palisade_core::Listener).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::{Event, Reading};

use crate::FencingToken;

/// Why a held lock was lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LostReason {
    /// Its validity ran out before a renewal confirmed it (renewal off, or the backend did
    /// not answer in time).
    Expired,
    /// The backend no longer knows the lock as ours: it expired there, was deleted, or the
    /// session that held it ended.
    Taken,
    /// A renewal failed with an error: ownership can no longer be confirmed.
    Unreachable,
}

impl LostReason {
    /// The reason's snake_case name: `"expired"`, `"taken"`, `"unreachable"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LostReason::Expired => "expired",
            LostReason::Taken => "taken",
            LostReason::Unreachable => "unreachable",
        }
    }
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a lock reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LockEvent {
    /// A lock was granted.
    Acquired {
        /// The lock's key.
        key: Arc<str>,
        /// The grant's fencing token.
        token: FencingToken,
        /// How long the acquisition waited, retries included.
        waited: Duration,
    },
    /// An attempt found the lock held by someone else; the acquisition retries or gives up.
    Contended {
        /// The lock's key.
        key: Arc<str>,
        /// Attempts made so far, this one included.
        attempts: u32,
    },
    /// An acquisition gave up after its wait.
    TimedOut {
        /// The lock's key.
        key: Arc<str>,
        /// How long it waited.
        waited: Duration,
    },
    /// The watchdog extended a held lock.
    Renewed {
        /// The lock's key.
        key: Arc<str>,
        /// The grant's fencing token.
        token: FencingToken,
        /// The validity the renewal bought.
        validity: Duration,
    },
    /// A held lock was lost: [`LockGuard::lost`](crate::LockGuard::lost) fired.
    Lost {
        /// The lock's key.
        key: Arc<str>,
        /// The grant's fencing token.
        token: FencingToken,
        /// Why.
        reason: LostReason,
        /// How long after the grant.
        held_for: Duration,
    },
    /// A held lock was released (explicitly or by dropping its guard).
    Released {
        /// The lock's key.
        key: Arc<str>,
        /// The grant's fencing token.
        token: FencingToken,
        /// The lease's age: how long it was held.
        held_for: Duration,
        /// Whether the backend still knew it as ours; `false` when it had expired.
        was_held: bool,
    },
}

impl Event for LockEvent {
    fn component(&self) -> &'static str {
        "lock"
    }

    fn kind(&self) -> &'static str {
        match self {
            LockEvent::Acquired { .. } => "acquired",
            LockEvent::Contended { .. } => "contended",
            LockEvent::TimedOut { .. } => "timed_out",
            LockEvent::Renewed { .. } => "renewed",
            LockEvent::Lost { .. } => "lost",
            LockEvent::Released { .. } => "released",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            LockEvent::Acquired { waited, .. } => record(Reading::histogram(
                "palisade_lock_wait_seconds",
                waited.as_secs_f64(),
            )),
            LockEvent::Lost { held_for, .. } | LockEvent::Released { held_for, .. } => record(
                Reading::histogram("palisade_lock_held_seconds", held_for.as_secs_f64()),
            ),
            LockEvent::Renewed { validity, .. } => record(Reading::gauge(
                "palisade_lock_validity_seconds",
                validity.as_secs_f64(),
            )),
            LockEvent::Contended { .. } | LockEvent::TimedOut { .. } => {}
        }
    }
}
