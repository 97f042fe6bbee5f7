//! The adaptive limit under load: it falls while latency is induced (or calls fail) and
//! recovers afterwards. Time is tokio's, paused: the "seconds" below are virtual.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::event::listener_fn;
use palisade_pool::{
    AdaptiveLimit, Aimd, ConcurrencyPoolLayer, Gradient2, PoolConfig, PoolEvent, PoolHandle,
};
use support::nz;
use tower::{Layer, Service, ServiceExt};

/// A service whose calls take `latency` (virtual) milliseconds and fail while `failing`.
#[derive(Clone, Default)]
struct Backend {
    latency: Arc<AtomicU64>,
    failing: Arc<AtomicBool>,
}

impl Backend {
    fn with_latency(ms: u64) -> Self {
        let backend = Self::default();
        backend.latency.store(ms, Ordering::SeqCst);
        backend
    }

    fn service(
        &self,
    ) -> impl Service<(), Response = (), Error = &'static str, Future: Send> + Clone + Send + 'static
    {
        let backend = self.clone();
        tower::service_fn(move |()| {
            let latency = Duration::from_millis(backend.latency.load(Ordering::SeqCst));
            let failing = backend.failing.load(Ordering::SeqCst);
            async move {
                tokio::time::sleep(latency).await;
                if failing { Err("overloaded") } else { Ok(()) }
            }
        })
    }
}

/// `clients` tasks calling the pool back to back, for as long as the test runs.
fn load(layer: &ConcurrencyPoolLayer, backend: &Backend, clients: usize) {
    let service = layer.layer(backend.service());
    for _ in 0..clients {
        let mut service = service.clone();
        tokio::spawn(async move {
            loop {
                let ready = service.ready().await.expect("the backend is always ready");
                let _: Result<(), BoxError> = ready.call(()).await;
            }
        });
    }
}

fn pool(start: u32, adaptive: AdaptiveLimit) -> (ConcurrencyPoolLayer, PoolHandle) {
    let config = PoolConfig::builder(nz(start))
        .queue_capacity(1_000)
        .no_queue_timeout()
        .adaptive(adaptive)
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config);
    let handle = layer.handle();
    (layer, handle)
}

async fn run_for(seconds: u64) {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

#[tokio::test(start_paused = true)]
async fn aimd_limit_falls_under_induced_latency_and_recovers_afterwards() {
    let aimd = Aimd::new().latency_threshold(Duration::from_millis(50));
    let (layer, handle) = pool(20, AdaptiveLimit::new(aimd, nz(2), nz(20)));
    let backend = Backend::with_latency(10);
    load(&layer, &backend, 32);

    run_for(5).await;
    assert_eq!(
        handle.limit(),
        20,
        "fast calls keep the limit at its maximum"
    );

    backend.latency.store(200, Ordering::SeqCst);
    run_for(10).await;
    let slowed = handle.limit();
    assert!(slowed <= 10, "the limit fell to {slowed}, not below 10");
    assert!(slowed >= 2, "never below the minimum");

    backend.latency.store(10, Ordering::SeqCst);
    run_for(30).await;
    assert_eq!(handle.limit(), 20, "one more per window until the maximum");
    assert!(handle.in_flight() <= handle.limit());
}

#[tokio::test(start_paused = true)]
async fn gradient2_limit_falls_under_induced_latency_and_recovers_afterwards() {
    let (layer, handle) = pool(40, AdaptiveLimit::new(Gradient2::new(), nz(4), nz(40)));
    let backend = Backend::with_latency(10);
    load(&layer, &backend, 64);

    // The long-term average learns the baseline.
    run_for(15).await;
    assert_eq!(handle.limit(), 40);

    backend.latency.store(200, Ordering::SeqCst);
    run_for(10).await;
    let slowed = handle.limit();
    assert!(slowed < 25, "the limit fell to {slowed}, not below 25");
    assert!(slowed >= 4, "never below the minimum");

    backend.latency.store(10, Ordering::SeqCst);
    run_for(40).await;
    let recovered = handle.limit();
    assert!(
        recovered >= 35,
        "the limit climbed back to {recovered} only"
    );
}

#[tokio::test(start_paused = true)]
async fn aimd_backs_off_while_calls_fail_and_climbs_back_when_they_succeed() {
    let (layer, handle) = pool(10, AdaptiveLimit::new(Aimd::new(), nz(1), nz(10)));
    let backend = Backend::with_latency(10);
    load(&layer, &backend, 16);

    backend.failing.store(true, Ordering::SeqCst);
    run_for(5).await;
    let failing = handle.limit();
    assert!(failing <= 6, "the limit fell to {failing} only");

    backend.failing.store(false, Ordering::SeqCst);
    run_for(10).await;
    assert_eq!(handle.limit(), 10);
}

#[tokio::test(start_paused = true)]
async fn the_limit_moves_once_a_window_has_lasted_its_time_and_holds_enough_calls() {
    let changes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = Arc::clone(&changes);
    let config = PoolConfig::builder(nz(10))
        .adaptive(AdaptiveLimit::new(Aimd::new(), nz(1), nz(10)).min_samples(3))
        .listener(listener_fn(move |event: &PoolEvent| {
            if let PoolEvent::LimitChanged { from, to } = *event {
                seen.lock().unwrap().push((from, to));
            }
        }))
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config);
    let handle = layer.handle();
    let backend = Backend::with_latency(1);
    backend.failing.store(true, Ordering::SeqCst);
    let mut service = layer.layer(backend.service());

    // Two failures, then a second later a third: only the third closes the window.
    for _ in 0..2 {
        let _ = service.ready().await.unwrap().call(()).await;
    }
    assert_eq!(handle.limit(), 10);
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(
        handle.limit(),
        10,
        "a window closes on a call, not on a timer"
    );
    let _ = service.ready().await.unwrap().call(()).await;
    assert_eq!(handle.limit(), 9);
    assert_eq!(*changes.lock().unwrap(), [(10, 9)]);
}

#[tokio::test(start_paused = true)]
async fn cancelled_calls_are_not_measured() {
    let config = PoolConfig::builder(nz(10))
        .adaptive(AdaptiveLimit::new(Aimd::new(), nz(1), nz(10)).min_samples(1))
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config);
    let handle = layer.handle();
    let backend = Backend::with_latency(60_000);
    let mut service = layer.layer(backend.service());

    // A call slower than the latency threshold, cancelled: no sample, no window, no change.
    let call = service.ready().await.unwrap().call(());
    let cancelled = tokio::time::timeout(Duration::from_secs(10), call).await;
    assert!(cancelled.is_err());
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.limit(), 10);

    // The same call, finished: measured, too slow, the limit falls.
    service.ready().await.unwrap().call(()).await.unwrap();
    assert_eq!(handle.limit(), 9);
}
