//! The breaker layer.

use std::sync::Arc;

use palisade_core::classify::DefaultClassify;
use tower_layer::Layer;

use crate::config::CircuitBreakerConfig;
use crate::handle::CircuitBreakerHandle;
use crate::service::CircuitBreaker;
use crate::state::{Shared, Slots};

/// Wraps services in a [`CircuitBreaker`].
///
/// **One layer value is one breaker**: every service it builds, every clone of those
/// services and of the layer, and every [handle](Self::handle) share the same state. Build
/// one layer per upstream you want to protect separately, or use
/// [`per_service`](CircuitBreakerLayer::per_service) for a breaker per built service.
///
/// `C` decides what counts as a failure ([`DefaultClassify`]: every `Err`).
pub struct CircuitBreakerLayer<C = DefaultClassify> {
    shared: Arc<Slots<C>>,
}

impl CircuitBreakerLayer {
    /// A breaker that counts every `Err` as a failure.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self::with_classifier(config, DefaultClassify)
    }
}

impl<C> CircuitBreakerLayer<C> {
    /// A breaker whose failures are decided by `classify` (for example
    /// `StatusClassify` for HTTP responses, or a `SlowAsFailure`).
    pub fn with_classifier(config: CircuitBreakerConfig, classify: C) -> Self {
        Self {
            shared: Arc::new(Slots::new(Shared::new(config, classify))),
        }
    }

    /// A handle to read and steer this breaker at runtime.
    pub fn handle(&self) -> CircuitBreakerHandle
    where
        C: Send + Sync + 'static,
    {
        CircuitBreakerHandle::new(Arc::clone(self.shared.shared()) as _)
    }
}

impl<C> Clone for CircuitBreakerLayer<C> {
    /// The clone is the same breaker.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C> std::fmt::Debug for CircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("breaker", &self.shared)
            .finish()
    }
}

impl<S, C> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::new(inner, Arc::clone(&self.shared))
    }
}

/// Wraps each service it builds in a breaker of its own; made by
/// [`CircuitBreakerLayer::per_service`].
///
/// Where [`CircuitBreakerLayer`] is one breaker for everything it wraps, this layer gives
/// every service it builds a fresh breaker from the same configuration (clones of a built
/// service still share that service's breaker). Use it when a layer is applied to several
/// upstreams, such as one client per backend; read each breaker through
/// [`CircuitBreaker::handle`].
pub struct PerServiceCircuitBreakerLayer<C = DefaultClassify> {
    config: CircuitBreakerConfig,
    classify: C,
}

impl CircuitBreakerLayer {
    /// A layer that gives every service it builds its own breaker, configured by `config`,
    /// counting every `Err` as a failure.
    pub fn per_service(config: CircuitBreakerConfig) -> PerServiceCircuitBreakerLayer {
        PerServiceCircuitBreakerLayer {
            config,
            classify: DefaultClassify,
        }
    }
}

impl<C> PerServiceCircuitBreakerLayer<C> {
    /// Decides failures with `classify` (each service's breaker gets a clone).
    pub fn with_classifier<D>(self, classify: D) -> PerServiceCircuitBreakerLayer<D> {
        PerServiceCircuitBreakerLayer {
            config: self.config,
            classify,
        }
    }
}

impl<C: Clone> Clone for PerServiceCircuitBreakerLayer<C> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
            classify: self.classify.clone(),
        }
    }
}

impl<C> std::fmt::Debug for PerServiceCircuitBreakerLayer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PerServiceCircuitBreakerLayer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<S, C: Clone> Layer<S> for PerServiceCircuitBreakerLayer<C> {
    type Service = CircuitBreaker<S, C>;

    fn layer(&self, inner: S) -> Self::Service {
        let breaker = Shared::new(self.config.clone(), self.classify.clone());
        CircuitBreaker::new(inner, Arc::new(Slots::new(breaker)))
    }
}
