//! Adaptive limits: the pool finds its own limit from the latency and the failures it sees.
//!
//! With an [`AdaptiveLimit`] in its [configuration](crate::PoolConfigBuilder::adaptive), a pool
//! measures every call it admits, from admission to the moment the permit is given back (with
//! `http`, the end of the response body), and once per **window** moves its limit between the
//! configured bounds, by one of two algorithms from Netflix's `concurrency-limits`:
//!
//! - [`Aimd`] (additive increase, multiplicative decrease; loss based): a window with a drop,
//!   or whose average latency is above the [latency threshold](Aimd::latency_threshold),
//!   multiplies the limit by the [backoff ratio](Aimd::backoff_ratio) (and lowers it by at
//!   least one); a window where the calls used at least half the limit raises it by one.
//! - [`Gradient2`] (latency gradient): the window's average latency (the short RTT) is
//!   compared with a long-term exponentially smoothed average (the long RTT);
//!   `gradient = clamp(tolerance × long / short, 0.5, 1)`, the new estimate is
//!   `limit × gradient + queue_size`, smoothed as `limit × (1 − smoothing) + estimate ×
//!   smoothing`. When the short RTT falls below half the long RTT (the load is gone), the long
//!   RTT decays by 5 % per window so the baseline follows. A window where the calls used less
//!   than half the limit does not move it (the service is not the bottleneck).
//!
//! A **drop** is a call that completed with an error (with `http`, a `429`, `503` or `504`
//! response too): the service, or something behind it, saying it is overloaded. Calls that
//! were cancelled before they completed are not measured. The pool's own rejections (queue
//! full, queue timeout) are not drops: they are the limit doing its job, and lowering the limit
//! because of them would only shed more.
//!
//! A window closes once it has lasted [`window`](AdaptiveLimit::window) (default 1 s) **and**
//! holds [`min_samples`](AdaptiveLimit::min_samples) measured calls (default 10), so a slow
//! trickle of calls is judged on enough of them. Adapting costs a clock read on admission and
//! one short lock on release; without an adaptive limit the pool reads no clock.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use palisade_pool::{AdaptiveLimit, Aimd, ConcurrencyPoolLayer, PoolConfig};
//!
//! # fn main() -> Result<(), palisade_pool::ConfigError> {
//! let nz = |n| NonZeroU32::new(n).unwrap();
//! // Start at 20, move between 4 and 100; back off by 10 % when calls average over 250 ms.
//! let adaptive = AdaptiveLimit::new(
//!     Aimd::new().latency_threshold(Duration::from_millis(250)),
//!     nz(4),
//!     nz(100),
//! );
//! let config = PoolConfig::builder(nz(20)).adaptive(adaptive).build()?;
//! let layer = ConcurrencyPoolLayer::new(config);
//! assert_eq!(layer.handle().limit(), 20);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::config::{ConfigError, MAX_LIMIT};

/// Additive increase, multiplicative decrease: a loss-based adaptive limit.
///
/// | setting | default |
/// |---|---|
/// | backoff ratio | **0.9** (a drop costs 10 % of the limit) |
/// | latency threshold | **5 s** (a slower window counts as a drop) |
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Aimd {
    backoff_ratio: f64,
    latency_threshold: Duration,
}

impl Aimd {
    /// AIMD with the default settings.
    pub const fn new() -> Self {
        Self {
            backoff_ratio: 0.9,
            latency_threshold: Duration::from_secs(5),
        }
    }

    /// What the limit is multiplied by after a window with a drop, from 0.5 (halve it) up to,
    /// not including, 1 (default 0.9). The limit always falls by at least one.
    pub const fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.backoff_ratio = ratio;
        self
    }

    /// A window whose calls took longer than this on average counts as a drop (default 5 s).
    pub const fn latency_threshold(mut self, threshold: Duration) -> Self {
        self.latency_threshold = threshold;
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(0.5..1.0).contains(&self.backoff_ratio) {
            return Err(ConfigError::InvalidAdaptive(
                "the AIMD backoff ratio must be at least 0.5 and below 1",
            ));
        }
        if self.latency_threshold.is_zero() {
            return Err(ConfigError::InvalidAdaptive(
                "the AIMD latency threshold must be greater than zero",
            ));
        }
        Ok(())
    }
}

impl Default for Aimd {
    fn default() -> Self {
        Self::new()
    }
}

/// A latency-gradient adaptive limit: the window's average latency against a long-term
/// smoothed average.
///
/// | setting | default |
/// |---|---|
/// | tolerance | **1.5** (latency may grow by half before the limit falls) |
/// | queue size | **4** (how far the limit may grow per window while latency holds) |
/// | smoothing | **0.2** (how much of a new estimate is taken per window) |
/// | long window | **600** windows (the long-term average's horizon) |
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Gradient2 {
    tolerance: f64,
    queue_size: u32,
    smoothing: f64,
    long_window: u32,
}

impl Gradient2 {
    /// Gradient2 with the default settings.
    pub const fn new() -> Self {
        Self {
            tolerance: 1.5,
            queue_size: 4,
            smoothing: 0.2,
            long_window: 600,
        }
    }

    /// How much slower than the long-term average a window may be before the limit falls, as
    /// a ratio of at least 1 (default 1.5).
    pub const fn tolerance(mut self, tolerance: f64) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The headroom added to the estimate each window (default 4): how far the limit grows
    /// while latency holds, before smoothing.
    pub const fn queue_size(mut self, queue_size: u32) -> Self {
        self.queue_size = queue_size;
        self
    }

    /// The share of a new estimate taken each window, above 0 and at most 1 (default 0.2).
    pub const fn smoothing(mut self, smoothing: f64) -> Self {
        self.smoothing = smoothing;
        self
    }

    /// The number of windows the long-term average spans (default 600, at least 1); its first
    /// 10 windows are averaged plainly.
    pub const fn long_window(mut self, windows: u32) -> Self {
        self.long_window = windows;
        self
    }

    fn check(&self) -> Result<(), ConfigError> {
        if !(self.tolerance >= 1.0 && self.tolerance.is_finite()) {
            return Err(ConfigError::InvalidAdaptive(
                "the Gradient2 tolerance must be a finite ratio of at least 1",
            ));
        }
        if !(self.smoothing > 0.0 && self.smoothing <= 1.0) {
            return Err(ConfigError::InvalidAdaptive(
                "the Gradient2 smoothing must be above 0 and at most 1",
            ));
        }
        if self.long_window == 0 {
            return Err(ConfigError::InvalidAdaptive(
                "the Gradient2 long window must be at least one window",
            ));
        }
        Ok(())
    }
}

impl Default for Gradient2 {
    fn default() -> Self {
        Self::new()
    }
}

/// The algorithm an [`AdaptiveLimit`] uses; made from an [`Aimd`] or a [`Gradient2`].
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub enum Algorithm {
    /// Additive increase, multiplicative decrease.
    Aimd(Aimd),
    /// The latency gradient.
    Gradient2(Gradient2),
}

impl From<Aimd> for Algorithm {
    fn from(aimd: Aimd) -> Self {
        Algorithm::Aimd(aimd)
    }
}

impl From<Gradient2> for Algorithm {
    fn from(gradient: Gradient2) -> Self {
        Algorithm::Gradient2(gradient)
    }
}

/// An adaptive limit: an [`Algorithm`], the bounds it moves the limit between, and its
/// window; see the [module docs](self).
///
/// The pool starts at the limit given to [`PoolConfig::builder`](crate::PoolConfig::builder),
/// which must lie within the bounds.
///
/// | setting | default |
/// |---|---|
/// | window | **1 s** |
/// | samples per window | at least **10** |
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct AdaptiveLimit {
    algorithm: Algorithm,
    min: u32,
    max: u32,
    window: Duration,
    min_samples: u32,
}

impl AdaptiveLimit {
    /// Moves the limit by `algorithm`, never below `min` nor above `max`.
    pub fn new(algorithm: impl Into<Algorithm>, min: NonZeroU32, max: NonZeroU32) -> Self {
        Self {
            algorithm: algorithm.into(),
            min: min.get(),
            max: max.get(),
            window: Duration::from_secs(1),
            min_samples: 10,
        }
    }

    /// How long a window lasts at least (default 1 s).
    pub const fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// How many measured calls a window needs before it closes (default 10, at least 1).
    pub const fn min_samples(mut self, samples: u32) -> Self {
        self.min_samples = samples;
        self
    }

    /// The algorithm.
    pub const fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The lowest limit the algorithm sets.
    pub const fn min(&self) -> u32 {
        self.min
    }

    /// The highest limit the algorithm sets.
    pub const fn max(&self) -> u32 {
        self.max
    }

    pub(crate) fn check(&self, initial: u32) -> Result<(), ConfigError> {
        if self.max > MAX_LIMIT {
            return Err(ConfigError::LimitTooHigh(self.max));
        }
        if !(self.min <= initial && initial <= self.max) {
            return Err(ConfigError::AdaptiveBounds {
                min: self.min,
                initial,
                max: self.max,
            });
        }
        if self.window.is_zero() {
            return Err(ConfigError::InvalidAdaptive(
                "the adaptive window must be greater than zero",
            ));
        }
        if self.min_samples == 0 {
            return Err(ConfigError::InvalidAdaptive(
                "an adaptive window needs at least one sample",
            ));
        }
        match &self.algorithm {
            Algorithm::Aimd(aimd) => aimd.check(),
            Algorithm::Gradient2(gradient) => gradient.check(),
        }
    }
}

/// What one window saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct WindowSummary {
    /// The calls' average latency.
    pub(crate) rtt: Duration,
    /// The most calls in flight at any measured call's admission.
    pub(crate) max_in_flight: u32,
    /// Whether any call was a drop.
    pub(crate) dropped: bool,
}

/// The algorithms' memory between windows.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Memory {
    /// Gradient2's estimate, kept fractional so small steps add up.
    estimate: f64,
    /// Gradient2's long RTT, in nanoseconds, and how many windows it has seen.
    long_rtt: f64,
    long_count: u32,
}

impl AdaptiveLimit {
    /// The limit after a window, from the limit now.
    fn next(&self, memory: &mut Memory, limit: u32, window: &WindowSummary) -> u32 {
        let next = match &self.algorithm {
            Algorithm::Aimd(aimd) => {
                if window.dropped || window.rtt > aimd.latency_threshold {
                    let backed_off = (f64::from(limit) * aimd.backoff_ratio) as u32;
                    backed_off.min(limit.saturating_sub(1))
                } else if u64::from(window.max_in_flight) * 2 >= u64::from(limit) {
                    limit.saturating_add(1)
                } else {
                    limit
                }
            }
            Algorithm::Gradient2(gradient) => {
                // Someone else (a handle) set the limit: continue from there.
                if memory.estimate as u32 != limit {
                    memory.estimate = f64::from(limit);
                }
                let short = window.rtt.as_nanos() as f64;
                memory.long_count = memory.long_count.saturating_add(1);
                if memory.long_count <= 10 {
                    let n = f64::from(memory.long_count);
                    memory.long_rtt += (short - memory.long_rtt) / n;
                } else {
                    let factor = 2.0 / (f64::from(gradient.long_window) + 1.0);
                    memory.long_rtt = memory.long_rtt * (1.0 - factor) + short * factor;
                }
                let long = memory.long_rtt;
                if short > 0.0 && long / short > 2.0 {
                    memory.long_rtt *= 0.95;
                }
                if f64::from(window.max_in_flight) < memory.estimate / 2.0 {
                    return limit;
                }
                let ratio = if short > 0.0 {
                    gradient.tolerance * long / short
                } else {
                    1.0
                };
                let gradient_now = ratio.clamp(0.5, 1.0);
                let target = memory.estimate * gradient_now + f64::from(gradient.queue_size);
                let smoothed =
                    memory.estimate * (1.0 - gradient.smoothing) + target * gradient.smoothing;
                memory.estimate = smoothed.clamp(f64::from(self.min), f64::from(self.max));
                memory.estimate as u32
            }
        };
        next.clamp(self.min, self.max)
    }
}

/// A pool's adaptive state: the open window and the algorithm's memory.
pub(crate) struct Adapter {
    config: AdaptiveLimit,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    opened: Option<Instant>,
    rtt_sum: Duration,
    samples: u32,
    max_in_flight: u32,
    dropped: bool,
    memory: Memory,
}

impl Adapter {
    pub(crate) fn new(config: AdaptiveLimit, initial: u32) -> Self {
        Self {
            config,
            state: Mutex::new(State {
                opened: None,
                rtt_sum: Duration::ZERO,
                samples: 0,
                max_in_flight: 0,
                dropped: false,
                memory: Memory {
                    estimate: f64::from(initial),
                    long_rtt: 0.0,
                    long_count: 0,
                },
            }),
        }
    }

    /// Adds one measured call; when that closes the window, returns its summary and the new
    /// limit (which may equal `limit`).
    pub(crate) fn sample(
        &self,
        rtt: Duration,
        in_flight: u32,
        dropped: bool,
        now: Instant,
        limit: impl FnOnce() -> u32,
    ) -> Option<(WindowSummary, u32)> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let opened = *state
            .opened
            .get_or_insert_with(|| now.checked_sub(rtt).unwrap_or(now));
        state.rtt_sum = state.rtt_sum.saturating_add(rtt);
        state.samples += 1;
        state.max_in_flight = state.max_in_flight.max(in_flight);
        state.dropped |= dropped;
        if now.saturating_duration_since(opened) < self.config.window
            || state.samples < self.config.min_samples
        {
            return None;
        }
        let summary = WindowSummary {
            rtt: state.rtt_sum / state.samples,
            max_in_flight: state.max_in_flight,
            dropped: state.dropped,
        };
        state.opened = Some(now);
        state.rtt_sum = Duration::ZERO;
        state.samples = 0;
        state.max_in_flight = 0;
        state.dropped = false;
        let next = self.config.next(&mut state.memory, limit(), &summary);
        Some((summary, next))
    }
}

impl fmt::Debug for Adapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    fn window(rtt_ms: u64, max_in_flight: u32, dropped: bool) -> WindowSummary {
        WindowSummary {
            rtt: Duration::from_millis(rtt_ms),
            max_in_flight,
            dropped,
        }
    }

    fn fresh(limit: u32) -> Memory {
        Memory {
            estimate: f64::from(limit),
            long_rtt: 0.0,
            long_count: 0,
        }
    }

    #[test]
    fn aimd_backs_off_by_its_ratio_on_a_drop_or_a_slow_window_and_adds_one_when_busy() {
        let aimd = AdaptiveLimit::new(
            Aimd::new().latency_threshold(Duration::from_millis(100)),
            nz(2),
            nz(50),
        );
        let mut memory = fresh(20);
        assert_eq!(aimd.next(&mut memory, 20, &window(10, 20, true)), 18);
        assert_eq!(aimd.next(&mut memory, 20, &window(150, 20, false)), 18);
        // At least one down, never below the minimum.
        assert_eq!(aimd.next(&mut memory, 5, &window(10, 5, true)), 4);
        assert_eq!(aimd.next(&mut memory, 2, &window(10, 2, true)), 2);
        // Up by one when the calls used at least half the limit, never above the maximum.
        assert_eq!(aimd.next(&mut memory, 20, &window(10, 10, false)), 21);
        assert_eq!(aimd.next(&mut memory, 20, &window(10, 9, false)), 20);
        assert_eq!(aimd.next(&mut memory, 50, &window(10, 50, false)), 50);
    }

    #[test]
    fn gradient2_falls_when_latency_outgrows_the_tolerance_and_climbs_when_it_holds() {
        let gradient = AdaptiveLimit::new(Gradient2::new(), nz(2), nz(100));
        let mut memory = fresh(40);
        let mut limit = 40;
        // A steady baseline: the gradient is 1, the limit climbs by the smoothed queue size.
        for _ in 0..10 {
            limit = gradient.next(&mut memory, limit, &window(10, limit, false));
        }
        assert!((47..=48).contains(&limit), "40 + 10 × 0.2 × 4, got {limit}");
        // Latency 20× the baseline: the gradient is 0.5; the limit falls towards 8.
        for _ in 0..30 {
            limit = gradient.next(&mut memory, limit, &window(200, limit, false));
        }
        assert!(limit < 12, "fell to {limit}");
        // Latency back to normal: the limit climbs again.
        for _ in 0..60 {
            limit = gradient.next(&mut memory, limit, &window(10, limit, false));
        }
        assert!(limit > 50, "climbed back to {limit}");
    }

    #[test]
    fn gradient2_holds_the_limit_while_the_calls_use_less_than_half_of_it() {
        let gradient = AdaptiveLimit::new(Gradient2::new(), nz(2), nz(100));
        let mut memory = fresh(40);
        assert_eq!(gradient.next(&mut memory, 40, &window(10, 19, false)), 40);
        assert_eq!(gradient.next(&mut memory, 40, &window(500, 19, false)), 40);
    }

    #[test]
    fn gradient2_continues_from_a_limit_set_by_hand() {
        let gradient = AdaptiveLimit::new(Gradient2::new(), nz(2), nz(100));
        let mut memory = fresh(40);
        let next = gradient.next(&mut memory, 10, &window(10, 10, false));
        assert!((10..=11).contains(&next), "{next}");
    }

    #[test]
    fn a_window_closes_after_its_duration_and_its_minimum_samples() {
        let adapter = Adapter::new(
            AdaptiveLimit::new(Aimd::new(), nz(1), nz(10))
                .window(Duration::from_secs(1))
                .min_samples(3),
            5,
        );
        let start = Instant::now();
        let ms = Duration::from_millis;
        assert_eq!(adapter.sample(ms(10), 5, false, start, || 5), None);
        assert_eq!(
            adapter.sample(ms(10), 5, false, start + ms(2000), || 5),
            None
        );
        let (summary, next) = adapter
            .sample(ms(40), 3, false, start + ms(2001), || 5)
            .expect("the window closed");
        assert_eq!(summary, window(20, 5, false));
        assert_eq!(next, 6);
        // A new window opened.
        assert_eq!(
            adapter.sample(ms(10), 5, true, start + ms(2002), || 6),
            None
        );
    }
}
