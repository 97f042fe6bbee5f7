//! The shutdown layer in the running phase: what a call costs on top of the bare service.
//!
//! Driven like the other layer benches: `ready`, `call`, one poll of the response future
//! (everything here completes at once, so no runtime is measured).

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{assert_echoes, call_now, echo};
use palisade_shutdown::Shutdown;
use tower::{Layer, Service};

fn bench_one<S: Service<u64>>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
) {
    group.bench_function(name, |b| {
        let mut request = 0u64;
        b.iter(|| {
            request = request.wrapping_add(1);
            black_box(call_now(&mut service, black_box(request)))
        });
    });
}

fn running(c: &mut Criterion) {
    let shutdown = Shutdown::new();
    let mut group = c.benchmark_group("shutdown/running");
    group.throughput(Throughput::Elements(1));

    assert_echoes(shutdown.layer().layer(echo()));

    bench_one(&mut group, "bare", echo());
    bench_one(&mut group, "palisade", shutdown.layer().layer(echo()));
    group.finish();
}

criterion_group!(benches, running);
criterion_main!(benches);
