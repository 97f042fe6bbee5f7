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
pub(crate) const MAX_CAPACITY: u64 = 1 << 62;

/// How many words [`Params`] and its [`Unit`] take in a [`ParamsCell`].
const WORDS: usize = 7;

/// An exact time for the continuous algorithms: `ns + frac / count` nanoseconds, with
/// `frac < count` (of the quota it was computed under). Keeping the fraction keeps the rate
/// exact: a unit takes `window / count` nanoseconds, which is rarely a whole number.
///
/// Ordered as the time it stands for. A fraction kept from a quota with a larger count is
/// clamped when read under a new one: an error below a nanosecond, once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Span {
    pub(crate) ns: u64,
    pub(crate) frac: u32,
}

impl Span {
    pub(crate) const fn nanos(ns: u64) -> Self {
        Self { ns, frac: 0 }
    }

    /// The time in whole nanoseconds, rounded up.
    #[inline]
    pub(crate) fn ceil(self) -> u64 {
        self.ns.saturating_add(u64::from(self.frac > 0))
    }

    /// Packed into one word pair for an atomic.
    #[inline]
    pub(crate) fn pack(self) -> u128 {
        u128::from(self.ns) << 64 | u128::from(self.frac)
    }

    #[inline]
    pub(crate) fn unpack(packed: u128, params: &Params) -> Self {
        Self {
            ns: (packed >> 64) as u64,
            frac: (packed as u32).min(params.count - 1),
        }
    }
}

/// A quota in the algorithms' units: nanoseconds and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub(crate) count: u32,
    pub(crate) burst: u32,
    /// The window, in nanoseconds.
    pub(crate) window: u64,
    /// Whole nanoseconds to replenish one unit: `window / count`, rounded down (0 for more
    /// than one unit per nanosecond).
    pub(crate) interval: u64,
    /// `window % count`: the fraction of a nanosecond (in `1 / count`) the interval has
    /// beyond `interval`.
    pub(crate) remainder: u32,
    /// `burst × window / count`, at most [`MAX_CAPACITY`]: the continuous algorithms'
    /// capacity.
    pub(crate) capacity: Span,
    /// `u64::MAX / interval` when the interval is whole: divides by it with a
    /// multiplication.
    reciprocal: u64,
}

impl Params {
    pub(crate) fn new(quota: &Quota) -> Self {
        let count = quota.count();
        let window = quota.window_nanos();
        let interval = window / u64::from(count);
        // Below `count`, which is a `u32`.
        let remainder = (window % u64::from(count)) as u32;
        let scaled = u128::from(quota.burst()) * u128::from(window);
        let capacity = if scaled / u128::from(count) >= u128::from(MAX_CAPACITY) {
            Span::nanos(MAX_CAPACITY)
        } else {
            Span {
                ns: (scaled / u128::from(count)) as u64,
                frac: (scaled % u128::from(count)) as u32,
            }
        };
        Self {
            count,
            burst: quota.burst(),
            window,
            interval,
            remainder,
            capacity,
            reciprocal: if remainder == 0 {
                u64::MAX / interval.max(1)
            } else {
                0
            },
        }
    }

    /// Whether one unit takes a whole number of nanoseconds (`window % count == 0`): every
    /// span of this quota then has no fraction.
    #[inline(always)]
    pub(crate) const fn is_whole(&self) -> bool {
        self.remainder == 0
    }

    /// The time `cost` units take to replenish: `cost × window / count`, exactly (at most a
    /// little beyond [`MAX_CAPACITY`], far from overflow).
    #[inline]
    pub(crate) fn span(&self, cost: u32) -> Span {
        let whole = u64::from(cost).saturating_mul(self.interval);
        if self.remainder == 0 {
            return Span::nanos(whole.min(MAX_CAPACITY + 1));
        }
        // Both below 2³², so the product fits.
        let extra = u64::from(cost) * u64::from(self.remainder);
        let count = u64::from(self.count);
        Span {
            ns: whole.saturating_add(extra / count).min(MAX_CAPACITY + 1),
            frac: (extra % count) as u32,
        }
    }

    #[inline]
    pub(crate) fn add(&self, a: Span, b: Span) -> Span {
        let frac = u64::from(a.frac) + u64::from(b.frac);
        let carry = frac >= u64::from(self.count);
        Span {
            ns: a.ns.saturating_add(b.ns).saturating_add(u64::from(carry)),
            frac: if carry {
                (frac - u64::from(self.count)) as u32
            } else {
                frac as u32
            },
        }
    }

    /// `a - b`, or zero if `b` is later.
    #[inline]
    pub(crate) fn sub(&self, a: Span, b: Span) -> Span {
        if a <= b {
            return Span::default();
        }
        if a.frac >= b.frac {
            Span {
                ns: a.ns - b.ns,
                frac: a.frac - b.frac,
            }
        } else {
            Span {
                ns: a.ns - b.ns - 1,
                frac: self.count - (b.frac - a.frac),
            }
        }
    }

    /// Whole units that replenish in `span` (at most the capacity): `span × count /
    /// window`, rounded down. With a whole interval, a multiplication by its reciprocal:
    /// the quotient is exact or one short, and `span` is far below 2⁶⁴, so one correction
    /// makes it exact (a fraction left from an earlier quota cannot change it).
    #[inline]
    pub(crate) fn units(&self, span: Span) -> u32 {
        let units = if self.remainder == 0 {
            divide(span.ns, self.interval, self.reciprocal)
        } else {
            let scaled = u128::from(span.ns) * u128::from(self.count) + u128::from(span.frac);
            u64::try_from(scaled / u128::from(self.window)).unwrap_or(u64::MAX)
        };
        u32::try_from(units).unwrap_or(u32::MAX)
    }

    fn quota(&self) -> Quota {
        let nz = |n| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        // From a valid quota: a count, a window and a burst a `Quota` holds.
        Quota::from_parts(
            nz(self.count),
            Duration::from_nanos(self.window),
            nz(self.burst),
        )
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
            self.capacity.ceil()
        }
    }

    fn capacity_units(&self, algorithm: Algorithm) -> u32 {
        if algorithm.uses_burst() {
            self.burst
        } else {
            self.count
        }
    }

    /// The words a [`ParamsCell`] holds: the [`Unit`] first (words 0 to 3), then the rest
    /// of the quota (words 1 to 6 make the [`Params`]).
    fn words(&self) -> [u64; WORDS] {
        [
            // A window is at most `MAX_WINDOW` (below 2⁵⁵ nanoseconds): the check is for
            // `Gcra::take_whole`'s arithmetic, which needs the span below 2⁵⁶.
            if self.is_whole() && self.interval < 1 << 56 {
                self.interval
            } else {
                0
            },
            self.capacity.ns,
            self.reciprocal,
            u64::from(self.count) << 32 | u64::from(self.burst),
            self.window,
            self.interval,
            u64::from(self.remainder) << 32 | u64::from(self.capacity.frac),
        ]
    }

    fn from_words(words: [u64; 6]) -> Self {
        let [capacity, reciprocal, counts, window, interval, fractions] = words;
        Self {
            count: (counts >> 32) as u32,
            burst: counts as u32,
            window,
            interval,
            remainder: (fractions >> 32) as u32,
            capacity: Span {
                ns: capacity,
                frac: fractions as u32,
            },
            reciprocal,
        }
    }
}

/// `nanos / interval`, rounded down, by a multiplication by `reciprocal` (`u64::MAX /
/// interval`): the quotient is exact or one short, and `nanos` is far below 2⁶⁴, so one
/// correction makes it exact.
#[inline(always)]
fn divide(nanos: u64, interval: u64, reciprocal: u64) -> u64 {
    let estimate = ((u128::from(nanos) * u128::from(reciprocal)) >> 64) as u64;
    if (estimate + 1) * interval <= nanos {
        estimate + 1
    } else {
        estimate
    }
}

/// What a GCRA check of one unit under a whole-nanosecond interval needs of the quota (four
/// words of a [`ParamsCell`]): the common case, decided and reported without the rest.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Unit {
    /// One unit's span, `Params::span(1)`, in whole nanoseconds (at least one, below 2⁵⁶).
    pub(crate) span: u64,
    /// The capacity, in whole nanoseconds: also `Params::policy_window` (the window when the
    /// burst is the count, as the capacity then is; else the capacity, which has no fraction
    /// here).
    pub(crate) capacity: u64,
    reciprocal: u64,
    /// The burst: `Params::policy_limit`, which is the count only when they are equal.
    limit: u32,
}

impl Unit {
    /// The snapshot `continuous` makes after a check that left `used` (at most the capacity)
    /// of it taken: the same numbers, as the capacity has no fraction.
    #[inline(always)]
    pub(crate) fn snapshot(&self, used: u64) -> Snapshot {
        let units = divide(self.capacity - used, self.span, self.reciprocal);
        Snapshot {
            limit: self.limit,
            remaining: u32::try_from(units).unwrap_or(u32::MAX),
            window_nanos: self.capacity,
            reset_nanos: used,
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

    /// Runs `read` on the words until no change raced with it (the sequence was even and
    /// unchanged around it); `read` loads them `Relaxed`.
    #[inline(always)]
    fn read<T>(&self, read: impl Fn(&[AtomicU64; WORDS]) -> T) -> T {
        loop {
            let before = self.sequence.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let value = read(&self.words);
            fence(Ordering::Acquire);
            if self.sequence.load(Ordering::Relaxed) == before {
                return value;
            }
        }
    }

    #[inline(always)]
    fn load(&self) -> Params {
        Params::from_words(
            self.read(|words| [1, 2, 3, 4, 5, 6].map(|i| words[i].load(Ordering::Relaxed))),
        )
    }

    /// The [`Unit`] when the interval is whole (four of the words); `None` when it is not.
    #[inline(always)]
    fn load_unit(&self) -> Option<Unit> {
        let unit = self.read(|words| Unit {
            span: words[0].load(Ordering::Relaxed),
            capacity: words[1].load(Ordering::Relaxed),
            reciprocal: words[2].load(Ordering::Relaxed),
            limit: words[3].load(Ordering::Relaxed) as u32,
        });
        // A whole interval is at least a nanosecond.
        (unit.span != 0).then_some(unit)
    }

    /// One unit's span and the capacity, in whole nanoseconds, when the interval is whole
    /// (two of the words); `None` when it is not.
    #[inline(always)]
    fn load_unit_span(&self) -> Option<(u64, u64)> {
        let (span, capacity) = self.read(|words| {
            (
                words[0].load(Ordering::Relaxed),
                words[1].load(Ordering::Relaxed),
            )
        });
        (span != 0).then_some((span, capacity))
    }

    /// Publishes `params`, then runs `then` (still holding the writer lock: changes and
    /// their follow-ups are serialised).
    fn store(&self, params: &Params, then: impl FnOnce()) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let sequence = self.sequence.load(Ordering::Relaxed);
        self.sequence.store(sequence + 1, Ordering::Relaxed);
        fence(Ordering::Release);
        for (word, value) in self.words.iter().zip(params.words()) {
            word.store(value, Ordering::Relaxed);
        }
        self.sequence.store(sequence + 2, Ordering::Release);
        then();
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

    /// Takes `cost` now if the limiter holds it, as `check(cost, true)` does, without the
    /// snapshot: for callers that would not read it.
    #[inline(always)]
    pub(crate) fn admit(&self, cost: u32) -> Result<(), Refusal> {
        // The common case, one unit of a whole-nanosecond GCRA, reads three of the quota's
        // words: the whole quota would not fit in registers across the clock's call.
        if cost == 1
            && let State::Gcra(gcra) = &self.state
            && let Some((span, capacity)) = self.params.load_unit_span()
            && gcra.take_whole(self.now(), span, capacity).is_some()
        {
            return Ok(());
        }
        self.admit_slow(cost)
    }

    /// `admit` in full: any cost, any algorithm, and refusals.
    #[inline(never)]
    fn admit_slow(&self, cost: u32) -> Result<(), Refusal> {
        let params = self.params.load();
        self.fits(&params, cost)?;
        Ok(self.state.admit(&params, self.now(), cost)?)
    }

    /// Checks one unit now: every limiter holds at least one, so only the limit can refuse.
    #[inline(always)]
    pub(crate) fn check_one(&self) -> Result<Snapshot, Limited> {
        // The clock first: its call then leaves no quota word to keep across it. The common
        // case, an admitted unit of a whole-nanosecond GCRA, reads four of the quota's words
        // and computes the snapshot from them.
        let now = self.now();
        if let State::Gcra(gcra) = &self.state
            && let Some(unit) = self.params.load_unit()
            && let Some(used) = gcra.take_whole(now, unit.span, unit.capacity)
        {
            return Ok(unit.snapshot(used));
        }
        self.check_one_at(now)
    }

    /// `check_one` in full at `now`: any algorithm, and refusals.
    #[inline(never)]
    fn check_one_at(&self, now: u64) -> Result<Snapshot, Limited> {
        let params = self.params.load();
        self.state.check(&params, now, 1, true)
    }

    pub(crate) fn quota(&self) -> Quota {
        self.params.load().quota()
    }

    /// One unit of the current quota when its interval is whole (see [`Unit`]).
    #[inline(always)]
    pub(crate) fn unit(&self) -> Option<Unit> {
        self.params.load_unit()
    }

    /// The current quota, in the algorithms' units.
    #[inline(always)]
    pub(crate) fn params(&self) -> Params {
        self.params.load()
    }

    /// `cost` if the limiter can ever hold it.
    #[inline(always)]
    pub(crate) fn fits(&self, params: &Params, cost: u32) -> Result<(), InsufficientCapacity> {
        // Every limiter holds at least one unit: a unit cost (the layer's default) needs no
        // look at the algorithm.
        if cost <= 1 {
            return Ok(());
        }
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
        self.params
            .store(&params, || self.state.requantize(&params));
        Ok(())
    }

    /// The refusal of `cost` waiting behind `ahead` units that go first: a retry-after of at
    /// least the time the limiter needs to hold them all (an estimate at the quota's rate),
    /// and never less than one unit's replenish time.
    #[cold]
    pub(crate) fn behind(&self, cost: u32, ahead: u64) -> Refusal {
        let own = match self.check(cost, false) {
            Ok(_) => 0,
            Err(Refusal::Limited(limited)) => limited.retry_after_nanos,
            Err(refusal) => return refusal,
        };
        // What the limiter holds now, before anyone takes it.
        let snapshot = self.snapshot();
        let missing = (u64::from(cost) + ahead)
            .saturating_sub(u64::from(snapshot.remaining))
            .max(1);
        let estimate = self
            .params
            .load()
            .span(u32::try_from(missing).unwrap_or(u32::MAX))
            .ceil();
        Refusal::Limited(Limited {
            retry_after_nanos: own.max(estimate),
            snapshot,
        })
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
    use crate::algorithm::{EXACT, Gcra};
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
                remainder: 0,
                capacity: Span::nanos(MAX_CAPACITY),
                reciprocal: u64::MAX / interval,
            };
            let expected = u32::try_from(nanos / interval).unwrap_or(u32::MAX);
            prop_assert_eq!(params.units(Span::nanos(nanos)), expected);
        }

        #[test]
        fn spans_add_and_subtract_exactly_and_count_units_exactly(
            count in 1u32..=u32::MAX,
            window in 1u64..=1_000_000_000_000,
            a in 0u32..=u32::MAX,
            b in 0u32..=u32::MAX,
        ) {
            let quota = Quota::new(NonZeroU32::new(count).unwrap(), Duration::from_nanos(window))
                .unwrap()
                .allow_burst(NonZeroU32::MAX);
            let params = Params::new(&quota);
            // In `1 / count` nanoseconds.
            let scaled = |span: Span| u128::from(span.ns) * u128::from(count) + u128::from(span.frac);
            let (sa, sb) = (params.span(a), params.span(b));
            prop_assert_eq!(scaled(sa), u128::from(a) * u128::from(window));
            prop_assert!(sa.frac < count);
            prop_assert_eq!(scaled(params.add(sa, sb)), scaled(sa) + scaled(sb));
            prop_assert_eq!(scaled(params.sub(sa, sb)), scaled(sa).saturating_sub(scaled(sb)));
            if scaled(sa) < scaled(params.capacity) {
                prop_assert_eq!(params.units(sa), a);
                let less = params.sub(sa, Span { ns: 0, frac: 1 });
                prop_assert_eq!(params.units(less), a.saturating_sub(1));
            }
            prop_assert_eq!(sa.ceil(), u64::try_from(scaled(sa).div_ceil(u128::from(count))).unwrap());
        }
    }

    /// A whole-interval quota, its time (at the edge of admitting, around `now`, anywhere
    /// within a few capacities of it, anywhere, or [`EXACT`]) and `now` (small, or anywhere
    /// up to `u64::MAX`).
    fn whole_case() -> impl Strategy<Value = (Quota, u64, u64)> {
        (1u32..=1_000)
            .prop_flat_map(|count| {
                (
                    Just(count),
                    prop_oneof![1u64..=4, 1..=MAX_WINDOW_NANOS / u64::from(count)],
                    prop_oneof![1u32..=4, 1u32..=u32::MAX],
                    prop_oneof![
                        0u64..1 << 40,
                        any::<u64>(),
                        MAX_CAPACITY - 2..MAX_CAPACITY + 2
                    ],
                    0u8..5,
                    -2i64..=2,
                    -3.0f64..3.0,
                )
            })
            .prop_map(|(count, interval, burst, now, kind, step, offset)| {
                let quota = Quota::new(
                    NonZeroU32::new(count).unwrap(),
                    Duration::from_nanos(u64::from(count) * interval),
                )
                .unwrap()
                .allow_burst(NonZeroU32::new(burst).unwrap());
                let params = Params::new(&quota);
                let (capacity, span) = (params.capacity.ns, params.span(1).ns);
                let tat = match kind {
                    0 => (i128::from(now) + i128::from(capacity) - i128::from(span)
                        + i128::from(step))
                    .clamp(0, i128::from(EXACT - 1)) as u64,
                    1 => now.saturating_add_signed(step).min(EXACT - 1),
                    2 => ((now as f64 + offset * capacity as f64).max(0.0) as u64).min(EXACT - 1),
                    3 => now % EXACT,
                    _ => EXACT,
                };
                (quota, tat, now)
            })
    }

    proptest! {
        #[test]
        fn a_unit_is_decided_and_reported_as_the_full_check_decides_it(
            (quota, tat, now) in whole_case()
        ) {
            let params = Params::new(&quota);
            let unit = ParamsCell::new(&params).load_unit().expect("a whole interval");
            prop_assert_eq!(unit.span, params.span(1).ns);
            prop_assert_eq!(unit.capacity, params.capacity.ns);
            let full = State::Gcra(Gcra::with_time(tat));
            let expected = full.check(&params, now, 1, true);
            let fast = Gcra::with_time(tat);
            match fast.take_whole(now, unit.span, unit.capacity) {
                Some(used) => {
                    prop_assert_eq!(Ok(unit.snapshot(used)), expected);
                    let State::Gcra(full) = &full else { unreachable!() };
                    prop_assert_eq!(fast.time(), full.time());
                }
                None => {
                    // Left to the full check: refused, exact, or 146 years from the start.
                    prop_assert!(expected.is_err() || tat == EXACT || now >= MAX_CAPACITY);
                    prop_assert_eq!(fast.time(), tat);
                }
            }
        }

        #[test]
        fn a_fractional_interval_has_no_unit(count in 2u32..=1_000_000, window in 1u64..=1 << 40) {
            let quota = Quota::new(NonZeroU32::new(count).unwrap(), Duration::from_nanos(window)).unwrap();
            let params = Params::new(&quota);
            let unit = ParamsCell::new(&params).load_unit();
            prop_assert_eq!(unit.is_some(), window % u64::from(count) == 0);
        }

        #[test]
        fn check_decides_as_check_n_of_one_across_quota_changes(
            steps in proptest::collection::vec(
                prop_oneof![
                    4 => (0u64..2_000_000).prop_map(Step::Wait),
                    8 => Just(Step::Check),
                    1 => (0usize..4).prop_map(Step::SetQuota),
                ],
                1..200,
            )
        ) {
            // Whole intervals (1 ms, 400 µs) and fractional ones (1/3 ms, 1/7 ms).
            let nz = |n| NonZeroU32::new(n).unwrap();
            let quotas = [
                Quota::per_second(nz(1_000)).allow_burst(nz(3)),
                Quota::per_second(nz(3_000)).allow_burst(nz(2)),
                Quota::per_second(nz(2_500)),
                Quota::per_second(nz(7_000)).allow_burst(nz(5)),
            ];
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let one = RateLimiter::new(quotas[0]);
                let n = RateLimiter::new(quotas[0]);
                for step in steps {
                    match step {
                        Step::Wait(nanos) => {
                            tokio::time::advance(Duration::from_nanos(nanos)).await;
                        }
                        Step::Check => {
                            let expected = n.check_n(1);
                            prop_assert_eq!(one.check().map_err(Refusal::Limited), expected);
                        }
                        Step::SetQuota(i) => {
                            one.set_quota(quotas[i]).unwrap();
                            n.set_quota(quotas[i]).unwrap();
                        }
                    }
                }
                Ok(())
            })?;
        }
    }

    /// A step of `check_decides_as_check_n_of_one_across_quota_changes`.
    #[derive(Debug, Clone)]
    enum Step {
        Wait(u64),
        Check,
        SetQuota(usize),
    }

    #[test]
    fn a_quota_above_one_unit_per_nanosecond_reads_back_as_itself() {
        let quota = Quota::per_second(NonZeroU32::new(2_000_000_000).unwrap())
            .allow_burst(NonZeroU32::new(7).unwrap());
        assert_eq!(Params::new(&quota).quota(), quota);
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
                    params.units(Span::nanos(nanos)),
                    expected,
                    "{nanos} / {}",
                    params.interval
                );
            }
        }
    }

    const MAX_WINDOW_NANOS: u64 = crate::quota::MAX_WINDOW.as_nanos() as u64;
}
