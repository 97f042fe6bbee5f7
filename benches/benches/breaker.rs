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

use std::hint::black_box;
use std::num::NonZeroU32;
use std::sync::Barrier;
use std::task::{Context, Poll};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use palisade_benches::{EchoFuture, ThreadExecutor, assert_echoes, call_now, echo};
use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerLayer};
use tower::{Layer, Service, ServiceExt};

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

/// Measures one service on one thread.
fn bench_one<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut service: S,
) where
    S: Service<u64>,
{
    group.bench_function(name, |b| {
        let mut request = 0u64;
        b.iter(|| {
            request = request.wrapping_add(1);
            black_box(call_now(&mut service, black_box(request)))
        });
    });
}

fn closed(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed");
    group.throughput(Throughput::Elements(1));

    assert_echoes(palisade(CircuitBreakerConfig::default()).layer(echo()));
    assert_echoes(palisade(time_window()).layer(echo()));
    assert_echoes(palisade(consecutive()).layer(echo()));
    assert_echoes(failsafe_echo());
    assert_echoes(tower_resilience().layer(echo()));

    bench_one(&mut group, "bare", echo());
    bench_one(
        &mut group,
        "palisade/count",
        palisade(CircuitBreakerConfig::default()).layer(echo()),
    );
    bench_one(
        &mut group,
        "palisade/time",
        palisade(time_window()).layer(echo()),
    );
    bench_one(
        &mut group,
        "palisade/consecutive",
        palisade(consecutive()).layer(echo()),
    );
    bench_one(&mut group, "failsafe", failsafe_echo());
    bench_one(
        &mut group,
        "tower-resilience",
        tower_resilience().layer(echo()),
    );
    group.finish();
}

/// Measures two threads calling clones of one service, so they share its breaker.
///
/// One iteration is one call: of `iters` calls, one thread makes half (rounded up) and the
/// other the rest. The time is from the moment both threads start (a barrier releases them;
/// spawning is not timed) until the last one is done, so the time per iteration is the wall
/// time per call with both threads busy: the inverse of their combined throughput.
fn bench_two<S>(
    group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    service: S,
) where
    S: Service<u64> + Clone + Send,
{
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
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

fn closed_two_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("breaker/closed-2-threads");
    group.throughput(Throughput::Elements(1));

    bench_two(&mut group, "bare", echo());
    // Clones of one service share its breaker (for palisade, every service of one layer does).
    bench_two(
        &mut group,
        "palisade/count",
        palisade(CircuitBreakerConfig::default()).layer(echo()),
    );
    bench_two(
        &mut group,
        "palisade/time",
        palisade(time_window()).layer(echo()),
    );
    bench_two(
        &mut group,
        "palisade/consecutive",
        palisade(consecutive()).layer(echo()),
    );
    // A failsafe `StateMachine` is an `Arc`: clones are the same breaker.
    bench_two(&mut group, "failsafe", failsafe_echo());
    // tower-resilience's `build()` layer makes a new breaker per `layer` call; clones of one
    // service share it.
    bench_two(
        &mut group,
        "tower-resilience",
        tower_resilience().layer(echo()),
    );
    group.finish();
}

criterion_group!(benches, closed, closed_two_threads);
criterion_main!(benches);
