//! While running, a call through the shutdown layers allocates nothing, whether it
//! completes at once or waits first.
//!
//! This binary counts heap allocations per thread with the testkit's counting allocator.

use std::convert::Infallible;
use std::future::{Future, ready};
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

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

/// Pending at its first poll (as a call waiting on I/O is), ready at the next.
struct WaitOnce<T>(Option<T>, bool);

impl<T: Unpin> Future for WaitOnce<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<T> {
        if std::mem::replace(&mut self.1, true) {
            Poll::Ready(self.0.take().expect("polled after it completed"))
        } else {
            Poll::Pending
        }
    }
}

/// Polls `future` until it is ready, with a waker that does nothing.
fn until_ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
    }
}

#[test]
fn running_calls_that_wait_allocate_nothing() {
    // A call that waits leaves its waker with its thread's slot, to be woken at the
    // deadline; the slot's room is reused from one call to the next.
    let shutdown = Shutdown::new();
    let mut service = shutdown.layer().layer(tower::service_fn(|n: u64| {
        WaitOnce(Some(Ok::<_, Infallible>(n)), false)
    }));
    for n in 0..1_000 {
        until_ready(now(service.ready()).unwrap().call(n)).unwrap();
    }
    let before = allocations();
    for n in 0..10_000 {
        let response = until_ready(now(service.ready()).unwrap().call(n)).unwrap();
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

#[cfg(feature = "http")]
#[test]
fn running_http_calls_and_bodies_that_wait_allocate_nothing() {
    use bytes::Bytes;
    use http::{Request, Response};
    use http_body::Frame;
    use http_body_util::BodyExt;

    /// One frame, sent after a wait.
    struct SlowBody(WaitOnce<Bytes>);

    impl http_body::Body for SlowBody {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            if self.0.0.is_none() {
                return Poll::Ready(None);
            }
            Pin::new(&mut self.0)
                .poll(cx)
                .map(|data| Some(Ok(Frame::data(data))))
        }
    }

    let shutdown = Shutdown::new();
    let mut service = shutdown
        .http_layer()
        .layer(tower::service_fn(|_: Request<()>| {
            let body = SlowBody(WaitOnce(Some(Bytes::from_static(b"hello")), false));
            WaitOnce(Some(Ok::<_, Infallible>(Response::new(body))), false)
        }));
    let mut call = || {
        let response = until_ready(now(service.ready()).unwrap().call(Request::new(()))).unwrap();
        let mut body = response.into_body();
        let frame = until_ready(body.frame()).unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "hello");
        assert!(until_ready(body.frame()).is_none());
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
