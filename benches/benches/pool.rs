//! The concurrency pool's uncontended path: what a call costs on top of the bare service when
//! the pool has room, beside tower's `ConcurrencyLimitLayer`, on one thread and with two
//! threads sharing one pool.
//!
//! Every variant is a `tower::Service` over the echo service, driven the same way: `ready`,
//! `call`, and one poll of the response future. Nothing waits: the limit (64) is far above
//! the calls in flight, so no runtime is measured. The one-thread group polls with
//! `now_or_never`; the two-thread group uses a parking executor for every variant, the bare
//! one too, so that a variant which had to wait would still finish.

use std::num::NonZeroU32;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{assert_echoes, bench_calls, bench_calls_two_threads, echo};
use palisade_pool::{ConcurrencyPoolLayer, PoolConfig};
use tower::Layer;
use tower::limit::ConcurrencyLimitLayer;

const LIMIT: u32 = 64;

fn palisade() -> ConcurrencyPoolLayer {
    let limit = NonZeroU32::new(LIMIT).expect("non-zero limit");
    ConcurrencyPoolLayer::new(PoolConfig::builder(limit).build().expect("valid pool"))
}

fn tower_limit() -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::new(LIMIT as usize)
}

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/uncontended");
    group.throughput(Throughput::Elements(1));

    assert_echoes(palisade().layer(echo()));
    assert_echoes(tower_limit().layer(echo()));

    bench_calls(&mut group, "bare", echo());
    bench_calls(&mut group, "palisade", palisade().layer(echo()));
    bench_calls(
        &mut group,
        "tower/concurrency-limit",
        tower_limit().layer(echo()),
    );
    group.finish();
}

fn uncontended_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/uncontended-2-threads");
    group.throughput(Throughput::Elements(1));

    bench_calls_two_threads(&mut group, "bare", echo());
    // Clones of one service share its pool (for palisade, every service of one layer does;
    // for tower, clones of a `ConcurrencyLimit` share its semaphore).
    bench_calls_two_threads(&mut group, "palisade", palisade().layer(echo()));
    bench_calls_two_threads(
        &mut group,
        "tower/concurrency-limit",
        tower_limit().layer(echo()),
    );
    group.finish();
}

criterion_group!(benches, uncontended, uncontended_two_threads);
criterion_main!(benches);
