//! The errors the retry layer adds to the inner service's.

use std::time::Duration;

/// An attempt ran longer than the per-attempt timeout and was cancelled.
///
/// It is handed to the classifier like any other error ([`DefaultClassify`] retries it), and
/// is returned to the caller when no retry follows.
///
/// [`DefaultClassify`]: palisade_core::DefaultClassify
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("attempt timed out after {timeout:?}")]
pub struct AttemptTimedOut {
    timeout: Duration,
}

impl AttemptTimedOut {
    pub(crate) const fn new(timeout: Duration) -> Self {
        Self { timeout }
    }

    /// The per-attempt timeout that ran out.
    pub const fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The call's overall deadline passed while an attempt was in flight (the attempt was
/// cancelled) or while a retry waited for the inner service to be ready (it never started).
/// Nothing is retried after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("retry deadline of {deadline:?} exceeded")]
pub struct DeadlineExceeded {
    deadline: Duration,
}

impl DeadlineExceeded {
    pub(crate) const fn new(deadline: Duration) -> Self {
        Self { deadline }
    }

    /// The overall deadline, counted from the call.
    pub const fn deadline(&self) -> Duration {
        self.deadline
    }
}
