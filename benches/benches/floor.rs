//! The floor: a bare `service_fn`'s `ready` + `call`, with no layer. Every layer's bench
//! reports its cost as a ratio to this.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use palisade_benches::echo;
use tower::{Service, ServiceExt};

fn floor(c: &mut Criterion) {
    let mut group = c.benchmark_group("floor");
    group.throughput(Throughput::Elements(1));
    group.bench_function("service_fn/ready+call", |b| {
        let mut service = echo();
        let mut request = 0u64;
        b.iter(|| {
            request = request.wrapping_add(1);
            // The futures are ready at once: polling them once measures only the service.
            let ready = service.ready().now_or_never().expect("ready at once");
            let ready = ready.expect("infallible");
            black_box(ready.call(black_box(request)).now_or_never())
        });
    });
    group.finish();
}

criterion_group!(benches, floor);
criterion_main!(benches);
