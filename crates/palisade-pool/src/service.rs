//! The pool service.

use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use tower_service::Service;

use crate::future::{Gate, ResponseFuture};
use crate::handle::PoolHandle;
use crate::partition::{NoPartition, Partition};
use crate::pool::Pool;
use crate::priority::{DefaultPriority, Prioritize};

/// A service whose calls share a pool of permits; built by
/// [`ConcurrencyPoolLayer`](crate::ConcurrencyPoolLayer).
///
/// `poll_ready` is the inner service's and reserves nothing, so a connection that is ready
/// but idle holds no permit. Each `call` takes a permit at once if the pool has room and
/// nobody waits (one compare-exchange); otherwise the call waits in the queue by priority,
/// or is shed with an [`Overloaded`](crate::Overloaded) error when the queue is full or its
/// queue timeout passes.
///
/// A waiting call carries its request and the inner service, which was ready when `call` was
/// made, and calls it once admitted; the service keeps a clone for its next call. Hence
/// `S: Clone`, as for most services in a stack (axum routers, tower-http layers,
/// `Buffer`).
///
/// In a pool with [partitions](crate::partition), `K` puts each request in its partition.
///
/// Errors are boxed: the inner service's as they are, and rejections as [`Overloaded`](crate::Overloaded),
/// which [`Rejection::find`](palisade_core::Rejection::find) recognises.
pub struct ConcurrencyPool<S, P = DefaultPriority, K = NoPartition> {
    inner: S,
    pool: Arc<Pool>,
    prioritize: P,
    partition: K,
}

impl<S, P, K> ConcurrencyPool<S, P, K> {
    pub(crate) fn new(inner: S, pool: Arc<Pool>, prioritize: P, partition: K) -> Self {
        Self {
            inner,
            pool,
            prioritize,
            partition,
        }
    }

    /// A handle to this service's pool (the one shared with its layer and clones).
    pub fn handle(&self) -> PoolHandle {
        PoolHandle::new(Arc::clone(&self.pool))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the pool service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, K: Clone> Clone for ConcurrencyPool<S, P, K> {
    /// The clone shares the pool.
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.pool),
            self.prioritize.clone(),
            self.partition.clone(),
        )
    }
}

impl<S: std::fmt::Debug, P, K> std::fmt::Debug for ConcurrencyPool<S, P, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyPool")
            .field("inner", &self.inner)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<S, P, K, R> Service<R> for ConcurrencyPool<S, P, K>
where
    S: Service<R> + Clone,
    S::Error: Into<BoxError>,
    P: Prioritize<R>,
    K: Partition<R>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, S, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: R) -> Self::Future {
        if let Some(permit) = self.pool.try_acquire() {
            return ResponseFuture::new(Gate::called(self.inner.call(request), permit));
        }
        let priority = self.prioritize.priority(&request);
        let lane = if self.pool.is_partitioned() {
            self.pool.lane_of(self.partition.partition(&request))
        } else {
            0
        };
        ResponseFuture::new(Gate::contended(
            &self.pool,
            priority,
            lane,
            &mut self.inner,
            request,
        ))
    }
}
