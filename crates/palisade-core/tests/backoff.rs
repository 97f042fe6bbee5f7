//! Backoff: every delay stays within its strategy's bounds, limits end the iterator, invalid
//! settings are typed errors.

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_core::backoff::{Backoff, BackoffError, Jitter};
use proptest::prelude::*;

const TAKE: usize = 64;

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `min(cap, base·factorⁿ)`, computed independently of the crate (in f64 seconds).
fn exponential_nominal(base: Duration, factor: f64, cap: Duration, n: usize) -> Duration {
    let grown = base.as_secs_f64() * factor.powi(n as i32);
    if grown >= cap.as_secs_f64() {
        cap
    } else {
        Duration::from_secs_f64(grown)
    }
}

/// f64 rounding may move a computed delay by a nanosecond or so.
fn close(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) <= Duration::from_nanos(2)
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
    ]
}

/// A valid exponential backoff and its parameters: base 1 ms..10 s, factor 1..4, cap ≥ base.
fn exponential() -> impl Strategy<Value = (Duration, f64, Duration)> {
    (1u64..10_000, 1.0f64..4.0, 0u64..100_000)
        .prop_map(|(base, factor, extra)| (millis(base), factor, millis(base + extra)))
}

proptest! {
    #[test]
    fn no_delay_exceeds_the_cap((base, factor, cap) in exponential(), jitter in jitter(), seed: u64) {
        let backoff = Backoff::exponential(base, factor, cap).unwrap().with_jitter(jitter).with_seed(seed);
        for delay in backoff.delays().take(TAKE) {
            prop_assert!(delay <= cap, "{delay:?} > cap {cap:?}");
        }
    }

    #[test]
    fn without_jitter_delays_follow_the_curve((base, factor, cap) in exponential()) {
        let backoff = Backoff::exponential(base, factor, cap).unwrap();
        for (n, delay) in backoff.delays().take(TAKE).enumerate() {
            let expected = exponential_nominal(base, factor, cap, n);
            prop_assert!(close(delay, expected), "retry {n}: {delay:?} != {expected:?}");
        }
    }

    #[test]
    fn full_jitter_stays_within_zero_and_the_doubling_curve(base in 1u64..10_000, extra in 0u64..100_000, seed: u64) {
        let (base, cap) = (millis(base), millis(base + extra));
        let backoff = Backoff::exponential(base, 2.0, cap).unwrap().with_jitter(Jitter::Full).with_seed(seed);
        for (n, delay) in backoff.delays().take(TAKE).enumerate() {
            // [0, min(cap, base·2ⁿ)]
            let high = base.checked_mul(1 << n.min(31)).map_or(cap, |d| d.min(cap));
            prop_assert!(delay <= high, "retry {n}: {delay:?} > {high:?}");
        }
    }

    #[test]
    fn equal_jitter_stays_within_half_and_whole((base, factor, cap) in exponential(), seed: u64) {
        let backoff = Backoff::exponential(base, factor, cap).unwrap().with_jitter(Jitter::Equal).with_seed(seed);
        for (n, delay) in backoff.delays().take(TAKE).enumerate() {
            let whole = exponential_nominal(base, factor, cap, n);
            let half = whole / 2;
            let slack = Duration::from_nanos(2);
            prop_assert!(delay + slack >= half && delay <= whole + slack, "retry {n}: {delay:?} not in [{half:?}, {whole:?}]");
        }
    }

    #[test]
    fn decorrelated_jitter_stays_within_base_and_three_times_previous((base, factor, cap) in exponential(), seed: u64) {
        let backoff = Backoff::exponential(base, factor, cap).unwrap().with_jitter(Jitter::Decorrelated).with_seed(seed);
        let mut previous = base;
        for (n, delay) in backoff.delays().take(TAKE).enumerate() {
            let high = (previous * 3).min(cap);
            prop_assert!(delay >= base && delay <= high, "retry {n}: {delay:?} not in [{base:?}, {high:?}]");
            previous = delay;
        }
    }

    #[test]
    fn linear_delays_grow_by_step_up_to_the_cap(base in 1u64..10_000, step in 0u64..10_000, extra in 0u64..100_000, jitter in jitter(), seed: u64) {
        let (base, step, cap) = (millis(base), millis(step), millis(base + extra));
        let plain = Backoff::linear(base, step, cap).unwrap();
        for (n, delay) in plain.delays().take(TAKE).enumerate() {
            prop_assert_eq!(delay, (base + step * n as u32).min(cap));
        }
        for delay in plain.with_jitter(jitter).with_seed(seed).delays().take(TAKE) {
            prop_assert!(delay <= cap);
        }
    }

    #[test]
    fn attempt_limit_yields_one_delay_fewer_than_attempts(attempts in 1u32..50, jitter in jitter(), seed: u64) {
        let backoff = Backoff::default()
            .with_jitter(jitter)
            .with_seed(seed)
            .with_max_attempts(NonZeroU32::new(attempts).unwrap());
        prop_assert_eq!(backoff.delays().count(), attempts as usize - 1);
    }

    #[test]
    fn elapsed_limit_ends_the_iterator_before_the_limit_is_passed(
        (base, factor, cap) in exponential(), jitter in jitter(), seed: u64, limit in 0u64..1_000_000,
    ) {
        let limit = millis(limit);
        let backoff = Backoff::exponential(base, factor, cap).unwrap()
            .with_jitter(jitter)
            .with_seed(seed)
            .with_max_elapsed(limit);
        let mut delays = backoff.delays();
        let mut total = Duration::ZERO;
        // Full jitter can draw zero delays, but the whole run stays bounded: cap the loop.
        for _ in 0..1_000_000 {
            match delays.next() {
                Some(delay) => total += delay,
                None => break,
            }
        }
        prop_assert!(total <= limit, "slept {total:?} past the {limit:?} limit");
        prop_assert_eq!(delays.next(), None, "an ended iterator stays ended");
    }

    #[test]
    fn the_same_seed_replays_the_same_delays((base, factor, cap) in exponential(), jitter in jitter(), seed: u64) {
        let backoff = Backoff::exponential(base, factor, cap).unwrap().with_jitter(jitter).with_seed(seed);
        let first: Vec<_> = backoff.delays().take(TAKE).collect();
        let second: Vec<_> = backoff.delays().take(TAKE).collect();
        prop_assert_eq!(first, second);
    }
}

#[test]
fn constant_backoff_repeats_its_delay_whatever_the_jitter_keeps_it_bounded() {
    let backoff = Backoff::constant(millis(250));
    assert!(backoff.delays().take(10).all(|d| d == millis(250)));
    for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated] {
        let jittered = backoff.with_jitter(jitter).with_seed(3);
        assert!(jittered.delays().take(100).all(|d| d <= millis(250)));
    }
    // Decorrelated jitter of a constant curve has base = cap: it cannot move.
    let decorrelated = backoff.with_jitter(Jitter::Decorrelated);
    assert!(decorrelated.delays().take(10).all(|d| d == millis(250)));
}

#[test]
fn next_after_counts_time_spent_in_calls_against_the_elapsed_limit() {
    let backoff = Backoff::constant(millis(100)).with_max_elapsed(Duration::from_secs(1));
    let mut delays = backoff.delays();
    assert_eq!(delays.next_after(millis(850)), Some(millis(100)));
    assert_eq!(delays.retries(), 1);
    // 950 ms spent, a 100 ms wait would end at 1.05 s: stop instead.
    assert_eq!(delays.next_after(millis(950)), None);
    assert_eq!(delays.next_after(Duration::ZERO), None, "stays ended");
}

#[test]
fn attempt_and_elapsed_limits_combine_whichever_comes_first() {
    let backoff = Backoff::constant(millis(100))
        .with_max_attempts(NonZeroU32::new(3).unwrap())
        .with_max_elapsed(Duration::from_secs(10));
    assert_eq!(backoff.delays().count(), 2);
    let backoff = backoff
        .with_max_attempts(NonZeroU32::new(100).unwrap())
        .with_max_elapsed(millis(450));
    assert_eq!(backoff.delays().count(), 4);
}

#[test]
fn default_is_exponential_from_100ms_capped_at_10s_with_full_jitter() {
    let backoff = Backoff::default();
    assert_eq!(backoff.jitter(), Jitter::Full);
    assert_eq!(backoff.max_attempts(), None);
    assert_eq!(backoff.max_elapsed(), None);
    let nominal: Vec<_> = backoff.with_jitter(Jitter::None).delays().take(9).collect();
    assert_eq!(
        nominal,
        [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000].map(millis)
    );
}

#[test]
fn invalid_settings_are_typed_errors() {
    let (s1, s2) = (Duration::from_secs(1), Duration::from_secs(2));
    assert_eq!(
        Backoff::exponential(Duration::ZERO, 2.0, s1),
        Err(BackoffError::ZeroBase)
    );
    assert_eq!(
        Backoff::linear(Duration::ZERO, s1, s2),
        Err(BackoffError::ZeroBase)
    );
    assert_eq!(
        Backoff::exponential(s1, 0.0, s2),
        Err(BackoffError::InvalidFactor(0.0))
    );
    assert_eq!(
        Backoff::exponential(s1, 0.5, s2),
        Err(BackoffError::InvalidFactor(0.5))
    );
    assert_eq!(
        Backoff::exponential(s1, f64::INFINITY, s2),
        Err(BackoffError::InvalidFactor(f64::INFINITY))
    );
    assert!(matches!(
        Backoff::exponential(s1, f64::NAN, s2),
        Err(BackoffError::InvalidFactor(f)) if f.is_nan()
    ));
    assert_eq!(
        Backoff::exponential(s2, 2.0, s1),
        Err(BackoffError::CapBelowBase { base: s2, cap: s1 })
    );
    assert_eq!(
        Backoff::linear(s2, s1, s1),
        Err(BackoffError::CapBelowBase { base: s2, cap: s1 })
    );
    assert_eq!(
        Backoff::exponential(s2, 2.0, s1).unwrap_err().to_string(),
        "backoff cap (1s) is below its base delay (2s)"
    );
    // A factor of exactly 1 is a valid (constant) curve.
    assert!(Backoff::exponential(s1, 1.0, s1).is_ok());
}

#[test]
fn extreme_settings_never_panic() {
    let huge = Backoff::exponential(Duration::from_nanos(1), 1e300, Duration::MAX).unwrap();
    for jitter in [
        Jitter::None,
        Jitter::Full,
        Jitter::Equal,
        Jitter::Decorrelated,
    ] {
        let delays: Vec<_> = huge
            .with_jitter(jitter)
            .with_seed(9)
            .delays()
            .take(200)
            .collect();
        assert_eq!(delays.len(), 200);
    }
    let linear = Backoff::linear(Duration::MAX, Duration::MAX, Duration::MAX).unwrap();
    assert!(linear.delays().take(5).all(|d| d == Duration::MAX));
    let limited = linear.with_max_elapsed(Duration::MAX);
    assert_eq!(limited.delays().take(5).count(), 1);
}
