//! The backoff iterator: 16 delays of an exponential curve with full and equal jitter,
//! side by side with failsafe's jittered backoffs (the peer users would otherwise pick).

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_core::{Backoff, Jitter};

const DELAYS: u64 = 16;

fn backoff(c: &mut Criterion) {
    // failsafe only takes whole seconds (it asserts start >= 1 s), so both use 1 s .. 60 s.
    let (start, cap) = (Duration::from_secs(1), Duration::from_secs(60));
    let ours = Backoff::exponential(start, 2.0, cap).expect("valid backoff");

    let mut group = c.benchmark_group("backoff/16 delays");
    group.throughput(Throughput::Elements(DELAYS));
    for (name, jitter) in [
        ("none", Jitter::None),
        ("full", Jitter::Full),
        ("equal", Jitter::Equal),
        ("decorrelated", Jitter::Decorrelated),
    ] {
        let backoff = ours.with_jitter(jitter);
        group.bench_function(format!("palisade/{name}"), |b| {
            b.iter(|| {
                black_box(&backoff)
                    .delays()
                    .take(DELAYS as usize)
                    .fold(Duration::ZERO, |sum, d| sum + d)
            })
        });
    }
    group.bench_function("failsafe/none", |b| {
        b.iter(|| {
            failsafe::backoff::exponential(black_box(start), black_box(cap))
                .take(DELAYS as usize)
                .fold(Duration::ZERO, |sum, d| sum + d)
        })
    });
    group.bench_function("failsafe/full", |b| {
        b.iter(|| {
            failsafe::backoff::full_jittered(black_box(start), black_box(cap))
                .take(DELAYS as usize)
                .fold(Duration::ZERO, |sum, d| sum + d)
        })
    });
    group.bench_function("failsafe/equal", |b| {
        b.iter(|| {
            failsafe::backoff::equal_jittered(black_box(start), black_box(cap))
                .take(DELAYS as usize)
                .fold(Duration::ZERO, |sum, d| sum + d)
        })
    });
    group.finish();
}

criterion_group!(benches, backoff);
criterion_main!(benches);
