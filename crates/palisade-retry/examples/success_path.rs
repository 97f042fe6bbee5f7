//! A fixed-iteration driver of the success path, for instruction counts under callgrind.
//!
//! Each iteration is one call as the `retry` bench makes it (`ready`, `call`, one poll of the
//! response future, which completes at once). The variant is the first argument: `bare`,
//! `budget`, `unbudgeted`, `tower` (tower's retry with a policy that never retries); the
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
//! -C codegen-units=1` builds the variant where it is.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::hint::black_box;

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

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "budget".into());
    let calls: u64 = args
        .next()
        .map_or(1_000_000, |n| n.parse().expect("a number of calls"));
    match variant.as_str() {
        "bare" => drive(&mut echo(), calls),
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
        other => panic!("unknown variant {other}: bare, tower, budget or unbudgeted"),
    }
}
