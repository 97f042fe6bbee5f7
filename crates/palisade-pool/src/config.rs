//! The pool's validated configuration.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;

use crate::event::PoolEvent;

/// The highest concurrency limit a pool takes: 2³¹ − 1 calls in flight.
pub const MAX_LIMIT: u32 = (1 << 31) - 1;

/// The most waiters a pool's queue holds: 2³¹ − 1.
pub const MAX_QUEUE: u32 = (1 << 31) - 1;

/// Why a [`PoolConfig`] could not be built (or a limit not set).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The limit is above [`MAX_LIMIT`].
    #[error("concurrency limit must be at most {MAX_LIMIT}, got {0}")]
    LimitTooHigh(u32),
    /// The queue capacity is above [`MAX_QUEUE`].
    #[error("queue capacity must be at most {MAX_QUEUE}, got {0}")]
    QueueTooLarge(u32),
    /// A queue timeout of zero would reject every waiter at once; use a queue capacity of
    /// zero for that.
    #[error("queue timeout must be greater than zero")]
    ZeroQueueTimeout,
    /// An aging step of zero would make every waiter the most urgent at once.
    #[error("aging step must be greater than zero")]
    ZeroAging,
}

/// The order in which waiters of the same priority are admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Order {
    /// First come, first served (the default).
    #[default]
    Fifo,
    /// Last come, first served: under overload the newest waiters, whose callers are the
    /// likeliest to still be waiting, go first, and the oldest time out.
    Lifo,
}

/// A validated pool configuration; build one with [`PoolConfig::builder`].
///
/// | setting | default |
/// |---|---|
/// | limit | given to [`builder`](PoolConfig::builder) |
/// | queue capacity | **1024** waiters |
/// | queue timeout | **1 s** |
/// | order within a priority | [`Order::Fifo`] |
/// | aging | off |
/// | retry-after hint on rejections | **1 s** |
/// | name | `"pool"` |
#[derive(Clone)]
pub struct PoolConfig {
    pub(crate) limit: u32,
    pub(crate) queue_capacity: u32,
    pub(crate) queue_timeout: Option<Duration>,
    pub(crate) order: Order,
    pub(crate) aging: Option<Duration>,
    pub(crate) retry_after: Duration,
    pub(crate) name: Cow<'static, str>,
    pub(crate) listener: Option<Arc<dyn Listener<PoolEvent>>>,
}

impl fmt::Debug for PoolConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfig")
            .field("limit", &self.limit)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_timeout", &self.queue_timeout)
            .field("order", &self.order)
            .field("aging", &self.aging)
            .field("retry_after", &self.retry_after)
            .field("name", &self.name)
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .finish()
    }
}

impl PoolConfig {
    /// A builder for a pool of at most `limit` calls in flight, with the other settings at
    /// their [defaults](PoolConfig).
    pub fn builder(limit: NonZeroU32) -> PoolConfigBuilder {
        PoolConfigBuilder {
            limit: limit.get(),
            queue_capacity: 1024,
            queue_timeout: Some(Duration::from_secs(1)),
            order: Order::Fifo,
            aging: None,
            retry_after: Duration::from_secs(1),
            name: Cow::Borrowed("pool"),
            listener: None,
        }
    }

    /// The concurrency limit the pool starts with.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// How many calls may wait for a permit.
    pub fn queue_capacity(&self) -> u32 {
        self.queue_capacity
    }

    /// How long a call may wait for a permit, if bounded.
    pub fn queue_timeout(&self) -> Option<Duration> {
        self.queue_timeout
    }

    /// The order among waiters of one priority.
    pub fn order(&self) -> Order {
        self.order
    }

    /// The aging step, if waiters age.
    pub fn aging(&self) -> Option<Duration> {
        self.aging
    }

    /// The pool's name in traces.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Builds a [`PoolConfig`]; every setting is checked by [`build`](Self::build).
#[derive(Clone)]
#[must_use]
pub struct PoolConfigBuilder {
    limit: u32,
    queue_capacity: u32,
    queue_timeout: Option<Duration>,
    order: Order,
    aging: Option<Duration>,
    retry_after: Duration,
    name: Cow<'static, str>,
    listener: Option<Arc<dyn Listener<PoolEvent>>>,
}

impl fmt::Debug for PoolConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolConfigBuilder")
            .field("limit", &self.limit)
            .field("queue_capacity", &self.queue_capacity)
            .field("queue_timeout", &self.queue_timeout)
            .field("order", &self.order)
            .field("aging", &self.aging)
            .field("retry_after", &self.retry_after)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl PoolConfigBuilder {
    /// How many calls may wait for a permit (default 1024). A call that finds the queue full
    /// is rejected at once; zero means no call ever waits.
    pub fn queue_capacity(mut self, waiters: u32) -> Self {
        self.queue_capacity = waiters;
        self
    }

    /// How long a call may wait for a permit before it is rejected (default 1 s).
    ///
    /// Waiting with a timeout needs a tokio runtime with its timer enabled.
    pub fn queue_timeout(mut self, timeout: Duration) -> Self {
        self.queue_timeout = Some(timeout);
        self
    }

    /// Lets calls wait for a permit as long as it takes (or until their caller gives up).
    pub fn no_queue_timeout(mut self) -> Self {
        self.queue_timeout = None;
        self
    }

    /// The order among waiters of one priority (default [`Order::Fifo`]).
    pub fn order(mut self, order: Order) -> Self {
        self.order = order;
        self
    }

    /// Waiters gain one priority level (a step towards 0) for every `step` they wait, so a
    /// steady stream of urgent calls cannot starve the others: a call of priority 9 that has
    /// waited 4 steps competes as a 5. Off by default.
    ///
    /// With [`Order::Lifo`], waiters that have aged past their level go oldest first.
    pub fn aging(mut self, step: Duration) -> Self {
        self.aging = Some(step);
        self
    }

    /// The retry-after hint rejections carry (default 1 s); with the `http` feature, the
    /// `Retry-After` header, in whole seconds rounded up.
    pub fn retry_after(mut self, hint: Duration) -> Self {
        self.retry_after = hint;
        self
    }

    /// The pool's name in traces (default `"pool"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Receives the pool's [`PoolEvent`]s. A listener is called on every call's admission
    /// and release, so keep it cheap.
    pub fn listener(mut self, listener: impl Listener<PoolEvent> + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<PoolConfig, ConfigError> {
        if self.limit > MAX_LIMIT {
            return Err(ConfigError::LimitTooHigh(self.limit));
        }
        if self.queue_capacity > MAX_QUEUE {
            return Err(ConfigError::QueueTooLarge(self.queue_capacity));
        }
        if self.queue_timeout == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroQueueTimeout);
        }
        if self.aging == Some(Duration::ZERO) {
            return Err(ConfigError::ZeroAging);
        }
        Ok(PoolConfig {
            limit: self.limit,
            queue_capacity: self.queue_capacity,
            queue_timeout: self.queue_timeout,
            order: self.order,
            aging: self.aging,
            retry_after: self.retry_after,
            name: self.name,
            listener: self.listener,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn builder_rejects_invalid_settings_with_typed_errors() {
        assert_eq!(
            PoolConfig::builder(nz(MAX_LIMIT + 1)).build().unwrap_err(),
            ConfigError::LimitTooHigh(MAX_LIMIT + 1)
        );
        assert_eq!(
            PoolConfig::builder(nz(1))
                .queue_capacity(u32::MAX)
                .build()
                .unwrap_err(),
            ConfigError::QueueTooLarge(u32::MAX)
        );
        assert_eq!(
            PoolConfig::builder(nz(1))
                .queue_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            ConfigError::ZeroQueueTimeout
        );
        assert_eq!(
            PoolConfig::builder(nz(1))
                .aging(Duration::ZERO)
                .build()
                .unwrap_err(),
            ConfigError::ZeroAging
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let config = PoolConfig::builder(nz(8)).build().unwrap();
        assert_eq!(config.limit(), 8);
        assert_eq!(config.queue_capacity(), 1024);
        assert_eq!(config.queue_timeout(), Some(Duration::from_secs(1)));
        assert_eq!(config.order(), Order::Fifo);
        assert_eq!(config.aging(), None);
        assert_eq!(config.retry_after, Duration::from_secs(1));
        assert_eq!(config.name(), "pool");
    }
}
