//! While running, a call through the shutdown layers allocates nothing.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

use std::convert::Infallible;
use std::future::ready;

use palisade_shutdown::Shutdown;
use palisade_testkit::alloc::{CountingAllocator, allocations, now};
use tower::{Layer, Service, ServiceExt};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

#[test]
fn running_calls_through_the_layer_allocate_nothing() {
    let shutdown = Shutdown::new();
    let mut service = shutdown
        .layer()
        .layer(tower::service_fn(|n: u64| ready(Ok::<_, Infallible>(n))));
    for n in 0..1_000 {
        now(now(service.ready()).unwrap().call(n)).unwrap();
    }
    let before = allocations();
    for n in 0..10_000 {
        let response = now(now(service.ready()).unwrap().call(n)).unwrap();
        assert_eq!(response, n);
    }
    let allocated = allocations() - before;
    assert_eq!(shutdown.in_flight(), 0);
    assert_eq!(allocated, 0, "10 000 calls allocated {allocated} times");
}

#[cfg(feature = "http")]
#[test]
fn running_http_calls_and_their_bodies_allocate_nothing() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};

    let shutdown = Shutdown::new();
    let mut service = shutdown
        .http_layer()
        .layer(tower::service_fn(|_: Request<()>| {
            ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(b"hello"),
            ))))
        }));
    let mut call = || {
        let response = now(now(service.ready()).unwrap().call(Request::new(()))).unwrap();
        let mut body = response.into_body();
        assert!(body.is_tracked());
        let frame = now(body.frame()).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(!body.is_tracked(), "released at the end of the body");
    };
    for _ in 0..1_000 {
        call();
    }
    let before = allocations();
    for _ in 0..10_000 {
        call();
    }
    let allocated = allocations() - before;
    assert_eq!(shutdown.in_flight(), 0);
    assert_eq!(allocated, 0, "10 000 calls allocated {allocated} times");
}

#[cfg(feature = "http")]
#[test]
fn calls_through_the_catch_panic_layer_allocate_nothing() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body_util::{BodyExt, Full};

    let shutdown = Shutdown::new();
    let mut service = shutdown
        .catch_panic_layer()
        .layer(tower::service_fn(|_: Request<()>| {
            ready(Ok::<_, Infallible>(Response::new(Full::new(
                Bytes::from_static(b"hello"),
            ))))
        }));
    let mut call = || {
        let response = now(now(service.ready()).unwrap().call(Request::new(()))).unwrap();
        let mut body = response.into_body();
        let frame = now(body.frame()).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
    };
    for _ in 0..1_000 {
        call();
    }
    let before = allocations();
    for _ in 0..10_000 {
        call();
    }
    let allocated = allocations() - before;
    assert_eq!(allocated, 0, "10 000 calls allocated {allocated} times");
}
