//! The Redis store (feature `redis`) against a real `redis-server` from the testkit: limiters
//! in separate "processes" share one quota; with Redis gone the unavailable policy decides;
//! once Redis is back the limiter reconnects on its own.
//!
//! These run on real time (the store's response timeouts are tokio timers, which a paused
//! clock would fire while the server answers), but no outcome waits for time to pass: every
//! quota is per minute, and reconnection is allowed at once.

#![cfg(feature = "redis")]

use std::num::NonZeroU32;
use std::time::Duration;

use palisade_core::Backoff;
use palisade_ratelimit::{
    DecidedBy, OnUnavailable, Quota, RedisRateLimiter, RedisRateLimiterBuilder, Refusal,
};
use palisade_testkit::RedisServer;

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap())
}

fn builder(redis: &RedisServer, quota: Quota, prefix: &str) -> RedisRateLimiterBuilder {
    RedisRateLimiter::builder(redis.url(), quota)
        .prefix(prefix)
        .reconnect_backoff(Backoff::constant(Duration::ZERO))
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
}

#[tokio::test]
async fn two_limiters_on_one_redis_share_the_quota() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let prefix = "share:";
    let first = builder(&redis, per_minute(3), prefix).build().unwrap();
    let second = builder(&redis, per_minute(3), prefix).build().unwrap();

    let mut admitted = 0;
    for limiter in [&first, &second, &first, &second, &first, &second] {
        let checked = limiter.check("tenant-1").await;
        assert_eq!(checked.decided_by(), DecidedBy::Redis);
        if checked.is_admitted() {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "one quota of 3 between both limiters");

    let Err(Refusal::Limited(limited)) = second.check("tenant-1").await.decision() else {
        panic!("the shared limit is spent");
    };
    // 3 per minute: a unit every 20 s, measured on the server's clock.
    assert!(limited.retry_after() > Duration::from_secs(15));
    assert!(limited.retry_after() <= Duration::from_secs(20));
    assert_eq!(limited.snapshot().remaining(), 0);

    // Another key, and another prefix, have their own limits.
    assert!(first.check("tenant-2").await.is_admitted());
    let other = builder(&redis, per_minute(3), "other:").build().unwrap();
    assert!(other.check("tenant-1").await.is_admitted());
    assert!(matches!(
        first.check_n("tenant-3", 4).await.decision(),
        Err(Refusal::InsufficientCapacity(_))
    ));
}

#[tokio::test]
async fn with_redis_killed_the_policy_decides_and_after_a_restart_redis_does_again() {
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    if redis.pid().is_none() {
        eprintln!("skipped: REDIS_URL points at an external server the test cannot kill");
        return;
    }
    let local = builder(&redis, per_minute(2), "fault:").build().unwrap();
    let open = builder(&redis, per_minute(2), "fault:")
        .on_unavailable(OnUnavailable::FailOpen)
        .build()
        .unwrap();
    let closed = builder(&redis, per_minute(2), "fault:")
        .on_unavailable(OnUnavailable::FailClosed)
        .build()
        .unwrap();
    for limiter in [&local, &open, &closed] {
        assert_eq!(
            limiter.check("warm-up").await.decided_by(),
            DecidedBy::Redis
        );
        assert!(limiter.is_connected());
    }

    redis.kill().unwrap();

    // Local: a limit of 2 per minute in this process.
    let decided: Vec<_> = [
        local.check("k").await,
        local.check("k").await,
        local.check("k").await,
    ]
    .iter()
    .map(|c| (c.decided_by(), c.is_admitted()))
    .collect();
    let by_local = DecidedBy::Unavailable(OnUnavailable::Local);
    assert_eq!(
        decided,
        [(by_local, true), (by_local, true), (by_local, false)]
    );
    // Fail open admits everything; fail closed refuses everything, typed.
    for _ in 0..3 {
        let checked = open.check("k").await;
        assert_eq!(
            checked.decided_by(),
            DecidedBy::Unavailable(OnUnavailable::FailOpen)
        );
        assert!(checked.is_admitted());
    }
    let Err(Refusal::StoreUnavailable(error)) = closed.check("k").await.decision() else {
        panic!("fail closed refuses while Redis is down");
    };
    assert!(matches!(
        palisade_core::Rejection::find(&error),
        Some(palisade_core::Rejection::Overloaded(_))
    ));
    assert!(local.unavailable_count() >= 3);
    assert!(!local.is_connected());

    redis.restart().unwrap();

    // Reconnected on its own, on the next check: Redis decides again (it restarted empty).
    for (limiter, key) in [
        (&local, "after-1"),
        (&open, "after-2"),
        (&closed, "after-3"),
    ] {
        let checked = limiter.check(key).await;
        assert_eq!(checked.decided_by(), DecidedBy::Redis, "{limiter:?}");
        assert!(checked.is_admitted());
        assert!(limiter.is_connected());
    }
}

#[tokio::test]
async fn an_unreachable_redis_from_the_start_falls_back_at_once() {
    // A port nothing listens on (the testkit's server, stopped).
    let Some(mut redis) = RedisServer::start_or_skip() else {
        return;
    };
    if redis.pid().is_none() {
        return;
    }
    let limiter = builder(&redis, per_minute(1), "down:")
        .on_unavailable(OnUnavailable::FailClosed)
        .reconnect_backoff(Backoff::constant(Duration::from_secs(3600)))
        .build()
        .unwrap();
    redis.stop().unwrap();
    let checked = limiter.check("k").await;
    assert_eq!(
        checked.decided_by(),
        DecidedBy::Unavailable(OnUnavailable::FailClosed)
    );
    // The next attempt is an hour away: this check does not even try.
    let checked = limiter.check("k").await;
    assert!(matches!(
        checked.decision(),
        Err(Refusal::StoreUnavailable(_))
    ));
    assert_eq!(limiter.unavailable_count(), 2);
}

#[tokio::test]
async fn redis_keeps_fractions_of_a_microsecond_so_the_rate_is_exact() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    // 3 per second: a unit every 333 333.33 µs, which in whole microseconds was 333 333 (and
    // a capacity of 999 999 µs).
    let quota = Quota::per_second(NonZeroU32::new(3).unwrap());
    let limiter = builder(&redis, quota, "exact:").build().unwrap();

    // Fresh keys: what a check takes does not depend on when it runs.
    let two = limiter.check_n("two", 2).await.decision().unwrap();
    assert_eq!(two.reset(), Duration::from_nanos(666_666_667));
    assert_eq!(two.remaining(), 1);

    let three = limiter.check_n("three", 3).await.decision().unwrap();
    assert_eq!(three.reset(), Duration::from_secs(1));
    assert_eq!(three.remaining(), 0);
    assert!(!limiter.check("three").await.is_admitted());
}
