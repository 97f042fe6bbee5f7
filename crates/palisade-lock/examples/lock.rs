//! Fenced lock contention on the in-process backend, and why fencing tokens matter.
//!
//! ```sh
//! cargo run -p palisade-lock --example lock
//! ```
//!
//! Four parts, on [`Lock::in_process`] (nothing to start):
//!
//! 1. **Contention.** `main` holds the key `ledger`; four workers wait for it (`acquire` with
//!    a 5 s wait), an impatient one gives up after 50 ms (`TimedOut`), and `try_acquire`
//!    returns `None`. Once `main` releases, each worker in turn gets the lock, writes one
//!    entry to a protected ledger and releases: the fencing tokens printed grow with every
//!    grant.
//! 2. **`with_lock`.** The scoped form: acquire, run the work with the token, release.
//! 3. **A stale holder is refused.** On a second ledger and lock, with the watchdog off (as if the holder's process had
//!    stalled and could not renew), holder A's 150 ms lease runs out while A is "paused";
//!    `lost()` fires for A, B gets the lock with a higher token and writes, and A's late write
//!    carrying the old token is rejected by the ledger (`StaleToken`). A's release then
//!    reports `NotHeld`. This is what fencing is for: the lock cannot stop a paused holder,
//!    the resource can.
//! 4. **`with_lock` cancels work that outlives its lease** (`LockError::Lost`).
//!
//! Expected output (times and the workers' order vary from run to run; tokens always grow):
//!
//! ```text
//! 1. contention on "ledger"
//!    [   0 ms] main holds the lock, token 1
//!    [   0 ms] try_acquire while held -> None
//!    [  52 ms] impatient: gave up: lock "ledger" not acquired within 51.63353ms
//!    [ 124 ms] main released
//!    [ 150 ms] worker 2 got token 2 after waiting 125 ms -> ledger entry #1
//!    [ 244 ms] worker 3 got token 3 after waiting 222 ms -> ledger entry #2
//!    [ 267 ms] worker 4 got token 4 after waiting 245 ms -> ledger entry #3
//!    [ 296 ms] worker 1 got token 5 after waiting 274 ms -> ledger entry #4
//!    ledger: 4 entries, tokens [2, 3, 4, 5] (increasing)
//! 2. with_lock
//!    [   0 ms] with_lock ran with token 6 -> ledger entry #5
//!    [   0 ms] after with_lock the key is free again: true
//! 3. a stale holder is refused
//!    [   0 ms] A holds token 1 (ttl 150 ms, no renewal) and stalls for 400 ms
//!    [ 152 ms] A: lost() fired
//!    [ 272 ms] B holds token 2 -> ledger entry #1
//!    [ 401 ms] A wakes and writes with token 1 -> REJECTED: stale fencing token 1; the resource has seen 2
//!    [ 401 ms] A: is_lost() = true, reason expired
//!    [ 401 ms] A's release: lock "ledger" was no longer held when released
//!    [ 401 ms] B's token 2 > A's token 1: true
//! 4. with_lock cancels work that outlives its lease
//!    [ 104 ms] work of 300 ms under a 100 ms lease: lock "ledger" lost: expired
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_lock::{FenceCheck, FencingToken, Lock, LockConfig, LockError, StaleToken};
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const KEY: &str = "ledger";

/// The protected resource: it admits a write only if its fencing token is at least the
/// highest it has seen.
#[derive(Debug, Default)]
struct Ledger {
    fence: FenceCheck,
    entries: Mutex<Vec<(FencingToken, String)>>,
}

impl Ledger {
    /// Appends `entry` if `token` is current; returns the entry's number.
    fn write(&self, token: FencingToken, entry: impl Into<String>) -> Result<usize, StaleToken> {
        // The check and the append under one lock, as a database does both in one UPDATE.
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        self.fence.admit(token)?;
        entries.push((token, entry.into()));
        Ok(entries.len())
    }

    fn tokens(&self) -> Vec<u64> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(token, _)| token.get())
            .collect()
    }
}

/// Prints a line prefixed with the milliseconds since `start`.
fn say(start: Instant, line: impl std::fmt::Display) {
    println!("   [{:>4} ms] {line}", start.elapsed().as_millis());
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let lock = Lock::in_process();
    let ledger = Arc::new(Ledger::default());
    let ttl = Duration::from_secs(2);

    contention(&lock, &ledger, ttl).await?;
    scoped(&lock, &ledger, ttl).await?;
    // A second resource, guarded by a lock of its own (its tokens start over: a resource
    // must only ever see the tokens of the one lock service that guards it).
    stale_holder(&Arc::new(Ledger::default())).await?;
    scoped_loss().await?;
    Ok(())
}

/// Part 1: several tasks want the same key.
async fn contention(lock: &Lock, ledger: &Arc<Ledger>, ttl: Duration) -> Result<(), BoxError> {
    println!("1. contention on {KEY:?}");
    let start = Instant::now();
    let held = lock.acquire(KEY, ttl, Duration::ZERO).await?;
    say(
        start,
        format!("main holds the lock, token {}", held.token()),
    );

    let mut workers = Vec::new();
    for worker in 1..=4 {
        let (lock, ledger) = (lock.clone(), Arc::clone(ledger));
        workers.push(tokio::spawn(async move {
            let asked = Instant::now();
            let guard = lock.acquire(KEY, ttl, Duration::from_secs(5)).await?;
            let waited = asked.elapsed().as_millis();
            // The work: 20 ms, then one write carrying the token.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let line = match ledger.write(guard.token(), format!("worker {worker}")) {
                Ok(n) => format!(
                    "worker {worker} got token {} after waiting {waited} ms -> ledger entry #{n}",
                    guard.token()
                ),
                Err(stale) => format!("worker {worker}: write refused: {stale}"),
            };
            say(start, line);
            guard.release().await?;
            Ok::<_, LockError>(())
        }));
    }

    let busy = lock.try_acquire(KEY, ttl).await?;
    say(
        start,
        format!(
            "try_acquire while held -> {}",
            if busy.is_some() { "a guard" } else { "None" }
        ),
    );
    drop(busy);
    match lock.acquire(KEY, ttl, Duration::from_millis(50)).await {
        Err(error @ LockError::TimedOut { .. }) => {
            say(start, format!("impatient: gave up: {error}"))
        }
        Err(error) => return Err(error.into()),
        Ok(guard) => say(start, format!("impatient: got token {}?", guard.token())),
    }

    // Hold on a little longer, then let the workers through.
    tokio::time::sleep(Duration::from_millis(70)).await;
    held.release().await?;
    say(start, "main released");
    for worker in workers {
        worker.await??;
    }
    let tokens = ledger.tokens();
    let increasing = tokens.windows(2).all(|pair| pair[0] < pair[1]);
    println!(
        "   ledger: {} entries, tokens {tokens:?} ({})",
        tokens.len(),
        if increasing {
            "increasing"
        } else {
            "NOT increasing"
        }
    );
    Ok(())
}

/// Part 2: `with_lock` acquires, hands the work its token, and releases.
async fn scoped(lock: &Lock, ledger: &Arc<Ledger>, ttl: Duration) -> Result<(), BoxError> {
    println!("2. with_lock");
    let start = Instant::now();
    let written = lock
        .with_lock(KEY, ttl, |token| {
            let ledger = Arc::clone(ledger);
            async move { (token, ledger.write(token, "with_lock")) }
        })
        .await?;
    let (token, entry) = written;
    say(
        start,
        format!(
            "with_lock ran with token {token} -> ledger entry #{}",
            entry?
        ),
    );
    let free = lock.try_acquire(KEY, ttl).await?.is_some();
    say(
        start,
        format!("after with_lock the key is free again: {free}"),
    );
    Ok(())
}

/// Part 3: a holder that stalls past its lease writes too late and is refused.
async fn stale_holder(ledger: &Arc<Ledger>) -> Result<(), BoxError> {
    println!("3. a stale holder is refused");
    // No watchdog: nothing renews the lease, as when the holder's process is paused.
    let lock = Lock::builder(palisade_lock::InProcess::new())
        .config(LockConfig::new().watchdog(false))
        .build();
    let ttl = Duration::from_millis(150);
    let stall = Duration::from_millis(400);
    let start = Instant::now();

    let a = lock.acquire(KEY, ttl, Duration::ZERO).await?;
    let a_token = a.token();
    say(
        start,
        format!(
            "A holds token {a_token} (ttl {} ms, no renewal) and stalls for {} ms",
            ttl.as_millis(),
            stall.as_millis()
        ),
    );
    let lost = a.lost_owned();
    let watcher = tokio::spawn(async move {
        lost.await;
        say(start, "A: lost() fired");
    });

    // B waits for the key; it becomes free when A's lease runs out.
    let b_lock = lock.clone();
    let b_ledger = Arc::clone(ledger);
    let b = tokio::spawn(async move {
        let guard = b_lock
            .acquire(KEY, Duration::from_secs(2), Duration::from_secs(2))
            .await?;
        let token = guard.token();
        match b_ledger.write(token, "B") {
            Ok(n) => say(start, format!("B holds token {token} -> ledger entry #{n}")),
            Err(stale) => say(start, format!("B: write refused: {stale}")),
        }
        guard.release().await?;
        Ok::<_, LockError>(token)
    });

    // A's pause: it does not know its lease ran out meanwhile.
    tokio::time::sleep(stall).await;
    match ledger.write(a_token, "A, late") {
        Ok(n) => say(
            start,
            format!("A wakes and writes with token {a_token} -> accepted as entry #{n} (!)"),
        ),
        Err(stale) => say(
            start,
            format!("A wakes and writes with token {a_token} -> REJECTED: {stale}"),
        ),
    }
    watcher.await?;
    say(
        start,
        format!(
            "A: is_lost() = {}, reason {}",
            a.is_lost(),
            a.lost_reason().map_or("none", |r| r.as_str())
        ),
    );
    match a.release().await {
        Err(error @ LockError::NotHeld { .. }) => say(start, format!("A's release: {error}")),
        Err(error) => return Err(error.into()),
        Ok(()) => say(start, "A's release: released (unexpected)"),
    }
    let b_token = b.await??;
    say(
        start,
        format!(
            "B's token {b_token} > A's token {a_token}: {}",
            b_token > a_token
        ),
    );
    Ok(())
}

/// Part 4: `with_lock` drops work that runs past the lock's loss.
async fn scoped_loss() -> Result<(), BoxError> {
    println!("4. with_lock cancels work that outlives its lease");
    let lock = Lock::builder(palisade_lock::InProcess::new())
        .config(LockConfig::new().watchdog(false))
        .build();
    let start = Instant::now();
    let result = lock
        .with_lock(KEY, Duration::from_millis(100), |token| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            token
        })
        .await;
    match result {
        Err(error @ LockError::Lost { .. }) => {
            say(
                start,
                format!("work of 300 ms under a 100 ms lease: {error}"),
            );
        }
        Err(error) => return Err(error.into()),
        Ok(token) => say(
            start,
            format!("work finished with token {token} (unexpected)"),
        ),
    }
    Ok(())
}
