//! What can go wrong: [`LockError`] and the backend's [`BackendError`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::BoxError;

use crate::event::LostReason;

/// Why a lock operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// A lock needs a time to live above zero.
    #[error("lock ttl must be greater than zero")]
    ZeroTtl,
    /// A lock needs a non-empty key.
    #[error("lock key must not be empty")]
    EmptyKey,
    /// The TTL is not longer than the backend's clock-drift allowance, so a grant would never
    /// be valid.
    #[error("lock ttl {ttl:?} must be longer than the backend's drift allowance {drift:?}")]
    TtlTooShort {
        /// The TTL that was given.
        ttl: Duration,
        /// The backend's drift allowance for it.
        drift: Duration,
    },
    /// Someone else held the lock for the whole wait (or the backoff's attempt limit was
    /// reached first).
    #[error("lock {key:?} not acquired within {waited:?}")]
    TimedOut {
        /// The lock's key.
        key: Arc<str>,
        /// How long the acquisition waited.
        waited: Duration,
    },
    /// The backend could not be reached or answered with an error: nothing was granted.
    #[error("lock backend unavailable")]
    Unavailable(#[source] BackendError),
    /// The lock was lost while the work it protected ran; the work was cancelled.
    #[error("lock {key:?} lost: {reason}")]
    Lost {
        /// The lock's key.
        key: Arc<str>,
        /// Why it was lost.
        reason: LostReason,
    },
    /// The lock was released, but the backend no longer knew it as ours: it had expired
    /// (and may have been granted to someone else since).
    #[error("lock {key:?} was no longer held when released")]
    NotHeld {
        /// The lock's key.
        key: Arc<str>,
    },
}

/// A backend's failure: the server could not be reached, timed out or answered with an
/// error. It wraps the client library's error, available as its [`source`].
///
/// [`source`]: std::error::Error::source
#[derive(Debug)]
pub struct BackendError {
    message: &'static str,
    source: Option<BoxError>,
}

impl BackendError {
    /// A failure described by `message` and caused by `source`.
    pub fn new(message: &'static str, source: impl Into<BoxError>) -> Self {
        Self {
            message,
            source: Some(source.into()),
        }
    }

    /// A failure described by `message` alone.
    pub const fn msg(message: &'static str) -> Self {
        Self {
            message,
            source: None,
        }
    }
}

impl fmt::Display for BackendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}
