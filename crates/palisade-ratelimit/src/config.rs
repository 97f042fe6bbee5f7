//! The layer's validated configuration.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;

use crate::algorithm::Algorithm;
use crate::clock::Clock;
use crate::event::RateLimitEvent;
use crate::limiter::MAX_LOG_ENTRIES;
use crate::quota::Quota;

/// Why a configuration, or a new quota for a running limiter, was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A sliding-window log keeps one entry per unit: its count is capped.
    #[error(
        "a sliding-window log holds at most {MAX_LOG_ENTRIES} units per window, got {0}; use a sliding-window counter for larger quotas"
    )]
    LogTooLarge(u32),
    /// A keyed limiter ([`KeyedRateLimitLayer`](crate::KeyedRateLimitLayer)) was configured
    /// in wait mode: keyed limits reject.
    #[error("keyed rate limits reject; they have no wait mode")]
    KeyedWait,
}

/// What a [`RateLimitLayer`](crate::RateLimitLayer) does; build one with
/// [`RateLimitConfig::builder`], or convert a [`Quota`] (GCRA, reject mode).
///
/// | setting | default |
/// |---|---|
/// | algorithm | [`Algorithm::Gcra`] |
/// | mode | **reject**: a request over the limit fails at once |
/// | clock | [`Clock::tokio`] (follows `tokio::time::pause`) |
/// | name | `"rate_limit"` (traces) |
/// | listener | none |
#[derive(Clone)]
pub struct RateLimitConfig {
    pub(crate) quota: Quota,
    pub(crate) algorithm: Algorithm,
    pub(crate) clock: Clock,
    pub(crate) max_wait: Option<Duration>,
    pub(crate) name: Cow<'static, str>,
    pub(crate) listener: Option<Arc<dyn Listener<RateLimitEvent>>>,
}

impl fmt::Debug for RateLimitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitConfig")
            .field("quota", &self.quota)
            .field("algorithm", &self.algorithm)
            .field("clock", &self.clock)
            .field("max_wait", &self.max_wait)
            .field("name", &self.name)
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .finish()
    }
}

impl From<Quota> for RateLimitConfig {
    /// GCRA, reject mode.
    fn from(quota: Quota) -> Self {
        RateLimitConfigBuilder::new(quota).unchecked()
    }
}

impl RateLimitConfig {
    /// A builder for `quota`, starting from the defaults.
    pub fn builder(quota: Quota) -> RateLimitConfigBuilder {
        RateLimitConfigBuilder::new(quota)
    }

    /// The quota.
    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// The algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The clock.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The longest a request waits for capacity; `None` in reject mode.
    pub fn max_wait(&self) -> Option<Duration> {
        self.max_wait
    }

    /// The name, used in traces.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Builds a [`RateLimitConfig`]; [`build`](Self::build) checks it.
#[derive(Clone)]
#[must_use]
pub struct RateLimitConfigBuilder {
    config: RateLimitConfig,
}

impl fmt::Debug for RateLimitConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RateLimitConfigBuilder")
            .field(&self.config)
            .finish()
    }
}

impl RateLimitConfigBuilder {
    fn new(quota: Quota) -> Self {
        Self {
            config: RateLimitConfig {
                quota,
                algorithm: Algorithm::Gcra,
                clock: Clock::tokio(),
                max_wait: None,
                name: Cow::Borrowed("rate_limit"),
                listener: None,
            },
        }
    }

    /// Runs `algorithm` (default [`Algorithm::Gcra`]).
    pub fn algorithm(mut self, algorithm: Algorithm) -> Self {
        self.config.algorithm = algorithm;
        self
    }

    /// Reads the time from `clock` (default [`Clock::tokio`], which follows
    /// `tokio::time::pause`; [`Clock::quanta`] is cheaper but does not).
    pub fn clock(mut self, clock: Clock) -> Self {
        self.config.clock = clock;
        self
    }

    /// **Wait mode**: a request over the limit waits for capacity, up to `max`, in FIFO
    /// order with the other waiting requests, instead of failing at once. A request that
    /// cannot be admitted within `max` fails as soon as that is known (at once, when the
    /// limiter's retry-after already exceeds it), with the limiter's retry-after. A waiting
    /// request that is dropped takes nothing and leaves the queue.
    ///
    /// Waiting needs a tokio runtime with its time driver.
    pub fn wait_up_to(mut self, max: Duration) -> Self {
        self.config.max_wait = Some(max);
        self
    }

    /// **Reject mode** (the default): a request over the limit fails at once.
    pub fn reject(mut self) -> Self {
        self.config.max_wait = None;
        self
    }

    /// Names the limiter in traces (default `"rate_limit"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Sends [`RateLimitEvent`]s to `listener` (a core `MetricsListener`, a closure through
    /// `listener_fn`, or several as a tuple). It is called on every request: keep it cheap.
    pub fn listener(mut self, listener: impl Listener<RateLimitEvent> + 'static) -> Self {
        self.config.listener = Some(Arc::new(listener));
        self
    }

    /// Checks the configuration.
    ///
    /// # Errors
    ///
    /// [`ConfigError::LogTooLarge`] for a sliding-window log whose count is above
    /// [`MAX_LOG_ENTRIES`].
    pub fn build(self) -> Result<RateLimitConfig, ConfigError> {
        if self.config.algorithm == Algorithm::SlidingWindowLog
            && self.config.quota.count() > MAX_LOG_ENTRIES
        {
            return Err(ConfigError::LogTooLarge(self.config.quota.count()));
        }
        Ok(self.config)
    }

    fn unchecked(self) -> RateLimitConfig {
        self.config
    }
}
