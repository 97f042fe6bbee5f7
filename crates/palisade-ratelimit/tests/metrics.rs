//! What a core `MetricsListener` records from `RateLimitEvent`s: the event counter with the
//! component and kind, the remaining gauge, the wait histogram and the keys gauge.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use palisade_core::event::MetricsListener;
use palisade_ratelimit::{KeyedRateLimiter, Quota, RateLimitConfig, RateLimiter};
use palisade_testkit::metrics::Capture;

fn counter(kind: &str) -> String {
    format!("counter palisade_events_total{{component=ratelimit,event={kind},instance=api}} +1")
}

#[tokio::test(start_paused = true)]
async fn admissions_rejections_and_waits_become_counters_gauges_and_histograms() {
    use tower::{Layer, ServiceExt};
    let capture = Capture::default();
    let config = RateLimitConfig::builder(Quota::per_second(NonZeroU32::new(2).unwrap()))
        .listener(MetricsListener::new("api"))
        .wait_up_to(Duration::from_millis(500))
        .build()
        .unwrap();
    let service = palisade_ratelimit::RateLimitLayer::new(config).layer(tower::service_fn(
        |n: u32| async move { Ok::<_, std::io::Error>(n) },
    ));
    let _recorder = metrics::set_default_local_recorder(&capture);

    service.clone().oneshot(1).await.unwrap();
    assert_eq!(
        capture.take(),
        [
            counter("admitted"),
            "gauge palisade_ratelimit_remaining{instance=api} =1".to_owned(),
        ]
    );
    service.clone().oneshot(2).await.unwrap();
    capture.take();
    // The third waits half a second for the next unit.
    service.clone().oneshot(3).await.unwrap();
    assert_eq!(
        capture.take(),
        [
            counter("waited"),
            "gauge palisade_ratelimit_remaining{instance=api} =0".to_owned(),
            "histogram palisade_ratelimit_wait_seconds{instance=api} <0.5".to_owned(),
        ]
    );

    // Direct checks report nothing: listeners are the layers'.
    let direct = RateLimiter::new(Quota::per_second(NonZeroU32::new(1).unwrap()));
    direct.check().unwrap();
    assert!(capture.take().is_empty());
}

#[tokio::test(start_paused = true)]
async fn keyed_limits_report_their_keys_on_overflows_and_sweeps() {
    let capture = Capture::default();
    let config = RateLimitConfig::builder(Quota::per_second(NonZeroU32::new(1).unwrap()))
        .listener(MetricsListener::new("api"))
        .build()
        .unwrap();
    let limiter = KeyedRateLimiter::<u32>::with_config(config).unwrap();
    limiter.set_max_keys(NonZeroUsize::new(1).unwrap());
    let _recorder = metrics::set_default_local_recorder(&capture);

    limiter.check(1).unwrap();
    // A second key finds the map full: it goes to the overflow limit.
    limiter.check(2).unwrap();
    assert_eq!(
        capture.take(),
        [
            counter("overflowed"),
            "gauge palisade_ratelimit_keys{instance=api} =1".to_owned(),
        ]
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(limiter.sweep(), 1);
    assert_eq!(
        capture.take(),
        [
            counter("swept"),
            "gauge palisade_ratelimit_keys{instance=api} =0".to_owned(),
        ]
    );
}
