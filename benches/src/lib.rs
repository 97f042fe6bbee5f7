//! Shared helpers for the Palisade benches: the bare service every layer is measured against,
//! and a one-thread executor for benches whose futures may have to wait.

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};

use futures_util::FutureExt;
use tower::{Service, ServiceExt};

/// The bare service's response future: ready at once.
pub type EchoFuture = Ready<Result<u64, Infallible>>;

/// The cheapest possible service: answers its request at once. Every layer bench runs this
/// bare, then wrapped, so the ratio is the layer's own cost.
pub fn echo() -> tower::util::ServiceFn<fn(u64) -> EchoFuture> {
    tower::service_fn(|request: u64| ready(Ok(request)))
}

/// One call on one thread: `ready` + `call`, each future polled once (in these benches they
/// are ready at once); `None` if the response was not.
///
/// # Panics
///
/// If the service is not ready at once or fails its readiness check.
pub fn call_now<S: Service<u64>>(
    service: &mut S,
    request: u64,
) -> Option<Result<S::Response, S::Error>> {
    let ready = service.ready().now_or_never().expect("ready at once");
    let Ok(ready) = ready else {
        panic!("the service failed its readiness check");
    };
    ready.call(request).now_or_never()
}

/// Checks that a variant answers its requests before it is measured (a breaker that is
/// closed, a retry layer that returns the first success).
///
/// # Panics
///
/// If any of 1,000 requests is not echoed at once.
pub fn assert_echoes<S>(mut service: S)
where
    S: Service<u64>,
    S::Response: PartialEq<u64> + std::fmt::Debug,
    S::Error: std::fmt::Debug,
{
    for request in 0..1_000 {
        let response = call_now(&mut service, request).expect("completes at once");
        assert!(response.expect("success") == request);
    }
}

/// Runs futures to completion on the thread that made it, parking the thread while a future
/// waits (for a lock another thread holds, say).
///
/// The waker is made once, so a future that is ready at once costs one poll, as with
/// `now_or_never`; unlike `now_or_never`, a future that has to wait is woken and finished.
#[derive(Debug)]
pub struct ThreadExecutor {
    waker: Waker,
}

struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

impl ThreadExecutor {
    /// An executor for the current thread; use it on this thread only.
    pub fn new() -> Self {
        Self {
            waker: Waker::from(Arc::new(Unpark(thread::current()))),
        }
    }

    /// Polls `future` until it completes, parking the thread between polls.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let mut future = pin!(future);
        let mut cx = Context::from_waker(&self.waker);
        loop {
            if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
                return output;
            }
            thread::park();
        }
    }
}

impl Default for ThreadExecutor {
    fn default() -> Self {
        Self::new()
    }
}
