//! While closed, a call through the breaker allocates nothing.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

use std::convert::Infallible;
use std::future::ready;
use std::num::NonZeroU32;
use std::time::Duration;

use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer, State};
use palisade_testkit::alloc::{CountingAllocator, allocations, now};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn calls_allocate_nothing(config: CircuitBreakerConfig) {
    let layer = CircuitBreakerLayer::new(config);
    let handle = layer.handle();
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
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(
        allocated, 0,
        "10 000 closed-state calls allocated {allocated} times"
    );
}

#[test]
fn closed_state_calls_allocate_nothing() {
    let nz = |n| NonZeroU32::new(n).unwrap();
    calls_allocate_nothing(CircuitBreakerConfig::default());
    calls_allocate_nothing(
        CircuitBreakerConfig::builder()
            .time_window(Duration::from_secs(10), nz(10))
            .slow_calls(Duration::from_secs(1), 50.0)
            .build()
            .unwrap(),
    );
    calls_allocate_nothing(
        CircuitBreakerConfig::builder()
            .consecutive_failures(nz(5))
            .build()
            .unwrap(),
    );
}
