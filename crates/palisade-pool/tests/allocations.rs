//! While the pool has room, a call through it allocates nothing.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

use std::convert::Infallible;
use std::future::ready;
use std::num::NonZeroU32;

use palisade_pool::{ConcurrencyPoolLayer, PoolConfig};
use palisade_testkit::alloc::{CountingAllocator, allocations, now};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn uncontended_calls_allocate_nothing() {
    let config = PoolConfig::builder(NonZeroU32::new(4).unwrap())
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config);
    let handle = layer.handle();
    let mut service = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    // Warm up: anything lazily allocated once happens here.
    for n in 0..1_000 {
        now(now(service.ready()).unwrap().call(n)).unwrap();
    }
    let before = allocations();
    for n in 0..10_000 {
        let response = now(now(service.ready()).unwrap().call(n)).unwrap();
        assert_eq!(response, n);
    }
    let allocated = allocations() - before;
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(
        allocated, 0,
        "10 000 uncontended calls allocated {allocated} times"
    );
}

#[test]
fn calls_below_the_limit_allocate_nothing_while_others_are_in_flight() {
    let config = PoolConfig::builder(NonZeroU32::new(3).unwrap())
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config);
    let handle = layer.handle();
    let mut service = layer.layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    let before = allocations();
    for n in 0..1_000 {
        // Two calls in flight at once, both below the limit.
        let a = now(service.ready()).unwrap().call(n);
        let b = now(service.ready()).unwrap().call(n + 1);
        assert_eq!(handle.in_flight(), 2);
        assert_eq!(now(a).unwrap() + 1, now(b).unwrap());
    }
    assert_eq!(allocations() - before, 0);
}

#[test]
fn adaptive_and_partitioned_calls_allocate_nothing_while_the_pool_has_room() {
    use palisade_pool::{AdaptiveLimit, Aimd, partition_fn};
    let nz = |n| NonZeroU32::new(n).unwrap();
    let config = PoolConfig::builder(nz(8))
        .adaptive(AdaptiveLimit::new(Aimd::new(), nz(1), nz(8)).min_samples(1))
        .partition("even", 0.5)
        .partition("odd", 0.5)
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config).partition_by(partition_fn(|n: &u64| {
        if n.is_multiple_of(2) { "even" } else { "odd" }
    }));
    let handle = layer.handle();
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
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(
        allocated, 0,
        "10 000 adaptive, partitioned calls allocated {allocated} times"
    );
}
