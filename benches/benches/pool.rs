//! The concurrency pool's uncontended path: what a call costs on top of the bare service when
//! the pool has room, beside tower's `ConcurrencyLimitLayer`, on one thread and with two
//! threads sharing one pool.
//!
//! Every variant is a `tower::Service` over the echo service, driven the same way: `ready`,
//! `call`, and one poll of the response future. Nothing waits: the limit (64) is far above
//! the calls in flight, so no runtime is measured. The one-thread group polls with
//! `now_or_never`; the two-thread group uses a parking executor for every variant, the bare
//! one too, so that a variant which had to wait would still finish.

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{ThreadExecutor, assert_echoes, call_now, echo};
use palisade_pool::{ConcurrencyPoolLayer, PoolConfig};
use tower::limit::ConcurrencyLimitLayer;
use tower::{Layer, Service, ServiceExt};

const LIMIT: u32 = 64;

fn palisade() -> ConcurrencyPoolLayer {
    let limit = NonZeroU32::new(LIMIT).expect("non-zero limit");
    ConcurrencyPoolLayer::new(PoolConfig::builder(limit).build().expect("valid pool"))
}

fn tower_limit() -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::new(LIMIT as usize)
}

/// Measures one service on one thread.
fn bench_one<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
) where
    S: Service<u64>,
{
    group.bench_function(name, |b| {
        let mut request = 0u64;
        b.iter(|| {
            request = request.wrapping_add(1);
            black_box(call_now(&mut service, black_box(request)))
        });
    });
}

fn uncontended(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/uncontended");
    group.throughput(Throughput::Elements(1));

    assert_echoes(palisade().layer(echo()));
    assert_echoes(tower_limit().layer(echo()));

    bench_one(&mut group, "bare", echo());
    bench_one(&mut group, "palisade", palisade().layer(echo()));
    bench_one(
        &mut group,
        "tower/concurrency-limit",
        tower_limit().layer(echo()),
    );
    group.finish();
}

/// Measures two threads calling clones of one service, so they share its pool.
///
/// One iteration is one call: of `iters` calls, one thread makes half (rounded up) and the
/// other the rest. The time is from the moment both threads start (a barrier releases them;
/// spawning is not timed) until the last one is done, so the time per iteration is the wall
/// time per call with both threads busy: the inverse of their combined throughput.
fn bench_two<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    service: S,
) where
    S: Service<u64> + Clone + Send,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let shares = [iters.div_ceil(2), iters / 2];
            let spans = thread::scope(|scope| {
                let workers = shares.map(|calls| {
                    let (mut service, barrier) = (service.clone(), &barrier);
                    scope.spawn(move || {
                        let executor = ThreadExecutor::new();
                        barrier.wait();
                        let start = Instant::now();
                        for request in 0..calls {
                            let ready = executor.block_on(service.ready());
                            let Ok(ready) = ready else {
                                panic!("the service failed its readiness check");
                            };
                            black_box(executor.block_on(ready.call(black_box(request))).is_ok());
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

fn uncontended_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("pool/uncontended-2-threads");
    group.throughput(Throughput::Elements(1));

    bench_two(&mut group, "bare", echo());
    // Clones of one service share its pool (for palisade, every service of one layer does;
    // for tower, clones of a `ConcurrencyLimit` share its semaphore).
    bench_two(&mut group, "palisade", palisade().layer(echo()));
    bench_two(
        &mut group,
        "tower/concurrency-limit",
        tower_limit().layer(echo()),
    );
    group.finish();
}

criterion_group!(benches, uncontended, uncontended_two_threads);
criterion_main!(benches);
