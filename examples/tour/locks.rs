//! Fenced locks on the in-process backend: three workers contend for one key and every grant
//! carries a larger fencing token; then a holder that stalls past its lease has its late
//! write refused by the resource's fence check.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use palisade::core::event::listener_fn;
use palisade::core::{Backoff, Jitter};
use palisade::lock::{FenceCheck, FencingToken, InProcess, Lock, LockConfig, LockEvent};
use tokio::sync::Mutex;
use tokio::task::JoinSet;

use crate::error::{Context, TourError};

const WORKERS: [&str; 3] = ["billing", "reports", "audit"];
const ROUNDS: usize = 2;
/// How long each worker holds the lock per round.
const HOLD: Duration = Duration::from_millis(25);

/// Runs the section; returns its summary line.
pub(crate) async fn run() -> Result<String, TourError> {
    let contended = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&contended);
    let backoff = Backoff::exponential(Duration::from_millis(2), 2.0, Duration::from_millis(20))
        .context("configuring the lock's backoff")?
        .with_jitter(Jitter::Equal);
    let lock = Lock::builder(InProcess::new())
        .config(LockConfig::new().backoff(backoff))
        .listener(listener_fn(move |event: &LockEvent| {
            if let LockEvent::Contended { .. } = event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }))
        .build();

    // The protected resource: a ledger that admits writes by fencing token.
    let fence = Arc::new(FenceCheck::new());
    let ledger: Arc<Mutex<Vec<(FencingToken, &str)>>> = Arc::default();
    let mut workers = JoinSet::new();
    for name in WORKERS {
        let (lock, fence, ledger) = (lock.clone(), Arc::clone(&fence), Arc::clone(&ledger));
        workers.spawn(async move {
            for _ in 0..ROUNDS {
                let started = tokio::time::Instant::now();
                let guard = lock
                    .acquire("ledger", Duration::from_secs(5), Duration::from_secs(5))
                    .await?;
                fence.admit(guard.token())?;
                println!(
                    "  {name:<8} token {:>2}  after waiting {:>3} ms",
                    guard.token(),
                    started.elapsed().as_millis()
                );
                ledger.lock().await.push((guard.token(), name));
                tokio::time::sleep(HOLD).await;
                guard.release().await?;
            }
            Ok::<_, palisade::core::BoxError>(())
        });
    }
    while let Some(joined) = workers.join_next().await {
        joined
            .context("a lock worker panicked")?
            .context("a lock worker")?;
    }
    let writes = ledger.lock().await.clone();
    let increasing = writes.windows(2).all(|pair| pair[0].0 < pair[1].0);
    if !increasing || writes.len() != WORKERS.len() * ROUNDS {
        return Err(TourError::check(
            "locks",
            format!("ledger writes out of order: {writes:?}"),
        ));
    }

    let (stale, current) = stalled_holder().await?;
    Ok(format!(
        "{} workers × {ROUNDS} rounds on one key: tokens {}..{} strictly increasing, {} contended attempts; a stalled holder's late write (token {stale}) refused after token {current}",
        WORKERS.len(),
        writes[0].0,
        writes[writes.len() - 1].0,
        contended.load(Ordering::Relaxed),
    ))
}

/// A holder without lease renewal stalls past its TTL; the key goes to another, and the
/// first one's late write is refused. Returns the stale and the current token.
async fn stalled_holder() -> Result<(FencingToken, FencingToken), TourError> {
    const TTL: Duration = Duration::from_millis(150);
    let lock = Lock::builder(InProcess::new())
        .config(LockConfig::new().watchdog(false))
        .build();
    let export = FenceCheck::new();

    let slow = lock
        .acquire("invoice-export", TTL, Duration::from_secs(1))
        .await
        .context("slow writer acquiring")?;
    export
        .admit(slow.token())
        .context("slow writer's first write")?;
    // A long pause (GC, a stalled VM) while holding the lock...
    tokio::time::sleep(TTL * 2).await;
    let reason = slow
        .lost_reason()
        .map_or("not lost", |reason| reason.as_str());
    println!(
        "  slow-writer token {} paused {} ms with a {} ms lease: {reason}",
        slow.token(),
        (TTL * 2).as_millis(),
        TTL.as_millis()
    );
    // ...meanwhile the lease expired and someone else took the key and wrote.
    let fast = lock
        .acquire("invoice-export", TTL, Duration::from_secs(1))
        .await
        .context("fast writer acquiring")?;
    export.admit(fast.token()).context("fast writer's write")?;
    println!("  fast-writer token {} acquired and wrote", fast.token());
    // The slow writer wakes up and writes: the fence refuses it.
    match export.admit(slow.token()) {
        Err(stale) => println!("  slow-writer writes late: refused ({stale})"),
        Ok(()) => {
            return Err(TourError::check(
                "locks",
                "the fence admitted a write with a stale token",
            ));
        }
    }
    let tokens = (slow.token(), fast.token());
    drop(slow);
    fast.release().await.context("releasing the export lock")?;
    Ok(tokens)
}
