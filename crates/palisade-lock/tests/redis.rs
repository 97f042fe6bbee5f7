//! `RedisBackend` and `Redlock` against real `redis-server`s from the testkit.
#![cfg(feature = "redis")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_lock::{FenceCheck, Lock, LockConfig, LockError, LockEvent, RedisBackend, Redlock};
use palisade_testkit::RedisServer;
use tokio::sync::mpsc;

const TTL: Duration = Duration::from_millis(300);
/// A bound on waits for events, so a broken build fails instead of hanging. Never reached
/// when things work; nothing is asserted about how long they take.
const PATIENCE: Duration = Duration::from_secs(20);

/// A server this test may break; `None` (skip) without `redis-server` or with `REDIS_URL`.
fn private_redis() -> Option<RedisServer> {
    let redis = RedisServer::start_or_skip()?;
    if redis.pid().is_none() {
        eprintln!("skipping: REDIS_URL points at an external server, which cannot be faulted");
        return None;
    }
    Some(redis)
}

fn lock(redis: &RedisServer) -> Lock<RedisBackend> {
    Lock::new(RedisBackend::open(redis.url()).unwrap())
}

/// A lock whose events arrive on the returned channel.
fn observed(
    backend: RedisBackend,
    config: LockConfig,
) -> (Lock<RedisBackend>, mpsc::UnboundedReceiver<LockEvent>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let lock = Lock::builder(backend)
        .config(config)
        .listener(listener_fn(move |event: &LockEvent| {
            let _ = tx.send(event.clone());
        }))
        .build();
    (lock, rx)
}

async fn next_matching(
    events: &mut mpsc::UnboundedReceiver<LockEvent>,
    wanted: impl Fn(&LockEvent) -> bool,
) -> LockEvent {
    tokio::time::timeout(PATIENCE, async {
        loop {
            let event = events.recv().await.expect("the lock is alive");
            if wanted(&event) {
                return event;
            }
        }
    })
    .await
    .expect("the event came")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_contenders_never_overlap_and_no_stale_write_is_accepted() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let lock = Lock::builder(RedisBackend::open(redis.url()).unwrap())
        .config(LockConfig::new().wait(Duration::from_secs(60)))
        .build();
    let fence = Arc::new(FenceCheck::new());
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (lock, fence, inside) = (lock.clone(), Arc::clone(&fence), Arc::clone(&inside));
        tasks.push(tokio::spawn(async move {
            lock.with_lock("counter", Duration::from_secs(2), |token| async move {
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                fence.admit(token).expect("a stale token");
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.store(false, Ordering::SeqCst);
            })
            .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn tokens_grow_with_every_grant() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let lock = lock(&redis);
    let mut last = None;
    for _ in 0..5 {
        let guard = lock.acquire("grows", TTL, Duration::ZERO).await.unwrap();
        assert!(Some(guard.token()) > last);
        last = Some(guard.token());
        guard.release().await.unwrap();
    }
}

#[tokio::test]
async fn a_flushed_script_cache_still_grants_and_releases() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let lock = lock(&redis);
    let first = lock.acquire("flushed", TTL, Duration::ZERO).await.unwrap();
    let first_token = first.token();
    first.release().await.unwrap();
    // The server forgets the scripts (as after a restart or a failover): `NOSCRIPT`.
    let mut admin = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    let second = lock.acquire("flushed", TTL, Duration::ZERO).await.unwrap();
    assert!(second.token() > first_token);
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut admin)
        .await
        .unwrap();
    second.release().await.unwrap();
    assert!(lock.try_acquire("flushed", TTL).await.unwrap().is_some());
}

#[tokio::test]
async fn only_the_owner_releases() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let (stale_lock, mut events) = observed(
        RedisBackend::open(redis.url()).unwrap(),
        LockConfig::new().watchdog(false),
    );
    let other = lock(&redis);
    let stale = stale_lock
        .acquire("owned", TTL, Duration::ZERO)
        .await
        .unwrap();
    next_matching(&mut events, |e| matches!(e, LockEvent::Lost { .. })).await;
    let owner = other.acquire("owned", TTL, PATIENCE).await.unwrap();
    assert!(owner.token() > stale.token());
    assert!(matches!(
        stale.release().await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(other.try_acquire("owned", TTL).await.unwrap().is_none());
    owner.release().await.unwrap();
    assert!(other.try_acquire("owned", TTL).await.unwrap().is_some());
}

#[tokio::test]
async fn ttl_expiry_lets_another_acquire() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let first = Lock::builder(RedisBackend::open(redis.url()).unwrap())
        .config(LockConfig::new().watchdog(false))
        .build();
    let guard = first.acquire("expires", TTL, Duration::ZERO).await.unwrap();
    // Never released: the second holder gets it once the TTL is over.
    let second = lock(&redis)
        .acquire("expires", TTL, PATIENCE)
        .await
        .unwrap();
    assert!(second.token() > guard.token());
    assert!(guard.is_lost());
    drop(guard);
}

#[tokio::test]
async fn the_watchdog_keeps_a_long_task_lock_alive() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let (holder, mut events) =
        observed(RedisBackend::open(redis.url()).unwrap(), LockConfig::new());
    let guard = holder.acquire("long", TTL, Duration::ZERO).await.unwrap();
    // Ten renewals: over three TTLs of work.
    for _ in 0..10 {
        next_matching(&mut events, |e| matches!(e, LockEvent::Renewed { .. })).await;
    }
    assert!(!guard.is_lost());
    assert!(
        lock(&redis)
            .try_acquire("long", TTL)
            .await
            .unwrap()
            .is_none()
    );
    guard.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_watchdog_renews_many_guards_and_forgets_a_released_one() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let (holder, mut events) =
        observed(RedisBackend::open(redis.url()).unwrap(), LockConfig::new());
    // Longer than the other tests' TTL: twenty renewals per round on a loaded machine.
    let ttl = Duration::from_secs(1);
    let mut guards = Vec::new();
    for n in 0..20 {
        let key = format!("many:{n}");
        guards.push(holder.acquire(&key, ttl, Duration::ZERO).await.unwrap());
    }
    let released = guards.pop().unwrap();
    let released_key = released.key().to_owned();
    released.release().await.unwrap();
    // Every kept guard renewed three times (over a TTL of holding), the released one never.
    let mut renewals = std::collections::HashMap::<String, u32>::new();
    while renewals.len() < guards.len() || renewals.values().any(|&n| n < 3) {
        let event = next_matching(&mut events, |e| {
            matches!(e, LockEvent::Renewed { .. } | LockEvent::Lost { .. })
        })
        .await;
        let LockEvent::Renewed { key, .. } = event else {
            panic!("a guard was lost: {event:?}");
        };
        assert_ne!(&*key, released_key, "renewed after its release");
        *renewals.entry(key.to_string()).or_default() += 1;
    }
    let other = lock(&redis);
    for guard in guards {
        assert!(!guard.is_lost());
        assert!(other.try_acquire(guard.key(), ttl).await.unwrap().is_none());
        guard.release().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_server_fires_lost_and_the_stale_write_is_rejected() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let resource = FenceCheck::new();
    let holder = lock(&redis);
    let stale = holder.acquire("paused", TTL, Duration::ZERO).await.unwrap();
    resource.admit(stale.token()).unwrap();

    redis.pause().unwrap();
    tokio::time::timeout(PATIENCE, stale.lost())
        .await
        .expect("lost() fired");
    redis.resume().unwrap();

    let fresh = lock(&redis).acquire("paused", TTL, PATIENCE).await.unwrap();
    assert!(fresh.token() > stale.token());
    resource.admit(fresh.token()).unwrap();
    // The old holder wakes up and writes: refused.
    let refused = resource.admit(stale.token()).unwrap_err();
    assert_eq!(refused.highest(), fresh.token());
    fresh.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_acquire_is_an_error_not_a_grant() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let _held = lock(&redis)
        .acquire("killed", Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    let (waiter, mut events) =
        observed(RedisBackend::open(redis.url()).unwrap(), LockConfig::new());
    let acquiring = tokio::spawn(async move { waiter.acquire("killed", TTL, PATIENCE).await });
    next_matching(&mut events, |e| matches!(e, LockEvent::Contended { .. })).await;
    redis.kill().unwrap();
    let result = acquiring.await.unwrap();
    assert!(
        matches!(result, Err(LockError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_an_error() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let lock = lock(&redis);
    redis.kill().unwrap();
    let result = lock.acquire("nobody", TTL, Duration::from_secs(1)).await;
    assert!(
        matches!(result, Err(LockError::Unavailable(_))),
        "{result:?}"
    );
}

#[tokio::test]
async fn tokens_keep_growing_after_a_restart_that_loses_the_counter() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let lock = lock(&redis);
    let mut last = None;
    for _ in 0..3 {
        let guard = lock.acquire("restart", TTL, Duration::ZERO).await.unwrap();
        assert!(Some(guard.token()) > last);
        last = Some(guard.token());
        guard.release().await.unwrap();
    }
    redis.restart().unwrap(); // starts empty: the counter is gone
    let after = lock.acquire("restart", TTL, PATIENCE).await.unwrap();
    assert!(
        Some(after.token()) > last,
        "{} after {last:?}",
        after.token()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_over_five_servers_survives_two_killed_and_refuses_with_three() {
    let mut servers = Vec::new();
    for _ in 0..5 {
        let Some(server) = private_redis() else {
            return;
        };
        servers.push(server);
    }
    let redlock = Redlock::open(servers.iter().map(RedisServer::url)).unwrap();
    assert_eq!(redlock.quorum(), 3);
    let lock = Lock::new(redlock);

    let first = lock.acquire("quorum", TTL, Duration::ZERO).await.unwrap();
    let first_token = first.token();
    assert!(lock.try_acquire("quorum", TTL).await.unwrap().is_none());
    first.release().await.unwrap();

    servers[0].kill().unwrap();
    servers[1].kill().unwrap();
    let second = lock.acquire("quorum", TTL, PATIENCE).await.unwrap();
    assert!(second.token() > first_token);
    assert!(lock.try_acquire("quorum", TTL).await.unwrap().is_none());
    second.release().await.unwrap();

    servers[2].kill().unwrap();
    let refused = lock.acquire("quorum", TTL, Duration::from_secs(1)).await;
    assert!(
        matches!(refused, Err(LockError::Unavailable(_))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redlock_tokens_grow_when_quorums_change() {
    let mut servers = Vec::new();
    for _ in 0..3 {
        let Some(server) = private_redis() else {
            return;
        };
        servers.push(server);
    }
    let lock = Lock::new(Redlock::open(servers.iter().map(RedisServer::url)).unwrap());
    let first = lock.acquire("moving", TTL, Duration::ZERO).await.unwrap();
    let mut last = first.token();
    first.release().await.unwrap();
    for round in 0..6 {
        // Each round one server is down, so each grant has a different quorum.
        let down = round % 3;
        servers[down].kill().unwrap();
        let guard = lock.acquire("moving", TTL, PATIENCE).await.unwrap();
        assert!(
            guard.token() > last,
            "round {round}: {} after {last}",
            guard.token()
        );
        last = guard.token();
        guard.release().await.unwrap();
        servers[down].restart().unwrap();
    }
}
