//! The shutdown layer in the running phase: what a call costs on top of the bare service, on
//! one thread and with two threads calling clones of one service (so they count their
//! requests on the same coordinator).
//!
//! Driven like the other layer benches: `ready`, `call`, one poll of the response future
//! (everything here completes at once, so no runtime is measured).

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::Instant;

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{assert_echoes, bench_calls, call_now, echo};
use palisade_shutdown::Shutdown;
use tower::{Layer, Service};

fn running(c: &mut Criterion) {
    let shutdown = Shutdown::new();
    let mut group = c.benchmark_group("shutdown/running");
    group.throughput(Throughput::Elements(1));

    assert_echoes(shutdown.layer().layer(echo()));

    bench_calls(&mut group, "bare", echo());
    bench_calls(&mut group, "palisade", shutdown.layer().layer(echo()));
    group.finish();
}

/// Measures two threads calling clones of one service.
///
/// One iteration is one call: of `iters` calls, one thread makes half (rounded up) and the
/// other the rest. The time is from the moment both threads start (a barrier releases them;
/// spawning is not timed) until the last one is done: the wall time per call with both
/// threads busy, the inverse of their combined throughput.
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
                        barrier.wait();
                        let start = Instant::now();
                        for request in 0..calls {
                            black_box(call_now(&mut service, black_box(request)));
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

fn running_two_threads(c: &mut Criterion) {
    let shutdown = Shutdown::new();
    let mut group = c.benchmark_group("shutdown/running-2-threads");
    group.throughput(Throughput::Elements(1));

    bench_two(&mut group, "bare", echo());
    bench_two(&mut group, "palisade", shutdown.layer().layer(echo()));
    group.finish();
}

criterion_group!(benches, running, running_two_threads);
criterion_main!(benches);
