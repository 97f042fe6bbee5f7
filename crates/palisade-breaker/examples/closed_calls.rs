//! A fixed-iteration driver for instruction counts of the closed path.
//!
//! Makes `N` calls (`ready`, `call`, one poll of the response future, as the criterion bench
//! in `benches/benches/breaker.rs` does) through the bare echo service and through a closed
//! breaker around it, each loop in a function of its own so a profiler can count them apart:
//!
//! ```text
//! cargo build --release -p palisade-breaker --example closed_calls
//! valgrind --tool=callgrind --toggle-collect='*closed_calls*drive*' \
//!     target/release/examples/closed_calls count
//! ```
//!
//! The argument picks the variant: `bare`, `count` (the default configuration),
//! `consecutive` or `time`; the optional second one, the number of calls (100,000).

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::num::NonZeroU32;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
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

fn main() {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "count".to_owned());
    let calls = args
        .next()
        .map_or(100_000, |n| n.parse().expect("a number of calls"));
    let config = match variant.as_str() {
        "bare" => return drive(&mut echo(), calls),
        "count" => CircuitBreakerConfig::default(),
        "consecutive" => CircuitBreakerConfig::builder()
            .consecutive_failures(NonZeroU32::new(5).expect("non-zero"))
            .build()
            .expect("valid configuration"),
        "time" => CircuitBreakerConfig::builder()
            .time_window(
                Duration::from_secs(10),
                NonZeroU32::new(10).expect("non-zero"),
            )
            .build()
            .expect("valid configuration"),
        other => panic!("unknown variant {other:?}: bare, count, consecutive or time"),
    };
    let mut service = CircuitBreakerLayer::new(config).layer(echo());
    drive(&mut service, calls);
}
