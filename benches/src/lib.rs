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

/// The criterion group type every bench here uses.
pub type Group<'a> = criterion::BenchmarkGroup<'a, criterion::measurement::WallTime>;

/// Measures `service` on one thread: one `ready` + `call` + poll per iteration, each request
/// a new number.
pub fn bench_calls<S: Service<u64>>(group: &mut Group<'_>, name: &str, mut service: S) {
    group.bench_function(name, |b| {
        let mut request = 0u64;
        b.iter(|| {
            request = request.wrapping_add(1);
            std::hint::black_box(call_now(&mut service, std::hint::black_box(request)))
        });
    });
}

/// Measures two threads calling clones of `service`, so they share its state, each polling
/// with a [`ThreadExecutor`] (a call may wait for the other thread).
///
/// One iteration is one call: of `iters` calls, one thread makes half (rounded up) and the
/// other the rest. The time is from the moment both threads start (a barrier releases them;
/// spawning is not timed) until the last one is done, so the time per iteration is the wall
/// time per call with both threads busy: the inverse of their combined throughput.
///
/// # Panics
///
/// If the service fails its readiness check or a thread panics.
pub fn bench_calls_two_threads<S>(group: &mut Group<'_>, name: &str, service: S)
where
    S: Service<u64> + Clone + Send,
{
    use std::hint::black_box;
    use std::time::Instant;
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = std::sync::Barrier::new(2);
            let shares = [iters.div_ceil(2), iters / 2];
            let spans = thread::scope(|scope| {
                let workers = shares.map(|calls| {
                    let (mut service, barrier) = (service.clone(), &barrier);
                    scope.spawn(move || {
                        let executor = ThreadExecutor::new();
                        barrier.wait();
                        let start = Instant::now();
                        for request in 0..calls {
                            let ready = executor.block_on(service.ready());
                            let Ok(ready) = ready else {
                                panic!("the service failed its readiness check");
                            };
                            black_box(executor.block_on(ready.call(black_box(request))).is_ok());
                        }
                        (start, Instant::now())
                    })
                });
                workers.map(|worker| worker.join().expect("bench thread panicked"))
            });
            let start = spans.iter().map(|span| span.0).min().expect("two spans");
            let end = spans.iter().map(|span| span.1).max().expect("two spans");
            end - start
        });
    });
}
