//! A concurrency pool for any tower [`Service`](tower_service::Service): at most `limit`
//! calls in flight, a bounded wait queue ordered by priority behind them, and load shedding
//! for what cannot be served in time.
//!
//! tower's `ConcurrencyLimit` takes its permit in `poll_ready`, so a connection that is
//! ready but idle (hyper polls readiness before a request exists) holds a permit; it queues
//! forever, first come first served, and frees the permit before a streaming body ends. This
//! pool:
//!
//! - **admits per request**: `poll_ready` is the inner service's and reserves nothing; a
//!   call takes its permit in `call`, with one compare-exchange when the pool has room and
//!   nobody waits, and gives it back with another (no lock, no allocation, no clock; and
//!   without a listener, an adaptive limit or partitions, no reference count either);
//! - **queues by priority**: a full pool queues calls, lower [`Priority`] numbers first
//!   (0 to 255, default 5), first come first served within a priority, or last come first
//!   served ([`Order::Lifo`]); with [aging](PoolConfigBuilder::aging) a waiter gains a level
//!   per step waited, so low priorities cannot starve. A request's priority comes from a
//!   [`Prioritize`]: a closure ([`priority_fn`]) or, with `http`, a header or a request
//!   extension;
//! - **sheds load**: a call that finds the queue full, or waits longer than the queue
//!   timeout, fails with [`Overloaded`] carrying a retry-after hint (with `http`, a `503`
//!   with `Retry-After` instead);
//! - **frees permits by `Drop`**: on completion, on error, when the caller gives up (a
//!   dropped waiter leaves the queue; a permit granted to it goes to the next), and with
//!   `http` only when the response **body** ends;
//! - can **find its own limit** ([`adaptive`], off by default): AIMD or Gradient2, as in
//!   Netflix's `concurrency-limits`, move the limit between bounds from the latency and the
//!   failures of the calls it admits;
//! - can split into **partitions** ([`partition`]): per-key bulkheads, each guaranteed its
//!   share of the limit and of the queue (`api` 70 %, `batch` 30 %), borrowing idle capacity
//!   or not, under one total;
//! - is **observable and steerable**: a [`PoolHandle`] reads in-flight and queued calls (per
//!   partition too) and sets the limit at runtime (raising it admits waiters); [`PoolEvent`]s go to a core
//!   [`Listener`](palisade_core::Listener) (a `MetricsListener` records the in-flight and
//!   queue gauges and the wait time histogram), and `tracing` events mark sheds and limit
//!   changes.
//!
//! One layer value is one pool, shared by every service it builds and their clones.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use palisade_core::{Rejection, RetryAfter};
//! use palisade_pool::{ConcurrencyPoolLayer, PoolConfig, priority_fn};
//! use tokio::sync::oneshot;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PoolConfig::builder(NonZeroU32::new(1).unwrap())
//!     .queue_capacity(1)
//!     .queue_timeout(Duration::from_secs(30))
//!     .build()?;
//! // Jobs are `(priority, done)`: a job runs until its `done` fires.
//! let pool = ConcurrencyPoolLayer::new(config)
//!     .prioritize(priority_fn(|job: &(u8, oneshot::Receiver<()>)| job.0));
//! let handle = pool.handle();
//! let service = ServiceBuilder::new().layer(pool).service_fn(|(_, done)| async move {
//!     let _ = done.await;
//!     Ok::<_, std::io::Error>("done")
//! });
//!
//! let (finish_first, done) = oneshot::channel();
//! let first = tokio::spawn(service.clone().oneshot((5, done)));
//! tokio::task::yield_now().await;
//! assert_eq!(handle.in_flight(), 1);
//!
//! // The pool is full: this one waits...
//! let (_finish_second, done) = oneshot::channel();
//! let second = tokio::spawn(service.clone().oneshot((1, done)));
//! tokio::task::yield_now().await;
//! assert_eq!(handle.queued(), 1);
//!
//! // ...and with the queue full too, this one is shed at once.
//! let (_, done) = oneshot::channel();
//! let error = service.clone().oneshot((9, done)).await.unwrap_err();
//! let rejection = Rejection::find(&*error).expect("a palisade rejection");
//! assert!(matches!(rejection, Rejection::Overloaded(_)));
//! assert_eq!(rejection.retry_after(), Some(Duration::from_secs(1)));
//!
//! finish_first.send(()).unwrap();
//! assert_eq!(first.await?.expect("the first job completes"), "done");
//! tokio::task::yield_now().await;
//! assert_eq!((handle.in_flight(), handle.queued()), (1, 0));
//! # drop(second);
//! # Ok(())
//! # }
//! ```
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `http` | module `http`: `HttpConcurrencyPoolLayer` (answer shed requests with `503` + `Retry-After`, hold the permit until the response body ends), priorities from a header or a request extension, partitions from a header |

pub mod adaptive;
mod config;
mod event;
pub mod future;
mod handle;
#[cfg(feature = "http")]
pub mod http;
mod layer;
pub mod partition;
mod pool;
mod priority;
mod queue;
mod service;

pub use crate::adaptive::{AdaptiveLimit, Aimd, Algorithm, Gradient2};
pub use crate::config::{
    ConfigError, MAX_LIMIT, MAX_PARTITIONS, MAX_QUEUE, Order, PoolConfig, PoolConfigBuilder,
};
pub use crate::event::{PoolEvent, ShedReason};
pub use crate::handle::PoolHandle;
pub use crate::layer::ConcurrencyPoolLayer;
pub use crate::partition::{NoPartition, Partition, PartitionFn, partition_fn};
pub use crate::priority::{DefaultPriority, Prioritize, Priority, PriorityFn, priority_fn};
pub use crate::service::ConcurrencyPool;
pub use palisade_core::reject::Overloaded;

/// Adds `.concurrency_pool(config)` to [`tower::ServiceBuilder`].
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_pool::{PoolConfig, ServiceBuilderExt};
/// use tower::ServiceBuilder;
///
/// # fn main() -> Result<(), palisade_pool::ConfigError> {
/// let service = ServiceBuilder::new()
///     .concurrency_pool(PoolConfig::builder(NonZeroU32::new(64).unwrap()).build()?)
///     .service_fn(|name: String| async move { Ok::<_, std::io::Error>(name.len()) });
/// # let _ = service;
/// # Ok(())
/// # }
/// ```
pub trait ServiceBuilderExt<L> {
    /// Wraps the services built so far in a [`ConcurrencyPoolLayer`] made from `config`.
    fn concurrency_pool(
        self,
        config: PoolConfig,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<ConcurrencyPoolLayer, L>>;
}

impl<L> ServiceBuilderExt<L> for tower::ServiceBuilder<L> {
    fn concurrency_pool(
        self,
        config: PoolConfig,
    ) -> tower::ServiceBuilder<tower::layer::util::Stack<ConcurrencyPoolLayer, L>> {
        self.layer(ConcurrencyPoolLayer::new(config))
    }
}
