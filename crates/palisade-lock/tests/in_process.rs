//! The shared lock logic (waiting, watchdog, loss, release) on the in-process backend, on
//! tokio's paused clock.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_lock::{
    Backend, BackendError, FenceCheck, Grant, InProcess, InProcessLease, Lock, LockConfig,
    LockError, LockEvent, LostReason,
};

const TTL: Duration = Duration::from_secs(3);
const KEY: &str = "orders:42";

fn no_watchdog() -> Lock {
    Lock::builder(InProcess::new())
        .config(LockConfig::new().watchdog(false))
        .build()
}

/// Lets spawned tasks (watchdog, background releases) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn each_grant_of_a_key_has_a_higher_token() {
    let lock = Lock::in_process();
    let mut last = None;
    for _ in 0..5 {
        let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
        assert!(
            Some(guard.token()) > last,
            "{:?} after {last:?}",
            guard.token()
        );
        last = Some(guard.token());
        guard.release().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_held_key_is_not_granted_again() {
    let lock = Lock::in_process();
    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_none());
    // Other keys are independent.
    assert!(lock.try_acquire("orders:43", TTL).await.unwrap().is_some());
    guard.release().await.unwrap();
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn bad_input_is_a_typed_error() {
    let lock = Lock::in_process();
    assert!(matches!(
        lock.acquire("", TTL, Duration::ZERO).await,
        Err(LockError::EmptyKey)
    ));
    assert!(matches!(
        lock.try_acquire(KEY, Duration::ZERO).await,
        Err(LockError::ZeroTtl)
    ));
    let work = lock.with_lock("", TTL, |_| async {}).await;
    assert!(matches!(work, Err(LockError::EmptyKey)));
}

#[tokio::test(start_paused = true)]
async fn acquire_waits_for_the_holder_to_release() {
    let lock = Lock::in_process();
    let first = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    let first_token = first.token();
    let waiter = {
        let lock = lock.clone();
        tokio::spawn(async move { lock.acquire(KEY, TTL, Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    first.release().await.unwrap();
    let second = waiter.await.unwrap().unwrap();
    assert!(second.token() > first_token);
}

#[tokio::test(start_paused = true)]
async fn acquire_times_out_while_the_key_stays_held() {
    let lock = Lock::in_process();
    let _held = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    let started = tokio::time::Instant::now();
    let error = lock
        .acquire(KEY, TTL, Duration::from_secs(2))
        .await
        .unwrap_err();
    let LockError::TimedOut { key, waited } = error else {
        panic!("expected a timeout, got {error:?}");
    };
    assert_eq!(&*key, KEY);
    assert_eq!(waited, Duration::from_secs(2));
    assert_eq!(started.elapsed(), Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn ttl_expiry_lets_another_acquire() {
    let lock = no_watchdog();
    let first = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_none());
    tokio::time::sleep(TTL).await;
    let second = lock.try_acquire(KEY, TTL).await.unwrap().expect("expired");
    assert!(second.token() > first.token());
    first.lost().await;
    assert_eq!(first.lost_reason(), Some(LostReason::Expired));
}

#[tokio::test(start_paused = true)]
async fn only_the_owner_releases() {
    let lock = no_watchdog();
    let stale = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    tokio::time::sleep(TTL).await;
    let owner = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    // The stale holder's release must not free the new owner's lock.
    assert!(matches!(
        stale.release().await,
        Err(LockError::NotHeld { .. })
    ));
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_none());
    owner.release().await.unwrap();
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn the_watchdog_keeps_a_long_task_lock_alive() {
    let renewals = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&renewals);
    let lock = Lock::builder(InProcess::new())
        .listener(listener_fn(move |event: &LockEvent| {
            if matches!(event, LockEvent::Renewed { .. }) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .build();
    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    // Ten TTLs of work.
    tokio::time::sleep(TTL * 10).await;
    assert!(!guard.is_lost());
    assert!(guard.validity() > Duration::ZERO);
    assert!(renewals.load(Ordering::Relaxed) >= 25, "{renewals:?}");
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_none());
    guard.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn validity_is_what_is_left_of_the_ttl() {
    let lock = no_watchdog();
    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    assert_eq!(guard.validity(), TTL);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(guard.validity(), TTL - Duration::from_secs(1));
    guard.lost().await;
    assert_eq!(guard.validity(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn lost_fires_when_the_lease_runs_out() {
    let lock = no_watchdog();
    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    let token = guard.lost_token();
    let started = tokio::time::Instant::now();
    guard.lost().await;
    assert_eq!(started.elapsed(), TTL);
    assert!(token.is_cancelled());
    assert!(guard.is_lost());
    assert_eq!(guard.lost_reason(), Some(LostReason::Expired));
}

#[tokio::test(start_paused = true)]
async fn with_lock_runs_work_with_the_token_and_releases() {
    let lock = Lock::in_process();
    let out = lock
        .with_lock(KEY, TTL, |token| async move { token.get() * 2 })
        .await
        .unwrap();
    assert!(out >= 2);
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn with_lock_cancels_the_work_when_the_lock_is_lost() {
    let lock = no_watchdog();
    let finished = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&finished);
    let result = lock
        .with_lock(KEY, TTL, |_| async move {
            tokio::time::sleep(TTL * 2).await;
            flag.store(true, Ordering::Relaxed);
        })
        .await;
    assert!(matches!(
        result,
        Err(LockError::Lost {
            reason: LostReason::Expired,
            ..
        })
    ));
    assert!(!finished.load(Ordering::Relaxed));
}

#[tokio::test(start_paused = true)]
async fn dropping_the_guard_releases_in_the_background() {
    let lock = Lock::in_process();
    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    drop(guard);
    settle().await;
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_some());
}

/// The in-process backend, with a delay before each grant.
#[derive(Debug, Default)]
struct Slow(InProcess);

impl Backend for Slow {
    type Lease = InProcessLease;

    async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Grant<InProcessLease>>, BackendError> {
        let grant = self.0.try_acquire(key, ttl).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        grant
    }

    async fn renew(
        &self,
        key: &str,
        lease: &InProcessLease,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.0.renew(key, lease, ttl).await
    }

    async fn release(&self, key: &str, lease: &InProcessLease) -> Result<bool, BackendError> {
        self.0.release(key, lease).await
    }
}

#[tokio::test(start_paused = true)]
async fn a_dropped_acquire_releases_its_grant_at_once() {
    let lock = Lock::new(Slow::default());
    let acquire = lock.acquire(KEY, TTL, Duration::ZERO);
    // Granted at the store, then dropped before the answer arrives.
    let cancelled = tokio::time::timeout(Duration::from_millis(50), acquire).await;
    assert!(cancelled.is_err());
    tokio::time::sleep(Duration::from_millis(60)).await;
    settle().await;
    // Released long before its TTL.
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_some());
}

#[tokio::test(start_paused = true)]
async fn fifty_contenders_never_overlap_and_no_stale_write_is_accepted() {
    let lock = Lock::in_process();
    let fence = Arc::new(FenceCheck::new());
    let inside = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (lock, fence, inside) = (lock.clone(), Arc::clone(&fence), Arc::clone(&inside));
        tasks.push(tokio::spawn(async move {
            lock.with_lock(KEY, TTL, |token| async move {
                assert!(!inside.swap(true, Ordering::SeqCst), "two holders at once");
                fence.admit(token).expect("a stale token");
                tokio::time::sleep(Duration::from_millis(10)).await;
                inside.store(false, Ordering::SeqCst);
            })
            .await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn events_cover_a_lock_life() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    let lock = Lock::builder(InProcess::new())
        .listener(listener_fn(move |event: &LockEvent| {
            use palisade_core::Event;
            sink.lock().unwrap().push(event.kind());
        }))
        .build();
    let guard = lock.acquire(KEY, TTL, Duration::ZERO).await.unwrap();
    assert!(lock.try_acquire(KEY, TTL).await.unwrap().is_none());
    tokio::time::sleep(TTL / 2).await;
    guard.release().await.unwrap();
    let kinds = seen.lock().unwrap().clone();
    assert_eq!(kinds, ["acquired", "contended", "renewed", "released"]);
}
