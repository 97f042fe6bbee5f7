//! Partitions: per-key bulkheads under one total limit.
//!
//! A pool with [partitions](crate::PoolConfigBuilder::partition) splits its limit (and its
//! queue capacity) between named shares, such as `api` 70 % and `batch` 30 %: each partition
//! is **guaranteed** its share of the limit, so a flood of batch calls cannot take the permits
//! API calls need. A [`Partition`] names each request's partition: a closure
//! ([`partition_fn`]) or, with `http`, a header
//! ([`PartitionHeader`](crate::http::PartitionHeader)).
//!
//! - A partition's **quota** is its share of the current limit, rounded down, and at least 1
//!   (the limit can change at runtime or adaptively; quotas follow it).
//! - **Borrowing** (on by default, see
//!   [`borrow_idle_capacity`](crate::PoolConfigBuilder::borrow_idle_capacity)): a partition
//!   may run more than its quota while the pool as a whole has room, so no permit stays idle.
//!   Borrowed permits are not taken back from running calls; as calls finish, permits go first
//!   to waiters of partitions below their quota, then (by priority) to the others. Without
//!   borrowing, a partition never runs more than its quota, even if the rest of the pool is
//!   idle.
//! - The total limit always holds: calls in flight across all partitions never exceed it.
//! - Each partition has its own wait queue, of its share of the queue capacity (rounded up), so
//!   a partition's full queue sheds only its own calls. Priorities order the waiters within a
//!   partition, and across partitions that are equally entitled to the next permit.
//! - A request whose key names no partition (or that has no key) belongs to the **rest**: the
//!   share left over when the named shares add up to less than 1 (its quota is that share of
//!   the limit, rounded down, possibly 0). With borrowing it can still use idle capacity.
//!
//! Admission in a partitioned pool always takes the pool's lock (a short critical section),
//! on admission and on release: the one-compare-exchange path serves unpartitioned pools.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use palisade_pool::{ConcurrencyPoolLayer, PoolConfig, partition_fn};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_core::BoxError> {
//! let config = PoolConfig::builder(NonZeroU32::new(10).unwrap())
//!     .partition("api", 0.7)
//!     .partition("batch", 0.3)
//!     .borrow_idle_capacity(false)
//!     .build()?;
//! // Requests are `(kind, payload)`.
//! let pool = ConcurrencyPoolLayer::new(config)
//!     .partition_by(partition_fn(|request: &(&'static str, u32)| request.0));
//! let handle = pool.handle();
//! let service = ServiceBuilder::new()
//!     .layer(pool)
//!     .service_fn(|(_, n): (&str, u32)| async move { Ok::<_, std::io::Error>(n * 2) });
//!
//! assert_eq!(service.clone().oneshot(("api", 21)).await?, 42);
//! assert_eq!(handle.partition_quota("api"), Some(7));
//! assert_eq!(handle.partition_quota("batch"), Some(3));
//! # Ok(())
//! # }
//! ```

use std::fmt;

/// Names the partition a request belongs to.
///
/// Implemented by [`NoPartition`] (every request in the rest), by [`PartitionFn`] (a
/// closure; see [`partition_fn`]) and, with the `http` feature, by
/// [`PartitionHeader`](crate::http::PartitionHeader). It is asked only by pools that have
/// partitions.
pub trait Partition<Request> {
    /// The name of `request`'s partition; `None` (or a name no partition has) for the rest.
    fn partition<'r>(&self, request: &'r Request) -> Option<&'r str>;
}

/// Names no partition: every request belongs to the rest. The default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NoPartition;

impl<Request> Partition<Request> for NoPartition {
    #[inline]
    fn partition<'r>(&self, _request: &'r Request) -> Option<&'r str> {
        None
    }
}

/// A [`Partition`] made from a closure; see [`partition_fn`].
#[derive(Clone, Copy)]
pub struct PartitionFn<F>(F);

/// Makes a [`Partition`] from a closure `Fn(&Request) -> &'static str` (or
/// `-> Option<&'static str>`).
///
/// ```
/// use palisade_pool::{Partition, partition_fn};
///
/// let by_path = partition_fn(|path: &String| {
///     if path.starts_with("/api/") { "api" } else { "batch" }
/// });
/// assert_eq!(by_path.partition(&"/api/users".to_owned()), Some("api"));
/// ```
pub const fn partition_fn<F>(f: F) -> PartitionFn<F> {
    PartitionFn(f)
}

impl<Request, F, K> Partition<Request> for PartitionFn<F>
where
    F: Fn(&Request) -> K,
    K: Into<Option<&'static str>>,
{
    #[inline]
    fn partition<'r>(&self, request: &'r Request) -> Option<&'r str> {
        (self.0)(request).into()
    }
}

impl<F> fmt::Debug for PartitionFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("PartitionFn").finish_non_exhaustive()
    }
}
