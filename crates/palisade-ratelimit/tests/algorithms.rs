//! Random check sequences under paused time: no algorithm admits more than its definition
//! allows in any window, a refusal's retry-after is exact (waiting it out admits the same
//! check), and GCRA's decisions match a small reference model exactly.

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_ratelimit::{Algorithm, Quota, RateLimiter, Refusal};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Step {
    /// Advance the clock by this many nanoseconds.
    Wait(u64),
    /// Check this cost; if refused and `retry` is set, wait the retry-after and check again.
    Check { cost: u32, retry: bool },
}

fn steps(window: u64, max_cost: u32) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        2 => (0..window / 2).prop_map(Step::Wait),
        1 => (0..window * 2).prop_map(Step::Wait),
        6 => (1..=max_cost, any::<bool>()).prop_map(|(cost, retry)| Step::Check { cost, retry }),
    ];
    proptest::collection::vec(step, 1..120)
}

/// Quotas whose interval (`window / count`) is a few nanoseconds and rarely whole: where
/// rounding it would show.
fn fast_quota() -> impl Strategy<Value = Quota> {
    (1u64..20_000)
        .prop_flat_map(|window| (Just(window), 1..=window))
        .prop_map(|(window, count)| {
            Quota::new(
                NonZeroU32::new(u32::try_from(count).unwrap()).unwrap(),
                Duration::from_nanos(window),
            )
            .unwrap()
        })
}

fn quota() -> impl Strategy<Value = Quota> {
    (1u32..8, 1u64..5_000, 1u32..10).prop_map(|(count, window_us, burst)| {
        Quota::new(
            NonZeroU32::new(count).unwrap(),
            Duration::from_micros(window_us),
        )
        .unwrap()
        .allow_burst(NonZeroU32::new(burst).unwrap())
    })
}

/// Runs `steps` against a fresh limiter on a paused clock; returns the admissions as
/// (nanoseconds since the limiter's start, cost).
fn run(quota: Quota, algorithm: Algorithm, steps: &[Step]) -> Vec<(u64, u32)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let limiter = RateLimiter::with_algorithm(quota, algorithm).unwrap();
        let capacity = if matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
            quota.burst()
        } else {
            quota.count()
        };
        let now = || u64::try_from(start.elapsed().as_nanos()).unwrap();
        let mut admitted = Vec::new();
        for step in steps {
            match *step {
                Step::Wait(nanos) => tokio::time::advance(Duration::from_nanos(nanos)).await,
                Step::Check { cost, retry } => match limiter.check_n(cost) {
                    Ok(_) => admitted.push((now(), cost)),
                    Err(Refusal::InsufficientCapacity(error)) => {
                        assert!(cost > capacity, "{cost} refused for good under {capacity}");
                        assert_eq!((error.cost(), error.capacity()), (cost, capacity));
                    }
                    Err(Refusal::Limited(limited)) => {
                        assert!(cost <= capacity);
                        assert!(!limited.retry_after().is_zero());
                        if retry {
                            tokio::time::advance(limited.retry_after()).await;
                            let again = limiter.check_n(cost);
                            assert!(
                                again.is_ok(),
                                "{algorithm:?} refused {cost} again after its retry-after {:?}: {again:?}",
                                limited.retry_after()
                            );
                            admitted.push((now(), cost));
                        }
                    }
                    Err(other) => panic!("unexpected refusal {other:?}"),
                },
            }
        }
        admitted
    })
}

/// Admitted units in `[from, to]`.
fn units(admitted: &[(u64, u32)], from: u64, to: u64) -> u64 {
    admitted
        .iter()
        .filter(|(at, _)| (from..=to).contains(at))
        .map(|&(_, cost)| u64::from(cost))
        .sum()
}

/// GCRA and token bucket: over any interval `[a, b]`, at most `burst + (b - a) · count /
/// window` (from the quota's definition, not from the rounded `replenish_interval`).
fn assert_continuous_bound(quota: Quota, admitted: &[(u64, u32)]) {
    let window = u128::from(window_nanos(quota));
    let count = u128::from(quota.count());
    for (i, &(a, _)) in admitted.iter().enumerate() {
        for &(b, _) in &admitted[i..] {
            let rate = u128::from(b - a) * count / window;
            let bound = u64::from(quota.burst()) + u64::try_from(rate).unwrap();
            let got = units(admitted, a, b);
            assert!(got <= bound, "{got} units in [{a}, {b}], bound {bound}");
        }
    }
}

/// Every window of length `window` ending at an admission: at most `limit`.
fn assert_sliding_bound(window: u64, limit: u64, admitted: &[(u64, u32)]) {
    for &(end, _) in admitted {
        let from = (end + 1).saturating_sub(window);
        let got = units(admitted, from, end);
        assert!(
            got <= limit,
            "{got} units in ({}, {end}], limit {limit}",
            end.saturating_sub(window)
        );
    }
}

/// Every aligned window `[k·window, (k+1)·window)`: at most `limit`.
fn assert_aligned_bound(window: u64, limit: u64, admitted: &[(u64, u32)]) {
    for &(at, _) in admitted {
        let start = at / window * window;
        let got = units(admitted, start, start + window - 1);
        assert!(
            got <= limit,
            "{got} units in the window at {start}, limit {limit}"
        );
    }
}

fn window_nanos(quota: Quota) -> u64 {
    u64::try_from(quota.window().as_nanos()).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn gcra_never_admits_more_than_burst_plus_rate_in_any_interval(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.burst() + 1)))
    ) {
        assert_continuous_bound(quota, &run(quota, Algorithm::Gcra, &steps));
    }

    #[test]
    fn token_bucket_never_admits_more_than_burst_plus_rate_in_any_interval(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.burst() + 1)))
    ) {
        assert_continuous_bound(quota, &run(quota, Algorithm::TokenBucket, &steps));
    }

    #[test]
    fn gcra_keeps_the_exact_rate_when_the_interval_is_a_fraction_of_a_nanosecond_off(
        (quota, steps) in fast_quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q) * 4, q.burst())))
    ) {
        assert_continuous_bound(quota, &run(quota, Algorithm::Gcra, &steps));
        gcra_against_model(quota, &steps);
    }

    #[test]
    fn token_bucket_keeps_the_exact_rate_when_the_interval_is_a_fraction_of_a_nanosecond_off(
        (quota, steps) in fast_quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q) * 4, q.burst())))
    ) {
        let admitted = run(quota, Algorithm::TokenBucket, &steps);
        assert_continuous_bound(quota, &admitted);
        prop_assert_eq!(admitted, run(quota, Algorithm::Gcra, &steps));
    }

    #[test]
    fn token_bucket_decides_exactly_as_gcra(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.burst() + 1)))
    ) {
        prop_assert_eq!(
            run(quota, Algorithm::TokenBucket, &steps),
            run(quota, Algorithm::Gcra, &steps)
        );
    }

    #[test]
    fn sliding_log_never_admits_more_than_count_in_any_sliding_window(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.count() + 1)))
    ) {
        let admitted = run(quota, Algorithm::SlidingWindowLog, &steps);
        assert_sliding_bound(window_nanos(quota), u64::from(quota.count()), &admitted);
    }

    #[test]
    fn sliding_counter_keeps_every_window_and_its_weighted_estimate_within_count(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.count() + 1)))
    ) {
        let admitted = run(quota, Algorithm::SlidingWindowCounter, &steps);
        let window = window_nanos(quota);
        let count = u64::from(quota.count());
        assert_aligned_bound(window, count, &admitted);
        // The estimate it admits by, recomputed from the admissions, after each one.
        for &(at, _) in &admitted {
            let start = at / window * window;
            let current = units(&admitted, start, at);
            let previous = if start >= window { units(&admitted, start - window, start - 1) } else { 0 };
            let elapsed = at - start;
            let weighted = u128::from(previous) * u128::from(window - elapsed)
                + u128::from(current) * u128::from(window);
            prop_assert!(weighted <= u128::from(count) * u128::from(window));
        }
    }

    #[test]
    fn fixed_window_keeps_each_window_within_count_and_any_window_within_twice(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.count() + 1)))
    ) {
        let admitted = run(quota, Algorithm::FixedWindow, &steps);
        let window = window_nanos(quota);
        let count = u64::from(quota.count());
        assert_aligned_bound(window, count, &admitted);
        assert_sliding_bound(window, 2 * count, &admitted);
    }

    #[test]
    fn gcra_matches_the_reference_model_exactly(
        (quota, steps) in quota().prop_flat_map(|q| (Just(q), steps(window_nanos(q), q.burst() + 1)))
    ) {
        gcra_against_model(quota, &steps);
    }
}

/// GCRA as the ITU virtual-scheduling algorithm, weighted: a check of `n` conforms iff
/// `now >= TAT + n·T - burst·T`; then `TAT = max(TAT, now) + n·T`, with `T = window / count`
/// exactly: the model keeps time in `1 / count` nanoseconds. Times it reports are rounded up
/// to whole nanoseconds.
struct Model {
    tat: i128,
    count: i128,
    window: i128,
    burst: i128,
}

impl Model {
    fn check(&mut self, now: i128, cost: u32) -> Result<(u32, i128), i128> {
        let ceil = |scaled: i128| (scaled + self.count - 1).div_euclid(self.count);
        let now = now * self.count;
        let increment = i128::from(cost) * self.window;
        let capacity = self.burst * self.window;
        let earliest = self.tat + increment - capacity;
        if now < earliest {
            return Err(ceil(earliest - now));
        }
        self.tat = self.tat.max(now) + increment;
        let remaining = (now + capacity - self.tat) / self.window;
        Ok((u32::try_from(remaining).unwrap(), ceil(self.tat - now)))
    }
}

fn gcra_against_model(quota: Quota, steps: &[Step]) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let start = tokio::time::Instant::now();
        let limiter = RateLimiter::new(quota);
        let mut model = Model {
            tat: 0,
            count: i128::from(quota.count()),
            window: i128::try_from(quota.window().as_nanos()).unwrap(),
            burst: i128::from(quota.burst()),
        };
        for step in steps {
            match *step {
                Step::Wait(nanos) => tokio::time::advance(Duration::from_nanos(nanos)).await,
                Step::Check { cost, .. } => {
                    let now = i128::try_from(start.elapsed().as_nanos()).unwrap();
                    let real = limiter.check_n(cost);
                    if cost > quota.burst() {
                        assert!(matches!(real, Err(Refusal::InsufficientCapacity(_))));
                        continue;
                    }
                    match (model.check(now, cost), real) {
                        (Ok((remaining, reset)), Ok(snapshot)) => {
                            assert_eq!(snapshot.remaining(), remaining, "remaining at {now}");
                            assert_eq!(
                                snapshot.reset().as_nanos() as i128,
                                reset,
                                "reset at {now}"
                            );
                        }
                        (Err(retry), Err(Refusal::Limited(limited))) => {
                            assert_eq!(
                                limited.retry_after().as_nanos() as i128,
                                retry,
                                "retry at {now}"
                            );
                            assert!(limited.snapshot().remaining() < cost);
                        }
                        (model, real) => {
                            panic!("at {now}, cost {cost}: model {model:?}, limiter {real:?}")
                        }
                    }
                }
            }
        }
    });
}

/// Checks `cost` every millisecond for `seconds` (after taking the burst): the units admitted.
fn admitted_over(quota: Quota, algorithm: Algorithm, cost: u32, seconds: u64) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    runtime.block_on(async {
        let limiter = RateLimiter::with_algorithm(quota, algorithm).unwrap();
        let mut admitted = 0;
        for _ in 0..=seconds * 1_000 {
            while limiter.check_n(cost).is_ok() {
                admitted += u64::from(cost);
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        admitted
    })
}

#[test]
fn a_large_count_is_admitted_at_its_exact_rate_not_at_the_rounded_interval() {
    // 700 000 000 per second: an interval of 1.43 ns, which rounded down to 1 ns admitted
    // 1e9 per second.
    let quota = Quota::per_second(NonZeroU32::new(700_000_000).unwrap());
    for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
        let admitted = admitted_over(quota, algorithm, 700_000, 2);
        // The burst, then 700 000 per millisecond.
        assert_eq!(admitted, 700_000_000 + 2_000 * 700_000, "{algorithm:?}");
    }
}

#[test]
fn a_byte_rate_admits_its_bytes_per_second_exactly() {
    // 300 MB/s with a cost of the body's length: an interval of 3.33 ns (3 ns admitted
    // 333 MB/s).
    let quota = Quota::per_second(NonZeroU32::new(300_000_000).unwrap())
        .allow_burst(NonZeroU32::new(3_000_000).unwrap());
    for algorithm in [Algorithm::Gcra, Algorithm::TokenBucket] {
        let admitted = admitted_over(quota, algorithm, 300_000, 3);
        assert_eq!(admitted, 3_000_000 + 3_000 * 300_000, "{algorithm:?}");
    }
}

#[test]
fn a_quota_above_one_per_nanosecond_is_exact_and_reads_back_without_panicking() {
    let quota = Quota::per_second(NonZeroU32::new(2_000_000_000).unwrap());
    let limiter = RateLimiter::new(quota);
    assert_eq!(limiter.quota(), quota);
    let layer = palisade_ratelimit::RateLimitLayer::new(quota);
    assert_eq!(layer.handle().quota(), quota);
    assert!(format!("{layer:?}").contains("2000000000"));
    assert!(Quota::new(NonZeroU32::new(10).unwrap(), Duration::from_nanos(5)).is_ok());
    assert_eq!(
        admitted_over(quota, Algorithm::Gcra, 2_000_000, 1),
        2_000_000_000 + 1_000 * 2_000_000
    );
}

#[test]
fn per_second_means_n_per_second_not_one_every_n_seconds() {
    let quota = Quota::per_second(NonZeroU32::new(10).unwrap());
    assert_eq!(quota.replenish_interval(), Duration::from_millis(100));
    assert_eq!(
        Quota::per_minute(NonZeroU32::new(30).unwrap()).replenish_interval(),
        Duration::from_secs(2)
    );
    assert_eq!(
        Quota::per_hour(NonZeroU32::new(3600).unwrap()).replenish_interval(),
        Duration::from_secs(1)
    );
}

#[test]
fn invalid_quotas_are_typed_errors() {
    use palisade_ratelimit::QuotaError;
    let nz = |n| NonZeroU32::new(n).unwrap();
    assert_eq!(
        Quota::with_period(Duration::ZERO),
        Err(QuotaError::ZeroWindow)
    );
    assert!(matches!(
        Quota::new(nz(1), Duration::from_secs(400 * 24 * 3600)),
        Err(QuotaError::WindowTooLong(_))
    ));
    assert!(matches!(
        RateLimiter::with_algorithm(Quota::per_hour(nz(1_000_000)), Algorithm::SlidingWindowLog),
        Err(palisade_ratelimit::ConfigError::LogTooLarge(1_000_000))
    ));
}

#[tokio::test(start_paused = true)]
async fn a_new_quota_applies_to_the_next_checks() {
    let nz = |n| NonZeroU32::new(n).unwrap();
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::FixedWindow,
    ] {
        let limiter = RateLimiter::with_algorithm(Quota::per_second(nz(1)), algorithm).unwrap();
        assert!(limiter.check().is_ok());
        assert!(limiter.check().is_err(), "{algorithm:?}");
        limiter.set_quota(Quota::per_second(nz(3))).unwrap();
        assert_eq!(limiter.quota(), Quota::per_second(nz(3)));
        if matches!(algorithm, Algorithm::Gcra | Algorithm::TokenBucket) {
            // The unit taken still needs its replenish time, now a third of a second: the
            // old quota would refuse until a full second has passed.
            tokio::time::advance(Duration::from_millis(334)).await;
            assert!(limiter.check().is_ok(), "{algorithm:?} with the new quota");
            assert!(limiter.check().is_err(), "{algorithm:?}");
        } else {
            assert!(
                limiter.check_n(2).is_ok(),
                "{algorithm:?} with the new quota"
            );
            assert!(
                limiter.check().is_err(),
                "{algorithm:?}: what was admitted still counts"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn gcra_carries_its_state_over_quota_changes_between_whole_and_fractional_intervals() {
    let nz = |n| NonZeroU32::new(n).unwrap();
    // 500 ms per unit: whole nanoseconds.
    let limiter = RateLimiter::new(Quota::per_second(nz(2)));
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err());
    // A third of a second per unit: not a whole number of nanoseconds. Capacity 1 s, of
    // which the two units taken hold all.
    limiter.set_quota(Quota::per_second(nz(3))).unwrap();
    assert!(limiter.check().is_err(), "what was taken still counts");
    tokio::time::advance(Duration::from_millis(334)).await;
    assert!(limiter.check().is_ok());
    assert!(limiter.check().is_err());
    // 250 ms per unit, whole again: 1 s minus 1/3 ms is held, so one more unit fits after
    // 250 ms, not before.
    limiter.set_quota(Quota::per_second(nz(4))).unwrap();
    assert!(limiter.check().is_err(), "what was taken still counts");
    tokio::time::advance(Duration::from_millis(249)).await;
    assert!(limiter.check().is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    let snapshot = limiter.check().unwrap();
    assert_eq!(snapshot.remaining(), 0);
    assert!(limiter.check().is_err());
}

#[test]
fn checks_racing_a_quota_change_to_a_fractional_interval_take_no_more_than_the_burst() {
    let nz = |n| NonZeroU32::new(n).unwrap();
    // 1,000 per hour: 3.6 s per unit, whole nanoseconds. The new quota's window is one
    // nanosecond longer: a fractional interval, so GCRA's state changes form while four
    // threads check. Real time here (no runtime): the bound allows for it.
    let limiter = RateLimiter::new(Quota::per_hour(nz(1_000)));
    let fractional = Quota::new(
        nz(1_000),
        Duration::from_secs(3_600) + Duration::from_nanos(1),
    )
    .unwrap();
    let start = std::time::Instant::now();
    let admitted = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..4 {
            scope.spawn(|| {
                for _ in 0..600 {
                    if limiter.check().is_ok() {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::yield_now();
        limiter.set_quota(fractional).unwrap();
    });
    let replenished = start.elapsed().as_nanos() / 3_600_000_000 + 1;
    let admitted = u128::from(admitted.into_inner());
    assert!(
        admitted <= 1_000 + replenished,
        "{admitted} admitted: the burst and {replenished} replenished at most"
    );
    if start.elapsed() < Duration::from_millis(3_600) {
        // (Nothing replenished yet.)
        assert!(limiter.check().is_err(), "the burst is spent");
    }
}

#[tokio::test(start_paused = true)]
async fn a_zero_cost_check_always_passes_and_takes_nothing() {
    let limiter = RateLimiter::new(Quota::per_second(NonZeroU32::new(1).unwrap()));
    assert!(limiter.check().is_ok());
    assert!(limiter.check_n(0).is_ok());
    assert_eq!(limiter.snapshot().remaining(), 0);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(limiter.snapshot().remaining(), 1);
    assert_eq!(limiter.snapshot().reset(), Duration::ZERO);
}
