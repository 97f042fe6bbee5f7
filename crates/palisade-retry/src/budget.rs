//! The retry budget shared by every service of one layer.
//!
//! Deposits (one per call, on the hot path) take no lock and no read-modify-write
//! instruction: the calls are counted in stripes, one per thread (threads are given stripes
//! in turn; past [`STRIPES`] threads, they share). Each stripe holds one `AtomicU64` per
//! bucket (the bucket's epoch and its count), which a deposit updates with a plain load and
//! store. A thread is alone on its stripe unless more than [`STRIPES`] threads call, and
//! then two deposits racing on one word can lose one of them: a lost deposit can only lower
//! the budget, never let retries exceed it. Withdrawals (one per retry, off the hot path) sum
//! the stripes, then check and count under a short mutex, so concurrent retries can never
//! overdraw the budget.
//!
//! Deposits do not read the clock each time (a clock reading costs more than the rest of a
//! deposit): they use the epoch last read, which every withdrawal and every
//! `CLOCK_EVERY`th deposit made on a thread refresh. A call may so be counted in an older
//! bucket than its own, never a newer one: it leaves the window early, which can only lower
//! the budget, never let retries exceed it.
//!
//! A deposit is so a handful of instructions: one thread-local word (the thread's stripe and
//! its countdown to the next clock reading), one load of the current epoch (stored with its
//! bucket index, so no division), and a load and store of the bucket's word.

use std::cell::Cell;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use tokio::time::Instant;

use crate::config::{BUDGET_BUCKETS, BudgetConfig};

const BUCKETS: usize = BUDGET_BUCKETS as usize;
const COUNT_BITS: u32 = 24;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
/// Epochs are kept below `2^40` (at 100 ms per bucket at least, 3,000 years of uptime) so
/// that an epoch with its bucket index fits a word, and an epoch with a count too.
const EPOCH_MASK: u64 = (1 << (64 - COUNT_BITS)) - 1;

/// The low bits of [`Budget::current`] that hold the current epoch's bucket index.
const INDEX_BITS: u32 = 4;
const INDEX_MASK: u64 = (1 << INDEX_BITS) - 1;
/// The words per stripe: the buckets, rounded up to a power of two so that a bucket index
/// read from [`Budget::current`] needs no bounds check (the extra words stay zero).
const SLOTS: usize = 1 << INDEX_BITS;
const _: () = assert!(BUCKETS <= SLOTS);

/// The number of deposit stripes per budget (a power of two).
const STRIPES: usize = 8;

/// A thread's deposits read the clock once per this many (into whichever budget).
const CLOCK_EVERY: u32 = 16;

/// [`THREAD`]: the deposits left before the thread reads the clock again, in its low bits.
const COUNTDOWN_MASK: u32 = 0xff;
/// [`THREAD`]: the thread's stripe, above the countdown.
const STRIPE_SHIFT: u32 = 8;
/// [`THREAD`]: set once the thread has a stripe.
const ASSIGNED: u32 = 1 << 31;

/// The stripe the next new thread gets (modulo [`STRIPES`]).
static NEXT_STRIPE: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// This thread's stripe ([`ASSIGNED`] once given) above [`STRIPE_SHIFT`], and below it the
    /// deposits it may still make before it reads the clock again; 0 before its first deposit.
    static THREAD: Cell<u32> = const { Cell::new(0) };
}

/// One stripe: a word per bucket, on cache lines of its own.
#[repr(align(128))]
struct Stripe([AtomicU64; SLOTS]);

pub(crate) struct Budget {
    base: Instant,
    bucket_nanos: u64,
    /// `floor`: retries allowed per window whatever the traffic.
    floor: f64,
    ratio: f64,
    /// The latest epoch read from the clock, which deposits are counted in, above
    /// [`INDEX_BITS`]; its bucket index (`epoch % BUCKETS`) below.
    current: AtomicU64,
    /// Per stripe, per bucket: `epoch << COUNT_BITS | calls`.
    deposits: [Stripe; STRIPES],
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
            current: AtomicU64::new(0),
            deposits: std::array::from_fn(|_| Stripe(std::array::from_fn(|_| AtomicU64::new(0)))),
            withdrawals: Mutex::new([(u64::MAX, 0); BUCKETS]),
        }
    }

    fn epoch(&self) -> u64 {
        let since = Instant::now().saturating_duration_since(self.base);
        let nanos = u64::try_from(since.as_nanos()).unwrap_or(u64::MAX);
        (nanos / self.bucket_nanos) & EPOCH_MASK
    }

    /// The current epoch, read from the clock and remembered for deposits, with its bucket
    /// index (as stored in [`current`](Self::current)).
    fn refresh_epoch(&self) -> u64 {
        let epoch = self.epoch();
        let packed = (epoch << INDEX_BITS) | (epoch % BUCKETS as u64);
        // Never backwards, whatever the order in which threads store their readings: the
        // epoch is in the high bits, so the larger word is the later epoch.
        self.current
            .fetch_max(packed, Ordering::Relaxed)
            .max(packed)
    }

    /// Records a call.
    #[inline]
    pub(crate) fn deposit(&self) {
        let mut word = THREAD.with(Cell::get);
        let current = if word & COUNTDOWN_MASK != 0 {
            THREAD.with(|thread| thread.set(word - 1));
            self.current.load(Ordering::Relaxed)
        } else {
            let current;
            (word, current) = self.deposit_with_clock(word);
            current
        };
        let stripe = (word >> STRIPE_SHIFT) as usize % STRIPES;
        let epoch = current >> INDEX_BITS;
        let slot = &self.deposits[stripe].0[(current & INDEX_MASK) as usize];
        // A plain load and store: see the module's docs for why a lost race is harmless.
        let stored = slot.load(Ordering::Relaxed);
        let next = if stored >> COUNT_BITS >= epoch {
            if stored & COUNT_MASK == COUNT_MASK {
                return; // saturated: 16 M calls in one bucket
            }
            stored + 1
        } else {
            (epoch << COUNT_BITS) | 1
        };
        slot.store(next, Ordering::Relaxed);
    }

    /// The deposit that reads the clock (every [`CLOCK_EVERY`]th of a thread), giving the
    /// thread its stripe on its first: the thread's word and the current epoch, packed.
    #[cold]
    #[inline(never)]
    fn deposit_with_clock(&self, word: u32) -> (u32, u64) {
        let word = if word & ASSIGNED == 0 {
            let stripe = NEXT_STRIPE.fetch_add(1, Ordering::Relaxed) % STRIPES as u32;
            ASSIGNED | (stripe << STRIPE_SHIFT)
        } else {
            word
        };
        THREAD.with(|thread| thread.set(word | (CLOCK_EVERY - 1)));
        (word, self.refresh_epoch())
    }

    fn in_window(epoch: u64, stored: u64) -> bool {
        stored <= epoch && epoch - stored < BUCKETS as u64
    }

    fn deposits(&self, epoch: u64) -> u64 {
        self.deposits
            .iter()
            .flat_map(|stripe| &stripe.0[..BUCKETS])
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|word| Self::in_window(epoch, word >> COUNT_BITS))
            .map(|word| word & COUNT_MASK)
            .sum()
    }

    /// Takes one retry from the budget; `false` if it is spent.
    pub(crate) fn withdraw(&self) -> bool {
        let epoch = self.refresh_epoch() >> INDEX_BITS;
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

    #[tokio::test(start_paused = true)]
    async fn each_bucket_counts_its_calls_until_it_leaves_the_window() {
        // Buckets of 100 ms; more epochs than buckets, so every bucket is reused.
        let budget = budget(1.0, 0, 1);
        for epoch in 0..3 * BUCKETS as u64 {
            // A withdrawal reads the clock, so the calls after it count in this epoch.
            budget.withdraw();
            for _ in 0..=epoch {
                budget.deposit();
            }
            let recent = epoch.saturating_sub(BUCKETS as u64 - 1)..=epoch;
            assert_eq!(
                budget.deposits(budget.epoch()),
                recent.map(|e| e + 1).sum::<u64>(),
                "epoch {epoch}"
            );
            tokio::time::advance(Duration::from_millis(100)).await;
        }
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
