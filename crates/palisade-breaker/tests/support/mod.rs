//! A scriptable upstream for the breaker's tests.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use palisade_breaker::{CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer, State};
use palisade_core::{BoxError, CircuitOpen, Rejection, RetryAfter};
use tokio::sync::Semaphore;
use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

/// What the upstream does with a call.
#[derive(Debug, Clone)]
pub enum Call {
    Ok,
    Fail,
    /// Answers `Ok` after this long (on tokio's clock).
    Slow(Duration),
    /// Waits for a permit of the gate, then answers `Ok`.
    Gated(Arc<Semaphore>),
    Panic,
}

#[derive(Debug)]
pub struct Upstream {
    pub calls: Arc<AtomicUsize>,
}

pub type Svc = BoxCloneSyncService<Call, &'static str, BoxError>;

/// A breaker over a scriptable upstream; the counter says how many calls reached it.
pub fn breaker(config: CircuitBreakerConfig) -> (Svc, CircuitBreakerHandle, Arc<AtomicUsize>) {
    let layer = CircuitBreakerLayer::new(config);
    let handle = layer.handle();
    let (service, reached) = upstream();
    (
        BoxCloneSyncService::new(layer.layer(service)),
        handle,
        reached,
    )
}

pub fn upstream() -> (
    impl Service<Call, Response = &'static str, Error = &'static str, Future = impl Send>
    + Clone
    + Send
    + 'static,
    Arc<AtomicUsize>,
) {
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&reached);
    let service = tower::service_fn(move |call: Call| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            match call {
                Call::Ok => Ok("ok"),
                Call::Fail => Err("upstream failed"),
                Call::Slow(d) => {
                    tokio::time::sleep(d).await;
                    Ok("slow")
                }
                Call::Gated(gate) => {
                    let _permit = gate.acquire().await.map_err(|_| "gate closed")?;
                    Ok("gated")
                }
                Call::Panic => panic!("upstream panicked"),
            }
        }
    });
    (service, reached)
}

/// Makes one call; `Err` holds the breaker's rejection, other errors panic.
pub async fn call(service: &Svc, call: Call) -> Result<Result<&'static str, String>, CircuitOpen> {
    match service.clone().oneshot(call).await {
        Ok(response) => Ok(Ok(response)),
        Err(error) => match Rejection::find(&*error) {
            Some(Rejection::CircuitOpen(open)) => Err(*open),
            _ => Ok(Err(error.to_string())),
        },
    }
}

/// The rejection's retry-after, or a panic naming what happened instead.
pub async fn rejected(service: &Svc, what: Call) -> Duration {
    match call(service, what).await {
        Err(open) => open
            .retry_after()
            .expect("CircuitOpen carries a retry-after"),
        Ok(outcome) => panic!("expected a rejection, the call went through: {outcome:?}"),
    }
}

pub async fn run(service: &Svc, what: Call, times: usize) {
    for _ in 0..times {
        let outcome = call(service, what.clone()).await;
        assert!(outcome.is_ok(), "call was rejected: {outcome:?}");
    }
}

pub fn assert_state(handle: &CircuitBreakerHandle, state: State) {
    assert_eq!(handle.state(), state, "{:?}", handle.metrics());
}
