//! The pool layer.

use std::sync::Arc;

use tower_layer::Layer;

use crate::config::PoolConfig;
use crate::handle::PoolHandle;
use crate::partition::NoPartition;
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
/// set it with [`prioritize`](Self::prioritize). `K` puts each request in its
/// [partition](crate::partition) ([`NoPartition`]: none); set it with
/// [`partition_by`](Self::partition_by).
pub struct ConcurrencyPoolLayer<P = DefaultPriority, K = NoPartition> {
    pool: Arc<Pool>,
    prioritize: P,
    partition: K,
}

impl ConcurrencyPoolLayer {
    /// A pool configured by `config`, every request at the default priority.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            pool: Pool::new(config),
            prioritize: DefaultPriority,
            partition: NoPartition,
        }
    }
}

impl<P, K> ConcurrencyPoolLayer<P, K> {
    /// Takes each request's priority from `prioritize`: a [`priority_fn`](crate::priority_fn)
    /// closure or, with `http`, a [`PriorityHeader`](crate::http::PriorityHeader) or
    /// [`PriorityExtension`](crate::http::PriorityExtension). The pool stays the same.
    pub fn prioritize<Q>(self, prioritize: Q) -> ConcurrencyPoolLayer<Q, K> {
        ConcurrencyPoolLayer {
            pool: self.pool,
            prioritize,
            partition: self.partition,
        }
    }

    /// Puts each request in the partition `partition` names: a
    /// [`partition_fn`](crate::partition_fn) closure or, with `http`, a
    /// [`PartitionHeader`](crate::http::PartitionHeader). Only pools configured with
    /// [partitions](crate::PoolConfigBuilder::partition) ask it. The pool stays the same.
    pub fn partition_by<L>(self, partition: L) -> ConcurrencyPoolLayer<P, L> {
        ConcurrencyPoolLayer {
            pool: self.pool,
            prioritize: self.prioritize,
            partition,
        }
    }

    /// A handle to read and resize this pool at runtime.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle::new(Arc::clone(&self.pool))
    }
}

impl<P: Clone, K: Clone> Clone for ConcurrencyPoolLayer<P, K> {
    /// The clone is the same pool.
    fn clone(&self) -> Self {
        Self {
            pool: Arc::clone(&self.pool),
            prioritize: self.prioritize.clone(),
            partition: self.partition.clone(),
        }
    }
}

impl<P, K> std::fmt::Debug for ConcurrencyPoolLayer<P, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConcurrencyPoolLayer")
            .field("pool", &self.pool)
            .field("prioritize", &std::any::type_name::<P>())
            .field("partition", &std::any::type_name::<K>())
            .finish()
    }
}

impl<S, P: Clone, K: Clone> Layer<S> for ConcurrencyPoolLayer<P, K> {
    type Service = ConcurrencyPool<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyPool::new(
            inner,
            Arc::clone(&self.pool),
            self.prioritize.clone(),
            self.partition.clone(),
        )
    }
}
