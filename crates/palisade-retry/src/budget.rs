//! The retry budget shared by every service of one layer.
//!
//! Deposits (one per call, on the hot path) are lock-free: each bucket is one `AtomicU64`
//! holding the bucket's epoch and its count, updated by a compare-exchange loop. Withdrawals
//! (one per retry, off the hot path) check and count under a short mutex, so concurrent
//! retries can never overdraw the budget.
//!
//! Deposits do not read the clock each time (a clock reading costs more than the rest of a
//! deposit): they use the epoch last read, which every withdrawal and every
//! `CLOCK_EVERY`th deposit made on a thread refresh. A call may so be counted in an older
//! bucket than its own, never a newer one: it leaves the window early, which can only lower
//! the budget, never let retries exceed it.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use crate::config::{BUDGET_BUCKETS, BudgetConfig};

const BUCKETS: usize = BUDGET_BUCKETS as usize;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const EPOCH_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// A thread's deposits read the clock once per this many (into whichever budget).
const CLOCK_EVERY: u32 = 16;

thread_local! {
    /// Deposits made on this thread since it last read the clock.
    static DEPOSITS_SINCE_CLOCK: Cell<u32> = const { Cell::new(0) };
}

pub(crate) struct Budget {
    base: Instant,
    bucket_nanos: u64,
    /// `floor`: retries allowed per window whatever the traffic.
    floor: f64,
    ratio: f64,
    /// The latest epoch read from the clock, which deposits are counted in.
    last_epoch: AtomicU64,
    /// Per bucket: `epoch << COUNT_BITS | calls`.
    deposits: [AtomicU64; BUCKETS],
    /// Per bucket: `(epoch, retries)`.
    withdrawals: Mutex<[(u64, u64); BUCKETS]>,
}

impl Budget {
    pub(crate) fn new(config: BudgetConfig) -> Self {
        let bucket_nanos = u64::try_from(config.ttl.as_nanos() / BUCKETS as u128)
            .unwrap_or(u64::MAX)
            .max(1);
        Self {
            base: Instant::now(),
            bucket_nanos,
            floor: f64::from(config.min_per_second) * config.ttl.as_secs_f64(),
            ratio: config.ratio,
            last_epoch: AtomicU64::new(0),
            deposits: std::array::from_fn(|_| AtomicU64::new(0)),
            withdrawals: Mutex::new([(u64::MAX, 0); BUCKETS]),
        }
    }

    fn epoch(&self) -> u64 {
        let nanos = Instant::now()
            .saturating_duration_since(self.base)
            .as_nanos();
        u64::try_from(nanos / u128::from(self.bucket_nanos)).unwrap_or(u64::MAX) & EPOCH_MASK
    }

    /// The current epoch, read from the clock and remembered for deposits.
    fn refresh_epoch(&self) -> u64 {
        let epoch = self.epoch();
        // Never backwards, whatever the order in which threads store their readings.
        self.last_epoch
            .fetch_max(epoch, Ordering::Relaxed)
            .max(epoch)
    }

    /// The epoch a deposit is counted in: the latest one read, refreshed from the clock on
    /// every `CLOCK_EVERY`th deposit of this thread.
    #[inline]
    fn deposit_epoch(&self) -> u64 {
        let clock_due = DEPOSITS_SINCE_CLOCK.with(|since_clock| {
            let deposits = since_clock.get() + 1;
            let due = deposits >= CLOCK_EVERY;
            since_clock.set(if due { 0 } else { deposits });
            due
        });
        if clock_due {
            self.refresh_epoch()
        } else {
            self.last_epoch.load(Ordering::Relaxed)
        }
    }

    /// Records a call.
    #[inline]
    pub(crate) fn deposit(&self) {
        let epoch = self.deposit_epoch();
        let slot = &self.deposits[(epoch % BUCKETS as u64) as usize];
        let mut current = slot.load(Ordering::Relaxed);
        loop {
            let stored = current >> COUNT_BITS;
            let next = if stored >= epoch {
                if current & COUNT_MASK == COUNT_MASK {
                    return; // saturated: 16 M calls in one bucket
                }
                current + 1
            } else {
                (epoch << COUNT_BITS) | 1
            };
            match slot.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return,
                Err(actual) => current = actual,
            }
        }
    }

    fn in_window(epoch: u64, stored: u64) -> bool {
        stored <= epoch && epoch - stored < BUCKETS as u64
    }

    fn deposits(&self, epoch: u64) -> u64 {
        self.deposits
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|word| Self::in_window(epoch, word >> COUNT_BITS))
            .map(|word| word & COUNT_MASK)
            .sum()
    }

    /// Takes one retry from the budget; `false` if it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let epoch = self.refresh_epoch();
        let deposits = self.deposits(epoch);
        let allowed = self.floor + self.ratio * deposits as f64;
        let mut withdrawals = self
            .withdrawals
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let spent: u64 = withdrawals
            .iter()
            .filter(|(stored, _)| Self::in_window(epoch, *stored))
            .map(|(_, count)| count)
            .sum();
        if (spent + 1) as f64 > allowed {
            return false;
        }
        let slot = &mut withdrawals[(epoch % BUCKETS as u64) as usize];
        if slot.0 != epoch {
            *slot = (epoch, 0);
        }
        slot.1 += 1;
        true
    }
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("floor", &self.floor)
            .field("ratio", &self.ratio)
            .field("bucket_nanos", &self.bucket_nanos)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn budget(ratio: f64, min_per_second: u32, ttl_secs: u64) -> Budget {
        Budget::new(BudgetConfig::new(
            ratio,
            min_per_second,
            Duration::from_secs(ttl_secs),
        ))
    }

    fn withdrawals(budget: &Budget) -> usize {
        std::iter::from_fn(|| budget.withdraw().then_some(())).count()
    }

    #[tokio::test(start_paused = true)]
    async fn retries_are_the_floor_plus_the_ratio_of_calls() {
        let budget = budget(0.25, 3, 2);
        assert_eq!(withdrawals(&budget), 6, "3 per second over 2 s");
        for _ in 0..40 {
            budget.deposit();
        }
        assert_eq!(withdrawals(&budget), 10, "a quarter of 40 calls");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_and_retries_are_forgotten_after_the_window() {
        let budget = budget(0.5, 0, 1);
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(withdrawals(&budget), 5);
        // Still within the window (buckets of 100 ms, ten of them).
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(withdrawals(&budget), 0);
        // The bucket holding the calls and the retries has left the window.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(budget.deposits(budget.epoch()), 0);
        assert_eq!(withdrawals(&budget), 0, "no calls, no floor: nothing");
        budget.deposit();
        budget.deposit();
        assert_eq!(withdrawals(&budget), 1);
    }

    #[test]
    fn a_bucket_counts_only_within_its_window() {
        assert!(Budget::in_window(10, 10));
        assert!(Budget::in_window(10, 1));
        assert!(!Budget::in_window(10, 0));
        assert!(!Budget::in_window(10, 11), "a bucket from the future");
    }

    #[derive(Debug, Clone, Copy)]
    enum Op {
        Advance(u64),
        Call,
        Retry,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            2 => (0u64..1_500).prop_map(Op::Advance),
            4 => Just(Op::Call),
            3 => Just(Op::Retry),
        ]
    }

    proptest::proptest! {
        /// Whatever the traffic, the retries granted in any span of 9/10 of the window
        /// never exceed the floor plus `ratio` of the calls made in the window before.
        #[test]
        fn retries_never_exceed_the_floor_plus_the_ratio_of_recent_calls(
            ops in proptest::collection::vec(op(), 1..400),
            ratio in 0.0f64..2.0,
            min_per_second in 0u32..4,
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            runtime.block_on(async {
                let ttl = Duration::from_secs(2);
                let budget = Budget::new(BudgetConfig::new(ratio, min_per_second, ttl));
                let floor = f64::from(min_per_second) * ttl.as_secs_f64();
                let covered = ttl * 9 / 10;
                let start = Instant::now();
                let (mut calls, mut retries) = (Vec::new(), Vec::<Duration>::new());
                for op in ops {
                    let now = start.elapsed();
                    match op {
                        Op::Advance(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                        Op::Call => {
                            budget.deposit();
                            calls.push(now);
                        }
                        Op::Retry => {
                            if budget.withdraw() {
                                retries.push(now);
                                let recent_retries = retries
                                    .iter()
                                    .filter(|t| now.saturating_sub(**t) < covered)
                                    .count();
                                let recent_calls = calls
                                    .iter()
                                    .filter(|t| now.saturating_sub(**t) < ttl)
                                    .count();
                                assert!(
                                    recent_retries as f64 <= floor + ratio * recent_calls as f64,
                                    "{recent_retries} retries for {recent_calls} calls at {now:?}"
                                );
                            }
                        }
                    }
                }
            });
        }
    }
}
