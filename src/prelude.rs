//! The names most programs use, in one import: `use palisade::prelude::*;`.
//!
//! It brings [`ServiceBuilderExt`](crate::ServiceBuilderExt) and, for each enabled feature,
//! its layer, configuration and rejection types. Do not also import a layer crate's own
//! `ServiceBuilderExt`: both would offer the same methods.

pub use crate::ServiceBuilderExt as _;

#[cfg(feature = "core")]
pub use crate::core::{Backoff, Classify, Jitter};

#[cfg(feature = "breaker")]
pub use crate::breaker::{
    CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, CircuitOpen,
};

#[cfg(feature = "pool")]
pub use crate::pool::{ConcurrencyPoolLayer, Overloaded, PoolConfig};

#[cfg(feature = "rate-limit")]
pub use crate::rate_limit::{
    KeyedRateLimitLayer, Quota, RateLimitConfig, RateLimitLayer, RateLimited, key_fn,
};

#[cfg(all(feature = "rate-limit", feature = "http"))]
pub use crate::rate_limit::{HeaderKey, PeerIp};

#[cfg(feature = "rate-limit-redis")]
pub use crate::rate_limit::{RedisRateLimitLayer, RedisRateLimiter};

#[cfg(feature = "retry")]
pub use crate::retry::{RetryConfig, RetryLayer};

#[cfg(feature = "shutdown")]
pub use crate::shutdown::{Shutdown, ShutdownLayer, ShuttingDown};
