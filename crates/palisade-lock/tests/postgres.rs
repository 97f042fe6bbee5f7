//! `PostgresBackend` against a real PostgreSQL from the testkit.
#![cfg(feature = "postgres")]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use palisade_lock::{FenceCheck, Lock, LockConfig, LockError, PostgresBackend};
use palisade_testkit::PostgresServer;
use sqlx::postgres::PgPoolOptions;

const TTL: Duration = Duration::from_millis(300);
/// A bound on waits, so a broken build fails instead of hanging; never reached otherwise.
const PATIENCE: Duration = Duration::from_secs(20);

async fn database() -> Option<(PostgresServer, String)> {
    let pg = PostgresServer::start_or_skip()?;
    let url = pg.fresh_database().await.expect("a fresh database");
    Some((pg, url))
}

async fn backend(url: &str, connections: u32) -> PostgresBackend {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await
        .expect("a pool");
    PostgresBackend::new(pool).await.expect("the backend")
}

async fn advisory_locks(url: &str) -> i64 {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_contenders_never_overlap_and_no_stale_write_is_accepted() {
    let Some((_pg, url)) = database().await else {
        return;
    };
    let lock = Lock::builder(backend(&url, 8).await)
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
    assert_eq!(advisory_locks(&url).await, 0);
}

#[tokio::test]
async fn a_held_key_is_refused_until_the_owner_releases() {
    let Some((_pg, url)) = database().await else {
        return;
    };
    let holder = Lock::new(backend(&url, 2).await);
    let other = Lock::new(backend(&url, 2).await);
    let guard = holder.acquire("owned", TTL, Duration::ZERO).await.unwrap();
    assert!(other.try_acquire("owned", TTL).await.unwrap().is_none());
    // Also from the holder's own pool: its other connections are other sessions.
    assert!(holder.try_acquire("owned", TTL).await.unwrap().is_none());
    let token = guard.token();
    guard.release().await.unwrap();
    let next = other
        .try_acquire("owned", TTL)
        .await
        .unwrap()
        .expect("released");
    assert!(next.token() > token);
}

#[tokio::test]
async fn a_released_lock_leaves_nothing_on_the_pooled_connection() {
    let Some((_pg, url)) = database().await else {
        return;
    };
    // One connection: every grant reuses it once it is back in the pool.
    let lock = Lock::new(backend(&url, 1).await);
    for _ in 0..5 {
        let guard = lock.acquire("reused", TTL, Duration::ZERO).await.unwrap();
        guard.release().await.unwrap();
    }
    assert_eq!(advisory_locks(&url).await, 0);
    // A held lock keeps its connection out of the pool until it is released.
    let _held = lock.acquire("reused", TTL, Duration::ZERO).await.unwrap();
    let other =
        tokio::time::timeout(Duration::from_millis(200), lock.try_acquire("other", TTL)).await;
    assert!(
        other.is_err(),
        "the held connection was lent out: {other:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_dies_releases_its_lock() {
    let Some((_pg, url)) = database().await else {
        return;
    };
    let holder = Lock::new(backend(&url, 2).await);
    let guard = holder
        .acquire("session", TTL, Duration::ZERO)
        .await
        .unwrap();

    let admin = PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let ended: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND database = \
         (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .fetch_all(&admin)
    .await
    .unwrap();
    assert_eq!(ended, [true]);

    let next = Lock::new(backend(&url, 2).await)
        .acquire("session", TTL, PATIENCE)
        .await
        .unwrap();
    assert!(next.token() > guard.token());
    tokio::time::timeout(PATIENCE, guard.lost())
        .await
        .expect("lost() fired");
    assert!(matches!(
        guard.release().await,
        Err(LockError::Unavailable(_) | LockError::NotHeld { .. })
    ));
}

#[tokio::test]
async fn with_lock_runs_under_a_postgres_lock() {
    let Some((_pg, url)) = database().await else {
        return;
    };
    let lock = Lock::new(backend(&url, 2).await);
    let token = lock
        .with_lock("work", TTL, |token| async move { token })
        .await
        .unwrap();
    assert!(token.get() >= 1);
    assert_eq!(advisory_locks(&url).await, 0);
}
