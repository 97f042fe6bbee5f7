//! Reading and resizing a pool at runtime.

use std::num::NonZeroU32;
use std::sync::Arc;

use crate::config::{ConfigError, MAX_LIMIT};
use crate::pool::Pool;

/// Reads a pool's in-flight and queued calls and changes its limit at runtime (from an
/// admin endpoint, a config reload, a test). Cheap to clone; every clone steers the same
/// pool. Get one from [`ConcurrencyPoolLayer::handle`](crate::ConcurrencyPoolLayer::handle).
#[derive(Clone)]
pub struct PoolHandle {
    pool: Arc<Pool>,
}

impl PoolHandle {
    pub(crate) fn new(pool: Arc<Pool>) -> Self {
        Self { pool }
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        self.pool.config().name()
    }

    /// Calls holding a permit now (with `http`, until their response body ends).
    pub fn in_flight(&self) -> u32 {
        self.pool.in_flight()
    }

    /// Calls waiting for a permit now.
    pub fn queued(&self) -> usize {
        self.pool.queued()
    }

    /// The current limit.
    pub fn limit(&self) -> u32 {
        self.pool.limit()
    }

    /// Calls holding a permit now in the [partition](crate::partition) named `name`; `None`
    /// if the pool has no such partition.
    pub fn partition_in_flight(&self, name: &str) -> Option<u32> {
        self.pool.partition(name).map(|(in_flight, _, _)| in_flight)
    }

    /// Calls waiting now in the partition named `name`.
    pub fn partition_queued(&self, name: &str) -> Option<usize> {
        self.pool.partition(name).map(|(_, queued, _)| queued)
    }

    /// The partition's quota now: its share of the current limit, rounded down, at least 1.
    pub fn partition_quota(&self, name: &str) -> Option<u32> {
        self.pool.partition(name).map(|(_, _, quota)| quota)
    }

    /// Sets the limit; returns the old one. Raising it admits waiters at once; lowering it
    /// lets the calls in flight finish, and admits nobody until fewer than `limit` remain.
    /// With an [adaptive limit](crate::adaptive), the algorithm continues from the new limit
    /// at its next window.
    ///
    /// # Errors
    ///
    /// [`ConfigError::LimitTooHigh`] above [`MAX_LIMIT`]; the limit is then unchanged.
    pub fn set_limit(&self, limit: NonZeroU32) -> Result<u32, ConfigError> {
        if limit.get() > MAX_LIMIT {
            return Err(ConfigError::LimitTooHigh(limit.get()));
        }
        Ok(self.pool.set_limit(limit.get()))
    }
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolHandle")
            .field("name", &self.name())
            .field("in_flight", &self.in_flight())
            .field("queued", &self.queued())
            .field("limit", &self.limit())
            .finish()
    }
}
