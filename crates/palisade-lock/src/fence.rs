//! Fencing tokens, and the check a protected resource makes with them.
//!
//! A lock alone cannot keep a paused holder from writing after its lease expired: a garbage
//! collection pause, a stalled VM or a slow network can delay a write past the moment the
//! lock went to someone else, and the holder cannot tell (Martin Kleppmann, "How to do
//! distributed locking"). The fix lives in the resource: every grant of a key carries a
//! [`FencingToken`] larger than every earlier grant's, the holder sends it with each write,
//! and the resource refuses any write whose token is lower than the highest it has seen.
//!
//! A database does this with one conditional update:
//!
//! ```sql
//! UPDATE accounts SET balance = $1, fence = $2 WHERE id = $3 AND fence <= $2
//! -- zero rows updated: a newer holder has written, this write is stale
//! ```
//!
//! [`FenceCheck`] is the same check in memory, for resources inside one process.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// A number that grows with every grant of a lock's key: a later holder always has a larger
/// token than an earlier one. Send it with every write to the protected resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// A token with the value `value`, as a backend hands it out.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The token as a number, to store next to the data it guards.
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// The fencing check of a resource in this process: admits a token at least as high as the
/// highest admitted so far, and refuses a lower one.
///
/// ```
/// use palisade_lock::{FenceCheck, FencingToken};
///
/// let check = FenceCheck::new();
/// assert!(check.admit(FencingToken::new(7)).is_ok());
/// assert!(check.admit(FencingToken::new(7)).is_ok()); // the same holder writes again
/// assert!(check.admit(FencingToken::new(9)).is_ok()); // a newer holder
/// let stale = check.admit(FencingToken::new(7)).unwrap_err(); // the old holder, too late
/// assert_eq!(stale.highest(), FencingToken::new(9));
/// ```
#[derive(Debug, Default)]
pub struct FenceCheck {
    highest: AtomicU64,
}

impl FenceCheck {
    /// A check that has seen no token yet.
    pub const fn new() -> Self {
        Self {
            highest: AtomicU64::new(0),
        }
    }

    /// Admits `token` if it is at least the highest seen, and remembers it.
    ///
    /// # Errors
    ///
    /// [`StaleToken`] when a higher token has been admitted: the write must be dropped.
    pub fn admit(&self, token: FencingToken) -> Result<(), StaleToken> {
        let previous = self.highest.fetch_max(token.0, Ordering::AcqRel);
        if token.0 < previous {
            return Err(StaleToken {
                token,
                highest: FencingToken(previous),
            });
        }
        Ok(())
    }

    /// The highest token admitted so far; `None` before the first.
    pub fn highest(&self) -> Option<FencingToken> {
        match self.highest.load(Ordering::Acquire) {
            0 => None,
            n => Some(FencingToken(n)),
        }
    }
}

/// A write carried a token lower than one the resource has already admitted: its holder's
/// lock had expired and been granted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stale fencing token {token}; the resource has seen {highest}")]
pub struct StaleToken {
    token: FencingToken,
    highest: FencingToken,
}

impl StaleToken {
    /// The refused token.
    pub const fn token(&self) -> FencingToken {
        self.token
    }

    /// The highest token the resource had admitted.
    pub const fn highest(&self) -> FencingToken {
        self.highest
    }
}
