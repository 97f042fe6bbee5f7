//! The pool's validated configuration.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;

use crate::adaptive::AdaptiveLimit;
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
    /// An adaptive limit's bounds do not hold the initial limit.
    #[error("adaptive limit bounds must hold the initial limit: {min} <= {initial} <= {max}")]
    AdaptiveBounds {
        /// The lower bound.
        min: u32,
        /// The limit the pool starts with.
        initial: u32,
        /// The upper bound.
        max: u32,
    },
    /// An adaptive limit's setting is out of range; the message says which and why.
    #[error("invalid adaptive limit: {0}")]
    InvalidAdaptive(&'static str),
    /// A partition cannot be made as given.
    #[error("invalid partition `{partition}`: {reason}")]
    InvalidPartition {
        /// The partition's name.
        partition: Cow<'static, str>,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The most partitions a pool takes.
pub const MAX_PARTITIONS: usize = 64;

/// Shares are kept in millionths, so quotas are exact integer arithmetic.
pub(crate) const WHOLE: u32 = 1_000_000;

/// A named share of a pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Share {
    pub(crate) name: Cow<'static, str>,
    /// In millionths of the pool.
    pub(crate) millionths: u32,
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
/// | adaptive limit | off |
/// | partitions | none |
/// | partitions borrow idle capacity | yes |
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
    pub(crate) adaptive: Option<AdaptiveLimit>,
    pub(crate) partitions: Vec<Share>,
    pub(crate) borrow: bool,
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
            .field("adaptive", &self.adaptive)
            .field("partitions", &self.partitions)
            .field("borrow", &self.borrow)
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
            adaptive: None,
            partitions: Vec::new(),
            borrow: true,
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

    /// The adaptive limit, if the pool adapts its limit.
    pub fn adaptive(&self) -> Option<&AdaptiveLimit> {
        self.adaptive.as_ref()
    }

    /// The partitions' names and shares (from 0 to 1), in the order they were added.
    pub fn partitions(&self) -> impl Iterator<Item = (&str, f64)> + '_ {
        self.partitions
            .iter()
            .map(|share| (&*share.name, f64::from(share.millionths) / f64::from(WHOLE)))
    }

    /// Whether partitions may run more than their share while the pool has room.
    pub fn borrows_idle_capacity(&self) -> bool {
        self.borrow
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
    adaptive: Option<AdaptiveLimit>,
    partitions: Vec<(Cow<'static, str>, f64)>,
    borrow: bool,
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
            .field("adaptive", &self.adaptive)
            .field("partitions", &self.partitions)
            .field("borrow", &self.borrow)
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
    /// Waiting with a timeout needs a tokio runtime with its timer enabled. A timeout too
    /// long for the clock to represent (such as [`Duration::MAX`]) means no timeout, like
    /// [`no_queue_timeout`](Self::no_queue_timeout).
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

    /// Lets the pool move its limit by itself, between the adaptive limit's bounds, from the
    /// latency and the failures of the calls it admits; the limit given to
    /// [`PoolConfig::builder`] is where it starts. Off by default. See
    /// [`AdaptiveLimit`](crate::AdaptiveLimit).
    pub fn adaptive(mut self, adaptive: AdaptiveLimit) -> Self {
        self.adaptive = Some(adaptive);
        self
    }

    /// Adds a partition: a bulkhead named `name` guaranteed `share` of the limit (and of the
    /// queue capacity), from above 0 to 1; the shares of all partitions add up to at most 1.
    /// Requests are put in partitions by the layer's
    /// [`partition_by`](crate::ConcurrencyPoolLayer::partition_by). See the
    /// [`partition`](crate::partition) module for the rules.
    pub fn partition(mut self, name: impl Into<Cow<'static, str>>, share: f64) -> Self {
        self.partitions.push((name.into(), share));
        self
    }

    /// Whether a partition may run more than its share while the pool as a whole has room
    /// (default `true`): idle capacity is lent, and given back as the borrowing calls finish.
    /// With `false`, each partition is capped at its share even when the rest is idle.
    pub fn borrow_idle_capacity(mut self, borrow: bool) -> Self {
        self.borrow = borrow;
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
        if let Some(adaptive) = &self.adaptive {
            adaptive.check(self.limit)?;
        }
        let partitions = shares(self.partitions)?;
        Ok(PoolConfig {
            limit: self.limit,
            queue_capacity: self.queue_capacity,
            queue_timeout: self.queue_timeout,
            order: self.order,
            aging: self.aging,
            retry_after: self.retry_after,
            name: self.name,
            listener: self.listener,
            adaptive: self.adaptive,
            partitions,
            borrow: self.borrow,
        })
    }
}

fn shares(partitions: Vec<(Cow<'static, str>, f64)>) -> Result<Vec<Share>, ConfigError> {
    let invalid = |partition: &Cow<'static, str>, reason| ConfigError::InvalidPartition {
        partition: partition.clone(),
        reason,
    };
    if let Some((name, _)) = partitions.get(MAX_PARTITIONS) {
        return Err(invalid(name, "a pool takes at most 64 partitions"));
    }
    let mut checked: Vec<Share> = Vec::with_capacity(partitions.len());
    let mut total = 0;
    for (name, share) in partitions {
        if !(share > 0.0 && share <= 1.0) {
            return Err(invalid(&name, "its share must be above 0 and at most 1"));
        }
        let millionths = (share * f64::from(WHOLE)).round() as u32;
        if millionths == 0 {
            return Err(invalid(&name, "its share must be at least one millionth"));
        }
        if checked.iter().any(|other| other.name == name) {
            return Err(invalid(&name, "another partition has the same name"));
        }
        total += millionths;
        if total > WHOLE {
            return Err(invalid(&name, "the shares add up to more than 1"));
        }
        checked.push(Share { name, millionths });
    }
    Ok(checked)
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
    fn adaptive_limits_are_checked_when_the_config_is_built() {
        use crate::adaptive::{AdaptiveLimit, Aimd, Gradient2};
        let build = |start: u32, adaptive: AdaptiveLimit| {
            PoolConfig::builder(nz(start)).adaptive(adaptive).build()
        };
        assert_eq!(
            build(20, AdaptiveLimit::new(Aimd::new(), nz(25), nz(40))).unwrap_err(),
            ConfigError::AdaptiveBounds {
                min: 25,
                initial: 20,
                max: 40
            }
        );
        assert_eq!(
            build(
                20,
                AdaptiveLimit::new(Aimd::new(), nz(1), nz(MAX_LIMIT + 1))
            )
            .unwrap_err(),
            ConfigError::LimitTooHigh(MAX_LIMIT + 1)
        );
        for invalid in [
            AdaptiveLimit::new(Aimd::new().backoff_ratio(1.0), nz(1), nz(40)),
            AdaptiveLimit::new(Aimd::new().backoff_ratio(0.4), nz(1), nz(40)),
            AdaptiveLimit::new(Aimd::new().latency_threshold(Duration::ZERO), nz(1), nz(40)),
            AdaptiveLimit::new(Gradient2::new().tolerance(0.9), nz(1), nz(40)),
            AdaptiveLimit::new(Gradient2::new().tolerance(f64::NAN), nz(1), nz(40)),
            AdaptiveLimit::new(Gradient2::new().smoothing(0.0), nz(1), nz(40)),
            AdaptiveLimit::new(Gradient2::new().long_window(0), nz(1), nz(40)),
            AdaptiveLimit::new(Aimd::new(), nz(1), nz(40)).window(Duration::ZERO),
            AdaptiveLimit::new(Aimd::new(), nz(1), nz(40)).min_samples(0),
        ] {
            assert!(
                matches!(build(20, invalid), Err(ConfigError::InvalidAdaptive(_))),
                "{invalid:?}"
            );
        }
        let config = build(20, AdaptiveLimit::new(Gradient2::new(), nz(20), nz(20))).unwrap();
        assert_eq!(
            config.adaptive().map(|a| (a.min(), a.max())),
            Some((20, 20))
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
        assert!(config.adaptive().is_none());
    }
}
