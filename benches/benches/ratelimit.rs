//! The rate limiter's admitted path: one check on its own, beside governor 0.10's
//! `direct().check()`, on one thread and with two threads sharing one limiter; and the
//! layer's cost per call over the bare service, beside tower's `RateLimit`; and keyed
//! checks over 1,000 keys beside governor's `keyed().check_key()`.
//!
//! Every quota is large enough (10⁹ per second) that every check is admitted: the cost of a
//! request that goes through. Checks need no runtime (the limiters read the clock
//! themselves: palisade tokio's `Instant` by default or its quanta clock, governor its
//! default quanta clock), and the layer's futures complete at once, so they are polled once
//! with `now_or_never`. tower's `RateLimit` arms a tokio timer when built, so it is built
//! inside a current-thread runtime (then driven the same way, outside it).

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{assert_echoes, bench_calls, echo};
use palisade_ratelimit::{
    Algorithm, Clock, KeyedRateLimiter, Quota, RateLimitConfig, RateLimitLayer, RateLimiter,
};
use tower::Layer;

const PER_SECOND: u32 = 1_000_000_000;

fn quota() -> Quota {
    Quota::per_second(NonZeroU32::new(PER_SECOND).expect("non-zero"))
}

fn palisade(algorithm: Algorithm) -> RateLimiter {
    RateLimiter::with_algorithm(quota(), algorithm).expect("valid quota")
}

fn palisade_quanta() -> RateLimiter {
    RateLimiter::with_clock(quota(), Algorithm::Gcra, Clock::quanta()).expect("valid quota")
}

fn quanta_layer() -> RateLimitLayer {
    RateLimitLayer::new(
        RateLimitConfig::builder(quota())
            .clock(Clock::quanta())
            .build()
            .expect("valid configuration"),
    )
}

type Governor = governor::DefaultDirectRateLimiter;

fn governor() -> Governor {
    governor::RateLimiter::direct(governor::Quota::per_second(
        NonZeroU32::new(PER_SECOND).expect("non-zero"),
    ))
}

type Group<'a> = BenchmarkGroup<'a, criterion::measurement::WallTime>;

fn bench_check(group: &mut Group<'_>, name: &str, check: impl Fn() -> bool) {
    assert!((0..1_000).all(|_| check()), "{name} admits every check");
    group.bench_function(name, |b| b.iter(|| black_box(check())));
}

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/check");
    group.throughput(Throughput::Elements(1));
    for algorithm in [
        Algorithm::Gcra,
        Algorithm::TokenBucket,
        Algorithm::SlidingWindowCounter,
        Algorithm::FixedWindow,
    ] {
        let limiter = palisade(algorithm);
        bench_check(
            &mut group,
            &format!("palisade/{}", algorithm.as_str()),
            || limiter.check().is_ok(),
        );
    }
    let limiter = palisade_quanta();
    bench_check(&mut group, "palisade/gcra-quanta", || {
        limiter.check().is_ok()
    });
    let governor = governor();
    bench_check(&mut group, "governor/direct", || governor.check().is_ok());
    // What reading the clock alone costs: palisade's default clock is tokio's `Instant` (so
    // `tokio::time::pause` drives it), which outside tokio's `test-util` is std's; governor
    // and `Clock::quanta` read quanta's.
    bench_check(&mut group, "clock/tokio-instant", || {
        black_box(tokio::time::Instant::now());
        true
    });

    group.finish();
}

/// Two threads checking one limiter: of `iters` checks, one thread makes half (rounded up)
/// and the other the rest, released together by a barrier; the time is from the first
/// start to the last end, so the time per iteration is the wall time per check with both
/// threads busy (the inverse of their combined throughput).
fn bench_two(group: &mut Group<'_>, name: &str, check: impl Fn() -> bool + Sync) {
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let shares = [iters.div_ceil(2), iters / 2];
            let spans = thread::scope(|scope| {
                let workers = shares.map(|checks| {
                    let (check, barrier) = (&check, &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let start = Instant::now();
                        for _ in 0..checks {
                            black_box(check());
                        }
                        (start, Instant::now())
                    })
                });
                workers.map(|worker| worker.join().expect("bench thread panicked"))
            });
            let start = spans.iter().map(|span| span.0).min().expect("two spans");
            let end = spans.iter().map(|span| span.1).max().expect("two spans");
            end - start
        });
    });
}

fn check_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/check-2-threads");
    group.throughput(Throughput::Elements(1));
    let limiter = palisade(Algorithm::Gcra);
    bench_two(&mut group, "palisade/gcra", || limiter.check().is_ok());
    let limiter = palisade_quanta();
    bench_two(&mut group, "palisade/gcra-quanta", || {
        limiter.check().is_ok()
    });
    let governor = governor();
    bench_two(&mut group, "governor/direct", || governor.check().is_ok());
    group.finish();
}

fn layer(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/layer");
    group.throughput(Throughput::Elements(1));
    assert_echoes(RateLimitLayer::new(quota()).layer(echo()));
    bench_calls(&mut group, "bare", echo());
    bench_calls(
        &mut group,
        "palisade/gcra",
        RateLimitLayer::new(quota()).layer(echo()),
    );
    assert_echoes(quanta_layer().layer(echo()));
    bench_calls(
        &mut group,
        "palisade/gcra-quanta",
        quanta_layer().layer(echo()),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a runtime");
    let tower_limit = || {
        let _entered = runtime.enter();
        let rate = tower::limit::RateLimitLayer::new(u64::from(PER_SECOND), Duration::from_secs(1));
        rate.layer(echo())
    };
    assert_echoes(tower_limit());
    bench_calls(&mut group, "tower/rate-limit", tower_limit());
    group.finish();
}

const KEYS: u64 = 1_000;

/// One check per call, cycling through 1,000 keys (all tracked after the first round), on
/// one thread and with two threads sharing the limiter.
fn keyed(c: &mut Criterion) {
    let mut group = c.benchmark_group("ratelimit/keyed");
    group.throughput(Throughput::Elements(1));
    let palisade = KeyedRateLimiter::<u64>::new(quota());
    let governor = governor::RateLimiter::keyed(governor::Quota::per_second(
        NonZeroU32::new(PER_SECOND).expect("non-zero"),
    ));
    let palisade_quanta = KeyedRateLimiter::<u64>::with_config(
        RateLimitConfig::builder(quota())
            .clock(Clock::quanta())
            .build()
            .expect("valid configuration"),
    )
    .expect("a keyed configuration");
    let next = std::cell::Cell::new(0u64);
    let key = || {
        let key = next.get();
        next.set((key + 1) % KEYS);
        key
    };
    bench_check(&mut group, "palisade/gcra", || {
        palisade.check(key()).is_ok()
    });
    bench_check(&mut group, "palisade/gcra-quanta", || {
        palisade_quanta.check(key()).is_ok()
    });
    bench_check(&mut group, "governor/keyed", || {
        governor.check_key(&key()).is_ok()
    });
    group.finish();

    let mut group = c.benchmark_group("ratelimit/keyed-2-threads");
    group.throughput(Throughput::Elements(1));
    let shared = std::sync::atomic::AtomicU64::new(0);
    let key = || shared.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % KEYS;
    bench_two(&mut group, "palisade/gcra-quanta", || {
        palisade_quanta.check(key()).is_ok()
    });
    bench_two(&mut group, "governor/keyed", || {
        governor.check_key(&key()).is_ok()
    });
    group.finish();
}

criterion_group!(benches, check, check_two_threads, layer, keyed);
criterion_main!(benches);
