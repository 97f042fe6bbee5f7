//! The pool layer.

use std::sync::Arc;

use tower_layer::Layer;

use crate::config::PoolConfig;
use crate::handle::PoolHandle;
use crate::pool::Pool;
use crate::priority::DefaultPriority;
use crate::service::ConcurrencyPool;

/// Wraps services in a [`ConcurrencyPool`].
///
/// **One layer value is one pool**: every service it builds, every clone of those services
/// and of the layer, and every [handle](Self::handle) share the same limit, in-flight count
/// and queue. Build one layer per resource you want to bound separately.
///
/// `P` decides each request's [`Priority`](crate::Priority) ([`DefaultPriority`]: all 5);
/// set it with [`prioritize`](Self::prioritize).
pub struct ConcurrencyPoolLayer<P = DefaultPriority> {
    pool: Arc<Pool>,
    prioritize: P,
}

impl ConcurrencyPoolLayer {
    /// A pool configured by `config`, every request at the default priority.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            pool: Arc::new(Pool::new(config)),
            prioritize: DefaultPriority,
        }
    }
}

impl<P> ConcurrencyPoolLayer<P> {
    /// Takes each request's priority from `prioritize`: a [`priority_fn`](crate::priority_fn)
    /// closure or, with `http`, a [`PriorityHeader`](crate::http::PriorityHeader) or
    /// [`PriorityExtension`](crate::http::PriorityExtension). The pool stays the same.
    pub fn prioritize<Q>(self, prioritize: Q) -> ConcurrencyPoolLayer<Q> {
        ConcurrencyPoolLayer {
            pool: self.pool,
            prioritize,
        }
    }

    /// A handle to read and resize this pool at runtime.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle::new(Arc::clone(&self.pool))
    }
}

impl<P: Clone> Clone for ConcurrencyPoolLayer<P> {
    /// The clone is the same pool.
    fn clone(&self) -> Self {
        Self {
            pool: Arc::clone(&self.pool),
            prioritize: self.prioritize.clone(),
        }
    }
}

impl<P> std::fmt::Debug for ConcurrencyPoolLayer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyPoolLayer")
            .field("pool", &self.pool)
            .field("prioritize", &std::any::type_name::<P>())
            .finish()
    }
}

impl<S, P: Clone> Layer<S> for ConcurrencyPoolLayer<P> {
    type Service = ConcurrencyPool<S, P>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyPool::new(inner, Arc::clone(&self.pool), self.prioritize.clone())
    }
}
