//! An admitted call through the layer allocates nothing, with or without a listener.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

use std::convert::Infallible;
use std::future::ready;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use palisade_core::event::listener_fn;
use palisade_ratelimit::{
    Algorithm, KeyedRateLimitLayer, Quota, RateLimitConfig, RateLimitEvent, RateLimitLayer, key_fn,
};
use palisade_testkit::alloc::{CountingAllocator, allocations, now};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn admitted_calls_allocate_nothing(config: RateLimitConfig) {
    let layer = RateLimitLayer::new(config);
    let mut service = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    for n in 0..1_000 {
        now(now(service.ready()).unwrap().call(n)).unwrap();
    }
    let before = allocations();
    for n in 0..10_000 {
        let response = now(now(service.ready()).unwrap().call(n)).unwrap();
        assert_eq!(response, n);
    }
    let allocated = allocations() - before;
    assert_eq!(
        allocated, 0,
        "10 000 admitted calls allocated {allocated} times"
    );
}

#[test]
fn admitted_calls_allocate_nothing_with_every_algorithm() {
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap());
    admitted_calls_allocate_nothing(quota.into());
    let admitted = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&admitted);
    admitted_calls_allocate_nothing(
        RateLimitConfig::builder(quota)
            .listener(listener_fn(move |event: &RateLimitEvent| {
                if matches!(event, RateLimitEvent::Admitted { .. }) {
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            }))
            .build()
            .unwrap(),
    );
    assert_eq!(admitted.load(Ordering::Relaxed), 11_000);
    let windows = Quota::per_second(NonZeroU32::new(60_000).unwrap());
    for algorithm in [
        Algorithm::TokenBucket,
        Algorithm::SlidingWindowLog,
        Algorithm::SlidingWindowCounter,
        Algorithm::FixedWindow,
    ] {
        let config = RateLimitConfig::builder(if algorithm == Algorithm::TokenBucket {
            quota
        } else {
            windows
        })
        .algorithm(algorithm)
        .build()
        .unwrap();
        admitted_calls_allocate_nothing(config);
    }
}

#[test]
fn keyed_calls_on_tracked_keys_allocate_nothing() {
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).unwrap());
    let layer = KeyedRateLimitLayer::new(quota, key_fn(|n: &u64| n % 100));
    let mut service = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    for n in 0..1_000 {
        now(now(service.ready()).unwrap().call(n)).unwrap();
    }
    let before = allocations();
    for n in 0..10_000 {
        let response = now(now(service.ready()).unwrap().call(n)).unwrap();
        assert_eq!(response, n);
    }
    let allocated = allocations() - before;
    assert_eq!(
        allocated, 0,
        "10 000 keyed calls allocated {allocated} times"
    );
    assert_eq!(layer.keys(), 100);
}
