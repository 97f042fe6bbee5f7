//! A fixed-iteration driver for instruction counts and CPU time of the layer's admitted path.
//!
//! Makes `N` calls (`ready`, `call`, one poll of the response future, as the criterion bench
//! in `benches/benches/ratelimit.rs` does) through the bare echo service and through a
//! rate-limit layer around it whose quota (10⁹ per second) admits every call, each loop in a
//! function of its own so a profiler can count them apart:
//!
//! ```text
//! cargo build --release -p palisade-ratelimit --features quanta --example layer_calls
//! valgrind --tool=callgrind --toggle-collect='*layer_calls*drive*' \
//!     target/release/examples/layer_calls layer-quanta
//! ```
//!
//! The argument picks the variant: `bare`, `layer-quanta` (the default; `Clock::quanta`) or
//! `layer-tokio` (tokio's clock); the optional second one, the number of calls (100,000).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use palisade_ratelimit::{Clock, Quota, RateLimitConfig, RateLimitLayer};
use tower::{Layer, Service, ServiceExt};

type Echo = tower::util::ServiceFn<fn(u64) -> Ready<Result<u64, Infallible>>>;

fn echo() -> Echo {
    tower::service_fn(|request: u64| ready(Ok(request)))
}

/// Polls `future` once.
fn now_or_never<F: Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// One call: `ready`, `call`, one poll.
fn call_now<S: Service<u64>>(
    service: &mut S,
    request: u64,
) -> Option<Result<S::Response, S::Error>> {
    let Some(Ok(ready)) = now_or_never(service.ready()) else {
        panic!("the service is not ready at once");
    };
    now_or_never(ready.call(request))
}

#[inline(never)]
fn drive<S: Service<u64>>(service: &mut S, calls: u64) {
    for request in 0..calls {
        black_box(call_now(service, black_box(request)));
    }
}

fn layer(clock: Clock) -> RateLimitLayer {
    let quota = Quota::per_second(NonZeroU32::new(1_000_000_000).expect("non-zero"));
    RateLimitLayer::new(
        RateLimitConfig::builder(quota)
            .clock(clock)
            .build()
            .expect("valid configuration"),
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "layer-quanta".to_owned());
    let calls = args
        .next()
        .map_or(100_000, |n| n.parse().expect("a number of calls"));
    let clock = match variant.as_str() {
        "bare" => return drive(&mut echo(), calls),
        "layer-quanta" => Clock::quanta(),
        "layer-tokio" => Clock::tokio(),
        other => panic!("unknown variant {other:?}: bare, layer-quanta or layer-tokio"),
    };
    let mut service = layer(clock).layer(echo());
    // Every call is admitted: the quota is far above what one thread can ask.
    for request in 0..1_000 {
        let response = call_now(&mut service, request).expect("admitted at once");
        assert_eq!(response.expect("echoed"), request);
    }
    drive(&mut service, calls);
}
