//! The breaker's validated configuration.

use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::backoff::{Backoff, BackoffError, Jitter};
use palisade_core::event::Listener;

use crate::event::BreakerEvent;

/// The most probes a half-open breaker may admit per cycle.
pub const MAX_PROBES: u32 = 10_000;
/// The largest count-based window.
pub const MAX_WINDOW_CALLS: u32 = 1 << 20;
/// The most buckets a time-based window may have.
pub const MAX_BUCKETS: u32 = 1_000;

/// Which calls the failure and slow-call rates are computed over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// The last `n` recorded calls.
    Count(NonZeroU32),
    /// The calls of the last `span`, kept in `buckets` buckets of `span / buckets` each: a
    /// bucket is forgotten as a whole once it is older than `span`.
    Time {
        /// How far back the window reaches.
        span: Duration,
        /// How many buckets the span is cut into.
        buckets: NonZeroU32,
    },
}

/// When a closed breaker trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum TripPolicy {
    /// The failure (or slow-call) rate over a window reached its threshold.
    Rate {
        window: Window,
        min_calls: u32,
        failure_rate: f64,
        slow: Option<SlowCalls>,
    },
    /// `n` failures in a row.
    Consecutive(NonZeroU32),
}

/// Slow-call policy: calls at least `threshold` long are slow; a slow rate of `rate` trips.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct SlowCalls {
    pub(crate) threshold: Duration,
    pub(crate) rate: f64,
}

/// Why a [`CircuitBreakerConfig`] could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A rate threshold must be a percentage in `(0, 100]`.
    #[error("{what} threshold must be a percentage above 0 and at most 100, got {value}")]
    InvalidRate {
        /// Which threshold: `"failure rate"` or `"slow-call rate"`.
        what: &'static str,
        /// The value given.
        value: f64,
    },
    /// The minimum number of calls must be at least 1 and fit in the window.
    #[error(
        "minimum number of calls must be between 1 and the window's {window} calls, got {value}"
    )]
    InvalidMinCalls {
        /// The value given.
        value: u32,
        /// The window size it must fit in.
        window: u32,
    },
    /// The count window is larger than [`MAX_WINDOW_CALLS`].
    #[error("count window of {0} calls is larger than the maximum of {MAX_WINDOW_CALLS}")]
    WindowTooLarge(u32),
    /// A time window needs a span of at least one millisecond per bucket, and at most
    /// [`MAX_BUCKETS`] buckets.
    #[error(
        "time window of {span:?} cannot be cut into {buckets} buckets (at least 1 ms each, at most {MAX_BUCKETS})"
    )]
    InvalidTimeWindow {
        /// The span given.
        span: Duration,
        /// The number of buckets given.
        buckets: u32,
    },
    /// A slow-call threshold of zero would make every call slow.
    #[error("slow-call duration threshold must be greater than zero")]
    ZeroSlowThreshold,
    /// The slow-call rate needs a window; the consecutive-failures policy has none.
    #[error(
        "a slow-call rate needs a count or time window; the consecutive-failures policy has none"
    )]
    SlowCallsNeedWindow,
    /// More half-open probes than [`MAX_PROBES`].
    #[error("half-open probes must be at most {MAX_PROBES}, got {0}")]
    TooManyProbes(u32),
    /// An invalid open-wait backoff.
    #[error("invalid open-state wait: {0}")]
    OpenWait(#[from] BackoffError),
    /// The open-state wait yields no delay at all (a backoff limited to one attempt).
    #[error("open-state wait backoff yields no delay; allow it at least two attempts")]
    NoOpenWait,
}

/// A validated circuit breaker configuration; build one with [`CircuitBreakerConfig::builder`].
///
/// The [`Default`] is what most services want:
///
/// | setting | default |
/// |---|---|
/// | trip policy | failure rate of **50 %** |
/// | window | the last **100** calls |
/// | minimum calls before it may trip | **20** |
/// | slow calls | not counted |
/// | wait in open | exponential from **5 s**, ×2 per consecutive trip, capped at **60 s**, equal jitter |
/// | half-open probes | **3** (all must succeed to close) |
#[derive(Clone)]
pub struct CircuitBreakerConfig {
    pub(crate) policy: TripPolicy,
    pub(crate) open_wait: Backoff,
    pub(crate) probes: NonZeroU32,
    pub(crate) name: Cow<'static, str>,
    pub(crate) listener: Option<Arc<dyn Listener<BreakerEvent>>>,
}

impl fmt::Debug for CircuitBreakerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfig")
            .field("policy", &self.policy)
            .field("open_wait", &self.open_wait)
            .field("probes", &self.probes)
            .field("name", &self.name)
            .field("listener", &self.listener.as_ref().map(|_| "..."))
            .finish()
    }
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        // The builder's defaults are valid by construction.
        CircuitBreakerConfigBuilder::new()
            .build()
            .unwrap_or_else(|_| unreachable!("the default configuration is valid"))
    }
}

impl CircuitBreakerConfig {
    /// A builder starting from the [defaults](CircuitBreakerConfig#impl-Default-for-CircuitBreakerConfig).
    pub fn builder() -> CircuitBreakerConfigBuilder {
        CircuitBreakerConfigBuilder::new()
    }

    /// The breaker's name, used in traces and metrics.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many probes a half-open breaker admits per cycle.
    pub fn half_open_probes(&self) -> NonZeroU32 {
        self.probes
    }

    /// The slow-call threshold, if slow calls are counted.
    pub(crate) fn slow_threshold(&self) -> Option<Duration> {
        match self.policy {
            TripPolicy::Rate {
                slow: Some(slow), ..
            } => Some(slow.threshold),
            _ => None,
        }
    }
}

/// Builds a [`CircuitBreakerConfig`]; every setting is checked by [`build`](Self::build).
#[derive(Clone)]
#[must_use]
pub struct CircuitBreakerConfigBuilder {
    window: Window,
    min_calls: u32,
    failure_rate: f64,
    slow: Option<(Duration, f64)>,
    consecutive: Option<NonZeroU32>,
    open_wait: Result<Backoff, BackoffError>,
    probes: u32,
    name: Cow<'static, str>,
    listener: Option<Arc<dyn Listener<BreakerEvent>>>,
}

impl fmt::Debug for CircuitBreakerConfigBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerConfigBuilder")
            .field("window", &self.window)
            .field("min_calls", &self.min_calls)
            .field("failure_rate", &self.failure_rate)
            .field("slow", &self.slow)
            .field("consecutive", &self.consecutive)
            .field("open_wait", &self.open_wait)
            .field("probes", &self.probes)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

impl CircuitBreakerConfigBuilder {
    fn new() -> Self {
        Self {
            window: Window::Count(nonzero(100)),
            min_calls: 20,
            failure_rate: 50.0,
            slow: None,
            consecutive: None,
            open_wait: Backoff::exponential(Duration::from_secs(5), 2.0, Duration::from_secs(60))
                .map(|b| b.with_jitter(Jitter::Equal)),
            probes: 3,
            name: Cow::Borrowed("circuit_breaker"),
            listener: None,
        }
    }

    /// Trips when at least `percent` % of the window's calls failed (default 50).
    pub fn failure_rate(mut self, percent: f64) -> Self {
        self.failure_rate = percent;
        self.consecutive = None;
        self
    }

    /// Computes rates over the last `calls` calls (default 100).
    pub fn count_window(mut self, calls: NonZeroU32) -> Self {
        self.window = Window::Count(calls);
        self
    }

    /// Computes rates over the calls of the last `span`, kept in `buckets` buckets.
    pub fn time_window(mut self, span: Duration, buckets: NonZeroU32) -> Self {
        self.window = Window::Time { span, buckets };
        self
    }

    /// Does not trip before the window holds `calls` calls (default 20).
    pub fn min_calls(mut self, calls: u32) -> Self {
        self.min_calls = calls;
        self
    }

    /// Counts calls that take `threshold` or longer as slow, and trips when at least
    /// `percent` % of the window's calls were slow. A slow half-open probe reopens the
    /// breaker like a failed one.
    pub fn slow_calls(mut self, threshold: Duration, percent: f64) -> Self {
        self.slow = Some((threshold, percent));
        self
    }

    /// Trips after `failures` failures in a row instead of on a rate (the simple policy).
    pub fn consecutive_failures(mut self, failures: NonZeroU32) -> Self {
        self.consecutive = Some(failures);
        self
    }

    /// How long the breaker stays open before it admits probes: the first trip waits the
    /// backoff's first delay, each further trip without closing in between the next one.
    /// Once the backoff ends (its attempt or elapsed limit), its last delay repeats.
    pub fn open_wait(mut self, backoff: Backoff) -> Self {
        self.open_wait = Ok(backoff);
        self
    }

    /// How many probes a half-open breaker admits per cycle (default 3); that many
    /// successes close it.
    pub fn half_open_probes(mut self, probes: NonZeroU32) -> Self {
        self.probes = probes.get();
        self
    }

    /// The breaker's name in traces and metrics (default `"circuit_breaker"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Receives the breaker's [`BreakerEvent`]s (state changes, rejections).
    pub fn listener(mut self, listener: impl Listener<BreakerEvent> + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the first invalid setting.
    pub fn build(self) -> Result<CircuitBreakerConfig, ConfigError> {
        let open_wait = self.open_wait?;
        if open_wait.delays().next().is_none() {
            return Err(ConfigError::NoOpenWait);
        }
        if self.probes > MAX_PROBES {
            return Err(ConfigError::TooManyProbes(self.probes));
        }
        let policy = match self.consecutive {
            Some(n) => {
                if self.slow.is_some() {
                    return Err(ConfigError::SlowCallsNeedWindow);
                }
                TripPolicy::Consecutive(n)
            }
            None => {
                let capacity = match self.window {
                    Window::Count(calls) => {
                        if calls.get() > MAX_WINDOW_CALLS {
                            return Err(ConfigError::WindowTooLarge(calls.get()));
                        }
                        calls.get()
                    }
                    Window::Time { span, buckets } => {
                        let per_bucket = span / buckets.get();
                        if buckets.get() > MAX_BUCKETS || per_bucket < Duration::from_millis(1) {
                            return Err(ConfigError::InvalidTimeWindow {
                                span,
                                buckets: buckets.get(),
                            });
                        }
                        u32::MAX
                    }
                };
                if self.min_calls == 0 || self.min_calls > capacity {
                    return Err(ConfigError::InvalidMinCalls {
                        value: self.min_calls,
                        window: capacity,
                    });
                }
                check_rate("failure rate", self.failure_rate)?;
                let slow = match self.slow {
                    Some((threshold, rate)) => {
                        if threshold.is_zero() {
                            return Err(ConfigError::ZeroSlowThreshold);
                        }
                        check_rate("slow-call rate", rate)?;
                        Some(SlowCalls { threshold, rate })
                    }
                    None => None,
                };
                TripPolicy::Rate {
                    window: self.window,
                    min_calls: self.min_calls,
                    failure_rate: self.failure_rate,
                    slow,
                }
            }
        };
        Ok(CircuitBreakerConfig {
            policy,
            open_wait,
            probes: nonzero(self.probes),
            name: self.name,
            listener: self.listener,
        })
    }
}

fn check_rate(what: &'static str, value: f64) -> Result<(), ConfigError> {
    if value > 0.0 && value <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::InvalidRate { what, value })
    }
}
