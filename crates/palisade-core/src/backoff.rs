//! Delays between attempts: constant, linear and exponential curves, with jitter.
//!
//! A [`Backoff`] is a small, validated, `Copy` value. [`Backoff::delays`] turns it into a
//! [`Delays`] iterator that yields the wait before each retry and ends when a limit is reached.
//! Every retry loop in Palisade (retry layer, breaker's open wait, job retries, WebSocket
//! reconnects, upload resumes) draws its delays from here.
//!
//! # Curves
//!
//! For the `n`-th retry (`n` starting at 0), the *nominal* delay is:
//!
//! | curve | nominal delay |
//! |---|---|
//! | [`Backoff::constant(d)`](Backoff::constant) | `d` |
//! | [`Backoff::linear(base, step, cap)`](Backoff::linear) | `min(cap, base + step·n)` |
//! | [`Backoff::exponential(base, factor, cap)`](Backoff::exponential) | `min(cap, base·factorⁿ)` |
//!
//! # Jitter
//!
//! [`Jitter`] spreads retries out so that clients that failed together do not retry together.
//! The formulas are the ones from the AWS Architecture Blog post "Exponential Backoff And
//! Jitter":
//!
//! | jitter | delay |
//! |---|---|
//! | [`Jitter::None`] | the nominal delay |
//! | [`Jitter::Full`] | uniform in `[0, nominal]` |
//! | [`Jitter::Equal`] | `nominal/2` + uniform in `[0, nominal/2]` |
//! | [`Jitter::Decorrelated`] | uniform in `[base, 3·previous]`, capped at `cap` (`previous` starts at `base`) |
//!
//! Decorrelated jitter grows from its own previous value, not from the curve: it uses only the
//! curve's `base` and `cap`.
//!
//! # Limits
//!
//! [`Backoff::with_max_attempts`] bounds the number of attempts (the first call included, so
//! `n` attempts yield `n - 1` delays). [`Backoff::with_max_elapsed`] bounds the total time: a
//! delay that would end past the limit is not handed out, and the iterator ends instead.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use palisade_core::backoff::{Backoff, Jitter};
//!
//! # fn main() -> Result<(), palisade_core::backoff::BackoffError> {
//! let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(1))?
//!     .with_jitter(Jitter::None)
//!     .with_max_attempts(NonZeroU32::new(6).unwrap());
//!
//! let delays: Vec<Duration> = backoff.delays().collect();
//! assert_eq!(
//!     delays,
//!     [100, 200, 400, 800, 1000].map(Duration::from_millis),
//! );
//!
//! // With jitter, a seed makes the sequence reproducible (for tests).
//! let jittered = backoff.with_jitter(Jitter::Full).with_seed(7);
//! assert_eq!(jittered.delays().collect::<Vec<_>>(), jittered.delays().collect::<Vec<_>>());
//! # Ok(())
//! # }
//! ```

use std::iter::FusedIterator;
use std::num::NonZeroU32;
use std::time::Duration;

/// A validated backoff configuration: a curve, a jitter and optional limits.
///
/// See the [module docs](self) for the formulas. The [`Default`] is what most retry loops
/// want: exponential from 100 ms, factor 2, capped at 10 s, with [`Jitter::Full`] and no limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    curve: Curve,
    jitter: Jitter,
    max_attempts: Option<NonZeroU32>,
    max_elapsed: Option<Duration>,
    seed: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Curve {
    Constant {
        delay: Duration,
    },
    Linear {
        base: Duration,
        step: Duration,
        cap: Duration,
    },
    Exponential {
        base: Duration,
        factor: f64,
        cap: Duration,
    },
}

/// How a nominal delay is randomised. See the [module docs](self) for the formulas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Jitter {
    /// The nominal delay, unchanged.
    #[default]
    None,
    /// Uniform in `[0, nominal]`: the widest spread, the least total waiting.
    Full,
    /// Half the nominal delay plus uniform in `[0, nominal/2]`: never much shorter than nominal.
    Equal,
    /// Uniform in `[base, 3·previous]`, capped: grows from its own previous value.
    Decorrelated,
}

/// Why a [`Backoff`] could not be built.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum BackoffError {
    /// Linear and exponential curves need a base delay above zero.
    #[error("backoff base delay must be greater than zero")]
    ZeroBase,
    /// The exponential factor must be finite and at least 1 (a smaller factor would shrink).
    #[error("backoff factor must be a finite number of at least 1, got {0}")]
    InvalidFactor(f64),
    /// The cap is below the base delay, so the curve could never reach its base.
    #[error("backoff cap ({cap:?}) is below its base delay ({base:?})")]
    CapBelowBase {
        /// The base delay that was given.
        base: Duration,
        /// The cap that was given.
        cap: Duration,
    },
}

impl Default for Backoff {
    /// Exponential from 100 ms, factor 2, capped at 10 s, with [`Jitter::Full`] and no limits.
    fn default() -> Self {
        Self::from_curve(Curve::Exponential {
            base: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_secs(10),
        })
        .with_jitter(Jitter::Full)
    }
}

impl Backoff {
    const fn from_curve(curve: Curve) -> Self {
        Self {
            curve,
            jitter: Jitter::None,
            max_attempts: None,
            max_elapsed: None,
            seed: None,
        }
    }

    /// The same delay before every retry. A zero delay retries at once.
    #[must_use]
    pub const fn constant(delay: Duration) -> Self {
        Self::from_curve(Curve::Constant { delay })
    }

    /// `min(cap, base + step·n)` before the `n`-th retry.
    ///
    /// # Errors
    ///
    /// [`BackoffError::ZeroBase`] if `base` is zero, [`BackoffError::CapBelowBase`] if
    /// `cap < base`.
    pub const fn linear(
        base: Duration,
        step: Duration,
        cap: Duration,
    ) -> Result<Self, BackoffError> {
        if let Err(e) = check_base_cap(base, cap) {
            return Err(e);
        }
        Ok(Self::from_curve(Curve::Linear { base, step, cap }))
    }

    /// `min(cap, base·factorⁿ)` before the `n`-th retry.
    ///
    /// # Errors
    ///
    /// [`BackoffError::ZeroBase`] if `base` is zero, [`BackoffError::InvalidFactor`] if `factor`
    /// is below 1, NaN or infinite, [`BackoffError::CapBelowBase`] if `cap < base`.
    pub const fn exponential(
        base: Duration,
        factor: f64,
        cap: Duration,
    ) -> Result<Self, BackoffError> {
        if let Err(e) = check_base_cap(base, cap) {
            return Err(e);
        }
        if factor.is_nan() || factor < 1.0 || factor.is_infinite() {
            return Err(BackoffError::InvalidFactor(factor));
        }
        Ok(Self::from_curve(Curve::Exponential { base, factor, cap }))
    }

    /// Randomises each delay with `jitter`.
    #[must_use]
    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Stops after `attempts` attempts, the first call included: the iterator yields at most
    /// `attempts - 1` delays.
    #[must_use]
    pub const fn with_max_attempts(mut self, attempts: NonZeroU32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// Stops before a delay that would end more than `limit` after the first attempt started.
    #[must_use]
    pub const fn with_max_elapsed(mut self, limit: Duration) -> Self {
        self.max_elapsed = Some(limit);
        self
    }

    /// Seeds the jitter's random number generator, so that every [`Delays`] made from this
    /// value yields the same sequence. Meant for tests: in production, leave it unseeded so
    /// that clients do not retry in lockstep.
    #[must_use]
    pub const fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The jitter in use.
    pub const fn jitter(&self) -> Jitter {
        self.jitter
    }

    /// The attempt limit, the first call included, if any.
    pub const fn max_attempts(&self) -> Option<NonZeroU32> {
        self.max_attempts
    }

    /// The elapsed-time limit, if any.
    pub const fn max_elapsed(&self) -> Option<Duration> {
        self.max_elapsed
    }

    /// A fresh iterator over the delays, starting before the first retry.
    pub fn delays(&self) -> Delays {
        let rng = match self.seed {
            Some(seed) => fastrand::Rng::with_seed(seed),
            None => fastrand::Rng::new(),
        };
        let (grown, cap_nanos) = match self.curve {
            Curve::Exponential { base, cap, .. } => (nanos_f64(base), nanos_f64(cap)),
            Curve::Constant { .. } | Curve::Linear { .. } => (0.0, 0.0),
        };
        Delays {
            backoff: *self,
            rng,
            retries: 0,
            slept: Duration::ZERO,
            previous: self.base(),
            grown,
            cap_nanos,
            done: false,
        }
    }

    /// The smallest delay of the curve: its base (or its constant delay).
    const fn base(&self) -> Duration {
        match self.curve {
            Curve::Constant { delay } => delay,
            Curve::Linear { base, .. } | Curve::Exponential { base, .. } => base,
        }
    }

    /// The largest delay of the curve: its cap (or its constant delay).
    const fn cap(&self) -> Duration {
        match self.curve {
            Curve::Constant { delay } => delay,
            Curve::Linear { cap, .. } | Curve::Exponential { cap, .. } => cap,
        }
    }
}

const fn check_base_cap(base: Duration, cap: Duration) -> Result<(), BackoffError> {
    if base.is_zero() {
        return Err(BackoffError::ZeroBase);
    }
    if cap.as_nanos() < base.as_nanos() {
        return Err(BackoffError::CapBelowBase { base, cap });
    }
    Ok(())
}

/// The delays of a [`Backoff`], one per retry; made by [`Backoff::delays`].
///
/// As an [`Iterator`], elapsed time is the sum of the delays handed out so far. A retry loop
/// that also spends time in the calls themselves should ask with [`Delays::next_after`] and the
/// real time since its first attempt, so that [`Backoff::with_max_elapsed`] bounds the whole
/// loop. Once it has ended, it stays ended.
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    rng: fastrand::Rng,
    retries: u32,
    slept: Duration,
    previous: Duration,
    /// Exponential curves: `base·factorⁿ` in nanoseconds for the next retry, grown by one
    /// multiplication per retry (no `powi`), and the cap in the same unit.
    grown: f64,
    cap_nanos: f64,
    done: bool,
}

impl Delays {
    /// The delay before the next retry, given the time elapsed since the first attempt
    /// started; `None` when a limit says to stop.
    pub fn next_after(&mut self, elapsed: Duration) -> Option<Duration> {
        if self.done {
            return None;
        }
        if let Some(max) = self.backoff.max_attempts {
            // `retries` delays handed out means `retries + 1` attempts made.
            if self.retries.saturating_add(1) >= max.get() {
                self.done = true;
                return None;
            }
        }
        let delay = self.jittered();
        if let Some(limit) = self.backoff.max_elapsed {
            // An end past `Duration::MAX` is past any limit.
            if elapsed.checked_add(delay).is_none_or(|end| end > limit) {
                self.done = true;
                return None;
            }
        }
        self.retries = self.retries.saturating_add(1);
        // Only an elapsed limit reads `slept`, only decorrelated jitter reads `previous`.
        if self.backoff.max_elapsed.is_some() {
            self.slept = self.slept.saturating_add(delay);
        }
        if self.backoff.jitter == Jitter::Decorrelated {
            self.previous = delay;
        }
        if let Curve::Exponential { factor, .. } = self.backoff.curve {
            // Stops growing once past the cap; infinity is fine, it compares as past it.
            if self.grown < self.cap_nanos {
                self.grown *= factor;
            }
        }
        Some(delay)
    }

    /// How many delays have been handed out: the number of retries so far.
    pub const fn retries(&self) -> u32 {
        self.retries
    }

    /// The delay before the next retry, before jitter.
    fn nominal(&self) -> Duration {
        match self.backoff.curve {
            Curve::Constant { delay } => delay,
            Curve::Linear { base, step, cap } => step
                .checked_mul(self.retries)
                .and_then(|grown| base.checked_add(grown))
                .map_or(cap, |d| d.min(cap)),
            Curve::Exponential { cap, .. } => {
                if self.grown >= self.cap_nanos {
                    cap
                } else if self.grown < u64::MAX as f64 {
                    Duration::from_nanos(self.grown as u64)
                } else {
                    // Only for caps beyond 584 years.
                    Duration::try_from_secs_f64(self.grown / 1e9).map_or(cap, |d| d.min(cap))
                }
            }
        }
    }

    fn jittered(&mut self) -> Duration {
        let nominal = self.nominal();
        match self.backoff.jitter {
            Jitter::None => nominal,
            Jitter::Full => uniform(&mut self.rng, Duration::ZERO, nominal),
            Jitter::Equal => {
                let half = nominal / 2;
                half + uniform(&mut self.rng, Duration::ZERO, nominal - half)
            }
            Jitter::Decorrelated => {
                let base = self.backoff.base();
                let cap = self.backoff.cap();
                let high = self.previous.saturating_mul(3).max(base);
                uniform(&mut self.rng, base, high).min(cap)
            }
        }
    }
}

impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.next_after(self.slept)
    }
}

impl FusedIterator for Delays {}

/// `d` in nanoseconds, as a float (two 64-bit conversions, not one 128-bit one).
fn nanos_f64(d: Duration) -> f64 {
    d.as_secs() as f64 * 1e9 + f64::from(d.subsec_nanos())
}

/// A uniformly random duration in `[low, high]`, at nanosecond resolution.
fn uniform(rng: &mut fastrand::Rng, low: Duration, high: Duration) -> Duration {
    let (low, high) = (low.as_nanos(), high.as_nanos());
    if let (Ok(low), Ok(high)) = (u64::try_from(low), u64::try_from(high)) {
        // Every delay under 584 years: 64-bit arithmetic.
        return Duration::from_nanos(rng.u64(low..=high));
    }
    let nanos = rng.u128(low..=high);
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    // `nanos <= high.as_nanos()`, so the seconds fit in a u64 as they did in `high`.
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    Duration::new(secs, (nanos % NANOS_PER_SEC) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nominal_exponential_saturates_at_cap_for_huge_retry_counts() {
        let b = Backoff::exponential(Duration::from_millis(1), 2.0, Duration::MAX).unwrap();
        let mut delays = b.delays();
        delays.retries = u32::MAX - 1;
        delays.grown = f64::INFINITY;
        assert_eq!(delays.nominal(), Duration::MAX);
        let b = Backoff::linear(Duration::from_secs(1), Duration::MAX, Duration::MAX).unwrap();
        let mut delays = b.delays();
        delays.retries = u32::MAX - 1;
        assert_eq!(delays.nominal(), Duration::MAX);
    }

    #[test]
    fn uniform_covers_durations_beyond_u64_nanoseconds() {
        let mut rng = fastrand::Rng::with_seed(1);
        let d = uniform(&mut rng, Duration::MAX, Duration::MAX);
        assert_eq!(d, Duration::MAX);
    }
}
