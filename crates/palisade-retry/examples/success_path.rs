//! A fixed-iteration driver of the success path, for instruction counts under callgrind.
//!
//! Each iteration is one call as the `retry` bench makes it (`ready`, `call`, one poll of the
//! response future, which completes at once). The variant is the first argument: `bare`,
//! `budget`, `unbudgeted`, `tower` (tower's retry with a policy that never retries), `arc`
//! (the bare service whose response future holds a clone of an `Arc`, as the retry layer's
//! holds its shared state: the floor of any layer whose futures own shared state); the
//! number of calls the second (default 1,000,000).
//!
//! ```text
//! cargo build --release -p palisade-retry --example success_path
//! valgrind --tool=callgrind --toggle-collect='*drive*' \
//!     target/release/examples/success_path budget 1000000
//! ```
//!
//! Instructions per call are the collected total divided by the number of calls. Whether
//! `now_or_never` is inlined into the loop depends on how the compiler splits the crate into
//! codegen units; `cargo rustc --release -p palisade-retry --example success_path --
//! -C codegen-units=1` builds the variant where it is. With the default 16 units it is in
//! the unit of `ResponseFuture`'s module, and LLVM says why it stays there with
//! `-C llvm-args=-print-import-failures` (too large to import) and
//! `-C llvm-args=-pass-remarks-missed=inline` (too costly to inline once imported).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use palisade_retry::{RetryConfig, RetryLayer};
use tower::{Layer, Service, ServiceExt};

type EchoFuture = Ready<Result<u64, Infallible>>;

fn echo() -> tower::util::ServiceFn<fn(u64) -> EchoFuture> {
    tower::service_fn(|request: u64| ready(Ok(request)))
}

/// tower's retry with a policy that never retries.
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

/// One call: `ready`, `call`, one poll.
#[inline(always)]
fn call_now<S: Service<u64>>(
    service: &mut S,
    request: u64,
) -> Option<Result<S::Response, S::Error>> {
    let Ok(ready) = service.ready().now_or_never().expect("ready at once") else {
        panic!("the service failed its readiness check");
    };
    ready.call(request).now_or_never()
}

#[inline(never)]
fn drive<S: Service<u64>>(service: &mut S, calls: u64) {
    for request in 0..calls {
        black_box(call_now(service, black_box(request)));
    }
}

/// The bare service, whose response futures each hold a clone of an `Arc` (variant `arc`).
#[derive(Clone)]
struct WithArc<S>(S, Arc<u64>);

/// A response future and a clone of an `Arc`, dropped with it.
struct ArcFuture<F> {
    inner: F,
    _shared: Arc<u64>,
}

impl<F: Future + Unpin> Future for ArcFuture<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        Pin::new(&mut self.inner).poll(cx)
    }
}

impl<S: Service<u64>> Service<u64> for WithArc<S>
where
    S::Future: Unpin,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ArcFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        ArcFuture {
            inner: self.0.call(request),
            _shared: Arc::clone(&self.1),
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "budget".into());
    let calls: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a number of calls"));
    match variant.as_str() {
        "bare" => drive(&mut echo(), calls),
        "arc" => drive(&mut WithArc(echo(), Arc::new(0)), calls),
        "tower" => drive(
            &mut tower::retry::RetryLayer::new(NeverRetry).layer(echo()),
            calls,
        ),
        "budget" => drive(
            &mut RetryLayer::new(RetryConfig::default()).layer(echo()),
            calls,
        ),
        "unbudgeted" => {
            let config = RetryConfig::builder().unbudgeted().build().expect("valid");
            drive(&mut RetryLayer::new(config).layer(echo()), calls);
        }
        other => panic!("unknown variant {other}: bare, arc, tower, budget or unbudgeted"),
    }
}
