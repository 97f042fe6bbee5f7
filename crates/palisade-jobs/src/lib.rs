//! A durable job queue on SQLite or PostgreSQL that loses nothing, rescues crashed work in
//! seconds, and runs its handlers as tower `Service`s.
//!
//! - **Typed jobs**: a [`Job`] is a serde type with a stable [`TYPE`](Job::TYPE) name.
//!   [`Jobs::enqueue`], [`enqueue_at`](Jobs::enqueue_at) / [`enqueue_in`](Jobs::enqueue_in)
//!   (delayed), [`enqueue_batch`](Jobs::enqueue_batch) (one round trip), and enqueueing
//!   **inside your own sqlx transaction** ([`SqliteStore::enqueue_in`](sqlite::SqliteStore::enqueue_in),
//!   [`PostgresStore::enqueue_in`](postgres::PostgresStore::enqueue_in)), so a job exists only
//!   if your data committed. Each job has a queue, a priority (lower runs first; default 5),
//!   a number of attempts (default 5) and, optionally, a **unique key**: enqueueing a key that
//!   a pending or running job holds returns that job ([`Enqueued::Existing`]).
//! - **Workers** ([`Worker`]): a handler per job type is a tower `Service`, so palisade's
//!   layers (timeout, breaker, rate limit, retry) stack on it; a concurrency per queue;
//!   batched claims (`FOR UPDATE SKIP LOCKED` on PostgreSQL) and batched completions; pushed
//!   wake-ups (PostgreSQL `LISTEN/NOTIFY`, SQLite in-process) with a polling fallback.
//! - **At-least-once with fencing**: a claim takes a lease that the worker heartbeats. A
//!   crashed or cut-off worker's jobs are rescued when the lease expires (10 s by default).
//!   Every claim gets a new **lease token**, and an outcome is recorded only under the
//!   current token: a stale worker can never overwrite a rescued job's result. No database
//!   transaction stays open while a handler runs.
//! - **Retries in the database** with core's [`Backoff`] (exponential with jitter); after its
//!   last attempt a job moves to the **dead-letter table** with its error, attempts and
//!   times; [`Jobs::dead_jobs`], [`dead_job`](Jobs::dead_job), [`replay`](Jobs::replay),
//!   [`purge_dead`](Jobs::purge_dead), [`purge_dead_before`](Jobs::purge_dead_before).
//! - **Inspection**: [`Jobs::stats`] (depth per queue and state, and how long the oldest
//!   runnable job has waited), [`Jobs::list`] by queue and state, [`Jobs::periodic_jobs`];
//!   and the `palisade-jobs` admin binary (feature `cli`) over all of it.
//! - **Bad input never crashes a worker**: an unknown job type, a payload that does not
//!   deserialize and a panicking handler each end as a failed attempt with a clear message
//!   (and, past the last attempt, in the dead-letter table).
//! - **Cancellation** of pending and running jobs ([`Jobs::cancel`]); **graceful shutdown**
//!   wired to `palisade-shutdown` ([`Worker::spawn_with_shutdown`]): stop claiming, let
//!   running jobs finish up to the drain deadline, release the rest to run again at once.
//! - **Periodic jobs** ([`periodic`]): a job enqueued at every tick of a [`Schedule`], a
//!   5-field cron expression (`*/15 9-17 * * MON-FRI`, `@daily`) or a fixed interval
//!   ([`Schedule::every`]), in UTC; registered on a worker with
//!   [`WorkerBuilder::periodic`]. **Once per tick across every worker process** sharing the
//!   database (a compare-and-set on the stored next tick, in the enqueue's transaction), one
//!   catch-up job after downtime, and tokio's clock, so tests drive them with
//!   `tokio::time::pause`.
//! - **Observability**: a `tracing` span per job; [`JobEvent`]s for core
//!   [`Listener`](palisade_core::Listener)s (pickup latency and run-time histograms, depth
//!   per state); counters per worker ([`WorkerHandle::metrics`]).
//!
//! Both backends sit behind one [`Store`] trait and one schema, whose migrations are embedded
//! and applied when a store opens (tracked in `palisade_jobs_migrations`, apart from sqlx's
//! own table).
//!
//! # Features
//!
//! | feature | adds |
//! |---|---|
//! | `sqlite` (default) | [`sqlite::SqliteStore`]: one file, WAL, one writer connection, `synchronous=NORMAL` (or `FULL`) |
//! | `postgres` | [`postgres::PostgresStore`]: `FOR UPDATE SKIP LOCKED` batch claims, `LISTEN/NOTIFY`, the database's clock |
//! | `cli` | the `palisade-jobs` admin binary (stats, list, dead-letter inspect / replay / purge, periodic schedules); turns on `sqlite`, add `postgres` for PostgreSQL URLs |
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_jobs::{Job, JobState, Jobs, NewJob, Worker};
//! use serde::{Deserialize, Serialize};
//! use tower::ServiceBuilder;
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendEmail {
//!     to: String,
//! }
//!
//! impl Job for SendEmail {
//!     const TYPE: &'static str = "send_email";
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_jobs::Error> {
//! # let dir = tempfile::tempdir().unwrap();
//! # let path = dir.path().join("jobs.db");
//! let jobs = Jobs::sqlite(path).await?;
//!
//! // The handler is a tower service: layers stack on it.
//! let handler = ServiceBuilder::new()
//!     .timeout(Duration::from_secs(30))
//!     .service_fn(|email: SendEmail| async move {
//!         let _ = email.to; // send it
//!         Ok::<_, std::io::Error>(())
//!     });
//! let worker = Worker::builder(&jobs)
//!     .queue("default", 8)
//!     .handler(handler)
//!     .build()?
//!     .spawn();
//!
//! let welcome = jobs.enqueue(&SendEmail { to: "ada@example.com".into() }).await?;
//! let reminder = NewJob::new(&SendEmail { to: "ada@example.com".into() })?
//!     .priority(10)
//!     .unique_key("reminder-ada")
//!     .run_in(Duration::from_secs(3600));
//! jobs.insert(reminder).await?;
//!
//! # loop {
//! #     if jobs.job(welcome.id()).await?.unwrap().state == JobState::Completed { break }
//! #     tokio::time::sleep(Duration::from_millis(10)).await;
//! # }
//! // Later: stop claiming, give running jobs 30 s, release the rest.
//! let metrics = worker.shutdown(Duration::from_secs(30)).await;
//! assert_eq!(metrics.processed, 1);
//! # Ok(())
//! # }
//! ```

// Without a backend the crate is only the model and the `Store` trait.
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_macros, unused_imports)
)]

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod error;
pub mod event;
mod handler;
mod job;
mod jobs;
mod migrate;
pub mod periodic;
mod row;
pub mod schedule;
pub mod store;
pub mod worker;

pub use crate::error::Error;
pub use crate::event::{JobEvent, Metrics};
pub use crate::job::{
    DEFAULT_MAX_ATTEMPTS, DEFAULT_PRIORITY, DEFAULT_QUEUE, DeadJob, Enqueued, Job, JobId,
    JobRecord, JobState, NewJob,
};
pub use crate::jobs::Jobs;
pub use crate::periodic::PeriodicJob;
pub use crate::schedule::{Schedule, ScheduleError};
pub use crate::store::{DeadQuery, JobQuery, QueueStats, Store};
pub use crate::worker::{Worker, WorkerBuilder, WorkerHandle};
pub use palisade_core::{Backoff, BoxError, Jitter};
