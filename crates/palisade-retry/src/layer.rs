//! The retry layer.

use std::sync::Arc;

use palisade_core::classify::DefaultClassify;
use tower_layer::Layer;

use crate::config::RetryConfig;
use crate::replay::CloneRequest;
use crate::service::{Retry, Shared};

/// Wraps services in a [`Retry`].
///
/// **One layer value is one retry budget**: every service it builds and every clone of those
/// services and of the layer draw on the same budget. Build one layer per upstream.
///
/// `C` decides which outcomes are retried (a core [`Classify`](palisade_core::Classify)
/// over the response and the boxed error; [`DefaultClassify`]: every error). `P` decides
/// how a request is sent again and reads server hints from responses (a
/// [`Replay`](crate::Replay); [`CloneRequest`]: clone it).
pub struct RetryLayer<C = DefaultClassify, P = CloneRequest> {
    shared: Arc<Shared<C, P>>,
}

impl RetryLayer {
    /// A layer that retries every error, cloning the request per attempt.
    pub fn new(config: RetryConfig) -> Self {
        Self::with_policy(config, DefaultClassify, CloneRequest)
    }
}

impl<C> RetryLayer<C> {
    /// A layer whose retryable outcomes are decided by `classify`; a result classified as
    /// [`Outcome::Failure`](palisade_core::Outcome::Failure) is retried.
    pub fn with_classifier(config: RetryConfig, classify: C) -> Self {
        Self::with_policy(config, classify, CloneRequest)
    }
}

impl<C, P> RetryLayer<C, P> {
    /// A layer with both strategies chosen: `classify` decides what is retried, `replay`
    /// how a request is sent again.
    pub fn with_policy(config: RetryConfig, classify: C, replay: P) -> Self {
        Self {
            shared: Arc::new(Shared::new(config, classify, replay)),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &RetryConfig {
        &self.shared.config
    }
}

impl<C, P> Clone for RetryLayer<C, P> {
    /// The clone shares the retry budget.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<C, P> std::fmt::Debug for RetryLayer<C, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryLayer")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<S, C, P> Layer<S> for RetryLayer<C, P> {
    type Service = Retry<S, C, P>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::new(inner, Arc::clone(&self.shared))
    }
}
