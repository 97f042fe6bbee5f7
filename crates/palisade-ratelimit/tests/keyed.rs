//! Keyed limits: a limit per key, idle keys forgotten, and a hard cap on the keys tracked
//! whatever arrives.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::Rejection;
use palisade_core::event::listener_fn;
use palisade_ratelimit::{
    AtCapacity, ConfigError, KeyedRateLimitLayer, KeyedRateLimiter, Quota, RateLimitConfig,
    RateLimitEvent, Refusal, key_fn,
};
use tower::{ServiceBuilder, ServiceExt};

fn per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap())
}

#[tokio::test(start_paused = true)]
async fn each_key_has_a_limit_of_its_own() {
    let limiter = KeyedRateLimiter::new(per_second(2));
    for _ in 0..2 {
        assert!(limiter.check("a").is_ok());
    }
    let Err(Refusal::Limited(limited)) = limiter.check("a") else {
        panic!("a's third check in a second is limited");
    };
    assert_eq!(limited.retry_after(), Duration::from_millis(500));
    assert_eq!(limiter.check("b").unwrap().remaining(), 1);
    assert_eq!(limiter.snapshot("a").unwrap().remaining(), 0);
    assert_eq!(limiter.snapshot("c"), None, "an unseen key is not tracked");

    tokio::time::advance(Duration::from_millis(500)).await;
    assert!(limiter.check("a").is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_million_distinct_keys_keep_the_key_count_under_the_cap() {
    const MAX: usize = 10_000;
    const FLOOD: u64 = 1_000_000;
    let overflowed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&overflowed);
    let config = RateLimitConfig::builder(per_second(1))
        .listener(listener_fn(move |event: &RateLimitEvent| {
            if matches!(event, RateLimitEvent::Overflowed { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .build()
        .unwrap();
    let limiter = KeyedRateLimiter::<u64>::with_config(config).unwrap();
    limiter.set_max_keys(NonZeroUsize::new(MAX).unwrap());

    let mut admitted = 0u64;
    for key in 0..FLOOD {
        if limiter.check(key).is_ok() {
            admitted += 1;
        }
        if key % 1_000 == 0 {
            assert!(limiter.keys() <= MAX, "{} keys after {key}", limiter.keys());
        }
    }
    assert_eq!(limiter.keys(), MAX);
    // The first MAX keys got a limit each; the rest shared one overflow limit of 1 per
    // second, which admitted one of them.
    assert_eq!(admitted, MAX as u64 + 1);
    assert_eq!(
        overflowed.load(Ordering::Relaxed) as u64,
        FLOOD - MAX as u64
    );
    // The flood forgot no tracked key: key 0 still has its used limit.
    assert!(matches!(limiter.check(0), Err(Refusal::Limited(_))));

    // A second later every key is back at full capacity: idle, and forgotten by a sweep.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(limiter.sweep(), MAX);
    assert_eq!(limiter.keys(), 0);
    assert!(limiter.check(FLOOD).is_ok());
    assert!(
        limiter.snapshot(FLOOD).is_some(),
        "a new key has room again"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_map_sweeps_idle_keys_before_overflowing() {
    const MAX: u32 = 1_000;
    let overflowed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&overflowed);
    let config = RateLimitConfig::builder(per_second(1))
        .listener(listener_fn(move |event: &RateLimitEvent| {
            if matches!(event, RateLimitEvent::Overflowed { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .build()
        .unwrap();
    let limiter = KeyedRateLimiter::<u32>::with_config(config).unwrap();
    limiter.set_max_keys(NonZeroUsize::new(MAX as usize).unwrap());
    for key in 0..MAX {
        assert!(limiter.check(key).is_ok());
    }
    assert!(limiter.check(MAX).is_ok(), "the overflow limit's one unit");
    assert_eq!(overflowed.load(Ordering::Relaxed), 1);

    // A second later every key is idle. A new key finds the map full, sweeps its shard (a
    // thousand keys leave none of the at most 64 shards empty) and takes a freed place.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert!(limiter.check(MAX + 1).is_ok());
    assert!(limiter.snapshot(MAX + 1).is_some());
    assert_eq!(
        overflowed.load(Ordering::Relaxed),
        1,
        "no overflow this time"
    );
    assert!(limiter.keys() < MAX as usize);
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept_on_their_own() {
    let swept = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&swept);
    let config = RateLimitConfig::builder(per_second(10))
        .listener(listener_fn(move |event: &RateLimitEvent| {
            if let RateLimitEvent::Swept { evicted, keys } = event {
                log.lock().unwrap().push((*evicted, *keys));
            }
        }))
        .build()
        .unwrap();
    let limiter = KeyedRateLimiter::<&str>::with_config(config).unwrap();
    limiter.set_sweep_every(Duration::from_secs(5));
    assert!(limiter.check("a").is_ok());
    assert_eq!(limiter.keys(), 1);

    // The first check swept its (empty) shard; the next sweep is due in 5 s.
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(limiter.check("a").is_ok());
    assert_eq!(
        *swept.lock().unwrap(),
        [(1, 0)],
        "`a` was idle, then came back"
    );
    assert_eq!(limiter.keys(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_busy_key_is_never_forgotten() {
    let limiter = KeyedRateLimiter::<&str>::new(per_second(1));
    limiter.set_sweep_every(Duration::from_millis(100));
    assert!(limiter.check("busy").is_ok());
    tokio::time::advance(Duration::from_millis(500)).await;
    assert_eq!(
        limiter.sweep(),
        0,
        "half a second in, `busy` is still spent"
    );
    assert!(matches!(limiter.check("busy"), Err(Refusal::Limited(_))));
}

#[tokio::test(start_paused = true)]
async fn a_full_map_that_refuses_new_keys_says_so() {
    let per_tenant = KeyedRateLimitLayer::new(per_second(10), key_fn(|tenant: &u32| *tenant))
        .max_keys(NonZeroUsize::new(2).unwrap())
        .at_capacity(AtCapacity::Refuse);
    let service = ServiceBuilder::new()
        .layer(per_tenant.clone())
        .service_fn(|tenant: u32| async move { Ok::<_, std::io::Error>(tenant) });
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
    assert_eq!(service.clone().oneshot(2).await.unwrap(), 2);
    let error = service.clone().oneshot(3).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "the rate limiter tracks its maximum of 2 keys; new keys are refused"
    );
    assert!(matches!(
        Rejection::find(&*error),
        Some(Rejection::Overloaded(_))
    ));
    // Tracked keys carry on.
    assert_eq!(service.clone().oneshot(1).await.unwrap(), 1);
    assert_eq!(per_tenant.keys(), 2);
    assert!(matches!(
        per_tenant.limiter().check(4),
        Err(Refusal::KeysExhausted(e)) if e.max_keys() == 2
    ));
}

#[tokio::test(start_paused = true)]
async fn keyed_limits_share_state_across_clones_and_reject_over_the_limit() {
    let layer = KeyedRateLimitLayer::new(per_second(1), key_fn(|n: &u32| n % 2));
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service_fn(|n: u32| async move { Ok::<_, std::io::Error>(n) });
    assert!(service.clone().oneshot(0).await.is_ok());
    assert!(service.clone().oneshot(1).await.is_ok());
    let error = service.clone().oneshot(2).await.unwrap_err();
    assert!(matches!(
        Rejection::find(&*error),
        Some(Rejection::RateLimited(_))
    ));
    assert_eq!(layer.keys(), 2);
    assert!(layer.snapshot(0).is_some());
}

#[test]
fn keyed_limits_have_no_wait_mode() {
    let config = RateLimitConfig::builder(per_second(1))
        .wait_up_to(Duration::from_secs(1))
        .build()
        .unwrap();
    assert_eq!(
        KeyedRateLimiter::<u32>::with_config(config).unwrap_err(),
        ConfigError::KeyedWait
    );
}

#[tokio::test(start_paused = true)]
async fn a_cost_above_the_capacity_is_refused_for_every_key() {
    let limiter = KeyedRateLimiter::<u8>::new(per_second(2));
    assert!(matches!(
        limiter.check_n(1, 3),
        Err(Refusal::InsufficientCapacity(_))
    ));
    assert_eq!(limiter.keys(), 0);
    assert!(limiter.check_n(1, 0).is_ok());
    assert_eq!(limiter.keys(), 0, "a free check remembers nothing");
}

#[tokio::test(start_paused = true)]
async fn a_quota_change_to_a_fractional_interval_keeps_what_each_key_took() {
    // One per second is a whole number of nanoseconds per unit; three per second is not, so
    // each key's GCRA state changes form at its next check, and must carry its time over.
    let limiter = KeyedRateLimiter::new(per_second(1));
    assert!(limiter.check("a").is_ok());
    assert!(limiter.check("a").is_err());
    limiter.set_quota(per_second(3)).unwrap();
    assert!(
        limiter.check("a").is_err(),
        "the unit a took a moment ago still counts"
    );
    tokio::time::advance(Duration::from_millis(334)).await;
    assert!(limiter.check("a").is_ok(), "a third of a second later");
    assert!(limiter.check("a").is_err());
    for _ in 0..3 {
        assert!(limiter.check("b").is_ok(), "b starts with the new burst");
    }
    assert!(limiter.check("b").is_err());
}
