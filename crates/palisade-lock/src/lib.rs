//! Distributed locks with fencing tokens, lease renewal and visible loss, on one API over
//! four backends: in-process (the embedded default), Redis, Redlock and PostgreSQL advisory
//! locks.
//!
//! A [`Lock`] hands out [`LockGuard`]s. Each grant of a key carries a [`FencingToken`]
//! larger than every earlier grant's for that key. While a guard lives, a watchdog renews
//! its lease every TTL/3 (compare-and-extend: only the owner can; one task per [`Lock`]
//! serves all its guards); when a renewal fails, or the lease's validity runs out first,
//! the lock is *lost* and [`LockGuard::lost`] fires. [`Lock::with_lock`] cancels its work
//! then. Releasing is a compare-and-delete, so only the owner releases; dropping a guard
//! releases it in the background. Waiting for a held key retries with jittered delays from
//! `palisade-core`'s [`Backoff`](palisade_core::Backoff), up to the caller's wait, and
//! dropping the acquiring future never leaves a grant behind for longer than it takes to
//! release it.
//!
//! # Why fencing tokens
//!
//! No lease-based lock can stop a holder that was paused (a GC pause, a stalled VM, a slow
//! network) from writing after its lease ran out and the lock went to someone else: the
//! holder cannot know. The resource can. Send the token with every write and have the
//! resource refuse a token lower than the highest it has seen (see [`fence`] for the one
//! conditional `UPDATE` that does it in SQL, and [`FenceCheck`] for the same in memory).
//! `lost()` tells the holder as soon as it can be known; the fencing check is what makes a
//! late write harmless.
//!
//! # Backends and what they guarantee
//!
//! | backend | feature | mutual exclusion holds while | tokens |
//! |---|---|---|---|
//! | [`InProcess`] | (always) | always, within one process (tokio's clock) | one counter for all keys |
//! | `RedisBackend` | `redis` | the server runs, keeps its data, and its clock runs no faster than the holder's by more than the drift allowance (1 % of the TTL + 2 ms) | a per-key counter incremented in the acquire script; a lost counter restarts from the server's clock in µs |
//! | `Redlock` | `redis` | a majority of N independent servers is up, clocks drift less than the allowance, a restarted server persisted its keys or stays down one TTL, and holders pause less than their validity | the highest counter of the granting quorum, written back to a quorum before the grant is handed out: grows without any timing assumption |
//! | `PostgresBackend` | `postgres` | the holder's session lives (there is no expiry; the TTL sets how often the session is checked) | one sequence for all keys |
//!
//! A guard's [`validity`](LockGuard::validity) is the TTL from the last grant or renewal,
//! minus the time that took, minus the backend's drift allowance: how long the lock is
//! certainly still ours. The backends' own docs give the details.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_lock::{FenceCheck, Lock};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let lock = Lock::in_process();
//! let ledger = FenceCheck::new(); // the protected resource's check
//!
//! // Acquire, waiting up to 2 s; renewed every 10 s while held.
//! let guard = lock.acquire("ledger", Duration::from_secs(30), Duration::from_secs(2)).await?;
//! ledger.admit(guard.token())?; // every write carries the token
//! assert!(lock.try_acquire("ledger", Duration::from_secs(30)).await?.is_none());
//! guard.release().await?;
//!
//! // Or scoped: the work is cancelled if the lock is lost while it runs.
//! let written = lock
//!     .with_lock("ledger", Duration::from_secs(30), |token| async move {
//!         ledger.admit(token).is_ok()
//!     })
//!     .await?;
//! assert!(written);
//! # Ok(())
//! # }
//! ```
//!
//! On Redis, the same code with another backend:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn redis() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use palisade_lock::{Lock, RedisBackend, Redlock};
//!
//! let lock = Lock::new(RedisBackend::open("redis://127.0.0.1:6379")?);
//! let guard = lock.acquire("ledger", Duration::from_secs(5), Duration::from_secs(1)).await?;
//! tokio::select! {
//!     _ = guard.lost() => { /* stop: the lease is gone */ }
//!     _ = async { /* the work, each write carrying guard.token() */ } => {}
//! }
//! guard.release().await?;
//!
//! let redlock = Lock::new(Redlock::open([
//!     "redis://10.0.0.1:6379",
//!     "redis://10.0.0.2:6379",
//!     "redis://10.0.0.3:6379",
//! ])?);
//! # let _ = redlock;
//! # Ok(())
//! # }
//! ```
//!
//! # Events
//!
//! [`LockEvent`]s (acquired, contended, timed out, renewed, lost, released, with the wait
//! and the lease's age as readings) go to a core [`Listener`](palisade_core::Listener) set
//! with [`LockBuilder::listener`]; state changes are also `tracing` events.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `redis` | `RedisBackend` (one server) and `Redlock` (a quorum of servers), on `redis` 1 |
//! | `postgres` | `PostgresBackend`: session-scoped advisory locks, on `sqlx` 0.8 |
//!
//! Everything runs on tokio: acquisitions and guards need a runtime.

mod backend;
mod config;
mod error;
mod event;
pub mod fence;
mod guard;
mod in_process;
mod lock;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
mod redlock;
mod watchdog;

pub use crate::backend::{Backend, Grant};
pub use crate::config::LockConfig;
pub use crate::error::{BackendError, LockError};
pub use crate::event::{LockEvent, LostReason};
pub use crate::fence::{FenceCheck, FencingToken, StaleToken};
pub use crate::guard::LockGuard;
pub use crate::in_process::{InProcess, InProcessLease};
pub use crate::lock::{Lock, LockBuilder};
#[cfg(feature = "postgres")]
pub use crate::postgres::{PostgresBackend, PostgresLease};
#[cfg(feature = "redis")]
pub use crate::redis::{DEFAULT_DRIFT_FACTOR, RedisBackend, RedisLease};
#[cfg(feature = "redis")]
pub use crate::redlock::Redlock;
