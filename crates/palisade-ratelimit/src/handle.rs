//! Reading a limiter and changing its quota at runtime.

use std::sync::Arc;

use crate::algorithm::Algorithm;
use crate::config::ConfigError;
use crate::decision::Snapshot;
use crate::layer::Shared;
use crate::quota::Quota;

/// Reads a layer's limiter and changes its quota at runtime (from an admin endpoint, a
/// config reload, a test). Cheap to clone; every clone reaches the same limiter. Get one from
/// [`RateLimitLayer::handle`](crate::RateLimitLayer::handle).
#[derive(Clone)]
pub struct RateLimitHandle {
    shared: Arc<Shared>,
}

impl RateLimitHandle {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        self.shared.name()
    }

    /// The current quota.
    pub fn quota(&self) -> Quota {
        self.shared.limiter.quota()
    }

    /// The algorithm it runs.
    pub fn algorithm(&self) -> Algorithm {
        self.shared.limiter.algorithm()
    }

    /// The limiter's state now (remaining units, time to reset), taking nothing.
    pub fn snapshot(&self) -> Snapshot {
        self.shared.limiter.snapshot()
    }

    /// How many requests are waiting (wait mode).
    pub fn waiting(&self) -> usize {
        self.shared.queue.len()
    }

    /// Replaces the quota for the next checks; what was already admitted still counts. The
    /// request at the front of the wait queue checks again at once.
    ///
    /// # Errors
    ///
    /// [`ConfigError::LogTooLarge`] for a sliding-window log whose count is above
    /// [`MAX_LOG_ENTRIES`](crate::MAX_LOG_ENTRIES).
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.shared.limiter.set_quota(quota)?;
        tracing::info!(name = %self.shared.name(), ?quota, "rate limit: quota changed");
        self.shared.queue.wake_front();
        Ok(())
    }
}

impl std::fmt::Debug for RateLimitHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RateLimitHandle")
            .field(&self.shared)
            .finish()
    }
}
