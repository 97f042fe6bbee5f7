//! Lock-free outcome windows: the last N calls, the calls of the last T, or a streak.
//!
//! Recording never takes a lock. Each window answers a record with the counts right after
//! it, so the caller can decide whether to trip without a second read.

use std::hint;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::config::{TripPolicy, Window};

/// What a window holds at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct WindowCounts {
    /// Calls recorded (for a streak: calls since the last reset).
    pub(crate) calls: u32,
    /// Of those, failures (for a streak: consecutive failures).
    pub(crate) failures: u32,
    /// Of those, slow calls.
    pub(crate) slow: u32,
}

/// The window a breaker records into, chosen by its [`TripPolicy`].
#[derive(Debug)]
pub(crate) enum Recorder {
    Count(CountWindow),
    Time(TimeWindow),
    Streak(Streak),
}

impl Recorder {
    pub(crate) fn new(policy: &TripPolicy) -> Self {
        match *policy {
            TripPolicy::Rate {
                window: Window::Count(n),
                ..
            } => Recorder::Count(CountWindow::new(n.get())),
            TripPolicy::Rate {
                window: Window::Time { span, buckets },
                ..
            } => Recorder::Time(TimeWindow::new(span, buckets.get())),
            TripPolicy::Consecutive(_) => Recorder::Streak(Streak::default()),
        }
    }

    /// Whether recording needs the current time.
    pub(crate) fn needs_clock(&self) -> bool {
        matches!(self, Recorder::Time(_))
    }

    /// Whether one more plain success would change nothing: a full count window of plain
    /// successes, or a streak of zero failures. A time window always counts the call.
    #[inline]
    pub(crate) fn is_quiet(&self) -> bool {
        match self {
            Recorder::Count(w) => w.is_quiet(),
            Recorder::Time(_) => false,
            Recorder::Streak(w) => w.failures.load(Ordering::Relaxed) == 0,
        }
    }

    /// Records one outcome at `now` (nanoseconds since the breaker's epoch; only time windows
    /// read it) and returns the counts right after.
    #[inline]
    pub(crate) fn record(&self, failure: bool, slow: bool, now: u64) -> WindowCounts {
        match self {
            Recorder::Count(w) => w.record(failure, slow),
            Recorder::Time(w) => w.record(failure, slow, now),
            Recorder::Streak(w) => w.record(failure, slow),
        }
    }

    /// The counts at `now`, recording nothing.
    pub(crate) fn counts(&self, now: u64) -> WindowCounts {
        match self {
            Recorder::Count(w) => w.counts(),
            Recorder::Time(w) => w.counts(now),
            Recorder::Streak(w) => w.counts(),
        }
    }

    /// Forgets everything. Called on a state change, when no call of the new state can be
    /// recording yet.
    pub(crate) fn reset(&self) {
        match self {
            Recorder::Count(w) => w.reset(),
            Recorder::Time(w) => w.reset(),
            Recorder::Streak(w) => w.reset(),
        }
    }
}

const FILLED: u8 = 0b100;
const FAILED: u8 = 0b001;
const SLOW: u8 = 0b010;

/// The last `n` outcomes in a ring of one byte each, with running totals.
///
/// A call takes the next slot with one `fetch_add`, reads the slot's old outcome and, only
/// when the outcome differs, swaps it and adjusts the totals with one more `fetch_add`. In
/// a healthy service, where the new outcome usually equals the one it replaces, a record is
/// one read-modify-write.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// The number of records ever made; the next slot is `head mod len`.
    head: AtomicU64,
    /// Failures in the high 32 bits and slow calls in the low 32 bits, as one integer
    /// `failures·2³² + slow` so that both change with one atomic add. Either half may dip
    /// below zero for a moment while two calls race on one slot; the sum stays exact.
    totals: AtomicU64,
    /// `u64::MAX / len + 1`, for a division-free `mod len` (Lemire's fastmod).
    magic: u64,
}

impl CountWindow {
    fn new(len: u32) -> Self {
        Self {
            slots: (0..len).map(|_| AtomicU8::new(0)).collect(),
            head: AtomicU64::new(0),
            totals: AtomicU64::new(0),
            magic: (u64::MAX / u64::from(len)).wrapping_add(1),
        }
    }

    fn len(&self) -> u32 {
        self.slots.len() as u32
    }

    /// `index mod len` without a division.
    fn slot(&self, index: u64) -> usize {
        let low = self.magic.wrapping_mul(index & u64::from(u32::MAX));
        ((u128::from(low) * u128::from(self.len())) >> 64) as usize
    }

    /// Whether the window is full of plain successes, so that one more changes nothing.
    #[inline]
    fn is_quiet(&self) -> bool {
        self.totals.load(Ordering::Relaxed) == 0
            && self.head.load(Ordering::Relaxed) >= self.slots.len() as u64
    }

    #[inline]
    fn record(&self, failure: bool, slow: bool) -> WindowCounts {
        let len = u64::from(self.len());
        if !failure && !slow && self.is_quiet() {
            // A full window of plain successes stays the same after one more: skip the
            // shared writes, so a healthy service's calls only read the window.
            return decode(0, self.len());
        }
        let index = self.head.fetch_add(1, Ordering::Relaxed);
        let slot = &self.slots[self.slot(index)];
        let new = FILLED | if failure { FAILED } else { 0 } | if slow { SLOW } else { 0 };
        let totals = if slot.load(Ordering::Relaxed) == new {
            // Same outcome as the one it replaces: the totals do not move.
            self.totals.load(Ordering::Relaxed)
        } else {
            let old = slot.swap(new, Ordering::Relaxed);
            let failed = i64::from(new & FAILED) - i64::from(old & FAILED);
            let slowed = i64::from((new & SLOW) >> 1) - i64::from((old & SLOW) >> 1);
            let delta = (failed << 32) + slowed;
            if delta == 0 {
                self.totals.load(Ordering::Relaxed)
            } else {
                let delta = delta as u64;
                self.totals
                    .fetch_add(delta, Ordering::Relaxed)
                    .wrapping_add(delta)
            }
        };
        let calls = index.saturating_add(1).min(len) as u32;
        decode(totals, calls)
    }

    fn counts(&self) -> WindowCounts {
        let calls = self.head.load(Ordering::Relaxed).min(u64::from(self.len())) as u32;
        decode(self.totals.load(Ordering::Relaxed), calls)
    }

    fn reset(&self) {
        for slot in self.slots.iter() {
            slot.store(0, Ordering::Relaxed);
        }
        self.totals.store(0, Ordering::Relaxed);
        self.head.store(0, Ordering::Relaxed);
    }
}

/// Splits `failures·2³² + slow` back into its halves, clamping a momentary dip below zero
/// (or above `calls`) from a race on one slot.
#[inline]
fn decode(totals: u64, calls: u32) -> WindowCounts {
    let slow = totals as u32 as i32;
    let failures = (totals.wrapping_sub(slow as i64 as u64) >> 32) as u32 as i32;
    let clamp = |n: i32| n.clamp(0, calls as i32) as u32;
    WindowCounts {
        calls,
        failures: clamp(failures),
        slow: clamp(slow),
    }
}

/// The calls of the last `span`, in a ring of buckets of `span / buckets` each.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
}

#[derive(Debug, Default)]
struct Bucket {
    /// Which bucket period (`now / bucket_nanos`) the counts belong to; `RESETTING` while
    /// one call clears it for a new period.
    period: AtomicU64,
    calls: AtomicU32,
    failures: AtomicU32,
    slow: AtomicU32,
}

/// `period` while a bucket is being cleared for a new period.
const RESETTING: u64 = u64::MAX;
/// `period` of a bucket that holds nothing (no period is this large: it is 584 years in).
const EMPTY: u64 = u64::MAX - 1;

impl TimeWindow {
    fn new(span: Duration, buckets: u32) -> Self {
        let bucket_nanos = (span / buckets).as_nanos().clamp(1, u128::from(u64::MAX)) as u64;
        Self {
            buckets: (0..buckets)
                .map(|_| Bucket {
                    period: AtomicU64::new(EMPTY),
                    ..Bucket::default()
                })
                .collect(),
            bucket_nanos,
        }
    }

    fn record(&self, failure: bool, slow: bool, now: u64) -> WindowCounts {
        let period = now / self.bucket_nanos;
        let bucket = &self.buckets[(period % self.buckets.len() as u64) as usize];
        let mut spins = 0u32;
        loop {
            let current = bucket.period.load(Ordering::Acquire);
            // A bucket already on a later period: this call's clock read was a hair
            // behind; count it there rather than lose it.
            if current == period || (current > period && current < EMPTY) {
                break;
            }
            if current == RESETTING {
                // Another call is clearing this bucket: a handful of stores.
                spins += 1;
                if spins < 64 {
                    hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
                continue;
            }
            if bucket
                .period
                .compare_exchange(current, RESETTING, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                bucket.calls.store(0, Ordering::Relaxed);
                bucket.failures.store(0, Ordering::Relaxed);
                bucket.slow.store(0, Ordering::Relaxed);
                bucket.period.store(period, Ordering::Release);
                break;
            }
        }
        bucket.calls.fetch_add(1, Ordering::Relaxed);
        if failure {
            bucket.failures.fetch_add(1, Ordering::Relaxed);
        }
        if slow {
            bucket.slow.fetch_add(1, Ordering::Relaxed);
        }
        self.counts(now)
    }

    fn counts(&self, now: u64) -> WindowCounts {
        let period = now / self.bucket_nanos;
        let oldest = period.saturating_sub(self.buckets.len() as u64 - 1);
        let mut counts = WindowCounts::default();
        for bucket in self.buckets.iter() {
            let p = bucket.period.load(Ordering::Acquire);
            if p >= oldest && p < EMPTY {
                counts.calls = counts
                    .calls
                    .saturating_add(bucket.calls.load(Ordering::Relaxed));
                counts.failures = counts
                    .failures
                    .saturating_add(bucket.failures.load(Ordering::Relaxed));
                counts.slow = counts
                    .slow
                    .saturating_add(bucket.slow.load(Ordering::Relaxed));
            }
        }
        counts
    }

    fn reset(&self) {
        for bucket in self.buckets.iter() {
            bucket.period.store(EMPTY, Ordering::Release);
        }
    }
}

/// Consecutive failures, for the simple policy.
#[derive(Debug, Default)]
pub(crate) struct Streak {
    failures: AtomicU32,
}

impl Streak {
    fn record(&self, failure: bool, _slow: bool) -> WindowCounts {
        let failures = if failure {
            self.failures
                .fetch_add(1, Ordering::Relaxed)
                .saturating_add(1)
        } else {
            if self.failures.load(Ordering::Relaxed) != 0 {
                self.failures.store(0, Ordering::Relaxed);
            }
            0
        };
        WindowCounts {
            calls: failures,
            failures,
            slow: 0,
        }
    }

    fn counts(&self) -> WindowCounts {
        let failures = self.failures.load(Ordering::Relaxed);
        WindowCounts {
            calls: failures,
            failures,
            slow: 0,
        }
    }

    fn reset(&self) {
        self.failures.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fastmod_matches_the_remainder() {
        for len in [1u32, 2, 3, 7, 10, 100, 1000, 1 << 20] {
            let window = CountWindow::new(len);
            for index in (0..5000u64).chain([u64::from(u32::MAX) - 3, u64::from(u32::MAX)]) {
                let expected = (index & u64::from(u32::MAX)) % u64::from(len);
                assert_eq!(window.slot(index) as u64, expected, "{index} mod {len}");
            }
        }
    }

    #[test]
    fn count_window_keeps_the_last_n_outcomes() {
        let window = CountWindow::new(4);
        let outcomes = [
            (true, false),
            (true, true),
            (false, false),
            (false, true),
            (false, false),
            (true, false),
        ];
        let mut last = WindowCounts::default();
        for (failure, slow) in outcomes {
            last = window.record(failure, slow);
        }
        // The last four: (false,false) (false,true) (false,false) (true,false).
        assert_eq!(
            last,
            WindowCounts {
                calls: 4,
                failures: 1,
                slow: 1
            }
        );
        assert_eq!(window.counts(), last);
        window.reset();
        assert_eq!(window.counts(), WindowCounts::default());
    }

    #[test]
    fn decode_clamps_momentary_dips() {
        let minus_one_failure = (-1i64 << 32) as u64;
        assert_eq!(decode(minus_one_failure, 3).failures, 0);
        let minus_one_slow = (-1i64) as u64;
        let counts = decode(minus_one_slow, 3);
        assert_eq!((counts.failures, counts.slow), (0, 0));
        let two_and_one = (2u64 << 32) + 1;
        let counts = decode(two_and_one, 3);
        assert_eq!((counts.failures, counts.slow), (2, 1));
    }

    #[test]
    fn time_window_forgets_buckets_older_than_the_span() {
        // 1 s in 10 buckets of 100 ms.
        let window = TimeWindow::new(Duration::from_secs(1), 10);
        let ms = |n: u64| n * 1_000_000;
        window.record(true, false, ms(0));
        window.record(false, true, ms(50));
        window.record(true, false, ms(450));
        assert_eq!(
            window.counts(ms(999)),
            WindowCounts {
                calls: 3,
                failures: 2,
                slow: 1
            }
        );
        // At 1.0 s the first bucket (0..100 ms) has left the window.
        assert_eq!(
            window.counts(ms(1000)),
            WindowCounts {
                calls: 1,
                failures: 1,
                slow: 0
            }
        );
        // Recording at 1.05 s reuses the first bucket's slot for the new period.
        let counts = window.record(false, false, ms(1050));
        assert_eq!((counts.calls, counts.failures), (2, 1));
        assert_eq!(window.counts(ms(1460)).calls, 1);
        assert_eq!(window.counts(ms(5000)), WindowCounts::default());
        window.reset();
        assert_eq!(window.counts(ms(1060)), WindowCounts::default());
    }

    #[test]
    fn streak_counts_failures_in_a_row() {
        let streak = Streak::default();
        assert_eq!(streak.record(true, false).failures, 1);
        assert_eq!(streak.record(true, false).failures, 2);
        assert_eq!(streak.record(false, false).failures, 0);
        assert_eq!(streak.record(true, false).failures, 1);
    }
}
