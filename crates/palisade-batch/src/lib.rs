//! Batch processing and streaming pipelines that never stall, never hide a bad row, and keep
//! memory flat.
//!
//! - [`Batch`] runs an async processor over a list or a [`Stream`](futures_core::Stream) of
//!   items with a concurrency limit, as one continuous pool: a new item starts as soon as one
//!   finishes, and every item in flight keeps being polled whatever the others do. Per-item
//!   retry with core's [`Backoff`](palisade_core::Backoff), a per-attempt timeout, error
//!   isolation (the [`BatchReport`] lists every success and every failure *with its item*),
//!   stop-on-first-error, input or completion order, groups of items with a callback per
//!   group, progress events (done / total, items per second, ETA) through a core
//!   [`Listener`](palisade_core::Listener), and cancellation by a [`CancellationToken`] that
//!   returns what finished.
//! - [`csv`]: an async RFC 4180 reader (quoted fields, embedded delimiters and line breaks,
//!   escaped quotes, CRLF, BOM, headers) that reports every bad record with its line number
//!   and reads on.
//! - [`pipeline`]: CSV in, a per-row transform that maps, filters or fails, JSON lines or
//!   CSV out, optionally gzip (feature `gzip`); failed rows go to an error sink with their
//!   line numbers up to an error limit; a bounded channel between the parsing and the
//!   writing stage keeps memory flat however large the input.
//!
//! # Why a pool and not `buffered`
//!
//! A `buffered` / `buffer_unordered` stream polls its in-flight futures only while its
//! consumer polls the stream. A loop that awaits something else between two `next()` calls
//! (a retry, a write, a batch callback) leaves them unpolled; if what it awaits needs one of
//! them to progress (a lock it holds, a connection of a small pool), nothing moves again: a
//! *futurelock*. [`Batch`] keeps every wait (retries, timeouts) inside the item's own future,
//! and its callbacks are synchronous, so no in-flight item is ever left behind. The crate's
//! tests include that scenario and show that the naive loop hangs on it.
//!
//! # Example
//!
//! ```
//! use std::num::{NonZeroU32, NonZeroUsize};
//! use std::time::Duration;
//! use palisade_batch::{Batch, CancellationToken};
//! use palisade_core::Backoff;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! struct User { id: u32 }
//! let users: Vec<User> = (1..=100).map(|id| User { id }).collect();
//!
//! async fn send_notification(user: &User) -> Result<(), String> {
//!     if user.id % 40 == 0 { Err(format!("no address for {}", user.id)) } else { Ok(()) }
//! }
//!
//! let report = Batch::new(NonZeroUsize::new(10).unwrap())
//!     .retry(NonZeroU32::new(3).unwrap(), Backoff::default())
//!     .timeout(Duration::from_secs(10))
//!     .cancel_on(CancellationToken::new())
//!     .on_batch(NonZeroUsize::new(50).unwrap(), |done: &palisade_batch::BatchDone<'_, User, (), String>| {
//!         println!("batch {}: {} sent, {} failed", done.index(), done.succeeded(), done.failed());
//!     })
//!     .run(users, async |user: &User| send_notification(user).await)
//!     .await;
//!
//! assert_eq!(report.succeeded.len(), 98);
//! for failure in &report.failed {
//!     println!("user {} failed after {} attempts: {}", failure.item.id, failure.attempts, failure.error);
//! }
//! assert_eq!(report.failed.iter().map(|f| f.item.id).collect::<Vec<_>>(), [40, 80]);
//! # }
//! ```
//!
//! # Events
//!
//! [`BatchEvent`]s (retrying, item failed, batch completed, progress, stopped, finished) go
//! to the [`Listener`](palisade_core::Listener) set with [`Batch::listener`], and a
//! pipeline's [`PipelineEvent`](pipeline::PipelineEvent)s (progress, row failed, too many
//! errors, finished) to the one set with [`Pipeline::listener`](pipeline::Pipeline::listener):
//! core's `MetricsListener` (feature `metrics` of `palisade-core`) turns both into metrics.
//! With feature `progress`, [`BatchProgressBar`] is a listener that draws an indicatif bar.
//! Retries, failures and stops are also `tracing` events.
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `progress` | `BatchProgressBar`: an [indicatif](https://docs.rs/indicatif) progress bar that follows a run |
//! | `gzip` | [`Pipeline::gzip`](pipeline::Pipeline::gzip): gzip output through [flate2](https://docs.rs/flate2)'s zlib-rs backend |
//!
//! Everything runs on tokio's clock and timers: a run needs a runtime with time enabled.

mod batch;
pub mod csv;
mod event;
pub mod pipeline;
#[cfg(feature = "progress")]
mod progress_bar;
mod report;

pub use crate::batch::{Batch, OnBatch, Order};
pub use crate::event::{BatchEvent, Progress, StopReason};
#[cfg(feature = "progress")]
pub use crate::progress_bar::BatchProgressBar;
pub use crate::report::{
    BatchDone, BatchReport, Failure, Interrupted, ItemError, Outcome, Success,
};
pub use tokio_util::sync::CancellationToken;
