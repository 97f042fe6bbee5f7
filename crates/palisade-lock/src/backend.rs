//! The [`Backend`] trait: the few atomic operations a lock store provides. Everything else
//! (waiting, the watchdog, loss, `with_lock`, events) is shared by all backends.

use std::future::Future;
use std::time::Duration;

use crate::{BackendError, FencingToken};

/// A granted lock, as a backend hands it out: the fencing token and whatever the backend
/// needs to renew and release it (an owner token, a connection).
#[derive(Debug)]
pub struct Grant<L> {
    /// The grant's fencing token: larger than every earlier grant's for the same key.
    pub token: FencingToken,
    /// The backend's record of the grant.
    pub lease: L,
}

/// A store that grants, renews and releases leases on keys atomically.
///
/// Implement it to put [`Lock`](crate::Lock) on another store. Each method is one atomic
/// step on the store; none waits for a held lock.
pub trait Backend: Send + Sync + 'static {
    /// What the backend keeps for a granted lock until it is released.
    type Lease: Send + Sync + 'static;

    /// Grants `key` for `ttl` if no one holds it, with a fencing token larger than every
    /// earlier grant's for that key; `Ok(None)` when someone else holds it.
    ///
    /// The returned future may be dropped before it completes; the lock then expires after
    /// `ttl` (the callers in this crate run it to completion and release a grant nobody
    /// waits for any more).
    fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<Option<Grant<Self::Lease>>, BackendError>> + Send;

    /// Extends the lease on `key` to `ttl` from now if it is still ours: `Ok(true)`;
    /// `Ok(false)` when the backend no longer knows it as ours.
    fn renew(
        &self,
        key: &str,
        lease: &Self::Lease,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// Releases `key` if it is still ours (compare-and-delete): `Ok(true)`; `Ok(false)` when
    /// it no longer was.
    fn release(
        &self,
        key: &str,
        lease: &Self::Lease,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send;

    /// How much of a `ttl` to give up for clock drift between this process and the store:
    /// a lease is trusted for `ttl - time to acquire - drift`. Zero by default (one clock).
    fn drift(&self, ttl: Duration) -> Duration {
        let _ = ttl;
        Duration::ZERO
    }
}

/// Redlock's drift allowance: `ttl * factor + 2 ms` (the 2 ms for the resolution of Redis
/// expiries).
#[cfg(feature = "redis")]
pub(crate) fn redlock_drift(ttl: Duration, factor: f64) -> Duration {
    ttl.mul_f64(factor) + Duration::from_millis(2)
}
