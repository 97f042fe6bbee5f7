//! How much a limiter admits: [`Quota`].

use std::num::NonZeroU32;
use std::time::Duration;

/// The longest window a [`Quota`] may have: 366 days.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// How much a limiter admits: `count` units per `window`, and at most `burst` at once.
///
/// The constructors say what they mean: [`Quota::per_second`]`(n)` is **n per second**
/// (one every `1/n` s), never "one every n seconds". A unit is one request unless the layer
/// gives requests a [cost](crate::RateLimitLayer::cost).
///
/// How the algorithms read it:
///
/// - **GCRA** and **token bucket** replenish evenly, one unit every `window / count` (exactly:
///   fractions of a nanosecond are kept, so `count` per `window` holds however large the
///   count, e.g. a byte rate with each request's length as its cost), and hold
///   at most `burst` units (by default `count`): after a quiet spell, `burst` units go through
///   at once. [`allow_burst`](Self::allow_burst) sets it higher or lower.
/// - The **window** algorithms admit `count` units per window and ignore `burst`.
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use palisade_ratelimit::Quota;
///
/// const N100: NonZeroU32 = NonZeroU32::new(100).unwrap();
/// const N20: NonZeroU32 = NonZeroU32::new(20).unwrap();
///
/// // 100 per second, at most 20 at once.
/// const API: Quota = Quota::per_second(N100).allow_burst(N20);
/// assert_eq!(API.replenish_interval(), Duration::from_millis(10));
/// assert_eq!(API.burst(), 20);
///
/// // One every 250 ms.
/// let slow = Quota::with_period(Duration::from_millis(250))?;
/// assert_eq!((slow.count(), slow.window()), (1, Duration::from_millis(250)));
/// # Ok::<(), palisade_ratelimit::QuotaError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Quota {
    count: NonZeroU32,
    window: Duration,
    burst: NonZeroU32,
}

/// Why a [`Quota`] could not be made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuotaError {
    /// A window or period of zero.
    #[error("a quota's window must be longer than zero")]
    ZeroWindow,
    /// A window longer than [`MAX_WINDOW`].
    #[error("a quota's window must be at most {MAX_WINDOW:?}, got {0:?}")]
    WindowTooLong(Duration),
    /// More than one unit per nanosecond. No longer returned: the limiters keep every rate
    /// exactly, fractions of a nanosecond included.
    #[error("{count} units per {window:?} is more than one per nanosecond")]
    RateTooHigh {
        /// The count given.
        count: u32,
        /// The window given.
        window: Duration,
    },
}

impl Quota {
    /// `count` units per second, at most `count` at once.
    #[must_use]
    pub const fn per_second(count: NonZeroU32) -> Self {
        Self::trusted(count, Duration::from_secs(1))
    }

    /// `count` units per minute, at most `count` at once.
    #[must_use]
    pub const fn per_minute(count: NonZeroU32) -> Self {
        Self::trusted(count, Duration::from_secs(60))
    }

    /// `count` units per hour, at most `count` at once.
    #[must_use]
    pub const fn per_hour(count: NonZeroU32) -> Self {
        Self::trusted(count, Duration::from_secs(3600))
    }

    /// One unit every `period`, one at a time.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroWindow`] for a zero period, [`QuotaError::WindowTooLong`] beyond
    /// [`MAX_WINDOW`].
    pub const fn with_period(period: Duration) -> Result<Self, QuotaError> {
        Self::new(NonZeroU32::MIN, period)
    }

    /// `count` units per `window`, at most `count` at once.
    ///
    /// # Errors
    ///
    /// [`QuotaError::ZeroWindow`] for a zero window, [`QuotaError::WindowTooLong`] beyond
    /// [`MAX_WINDOW`]. Any count is fine, more than one unit per nanosecond included.
    pub const fn new(count: NonZeroU32, window: Duration) -> Result<Self, QuotaError> {
        if window.is_zero() {
            return Err(QuotaError::ZeroWindow);
        }
        if window.as_nanos() > MAX_WINDOW.as_nanos() {
            return Err(QuotaError::WindowTooLong(window));
        }
        Ok(Self::trusted(count, window))
    }

    /// A quota from a count and a window [`new`](Self::new) accepts (the constructors'
    /// windows all are).
    const fn trusted(count: NonZeroU32, window: Duration) -> Self {
        Self {
            count,
            window,
            burst: count,
        }
    }

    /// A quota from parts taken from a valid quota.
    pub(crate) const fn from_parts(count: NonZeroU32, window: Duration, burst: NonZeroU32) -> Self {
        Self::trusted(count, window).allow_burst(burst)
    }

    /// Holds up to `burst` units: that many can go through at once after a quiet spell
    /// (GCRA and token bucket; the window algorithms ignore it). Below `count` it smooths
    /// traffic; above, it absorbs spikes.
    #[must_use]
    pub const fn allow_burst(mut self, burst: NonZeroU32) -> Self {
        self.burst = burst;
        self
    }

    /// Units per window.
    pub const fn count(&self) -> u32 {
        self.count.get()
    }

    /// The window `count` is measured over.
    pub const fn window(&self) -> Duration {
        self.window
    }

    /// The most units held at once (GCRA, token bucket).
    pub const fn burst(&self) -> u32 {
        self.burst.get()
    }

    /// The time one unit takes to replenish, `window / count`, rounded down to whole
    /// nanoseconds (at least one). The limiters do not round: they keep the exact rate.
    pub const fn replenish_interval(&self) -> Duration {
        Duration::from_nanos(self.interval_nanos())
    }

    pub(crate) const fn window_nanos(&self) -> u64 {
        // At most `MAX_WINDOW`, which fits.
        self.window.as_nanos() as u64
    }

    pub(crate) const fn interval_nanos(&self) -> u64 {
        let t = self.window_nanos() / self.count.get() as u64;
        if t == 0 { 1 } else { t }
    }
}
