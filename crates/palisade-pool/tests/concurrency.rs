//! Many callers on many threads: the limit holds, every call is served, nothing leaks.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use palisade_pool::{ConcurrencyPoolLayer, PoolConfig, priority_fn};
use support::nz;
use tower::{Layer, ServiceExt};

const LIMIT: u32 = 8;
const CALLERS: u32 = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_callers_never_see_more_than_the_limit_in_flight() {
    // Calls finish only once the gate opens, so all the callers pile up first.
    let (open, gate) = tokio::sync::watch::channel(false);
    let in_flight = Arc::new(AtomicU32::new(0));
    let peak = Arc::new(AtomicU32::new(0));
    let config = PoolConfig::builder(nz(LIMIT))
        .queue_capacity(CALLERS)
        .no_queue_timeout()
        .build()
        .unwrap();
    let layer = ConcurrencyPoolLayer::new(config).prioritize(priority_fn(|n: &u32| (n % 7) as u8));
    let handle = layer.handle();
    let service = layer.layer(tower::service_fn({
        let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
        move |n: u32| {
            let (in_flight, peak) = (Arc::clone(&in_flight), Arc::clone(&peak));
            let mut gate = gate.clone();
            async move {
                let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                gate.wait_for(|open| *open).await.unwrap();
                for _ in 0..(n % 5) {
                    tokio::task::yield_now().await;
                }
                in_flight.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(n)
            }
        }
    }));

    let callers: Vec<_> = (0..CALLERS)
        .map(|n| tokio::spawn(service.clone().oneshot(n)))
        .collect();
    // Every caller beyond the limit waits in the queue (the loop ends when they all do).
    while handle.queued() < (CALLERS - LIMIT) as usize {
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.in_flight(), LIMIT);
    open.send(true).unwrap();
    let mut served = 0;
    for (n, caller) in (0..CALLERS).zip(callers) {
        assert_eq!(caller.await.unwrap().unwrap(), n);
        served += 1;
    }

    assert_eq!(served, CALLERS);
    let peak = peak.load(Ordering::SeqCst);
    assert!(
        peak <= LIMIT,
        "{peak} calls ran at once; the limit is {LIMIT}"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}
