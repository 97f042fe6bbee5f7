//! A call that succeeds at the first attempt allocates nothing, budget included.
//!
//! This binary counts heap allocations with a wrapping global allocator, per thread, so the
//! test harness's own threads do not disturb the count.

use std::convert::Infallible;
use std::future::ready;
use std::time::Duration;

use palisade_retry::{RetryConfig, RetryLayer};
use palisade_testkit::alloc::{CountingAllocator, allocations, now};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn successful_calls_allocate_nothing(config: RetryConfig) {
    let layer = RetryLayer::new(config);
    let mut service = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    // Warm up: anything lazily allocated once (thread-locals, the clock) happens here.
    for n in 0..1_000 {
        now(now(service.ready()).unwrap().call(n)).unwrap();
    }
    let before = allocations();
    for n in 0..10_000 {
        let response = now(now(service.ready()).unwrap().call(n)).unwrap();
        assert_eq!(response, n);
    }
    let allocated = allocations() - before;
    assert_eq!(allocated, 0, "10 000 calls allocated {allocated} times");
}

#[test]
fn successful_calls_allocate_nothing_with_the_default_budget() {
    successful_calls_allocate_nothing(RetryConfig::default());
}

#[test]
fn successful_calls_allocate_nothing_unbudgeted() {
    successful_calls_allocate_nothing(RetryConfig::builder().unbudgeted().build().unwrap());
}

#[tokio::test]
async fn successful_calls_with_time_limits_allocate_nothing() {
    // The timers are made only when an attempt has to wait; here none does.
    let config = RetryConfig::builder()
        .attempt_timeout(Duration::from_secs(1))
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    successful_calls_allocate_nothing(config);
}
