//! A fixed-iteration driver for instruction counts and CPU time of keyed checks: one
//! `KeyedRateLimiter::check` per call, cycling through 1,000 keys (all tracked before the
//! measured loop), as the criterion bench `ratelimit/keyed` does. The loop is a function of
//! its own so a profiler can count it alone:
//!
//! ```text
//! cargo build --release -p palisade-ratelimit --features quanta --example keyed_checks
//! valgrind --tool=callgrind --toggle-collect='*keyed_checks*drive*' \
//!     target/release/examples/keyed_checks
//! ```
//!
//! With the `quanta` feature the limiter reads quanta's clock (as the bench and governor
//! do), else tokio's. Arguments: the number of checks (1,000,000), then of threads sharing
//! the limiter (1). The peer, governor, is measured by `benches/examples/keyed_checks.rs`.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::Instant;

use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimitConfig};

const KEYS: u64 = 1_000;

fn limiter() -> KeyedRateLimiter<u64> {
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"));
    let config = RateLimitConfig::builder(quota);
    #[cfg(feature = "quanta")]
    let config = config.clock(palisade_ratelimit::Clock::quanta());
    KeyedRateLimiter::with_config(config.build().expect("valid configuration"))
        .expect("a keyed configuration")
}

/// The measured loop; returns the admitted checks.
#[inline(never)]
fn drive(limiter: &KeyedRateLimiter<u64>, next: &AtomicU64, checks: u64) -> u64 {
    let mut admitted = 0;
    for _ in 0..checks {
        let key = next.fetch_add(1, Ordering::Relaxed) % KEYS;
        admitted += u64::from(black_box(limiter.check(black_box(key))).is_ok());
    }
    admitted
}

fn main() {
    let mut args = std::env::args().skip(1);
    let checks: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a count"));
    let threads: usize = args.next().map_or(1, |n| n.parse().expect("a count"));
    let limiter = limiter();
    let next = AtomicU64::new(0);
    assert_eq!(drive(&limiter, &next, KEYS), KEYS, "every key is admitted");
    let barrier = Barrier::new(threads);
    let start = Instant::now();
    let admitted: u64 = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (limiter, next, barrier) = (&limiter, &next, &barrier);
                scope.spawn(move || {
                    barrier.wait();
                    drive(limiter, next, checks)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a driver thread panicked"))
            .sum()
    });
    let elapsed = start.elapsed();
    let total = checks * threads as u64;
    assert_eq!(admitted, total, "every check is admitted");
    println!(
        "{total} checks on {threads} thread(s): {:.1} ns per check (wall)",
        elapsed.as_nanos() as f64 / total as f64
    );
}
