//! The retry layer's success path: what a call that succeeds at once costs on top of the
//! bare service, beside tower's `RetryLayer` with a policy that never retries (the floor a
//! tower user starts from before writing backoff and budgets themselves).
//!
//! Every variant is driven the same way: `ready`, `call`, one poll of the response future
//! (all complete at once, so no runtime is measured).

use std::future::Ready;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{assert_echoes, bench_calls, echo};
use palisade_retry::{RetryConfig, RetryLayer};
use tower::Layer;

/// tower's retry with a policy that never retries: its cheapest configuration.
#[derive(Clone, Copy)]
struct NeverRetry;

impl<E> tower::retry::Policy<u64, u64, E> for NeverRetry {
    type Future = Ready<()>;

    fn retry(&mut self, _: &mut u64, _: &mut Result<u64, E>) -> Option<Self::Future> {
        None
    }

    fn clone_request(&mut self, request: &u64) -> Option<u64> {
        Some(*request)
    }
}

fn retry(c: &mut Criterion) {
    let unbudgeted = RetryConfig::builder().unbudgeted().build().expect("valid");
    assert_echoes(tower::retry::RetryLayer::new(NeverRetry).layer(echo()));
    assert_echoes(RetryLayer::new(RetryConfig::default()).layer(echo()));
    assert_echoes(RetryLayer::new(unbudgeted.clone()).layer(echo()));
    assert_echoes(echo());

    let mut group = c.benchmark_group("retry/success");
    group.throughput(Throughput::Elements(1));
    bench_calls(&mut group, "bare", echo());
    bench_calls(
        &mut group,
        "tower/never-retry",
        tower::retry::RetryLayer::new(NeverRetry).layer(echo()),
    );
    bench_calls(
        &mut group,
        "palisade/budget",
        RetryLayer::new(RetryConfig::default()).layer(echo()),
    );
    bench_calls(
        &mut group,
        "palisade/unbudgeted",
        RetryLayer::new(unbudgeted).layer(echo()),
    );
    group.finish();
}

criterion_group!(benches, retry);
criterion_main!(benches);
