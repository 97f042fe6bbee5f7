//! The circuit breaker's closed state: what a successful call costs on top of the bare
//! service, beside failsafe (its futures API) and tower-resilience-circuitbreaker, on one
//! thread and with two threads sharing one breaker.
//!
//! Every variant is a `tower::Service` over the echo service, driven the same way: `ready`,
//! `call`, and one poll of the response future. All futures here complete at once (the
//! breakers stay closed and no timer is armed), so no runtime is measured: the one-thread
//! group polls with `now_or_never`; the two-thread group uses a parking executor, because a
//! lock held by the other thread (tower-resilience's `tokio::sync::Mutex`) can make a future
//! wait, and it uses that executor for every variant, the bare one too.

use std::num::NonZeroU32;
use std::task::{Context, Poll};
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{EchoFuture, assert_echoes, bench_calls, bench_calls_two_threads, echo};
use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use tower::{Layer, Service};

/// The bare echo service.
type Echo = tower::util::ServiceFn<fn(u64) -> EchoFuture>;

/// failsafe has no tower layer. This is the adapter a user would write: its futures API
/// (`breaker.call(future)`) around the inner service's response future.
#[derive(Clone)]
struct Failsafe<S, B> {
    inner: S,
    breaker: B,
}

impl<S, B> Service<u64> for Failsafe<S, B>
where
    S: Service<u64>,
    B: failsafe::futures::CircuitBreaker,
{
    type Response = S::Response;
    type Error = failsafe::Error<S::Error>;
    type Future = failsafe::futures::ResponseFuture<
        S::Future,
        B::FailurePolicy,
        B::Instrument,
        failsafe::Any,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(failsafe::Error::Inner)
    }

    fn call(&mut self, request: u64) -> Self::Future {
        self.breaker.call(self.inner.call(request))
    }
}

fn palisade(config: CircuitBreakerConfig) -> CircuitBreakerLayer {
    CircuitBreakerLayer::new(config)
}

fn time_window() -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .time_window(Duration::from_secs(10), NonZeroU32::new(10).unwrap())
        .build()
        .expect("valid time window")
}

fn consecutive() -> CircuitBreakerConfig {
    CircuitBreakerConfig::builder()
        .consecutive_failures(NonZeroU32::new(5).unwrap())
        .build()
        .expect("valid consecutive-failures policy")
}

fn failsafe_echo() -> Failsafe<Echo, impl failsafe::futures::CircuitBreaker + Clone + Send> {
    Failsafe {
        inner: echo(),
        breaker: failsafe::Config::new().build(),
    }
}

fn tower_resilience() -> tower_resilience_circuitbreaker::CircuitBreakerLayer {
    tower_resilience_circuitbreaker::CircuitBreakerLayer::builder()
        .build()
        .expect("default tower-resilience configuration")
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed");
    group.throughput(Throughput::Elements(1));

    assert_echoes(palisade(CircuitBreakerConfig::default()).layer(echo()));
    assert_echoes(palisade(time_window()).layer(echo()));
    assert_echoes(palisade(consecutive()).layer(echo()));
    assert_echoes(failsafe_echo());
    assert_echoes(tower_resilience().layer(echo()));

    bench_calls(&mut group, "bare", echo());
    bench_calls(
        &mut group,
        "palisade/count",
        palisade(CircuitBreakerConfig::default()).layer(echo()),
    );
    bench_calls(
        &mut group,
        "palisade/time",
        palisade(time_window()).layer(echo()),
    );
    bench_calls(
        &mut group,
        "palisade/consecutive",
        palisade(consecutive()).layer(echo()),
    );
    bench_calls(&mut group, "failsafe", failsafe_echo());
    bench_calls(
        &mut group,
        "tower-resilience",
        tower_resilience().layer(echo()),
    );
    group.finish();
}

fn closed_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed-2-threads");
    group.throughput(Throughput::Elements(1));

    bench_calls_two_threads(&mut group, "bare", echo());
    // Clones of one service share its breaker (for palisade, every service of one layer does).
    bench_calls_two_threads(
        &mut group,
        "palisade/count",
        palisade(CircuitBreakerConfig::default()).layer(echo()),
    );
    bench_calls_two_threads(
        &mut group,
        "palisade/time",
        palisade(time_window()).layer(echo()),
    );
    bench_calls_two_threads(
        &mut group,
        "palisade/consecutive",
        palisade(consecutive()).layer(echo()),
    );
    // A failsafe `StateMachine` is an `Arc`: clones are the same breaker.
    bench_calls_two_threads(&mut group, "failsafe", failsafe_echo());
    // tower-resilience's `build()` layer makes a new breaker per `layer` call; clones of one
    // service share it.
    bench_calls_two_threads(
        &mut group,
        "tower-resilience",
        tower_resilience().layer(echo()),
    );
    group.finish();
}

criterion_group!(benches, closed, closed_two_threads);
criterion_main!(benches);
