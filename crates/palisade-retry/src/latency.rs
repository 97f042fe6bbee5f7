//! Recent attempt latencies, for hedging at a latency percentile.
//!
//! Latencies go into a histogram of log-spaced buckets (four per doubling, so a bucket's
//! upper bound is at most 19 % above any latency in it), in two halves of
//! [`HEDGE_WINDOW`](crate::HEDGE_WINDOW) each: the current one and the one before, so the
//! percentile always covers between one and two windows of history. Recording is one atomic
//! increment (plus, once per window, clearing the half that becomes current); the percentile
//! is recomputed every [`REFRESH_EVERY`] records and cached, so reading it is one atomic load.
//!
//! It is a heuristic for when to hedge, not an exact statistic: a record racing with the
//! clearing of its half may be lost.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Four buckets per doubling, from 1 ns to 2^45 ns (about 9.8 hours); longer latencies
/// land in the last bucket.
const PER_DOUBLING: f64 = 4.0;
const BUCKETS: usize = 45 * 4;

/// The cached percentile is recomputed every this many records.
const REFRESH_EVERY: u32 = 16;

/// Below this many latencies in the window, the fallback delay is used.
pub(crate) const MIN_SAMPLES: u64 = 50;

pub(crate) struct Latencies {
    /// From 0 to 1.
    quantile: f64,
    fallback: Duration,
    base: Instant,
    window_nanos: u64,
    /// The window the current half holds (`epoch % 2` is its index).
    epoch: AtomicU64,
    halves: [Half; 2],
    records: AtomicU32,
    /// The percentile in nanoseconds; 0 until there are enough samples.
    cached: AtomicU64,
}

struct Half {
    counts: [AtomicU32; BUCKETS],
}

impl Half {
    fn new() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU32::new(0)),
        }
    }

    fn clear(&self) {
        for count in &self.counts {
            count.store(0, Ordering::Relaxed);
        }
    }
}

fn bucket(latency: Duration) -> usize {
    let nanos = latency.as_nanos().max(1) as f64;
    ((nanos.log2() * PER_DOUBLING) as usize).min(BUCKETS - 1)
}

/// The upper bound of bucket `index`.
fn upper_bound(index: usize) -> Duration {
    let nanos = ((index + 1) as f64 / PER_DOUBLING).exp2();
    Duration::from_nanos(nanos.ceil() as u64)
}

impl Latencies {
    /// Tracks latencies for the `percentile` (from 0 to 100, exclusive), with `fallback`
    /// until there are [`MIN_SAMPLES`]; `window` is the length of one half.
    pub(crate) fn new(percentile: f64, fallback: Duration, window: Duration) -> Self {
        Self {
            quantile: percentile / 100.0,
            fallback,
            base: Instant::now(),
            window_nanos: u64::try_from(window.as_nanos()).unwrap_or(u64::MAX).max(1),
            epoch: AtomicU64::new(0),
            halves: [Half::new(), Half::new()],
            records: AtomicU32::new(0),
            cached: AtomicU64::new(0),
        }
    }

    /// The current window, after clearing the halves that fell out of the history.
    fn epoch(&self, now: Instant) -> u64 {
        let now = u64::try_from(now.saturating_duration_since(self.base).as_nanos())
            .unwrap_or(u64::MAX)
            / self.window_nanos;
        let stored = self.epoch.load(Ordering::Relaxed);
        if now > stored
            && self
                .epoch
                .compare_exchange(stored, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // The half that becomes current held the window before the previous one; if
            // more than one window passed, the other half is stale too.
            self.halves[(now % 2) as usize].clear();
            if now - stored > 1 {
                self.halves[((now + 1) % 2) as usize].clear();
            }
        }
        now.max(stored)
    }

    /// Records one attempt's latency.
    pub(crate) fn record(&self, latency: Duration) {
        let epoch = self.epoch(Instant::now());
        self.halves[(epoch % 2) as usize].counts[bucket(latency)].fetch_add(1, Ordering::Relaxed);
        if self.records.fetch_add(1, Ordering::Relaxed) % REFRESH_EVERY == REFRESH_EVERY - 1 {
            self.refresh();
        }
    }

    fn refresh(&self) {
        let counts = |index: usize| -> u64 {
            self.halves
                .iter()
                .map(|half| u64::from(half.counts[index].load(Ordering::Relaxed)))
                .sum()
        };
        let total: u64 = (0..BUCKETS).map(counts).sum();
        let nanos = if total < MIN_SAMPLES {
            0
        } else {
            // The smallest bucket at or below which `quantile` of the latencies lie.
            let rank = ((total as f64 * self.quantile).ceil() as u64).max(1);
            let mut seen = 0;
            let index = (0..BUCKETS)
                .find(|&index| {
                    seen += counts(index);
                    seen >= rank
                })
                .unwrap_or(BUCKETS - 1);
            u64::try_from(upper_bound(index).as_nanos()).unwrap_or(u64::MAX)
        };
        self.cached.store(nanos, Ordering::Relaxed);
    }

    /// The hedge delay: the percentile of recent latencies, or the fallback while there are
    /// too few of them.
    pub(crate) fn delay(&self) -> Duration {
        match self.cached.load(Ordering::Relaxed) {
            0 => self.fallback,
            nanos => Duration::from_nanos(nanos),
        }
    }
}

impl std::fmt::Debug for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Latencies")
            .field("percentile", &(self.quantile * 100.0))
            .field("fallback", &self.fallback)
            .field("delay", &self.delay())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn buckets_bound_their_latencies_within_a_fifth() {
        for nanos in [
            1u64,
            2,
            3,
            7,
            1_000,
            999_999,
            1_000_000,
            123_456_789,
            10u64.pow(12),
        ] {
            let latency = Duration::from_nanos(nanos);
            let upper = upper_bound(bucket(latency));
            assert!(
                upper >= latency,
                "{latency:?} above its bucket's bound {upper:?}"
            );
            assert!(
                upper.as_nanos() as f64 <= (nanos as f64 * 1.19).max(nanos as f64 + 2.0),
                "{latency:?} has a loose bound {upper:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_fallback_holds_until_there_are_enough_samples() {
        let latencies = Latencies::new(90.0, ms(250), Duration::from_secs(10));
        for _ in 0..MIN_SAMPLES - 2 {
            latencies.record(ms(10));
        }
        latencies.refresh();
        assert_eq!(latencies.delay(), ms(250));
        latencies.record(ms(10));
        latencies.record(ms(10));
        latencies.refresh();
        let delay = latencies.delay();
        assert!(delay >= ms(10) && delay <= ms(12), "{delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_delay_is_the_percentile_of_recent_latencies() {
        let latencies = Latencies::new(90.0, ms(250), Duration::from_secs(10));
        // 1..=100 ms: the 90th percentile is 90 ms.
        for latency in 1..=100 {
            latencies.record(ms(latency));
        }
        latencies.refresh();
        let delay = latencies.delay();
        assert!(delay >= ms(90) && delay <= ms(108), "{delay:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn latencies_older_than_two_windows_are_forgotten() {
        let latencies = Latencies::new(50.0, ms(250), Duration::from_secs(10));
        for _ in 0..100 {
            latencies.record(ms(400));
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..100 {
            latencies.record(ms(20));
        }
        latencies.refresh();
        // Both windows count: half at 20 ms, half at 400 ms.
        assert!(latencies.delay() <= ms(24), "{:?}", latencies.delay());
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..100 {
            latencies.record(ms(20));
        }
        latencies.refresh();
        tokio::time::advance(Duration::from_secs(20)).await;
        latencies.record(ms(20));
        latencies.refresh();
        assert_eq!(latencies.delay(), ms(250), "everything older is gone");
    }
}
