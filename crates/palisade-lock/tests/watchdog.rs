//! The shared watchdog: one task per `Lock` renews every guard's lease, forgets a guard as
//! soon as it is released or dropped, and reports each guard's loss on its own. On the
//! in-process backend (wrapped to script renewal answers), on tokio's paused clock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_lock::{
    Backend, BackendError, Grant, InProcess, InProcessLease, Lock, LockConfig, LockEvent,
    LostReason,
};

const TTL: Duration = Duration::from_secs(3);

/// Lets spawned tasks (the watchdog, background releases) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Every event, as `(kind, key)`.
type Seen = Arc<Mutex<Vec<(&'static str, String)>>>;

fn observed<B: Backend>(backend: B, config: LockConfig) -> (Lock<B>, Seen) {
    let seen: Seen = Arc::default();
    let sink = Arc::clone(&seen);
    let lock = Lock::builder(backend)
        .config(config)
        .listener(listener_fn(move |event: &LockEvent| {
            use palisade_core::Event;
            let key = match event {
                LockEvent::Acquired { key, .. }
                | LockEvent::Contended { key, .. }
                | LockEvent::TimedOut { key, .. }
                | LockEvent::Renewed { key, .. }
                | LockEvent::Lost { key, .. }
                | LockEvent::Released { key, .. } => key.to_string(),
                _ => String::new(),
            };
            sink.lock().unwrap().push((event.kind(), key));
        }))
        .build();
    (lock, seen)
}

/// How many events of `kind` each key had.
fn count(seen: &Seen, kind: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (seen_kind, key) in seen.lock().unwrap().iter() {
        if *seen_kind == kind {
            *counts.entry(key.clone()).or_default() += 1;
        }
    }
    counts
}

#[tokio::test(start_paused = true)]
async fn one_task_renews_many_guards() {
    let (lock, seen) = observed(InProcess::new(), LockConfig::new());
    let before = alive_tasks();
    let mut guards = Vec::new();
    for n in 0..100 {
        guards.push(
            lock.acquire(&format!("key:{n}"), TTL, Duration::ZERO)
                .await
                .unwrap(),
        );
    }
    settle().await;
    // One watchdog for the hundred guards, not a task each.
    assert_eq!(alive_tasks(), before + 1);
    // Ten TTLs: about thirty renewals each.
    tokio::time::sleep(TTL * 10).await;
    let renewed = count(&seen, "renewed");
    assert_eq!(renewed.len(), 100, "every guard renewed");
    for (key, renewals) in &renewed {
        assert!(*renewals >= 25, "{key}: {renewals} renewals");
    }
    for guard in &guards {
        assert!(!guard.is_lost(), "{} lost", guard.key());
        assert!(guard.validity() > Duration::ZERO);
    }
    // Still held: nobody else gets them.
    assert!(lock.try_acquire("key:7", TTL).await.unwrap().is_none());
    for guard in guards {
        guard.release().await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_released_or_dropped_guard_is_no_longer_renewed() {
    let (lock, seen) = observed(InProcess::new(), LockConfig::new());
    let kept = lock.acquire("kept", TTL, Duration::ZERO).await.unwrap();
    let released = lock.acquire("released", TTL, Duration::ZERO).await.unwrap();
    let dropped = lock.acquire("dropped", TTL, Duration::ZERO).await.unwrap();
    tokio::time::sleep(TTL / 2).await;
    released.release().await.unwrap();
    drop(dropped);
    settle().await;
    let before = count(&seen, "renewed");
    assert_eq!(before.get("released"), Some(&1));
    assert_eq!(before.get("dropped"), Some(&1));
    tokio::time::sleep(TTL * 5).await;
    let after = count(&seen, "renewed");
    assert_eq!(after.get("released"), Some(&1), "renewed after its release");
    assert_eq!(after.get("dropped"), Some(&1), "renewed after its drop");
    assert!(after["kept"] >= 15, "{after:?}");
    // Neither was reported lost: they were let go, not lost.
    assert!(count(&seen, "lost").is_empty());
    assert!(!kept.is_lost());
    kept.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn guards_one_after_another_share_one_watchdog() {
    let (lock, seen) = observed(InProcess::new(), LockConfig::new());
    let before = alive_tasks();
    // Short-lived guards, each released before its first renewal: one task for all.
    for _ in 0..100 {
        let guard = lock.acquire("brief", TTL, Duration::ZERO).await.unwrap();
        guard.release().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    settle().await;
    assert_eq!(alive_tasks(), before + 1);
    assert!(count(&seen, "renewed").is_empty());
    // After a lull with nothing to watch, the next guard is renewed as usual.
    tokio::time::sleep(TTL * 2).await;
    let kept = lock.acquire("kept", TTL, Duration::ZERO).await.unwrap();
    tokio::time::sleep(TTL * 2).await;
    assert!(count(&seen, "renewed")["kept"] >= 5);
    assert!(!kept.is_lost());
    assert_eq!(alive_tasks(), before + 1);
    kept.release().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_lock_whose_handles_and_guards_are_gone_ends_its_watchdog() {
    let before = alive_tasks();
    // Dropped while its watchdog waits for a renewal.
    let lock = Lock::in_process();
    let guard = lock.acquire("gone", TTL, Duration::ZERO).await.unwrap();
    settle().await;
    assert_eq!(alive_tasks(), before + 1);
    drop(lock);
    drop(guard);
    tokio::time::sleep(TTL).await;
    settle().await;
    assert_eq!(alive_tasks(), before);

    // Dropped while its watchdog has nothing to watch (and no time to wake up at).
    let lock = Lock::in_process();
    lock.acquire("idle", TTL, Duration::ZERO)
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    tokio::time::sleep(TTL).await;
    settle().await;
    assert_eq!(alive_tasks(), before + 1);
    drop(lock);
    settle().await;
    assert_eq!(alive_tasks(), before);
}

#[tokio::test(start_paused = true)]
async fn a_guard_with_a_shorter_ttl_is_renewed_in_time() {
    // The watchdog sleeps until the first guard's renewal (10 s away); a guard made later
    // with a shorter TTL must wake it earlier.
    let (lock, seen) = observed(InProcess::new(), LockConfig::new());
    let long = lock
        .acquire("long", Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    settle().await;
    let short = lock
        .acquire("short", Duration::from_millis(300), Duration::ZERO)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!short.is_lost());
    assert!(count(&seen, "renewed")["short"] >= 25);
    assert!(!long.is_lost());
    short.release().await.unwrap();
    long.release().await.unwrap();
}

/// How the scripted backend answers renewals of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Renewal {
    /// As the in-process table says.
    Normal,
    /// "Not yours any more".
    Taken,
    /// An error.
    Failing,
    /// No answer, ever.
    Silent,
    /// After `delay`, "not yours any more".
    LateTaken,
}

/// The in-process backend with scripted renewal answers per key.
#[derive(Debug, Default)]
struct Scripted {
    inner: InProcess,
    renewals: Mutex<HashMap<String, Renewal>>,
}

impl Scripted {
    fn set(&self, key: &str, renewal: Renewal) {
        self.renewals
            .lock()
            .unwrap()
            .insert(key.to_owned(), renewal);
    }
}

impl Backend for Scripted {
    type Lease = InProcessLease;

    async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Grant<InProcessLease>>, BackendError> {
        self.inner.try_acquire(key, ttl).await
    }

    async fn renew(
        &self,
        key: &str,
        lease: &InProcessLease,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let renewal = self
            .renewals
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(Renewal::Normal);
        match renewal {
            Renewal::Normal => self.inner.renew(key, lease, ttl).await,
            Renewal::Taken => Ok(false),
            Renewal::Failing => Err(BackendError::msg("scripted failure")),
            Renewal::Silent => std::future::pending().await,
            Renewal::LateTaken => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(false)
            }
        }
    }

    async fn release(&self, key: &str, lease: &InProcessLease) -> Result<bool, BackendError> {
        self.inner.release(key, lease).await
    }
}

#[tokio::test(start_paused = true)]
async fn each_guard_loses_on_its_own_with_its_own_reason() {
    let (lock, seen) = observed(Scripted::default(), LockConfig::new());
    let mut guards = HashMap::new();
    for key in ["healthy", "taken", "failing", "silent"] {
        guards.insert(key, lock.acquire(key, TTL, Duration::ZERO).await.unwrap());
    }
    lock.backend().set("taken", Renewal::Taken);
    lock.backend().set("failing", Renewal::Failing);
    lock.backend().set("silent", Renewal::Silent);

    tokio::time::timeout(TTL * 2, guards["taken"].lost())
        .await
        .unwrap();
    tokio::time::timeout(TTL * 2, guards["failing"].lost())
        .await
        .unwrap();
    tokio::time::timeout(TTL * 2, guards["silent"].lost())
        .await
        .unwrap();
    assert_eq!(guards["taken"].lost_reason(), Some(LostReason::Taken));
    assert_eq!(
        guards["failing"].lost_reason(),
        Some(LostReason::Unreachable)
    );
    // No answer before the validity ran out.
    assert_eq!(guards["silent"].lost_reason(), Some(LostReason::Expired));

    // The others' losses do not touch the healthy guard, which keeps being renewed.
    let renewed_before = count(&seen, "renewed")["healthy"];
    tokio::time::sleep(TTL * 3).await;
    assert!(!guards["healthy"].is_lost());
    assert!(count(&seen, "renewed")["healthy"] >= renewed_before + 8);
    // Each loss reported once, for its own key.
    let lost = count(&seen, "lost");
    assert_eq!(lost.len(), 3, "{lost:?}");
    assert!(lost.values().all(|&n| n == 1), "{lost:?}");
    assert!(!lost.contains_key("healthy"));
}

#[tokio::test(start_paused = true)]
async fn a_guard_released_while_its_renewal_is_on_its_way_is_not_reported_lost() {
    let (lock, seen) = observed(Scripted::default(), LockConfig::new());
    let guard = lock.acquire("late", TTL, Duration::ZERO).await.unwrap();
    let lost_token = guard.lost_token();
    lock.backend().set("late", Renewal::LateTaken);
    // The renewal is sent at TTL/3 and answers "taken" 100 ms later; the guard goes first.
    tokio::time::sleep(TTL / 3 + Duration::from_millis(50)).await;
    guard.release().await.unwrap();
    tokio::time::sleep(TTL).await;
    settle().await;
    assert!(count(&seen, "lost").is_empty());
    assert!(!lost_token.is_cancelled());
}

#[tokio::test(start_paused = true)]
async fn without_renewal_each_guard_is_lost_when_its_own_validity_ends() {
    let (lock, seen) = observed(InProcess::new(), LockConfig::new().watchdog(false));
    let started = tokio::time::Instant::now();
    let short = lock
        .acquire("short", Duration::from_secs(1), Duration::ZERO)
        .await
        .unwrap();
    let long = lock
        .acquire("long", Duration::from_secs(5), Duration::ZERO)
        .await
        .unwrap();
    short.lost().await;
    assert_eq!(started.elapsed(), Duration::from_secs(1));
    assert!(!long.is_lost());
    long.lost().await;
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    assert_eq!(long.lost_reason(), Some(LostReason::Expired));
    assert!(count(&seen, "renewed").is_empty());
}

#[tokio::test(start_paused = true)]
async fn lost_asked_for_after_the_loss_completes_at_once() {
    let lock = Lock::builder(InProcess::new())
        .config(LockConfig::new().watchdog(false))
        .build();
    let guard = lock.acquire("late-ask", TTL, Duration::ZERO).await.unwrap();
    tokio::time::sleep(TTL * 2).await;
    assert!(guard.is_lost());
    // Nobody asked before the loss: the futures and tokens made now are already complete.
    tokio::time::timeout(TTL, guard.lost())
        .await
        .expect("lost() completes");
    tokio::time::timeout(TTL, guard.lost_owned())
        .await
        .expect("lost_owned() completes");
    assert!(guard.lost_token().is_cancelled());
}

#[test]
fn guards_of_a_lock_used_on_two_runtimes_in_turn_are_renewed() {
    // The first runtime's watchdog is dropped with it; the next guard starts another.
    let lock = Lock::in_process();
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    };
    let first = runtime();
    let held = first.block_on(async {
        let guard = lock.acquire("first", TTL, Duration::ZERO).await.unwrap();
        tokio::time::sleep(TTL).await;
        assert!(!guard.is_lost());
        guard
    });
    drop(first);
    drop(held);
    runtime().block_on(async {
        let guard = lock.acquire("second", TTL, Duration::ZERO).await.unwrap();
        tokio::time::sleep(TTL * 3).await;
        assert!(!guard.is_lost());
        guard.release().await.unwrap();
    });
}
