//! What the layers ask of their `Respond` on admitted requests: `admitted` with the
//! limiter's snapshot when the `Respond` reads it (the default), never when it says it does
//! not (`READS_SNAPSHOT = false`, as `RaiseError` does); either way the limit is the same
//! (the layer's snapshot-free check decides as a direct check does), and a listener still
//! gets every admission's snapshot.

use std::convert::Infallible;
use std::future::ready;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use palisade_core::event::listener_fn;
use palisade_ratelimit::{
    Quota, RateLimitConfig, RateLimitEvent, RateLimitLayer, Refusal, Respond, Snapshot,
};
use tower::{Layer, Service, ServiceExt};

/// Answers refused requests with 0 and records the `remaining` of every snapshot it is
/// shown; reads it (the default) when `READS` is true.
#[derive(Clone, Default)]
struct Recording<const READS: bool> {
    seen: Arc<Mutex<Vec<u32>>>,
}

impl<const READS: bool> Respond<u32, u32, Infallible> for Recording<READS> {
    type Error = Infallible;

    const READS_SNAPSHOT: bool = READS;

    fn refused(&self, _refusal: Refusal, _request: u32) -> Result<u32, Infallible> {
        Ok(0)
    }

    fn error(&self, error: Infallible) -> Infallible {
        error
    }

    fn admitted(&self, snapshot: &Snapshot, _response: &mut u32) {
        self.seen.lock().unwrap().push(snapshot.remaining());
    }
}

fn config(listener: Option<Arc<Mutex<Vec<u32>>>>) -> RateLimitConfig {
    let builder = RateLimitConfig::builder(Quota::per_minute(NonZeroU32::new(3).unwrap()));
    match listener {
        Some(events) => builder.listener(listener_fn(move |event: &RateLimitEvent| {
            if let RateLimitEvent::Admitted { snapshot, .. } = event {
                events.lock().unwrap().push(snapshot.remaining());
            }
        })),
        None => builder,
    }
    .build()
    .unwrap()
}

/// Four calls against a limit of three a minute: the answers.
async fn four_calls<const READS: bool>(
    config: RateLimitConfig,
    respond: Recording<READS>,
) -> Vec<u32> {
    let mut service = RateLimitLayer::new(config)
        .respond_with(respond)
        .layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    let mut answers = Vec::new();
    for n in 1..=4 {
        answers.push(service.ready().await.unwrap().call(n).await.unwrap());
    }
    answers
}

#[tokio::test(start_paused = true)]
async fn a_respond_that_reads_the_snapshot_sees_every_admission() {
    for listener in [None, Some(Arc::default())] {
        let respond = Recording::<true>::default();
        let answers = four_calls(config(listener.clone()), respond.clone()).await;
        assert_eq!(answers, [1, 2, 3, 0], "three admitted, the fourth refused");
        assert_eq!(*respond.seen.lock().unwrap(), [2, 1, 0]);
        if let Some(events) = listener {
            assert_eq!(*events.lock().unwrap(), [2, 1, 0]);
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_respond_that_reads_no_snapshot_is_never_shown_one_and_limits_the_same() {
    for listener in [None, Some(Arc::default())] {
        let respond = Recording::<false>::default();
        let answers = four_calls(config(listener.clone()), respond.clone()).await;
        assert_eq!(answers, [1, 2, 3, 0], "three admitted, the fourth refused");
        assert!(
            respond.seen.lock().unwrap().is_empty(),
            "admitted was called on a Respond that reads no snapshot"
        );
        if let Some(events) = listener {
            assert_eq!(
                *events.lock().unwrap(),
                [2, 1, 0],
                "the listener still gets each admission's snapshot"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_respond_that_reads_no_snapshot_is_not_shown_one_after_waiting() {
    let config = RateLimitConfig::builder(Quota::per_second(NonZeroU32::new(1).unwrap()))
        .wait_up_to(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    let respond = Recording::<false>::default();
    let mut service = RateLimitLayer::new(config)
        .respond_with(respond.clone())
        .layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    assert_eq!(service.ready().await.unwrap().call(1).await.unwrap(), 1);
    // Waits a second for the next unit, then is admitted.
    assert_eq!(service.ready().await.unwrap().call(2).await.unwrap(), 2);
    assert!(respond.seen.lock().unwrap().is_empty());
}

/// Decisions of the layer (whose `RaiseError` takes the snapshot-free path) and of a direct
/// limiter (which computes every snapshot), side by side on one paused clock: a pseudo-random
/// sequence of waits and calls, costs of one and of two, and a quota change from a whole to a
/// fractional interval (GCRA's time moves to its exact form) and back.
#[tokio::test(start_paused = true)]
async fn the_layer_decides_as_a_direct_check_does() {
    use palisade_ratelimit::RateLimiter;

    let whole = Quota::per_second(NonZeroU32::new(5).unwrap());
    let fractional = Quota::per_second(NonZeroU32::new(3).unwrap());
    let direct = RateLimiter::new(whole);
    let layer = RateLimitLayer::new(whole).cost(|n: &u32| 1 + n % 2);
    let handle = layer.handle();
    let mut service = layer.layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
    let mut seed = 0x2545_f491_u32;
    let (mut admitted, mut refused) = (0, 0);
    for step in 0..3_000u32 {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        if step == 1_000 {
            direct.set_quota(fractional).unwrap();
            handle.set_quota(fractional).unwrap();
        }
        if step == 2_000 {
            direct.set_quota(whole).unwrap();
            handle.set_quota(whole).unwrap();
        }
        tokio::time::advance(std::time::Duration::from_millis(u64::from(seed >> 28) * 25)).await;
        let request = (seed >> 8) % 4;
        // `Err(true)`: limited, the only refusal these costs can get.
        let expected = direct
            .check_n(1 + request % 2)
            .map(|_| ())
            .map_err(|refusal| matches!(refusal, Refusal::Limited(_)));
        let answer = service.ready().await.unwrap().call(request).await;
        match (&expected, &answer) {
            (Ok(()), Ok(n)) => {
                assert_eq!(*n, request);
                admitted += 1;
            }
            (Err(true), Err(_)) => refused += 1,
            _ => panic!("step {step}: direct {expected:?}, layer {answer:?}"),
        }
    }
    assert!(
        admitted > 500 && refused > 500,
        "{admitted} admitted, {refused} refused"
    );
}

#[tokio::test(start_paused = true)]
async fn a_keyed_layer_shows_the_snapshot_only_to_a_respond_that_reads_it() {
    use palisade_ratelimit::{KeyedRateLimitLayer, key_fn};

    async fn seen<const READS: bool>() -> Vec<u32> {
        let respond = Recording::<READS>::default();
        let quota = Quota::per_minute(NonZeroU32::new(3).unwrap());
        let mut service = KeyedRateLimitLayer::new(quota, key_fn(|n: &u32| n % 2))
            .respond_with(respond.clone())
            .layer(tower::service_fn(|n: u32| ready(Ok::<_, Infallible>(n))));
        for n in [2, 4, 1] {
            assert_eq!(service.ready().await.unwrap().call(n).await.unwrap(), n);
        }
        respond.seen.lock().unwrap().clone()
    }

    assert_eq!(seen::<true>().await, [2, 1, 2]);
    assert!(seen::<false>().await.is_empty());
}
