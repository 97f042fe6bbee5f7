//! A fixed-iteration driver for instruction counts and CPU time of `RateLimiter::check`'s
//! admitted path (the criterion rows `ratelimit/check/palisade/gcra*` and
//! `ratelimit/check-2-threads/palisade/gcra*` in `benches/benches/ratelimit.rs`).
//!
//! Makes `N` checks of one limiter whose quota (10⁹ per second) admits every check, in a
//! function of its own so a profiler can count it apart:
//!
//! ```text
//! cargo build --release -p palisade-ratelimit --features quanta --example checks
//! valgrind --tool=callgrind --toggle-collect='*checks*drive*' \
//!     target/release/examples/checks quanta
//! ```
//!
//! The argument picks the variant: the clock, `quanta` (the default; `Clock::quanta`, needs
//! the `quanta` feature) or `tokio` (tokio's clock), optionally followed by `-2` (two threads
//! sharing the limiter, each making half the checks: for CPU time, as a profiler that
//! serialises threads sees no contention) or `-snapshot` (the whole result leaves the loop,
//! not only whether it was admitted). The optional second argument is the number of checks
//! (1,000,000).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::thread;

use palisade_ratelimit::{Algorithm, Clock, Quota, RateLimiter};

/// `checks` checks, as the criterion rows make them (only whether each was admitted leaves
/// the loop), or with `snapshot` the whole result (what a caller reading the snapshot pays).
#[inline(never)]
fn drive(limiter: &RateLimiter, checks: u64, snapshot: bool) -> u64 {
    let mut admitted = 0;
    if snapshot {
        for _ in 0..checks {
            admitted += u64::from(black_box(limiter.check()).is_ok());
        }
    } else {
        for _ in 0..checks {
            admitted += u64::from(black_box(limiter.check().is_ok()));
        }
    }
    admitted
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "quanta".to_owned());
    let checks: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a number of checks"));
    let (clock, mode) = variant.split_once('-').unwrap_or((variant.as_str(), ""));
    let clock = match clock {
        #[cfg(feature = "quanta")]
        "quanta" => Clock::quanta(),
        "tokio" => Clock::tokio(),
        other => panic!("unknown clock {other:?}: quanta or tokio"),
    };
    let (threads, snapshot) = match mode {
        "" => (1, false),
        "2" => (2, false),
        "snapshot" => (1, true),
        other => panic!("unknown mode {other:?}: none, 2 or snapshot"),
    };
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"));
    let limiter = RateLimiter::with_clock(quota, Algorithm::Gcra, clock).expect("valid quota");
    // Every check is admitted: the quota is far above what a thread can ask.
    assert_eq!(drive(&limiter, 1_000, snapshot), 1_000);
    let admitted: u64 = thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|i| {
                let share = checks / threads + u64::from(i < checks % threads);
                let limiter = &limiter;
                scope.spawn(move || drive(limiter, share, snapshot))
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| worker.join().expect("a checking thread panicked"))
            .sum()
    });
    assert_eq!(admitted, checks, "every check is admitted");
}
