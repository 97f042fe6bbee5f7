//! The retry layer's validated configuration.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::backoff::Backoff;
use palisade_core::event::Listener;

use crate::event::RetryEvent;

/// The number of buckets a [`BudgetConfig`]'s window is cut into.
pub const BUDGET_BUCKETS: u32 = 10;

/// Why a [`RetryConfig`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A per-attempt timeout of zero would cancel every attempt at once.
    #[error("per-attempt timeout must be greater than zero")]
    ZeroAttemptTimeout,
    /// A deadline of zero leaves no time for the first attempt.
    #[error("retry deadline must be greater than zero")]
    ZeroDeadline,
    /// The budget's ratio must be a finite number from 0 to 1000.
    #[error("retry budget ratio must be a finite number from 0 to 1000, got {0}")]
    InvalidBudgetRatio(f64),
    /// The budget's window must last from one second to one hour.
    #[error("retry budget window must last from 1s to 1h, got {0:?}")]
    InvalidBudgetTtl(Duration),
    /// A hedging percentile must be a number above 0 and below 100.
    #[error("hedging percentile must be above 0 and below 100, got {0}")]
    InvalidHedgePercentile(f64),
}

/// How long the latency history behind [`Hedge::at_percentile`] is: the percentile covers
/// the latencies of the last one to two windows of this length (**10 s**).
pub const HEDGE_WINDOW: Duration = Duration::from_secs(10);

/// When to hedge an attempt that has not answered; see [`RetryConfigBuilder::hedge_with`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hedge {
    pub(crate) kind: HedgeKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum HedgeKind {
    After(Duration),
    Percentile { percentile: f64, fallback: Duration },
}

impl Hedge {
    /// Hedges after a fixed `delay`.
    #[must_use]
    pub const fn after(delay: Duration) -> Self {
        Self {
            kind: HedgeKind::After(delay),
        }
    }

    /// Hedges after the `percentile` (above 0, below 100; e.g. `95.0`) of the latencies of
    /// this layer's recent attempts, so that only the slowest `100 - percentile` % are
    /// hedged. Until the last [`HEDGE_WINDOW`]s hold 50 latencies, hedges after `fallback`.
    ///
    /// A latency is the time from an attempt's start to its first answer (its own or its
    /// hedge's) that is not a failure; attempts cut off by a timeout are not counted. It is
    /// read from a histogram with four buckets per doubling, so the delay is rounded up by
    /// at most 19 %. The percentile is checked by [`RetryConfigBuilder::build`].
    #[must_use]
    pub const fn at_percentile(percentile: f64, fallback: Duration) -> Self {
        Self {
            kind: HedgeKind::Percentile {
                percentile,
                fallback,
            },
        }
    }

    /// The fixed delay, if this hedge has one.
    pub const fn delay(&self) -> Option<Duration> {
        match self.kind {
            HedgeKind::After(delay) => Some(delay),
            HedgeKind::Percentile { .. } => None,
        }
    }

    /// The latency percentile, if this hedge follows one.
    pub const fn percentile(&self) -> Option<f64> {
        match self.kind {
            HedgeKind::After(_) => None,
            HedgeKind::Percentile { percentile, .. } => Some(percentile),
        }
    }

    fn check(&self) -> Result<(), ConfigError> {
        match self.kind {
            HedgeKind::Percentile { percentile, .. }
                if !(percentile > 0.0 && percentile < 100.0) =>
            {
                Err(ConfigError::InvalidHedgePercentile(percentile))
            }
            _ => Ok(()),
        }
    }
}

/// How many retries all the calls through one layer may add: a Finagle / Envoy style retry
/// budget.
///
/// Every call deposits one token; every retry withdraws one. Within the last `ttl`, retries
/// may number at most `ratio` × the calls made plus `min_per_second` × `ttl` (in seconds), a
/// floor so that a lightly used service can still retry. So an outage multiplies load by at
/// most `1 + ratio`, plus the floor. When the budget is spent, the failed attempt's outcome is
/// returned as it is.
///
/// The window is cut into [`BUDGET_BUCKETS`] buckets; a bucket is forgotten as a whole, so
/// "the last `ttl`" means between `ttl × 9/10` and `ttl`. To keep the clock off the hot path,
/// calls are dated by the latest clock reading, taken by every retry and by every 16th call on
/// a thread: a call may count as made at that reading, earlier than it was, and so leave the
/// window early, which can only lower the budget, never exceed it. Calls are counted
/// per thread without atomic read-modify-writes; past eight threads calling through one
/// layer, threads share counters and two calls at the same instant may count once, which
/// again can only lower the budget.
///
/// The [`Default`]: ratio **0.2**, floor **10** retries per second, window **10 s**.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    pub(crate) ratio: f64,
    pub(crate) min_per_second: u32,
    pub(crate) ttl: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

impl BudgetConfig {
    /// A budget of `ratio` retries per call plus `min_per_second` retries per second, over a
    /// window of `ttl`. Checked by [`RetryConfigBuilder::build`].
    #[must_use]
    pub const fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        Self {
            ratio,
            min_per_second,
            ttl,
        }
    }

    /// The fraction of calls that may be retried (default 0.2).
    pub const fn ratio(&self) -> f64 {
        self.ratio
    }

    /// The retries per second allowed whatever the traffic (default 10).
    pub const fn min_per_second(&self) -> u32 {
        self.min_per_second
    }

    /// How far back calls and retries count (default 10 s).
    pub const fn ttl(&self) -> Duration {
        self.ttl
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !self.ratio.is_finite() || !(0.0..=1000.0).contains(&self.ratio) {
            return Err(ConfigError::InvalidBudgetRatio(self.ratio));
        }
        if self.ttl < Duration::from_secs(1) || self.ttl > Duration::from_secs(3600) {
            return Err(ConfigError::InvalidBudgetTtl(self.ttl));
        }
        Ok(())
    }
}

/// A validated retry configuration; build one with [`RetryConfig::builder`].
///
/// The [`Default`] is what most clients want:
///
/// | setting | default |
/// |---|---|
/// | attempts | **3** (the first call and two retries) |
/// | delays | [`Backoff::default()`]: exponential from **100 ms**, ×2, capped at **10 s**, full jitter |
/// | budget | [`BudgetConfig::default()`]: **20 %** of recent calls plus **10** per second, over **10 s** |
/// | per-attempt timeout | none |
/// | deadline | none |
/// | hedging | off |
#[derive(Clone)]
pub struct RetryConfig {
    pub(crate) max_attempts: NonZeroU32,
    pub(crate) backoff: Backoff,
    pub(crate) budget: Option<BudgetConfig>,
    pub(crate) attempt_timeout: Option<Duration>,
    pub(crate) deadline: Option<Duration>,
    pub(crate) hedge: Option<Hedge>,
    pub(crate) listener: Option<Arc<dyn Listener<RetryEvent>>>,
}

impl fmt::Debug for RetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryConfig")
            .field("max_attempts", &self.max_attempts)
            .field("backoff", &self.backoff)
            .field("budget", &self.budget)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("deadline", &self.deadline)
            .field("hedge", &self.hedge)
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .finish()
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_ATTEMPTS,
            backoff: Backoff::default(),
            budget: Some(BudgetConfig::default()),
            attempt_timeout: None,
            deadline: None,
            hedge: None,
            listener: None,
        }
    }
}

const DEFAULT_ATTEMPTS: NonZeroU32 = match NonZeroU32::new(3) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};

impl RetryConfig {
    /// A builder starting from the [defaults](RetryConfig#impl-Default-for-RetryConfig).
    pub fn builder() -> RetryConfigBuilder {
        RetryConfigBuilder {
            config: Self::default(),
        }
    }

    /// The most attempts per call, the first included.
    pub const fn max_attempts(&self) -> NonZeroU32 {
        self.max_attempts
    }

    /// The delays between attempts.
    pub const fn backoff(&self) -> Backoff {
        self.backoff
    }

    /// The retry budget, if retries are budgeted.
    pub const fn budget(&self) -> Option<BudgetConfig> {
        self.budget
    }

    /// The per-attempt timeout, if any.
    pub const fn attempt_timeout(&self) -> Option<Duration> {
        self.attempt_timeout
    }

    /// The overall deadline per call, if any.
    pub const fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// When attempts are hedged, if hedging is on.
    pub const fn hedge(&self) -> Option<Hedge> {
        self.hedge
    }
}

/// Builds a [`RetryConfig`]; every setting is checked by [`build`](Self::build).
#[derive(Clone, Debug)]
#[must_use]
pub struct RetryConfigBuilder {
    config: RetryConfig,
}

impl RetryConfigBuilder {
    /// At most `attempts` attempts per call, the first included (default 3). One attempt
    /// means no retries.
    pub fn max_attempts(mut self, attempts: NonZeroU32) -> Self {
        self.config.max_attempts = attempts;
        self
    }

    /// The delays between attempts (default [`Backoff::default()`]: exponential from 100 ms,
    /// ×2, capped at 10 s, full jitter). The backoff's own attempt and elapsed-time limits,
    /// if set, apply too.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Budgets retries with `budget` (default [`BudgetConfig::default()`]).
    pub fn budget(mut self, budget: BudgetConfig) -> Self {
        self.config.budget = Some(budget);
        self
    }

    /// Retries without a budget: every failed call may be retried up to the attempt limit.
    /// During an outage this multiplies load by the attempt count; prefer a budget.
    pub fn unbudgeted(mut self) -> Self {
        self.config.budget = None;
        self
    }

    /// Cancels an attempt that takes longer than `timeout`; it fails with
    /// [`AttemptTimedOut`](crate::AttemptTimedOut), which is retried like any error.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.config.attempt_timeout = Some(timeout);
        self
    }

    /// Bounds a whole call, retries and waits included, to `deadline` from the call: no
    /// retry starts whose delay would end at or after it, and an attempt still running (or a
    /// retry still waiting for the inner service's readiness) at the deadline is cancelled
    /// with [`DeadlineExceeded`](crate::DeadlineExceeded). A retry given up because its delay
    /// would cross the deadline returns the last attempt's own outcome instead.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.config.deadline = Some(deadline);
        self
    }

    /// Hedges: when an attempt has not answered after `delay`, sends the request again
    /// beside it (once per attempt, if the inner service is ready, an attempt is left and
    /// the budget allows it). The first outcome that is not a failure wins and the other
    /// attempt is cancelled (dropped); if both fail, the last failure is retried as usual.
    /// A hedge counts as an attempt and withdraws from the retry budget.
    ///
    /// To hedge at a latency percentile instead, see [`hedge_with`](Self::hedge_with).
    pub fn hedge(self, delay: Duration) -> Self {
        self.hedge_with(Hedge::after(delay))
    }

    /// Hedges as `hedge` says: after a fixed delay ([`Hedge::after`], the same as
    /// [`hedge`](Self::hedge)) or at a percentile of recent latencies
    /// ([`Hedge::at_percentile`]), so that only the slowest attempts are hedged.
    pub fn hedge_with(mut self, hedge: Hedge) -> Self {
        self.config.hedge = Some(hedge);
        self
    }

    /// Sends the layer's [`RetryEvent`]s to `listener`.
    pub fn listener(mut self, listener: impl Listener<RetryEvent> + 'static) -> Self {
        self.config.listener = Some(Arc::new(listener));
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroAttemptTimeout`], [`ConfigError::ZeroDeadline`] for zero durations;
    /// [`ConfigError::InvalidBudgetRatio`], [`ConfigError::InvalidBudgetTtl`] for a budget out
    /// of range; [`ConfigError::InvalidHedgePercentile`] for a percentile not strictly between
    /// 0 and 100.
    pub fn build(self) -> Result<RetryConfig, ConfigError> {
        let config = self.config;
        if config.attempt_timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::ZeroAttemptTimeout);
        }
        if config.deadline.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::ZeroDeadline);
        }
        if let Some(budget) = &config.budget {
            budget.check()?;
        }
        if let Some(hedge) = &config.hedge {
            hedge.check()?;
        }
        Ok(config)
    }
}
