//! The in-process limiter: a quota, an algorithm's state and a clock.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::algorithm::{Algorithm, State};
use crate::clock::{Clock, Epoch};
use crate::config::ConfigError;
use crate::decision::{InsufficientCapacity, Limited, Refusal, Snapshot};
use crate::quota::Quota;

/// The largest `count` a [`SlidingWindowLog`](Algorithm::SlidingWindowLog) may have: it keeps
/// up to one entry (12 bytes) per unit of its quota.
pub const MAX_LOG_ENTRIES: u32 = 1 << 16;

/// The most nanoseconds GCRA's capacity may span (about 146 years): keeps its arithmetic far
/// from overflow.
const MAX_CAPACITY: u64 = 1 << 62;

/// How many words [`Params`] takes in a [`ParamsCell`].
const WORDS: usize = 5;

/// A quota in the algorithms' units: nanoseconds and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) count: u32,
    pub(crate) burst: u32,
    /// The window, in nanoseconds.
    pub(crate) window: u64,
    /// Nanoseconds to replenish one unit.
    pub(crate) interval: u64,
    /// `burst × interval`, at most [`MAX_CAPACITY`]: the continuous algorithms' capacity.
    pub(crate) capacity: u64,
    /// `u64::MAX / interval`: divides by the interval with a multiplication.
    reciprocal: u64,
}

impl Params {
    pub(crate) fn new(quota: &Quota) -> Self {
        let interval = quota.interval_nanos();
        let capacity = u128::from(quota.burst()) * u128::from(interval);
        Self {
            count: quota.count(),
            burst: quota.burst(),
            window: quota.window_nanos(),
            interval,
            capacity: u64::try_from(capacity.min(u128::from(MAX_CAPACITY))).unwrap_or(MAX_CAPACITY),
            reciprocal: u64::MAX / interval,
        }
    }

    /// Whole units in `nanos` (at most the capacity): `nanos / interval`, without a
    /// division. The reciprocal's quotient is exact or one short, and `nanos` is far below
    /// 2⁶⁴, so one correction makes it exact.
    #[inline]
    pub(crate) fn units(&self, nanos: u64) -> u32 {
        let estimate = ((u128::from(nanos) * u128::from(self.reciprocal)) >> 64) as u64;
        let units = if (estimate + 1) * self.interval <= nanos {
            estimate + 1
        } else {
            estimate
        };
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    fn quota(&self) -> Quota {
        let nz = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        Quota::new(nz(self.count), Duration::from_nanos(self.window))
            .map(|quota| quota.allow_burst(nz(self.burst)))
            .unwrap_or_else(|_| unreachable!("parameters come from a valid quota"))
    }

    /// The policy's quota for headers: the count, or the burst when it differs.
    pub(crate) fn policy_limit(&self) -> u32 {
        if self.burst == self.count {
            self.count
        } else {
            self.burst
        }
    }

    /// The policy's window: the window, or the time to refill the burst when it differs.
    pub(crate) fn policy_window(&self) -> u64 {
        if self.burst == self.count {
            self.window
        } else {
            self.capacity
        }
    }

    fn capacity_units(&self, algorithm: Algorithm) -> u32 {
        if algorithm.uses_burst() {
            self.burst
        } else {
            self.count
        }
    }

    fn words(&self) -> [u64; WORDS] {
        [
            u64::from(self.count) << 32 | u64::from(self.burst),
            self.window,
            self.interval,
            self.capacity,
            self.reciprocal,
        ]
    }

    fn from_words(words: [u64; WORDS]) -> Self {
        Self {
            count: (words[0] >> 32) as u32,
            burst: words[0] as u32,
            window: words[1],
            interval: words[2],
            capacity: words[3],
            reciprocal: words[4],
        }
    }
}

/// The quota, readable on every check without a lock and replaceable at runtime: a sequence
/// lock (readers retry if a change raced with their read; changes are serialised).
#[derive(Debug)]
struct ParamsCell {
    sequence: AtomicU64,
    words: [AtomicU64; WORDS],
    writer: Mutex<()>,
}

impl ParamsCell {
    fn new(params: &Params) -> Self {
        Self {
            sequence: AtomicU64::new(0),
            words: params.words().map(AtomicU64::new),
            writer: Mutex::new(()),
        }
    }

    #[inline(always)]
    fn load(&self) -> Params {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let words = [
                self.words[0].load(Ordering::Relaxed),
                self.words[1].load(Ordering::Relaxed),
                self.words[2].load(Ordering::Relaxed),
                self.words[3].load(Ordering::Relaxed),
                self.words[4].load(Ordering::Relaxed),
            ];
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return Params::from_words(words);
            }
        }
    }

    fn store(&self, params: &Params) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence.store(sequence + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (word, value) in self.words.iter().zip(params.words()) {
            word.store(value, Ordering::Relaxed);
        }
        self.sequence.store(sequence + 2, Ordering::Release);
    }
}

/// The limiter every front end (the layer, [`RateLimiter`]) shares.
#[derive(Debug)]
pub(crate) struct Limiter {
    params: ParamsCell,
    state: State,
    algorithm: Algorithm,
    /// Time zero of the algorithms' nanoseconds, and the clock they are read from.
    epoch: Epoch,
}

impl Limiter {
    pub(crate) fn new(
        quota: Quota,
        algorithm: Algorithm,
        clock: &Clock,
    ) -> Result<Self, ConfigError> {
        check_fits(&quota, algorithm)?;
        let params = Params::new(&quota);
        Ok(Self {
            state: State::new(algorithm, &params),
            params: ParamsCell::new(&params),
            algorithm,
            epoch: clock.start(),
        })
    }

    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.epoch.nanos()
    }

    pub(crate) fn clock(&self) -> Clock {
        self.epoch.clock()
    }

    /// Checks `cost` units now; `consume: false` only looks.
    #[inline(always)]
    pub(crate) fn check(&self, cost: u32, consume: bool) -> Result<Snapshot, Refusal> {
        let params = self.params.load();
        self.fits(&params, cost)?;
        Ok(self.state.check(&params, self.now(), cost, consume)?)
    }

    /// Checks one unit now: every limiter holds at least one, so only the limit can refuse.
    #[inline(always)]
    pub(crate) fn check_one(&self) -> Result<Snapshot, Limited> {
        let params = self.params.load();
        self.state.check(&params, self.now(), 1, true)
    }

    pub(crate) fn quota(&self) -> Quota {
        self.params.load().quota()
    }

    /// The current quota, in the algorithms' units.
    #[inline(always)]
    pub(crate) fn params(&self) -> Params {
        self.params.load()
    }

    /// `cost` if the limiter can ever hold it.
    #[inline(always)]
    pub(crate) fn fits(&self, params: &Params, cost: u32) -> Result<(), InsufficientCapacity> {
        let capacity = params.capacity_units(self.algorithm);
        if cost > capacity {
            return Err(InsufficientCapacity { cost, capacity });
        }
        Ok(())
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub(crate) fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        check_fits(&quota, self.algorithm)?;
        let params = Params::new(&quota);
        self.state.resize(&params);
        self.params.store(&params);
        Ok(())
    }

    pub(crate) fn snapshot(&self) -> Snapshot {
        let params = self.params.load();
        match self.state.check(&params, self.now(), 0, false) {
            Ok(snapshot) => snapshot,
            Err(limited) => limited.snapshot,
        }
    }
}

pub(crate) fn check_fits(quota: &Quota, algorithm: Algorithm) -> Result<(), ConfigError> {
    if algorithm == Algorithm::SlidingWindowLog && quota.count() > MAX_LOG_ENTRIES {
        return Err(ConfigError::LogTooLarge(quota.count()));
    }
    Ok(())
}

pub(crate) fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// A rate limiter to call directly, outside a tower stack: `check` before doing the work.
///
/// Cheap to clone; clones are the same limiter. Time is tokio's clock by default (it works
/// under `tokio::time::pause`; see [`Clock`] for a faster one), but checks need no runtime.
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{Quota, RateLimiter, Refusal};
///
/// let limiter = RateLimiter::new(Quota::per_second(NonZeroU32::new(2).unwrap()));
/// assert!(limiter.check().is_ok());
/// let snapshot = limiter.check().unwrap();
/// assert_eq!(snapshot.remaining(), 0);
/// let limited = limiter.check().unwrap_err();
/// assert!(limited.retry_after() > std::time::Duration::ZERO);
///
/// // A cost above the capacity can never be admitted: a typed error, not a long wait.
/// assert!(matches!(limiter.check_n(3), Err(Refusal::InsufficientCapacity(_))));
/// ```
#[derive(Debug, Clone)]
pub struct RateLimiter {
    limiter: Arc<Limiter>,
}

impl RateLimiter {
    /// A GCRA limiter for `quota`.
    pub fn new(quota: Quota) -> Self {
        Self {
            limiter: Arc::new(
                Limiter::new(quota, Algorithm::Gcra, &Clock::tokio())
                    .unwrap_or_else(|_| unreachable!("every quota fits GCRA")),
            ),
        }
    }

    /// A limiter running `algorithm` for `quota`.
    ///
    /// # Errors
    ///
    /// [`ConfigError::LogTooLarge`] for a sliding-window log whose count is above
    /// [`MAX_LOG_ENTRIES`].
    pub fn with_algorithm(quota: Quota, algorithm: Algorithm) -> Result<Self, ConfigError> {
        Self::with_clock(quota, algorithm, Clock::tokio())
    }

    /// A limiter running `algorithm` for `quota` on `clock` (see [`Clock`]).
    ///
    /// # Errors
    ///
    /// As for [`with_algorithm`](Self::with_algorithm).
    pub fn with_clock(
        quota: Quota,
        algorithm: Algorithm,
        clock: Clock,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            limiter: Arc::new(Limiter::new(quota, algorithm, &clock)?),
        })
    }

    /// Takes one unit if the limit allows it now.
    ///
    /// # Errors
    ///
    /// [`Limited`] with the time until it would be admitted.
    #[inline(always)]
    pub fn check(&self) -> Result<Snapshot, Limited> {
        self.limiter.check_one()
    }

    /// Takes `cost` units at once, or none. A cost of zero takes nothing and always succeeds.
    ///
    /// # Errors
    ///
    /// [`Refusal::Limited`] with the time until it would be admitted;
    /// [`Refusal::InsufficientCapacity`] if `cost` is more than the limiter ever holds (the
    /// burst, or the count per window): such a check can never succeed.
    #[inline]
    pub fn check_n(&self, cost: u32) -> Result<Snapshot, Refusal> {
        self.limiter.check(cost, true)
    }

    /// The limiter's state now, taking nothing.
    pub fn snapshot(&self) -> Snapshot {
        self.limiter.snapshot()
    }

    /// The current quota.
    pub fn quota(&self) -> Quota {
        self.limiter.quota()
    }

    /// Replaces the quota; what was already admitted still counts.
    ///
    /// # Errors
    ///
    /// [`ConfigError::LogTooLarge`] for a sliding-window log whose count is above
    /// [`MAX_LOG_ENTRIES`].
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.limiter.set_quota(quota)
    }

    /// The algorithm it runs.
    pub fn algorithm(&self) -> Algorithm {
        self.limiter.algorithm()
    }

    /// The clock it reads.
    pub fn clock(&self) -> Clock {
        self.limiter.clock()
    }
}

#[cfg(all(test, feature = "quanta"))]
mod tests {
    use super::*;

    #[test]
    fn a_quanta_clock_drives_the_limiter_and_ignores_tokios_paused_clock() {
        let (clock, mock) = Clock::quanta_mock();
        assert!(!clock.follows_tokio());
        let limiter = RateLimiter::with_clock(
            Quota::per_second(NonZeroU32::new(2).unwrap()),
            Algorithm::Gcra,
            clock,
        )
        .unwrap();
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_ok());
        let limited = limiter.check().unwrap_err();
        assert_eq!(limited.retry_after(), Duration::from_millis(500));

        // Tokio's clock moving (here: paused and advanced) changes nothing.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(tokio::time::advance(Duration::from_secs(10)));
        assert!(limiter.check().is_err());

        mock.increment(Duration::from_millis(500));
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err());
        assert!(!limiter.clock().follows_tokio());
    }
}

#[cfg(test)]
mod params_tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn units_divide_by_the_interval_exactly(
            interval in 1u64..=MAX_CAPACITY,
            nanos in 0u64..=MAX_CAPACITY,
        ) {
            let params = Params {
                count: 1,
                burst: 1,
                window: interval,
                interval,
                capacity: MAX_CAPACITY,
                reciprocal: u64::MAX / interval,
            };
            let expected = u32::try_from(nanos / interval).unwrap_or(u32::MAX);
            prop_assert_eq!(params.units(nanos), expected);
        }
    }

    #[test]
    fn units_are_exact_at_the_edges() {
        for interval in [1, 2, 3, 7, 1_000, 999_999_937, MAX_CAPACITY] {
            let params = Params::new(
                &Quota::new(
                    NonZeroU32::MIN,
                    Duration::from_nanos(interval.min(MAX_WINDOW_NANOS)),
                )
                .unwrap(),
            );
            for nanos in [
                0,
                1,
                interval - 1,
                interval,
                interval + 1,
                3 * interval,
                MAX_CAPACITY,
            ] {
                let expected = u32::try_from(nanos / params.interval).unwrap_or(u32::MAX);
                assert_eq!(
                    params.units(nanos),
                    expected,
                    "{nanos} / {}",
                    params.interval
                );
            }
        }
    }

    const MAX_WINDOW_NANOS: u64 = crate::quota::MAX_WINDOW.as_nanos() as u64;
}
