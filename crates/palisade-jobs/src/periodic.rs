//! Periodic jobs: a normal job, enqueued at every tick of a [`Schedule`], **once per tick
//! across every worker process** sharing the database.
//!
//! Register one on a worker with [`WorkerBuilder::periodic`](crate::WorkerBuilder::periodic)
//! (or [`periodic_job`](crate::WorkerBuilder::periodic_job) for queue, priority, attempts and
//! unique key). At each tick the worker's scheduler enqueues the job, which then runs like any
//! other: on its queue, by whichever worker serves that queue, with retries and the
//! dead-letter table.
//!
//! # Exactly once per tick
//!
//! Each periodic job has a row in the table `palisade_jobs_periodic`: its name, its schedule's
//! expression and its **next tick**. When a scheduler finds the tick due it advances the row
//! with a compare-and-set (`UPDATE ... WHERE next_run_at = <the tick it read>`) **in the same
//! transaction** as the enqueue. Of any number of workers, in any number of processes, that
//! wake for the same tick, exactly one wins; the others see the new next tick and go back to
//! sleep. A crash between the two writes is impossible: they commit together or not at all.
//!
//! # Missed ticks
//!
//! A scheduler that finds the stored tick in the past (every worker was down, or the database
//! was unreachable, over one or more ticks) enqueues **one** catch-up job, not one per missed
//! tick, and moves the next tick to the first one after now. The catch-up job's
//! [`JobEvent::PeriodicEnqueued`] names the oldest missed
//! tick, and its `lag` says how late it is.
//!
//! # Changing a schedule
//!
//! The row remembers the expression it was scheduled with. A worker registering the same name
//! with a different expression resets the next tick to the new schedule's first tick after
//! now; nothing is enqueued for the change itself. (During a rolling deploy, processes with the
//! old and the new expression reset each other's next tick until the old ones are gone.) Rows
//! of periodic jobs no longer registered anywhere stay in the table, unused.
//!
//! # Time
//!
//! Schedules are evaluated in UTC. A scheduler reads the wall clock as this machine's clock,
//! read once per process, advanced by **tokio's clock** since then (and never behind the
//! system clock). So under `tokio::time::pause()` a test drives periodic jobs with
//! `tokio::time::advance` (or auto-advance) and no wall-clock waiting; in production it is the
//! system clock, and a scheduler re-reads it at least every minute, so a clock step or a
//! suspended machine is noticed within a minute. The enqueued job is runnable at once, by the
//! store's clock (the database's clock on PostgreSQL), whatever the scheduler's clock says.
//! When machines' clocks disagree, the one whose clock reaches a tick first enqueues it: still
//! once.
//!
//! ```
//! use std::time::Duration;
//! use palisade_jobs::{Job, Jobs, Schedule, Worker};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Cleanup;
//! impl Job for Cleanup {
//!     const TYPE: &'static str = "cleanup";
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = tempfile::tempdir()?;
//! let jobs = Jobs::sqlite(dir.path().join("jobs.db")).await?;
//! let worker = Worker::builder(&jobs)
//!     .queue("default", 4)
//!     .handler(tower::service_fn(|_: Cleanup| async { Ok::<_, std::io::Error>(()) }))
//!     // Every 15 minutes, on the quarter hour (UTC), once across all workers.
//!     .periodic("cleanup", Schedule::cron("*/15 * * * *")?, &Cleanup)
//!     .build()?
//!     .spawn();
//! # worker.shutdown(Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use palisade_core::Listener;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::event::{Counters, JobEvent};
use crate::job::{Job, NewJob, RunAt, to_micros};
use crate::schedule::Schedule;
use crate::store::Store;
use palisade_core::Backoff;

/// The longest a scheduler sleeps before reading the clock again: 60 s.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// A job enqueued at every tick of a schedule; registered with
/// [`WorkerBuilder::periodic_job`](crate::WorkerBuilder::periodic_job).
///
/// The job keeps its queue, priority, attempts and unique key; its `run_in` / `run_at` is
/// ignored (each tick's job is runnable at once). A unique key makes a tick whose previous
/// job is still pending or running return that job instead of adding another
/// ([`Enqueued::Existing`](crate::Enqueued::Existing)): the way to never have two runs of one periodic job at a time.
///
/// ```
/// # use palisade_jobs::{Job, NewJob, PeriodicJob, Schedule};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Report;
/// # impl Job for Report { const TYPE: &'static str = "report"; }
/// let nightly = PeriodicJob::new(
///     "nightly-report",
///     Schedule::cron("0 2 * * *")?,
///     NewJob::new(&Report)?.queue("reports").unique_key("nightly-report"),
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct PeriodicJob {
    name: Arc<str>,
    schedule: Schedule,
    job: NewJob,
}

impl PeriodicJob {
    /// `job` enqueued at every tick of `schedule`, under `name`: the key of its row, shared by
    /// every worker that registers the same name.
    pub fn new(name: impl Into<String>, schedule: Schedule, job: NewJob) -> Self {
        let name: String = name.into();
        Self {
            name: name.into(),
            schedule,
            job: NewJob {
                run_at: RunAt::Now,
                ..job
            },
        }
    }

    /// `job` with the default options ([`NewJob::new`]).
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when the payload does not serialize to JSON.
    pub fn of<J: Job>(name: impl Into<String>, schedule: Schedule, job: &J) -> Result<Self, Error> {
        Ok(Self::new(name, schedule, NewJob::new(job)?))
    }

    /// The name.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The schedule.
    #[must_use]
    pub const fn schedule(&self) -> &Schedule {
        &self.schedule
    }

    /// The job enqueued at each tick.
    #[must_use]
    pub const fn job(&self) -> &NewJob {
        &self.job
    }
}

/// A periodic job as stored in `palisade_jobs_periodic`, for inspection
/// ([`Jobs::periodic_jobs`](crate::Jobs::periodic_jobs)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeriodicRecord {
    /// The periodic job's name.
    pub name: String,
    /// Its schedule's expression, as registered.
    pub schedule: String,
    /// Its next tick.
    pub next_run_at: SystemTime,
    /// The tick of the last job it enqueued, if any.
    pub last_run_at: Option<SystemTime>,
    /// The last job it enqueued, if any.
    pub last_job: Option<crate::JobId>,
}

/// One tick of a periodic job, as a [`Store`] records it with
/// [`periodic_enqueue`](Store::periodic_enqueue).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Tick {
    /// The periodic job's name.
    pub name: String,
    /// Its schedule's expression.
    pub schedule: String,
    /// The stored next tick the caller found due: the compare-and-set expects it.
    pub due: SystemTime,
    /// The next tick to store in its place.
    pub next: SystemTime,
    /// The job to enqueue, runnable at once.
    pub job: NewJob,
}

impl Tick {
    /// A tick of `name` (scheduled by `schedule`) that was due at `due`, to be replaced by
    /// `next`, enqueueing `job`.
    pub fn new(
        name: impl Into<String>,
        schedule: impl Into<String>,
        due: SystemTime,
        next: SystemTime,
        job: NewJob,
    ) -> Self {
        Self {
            name: name.into(),
            schedule: schedule.into(),
            due,
            next,
            job: NewJob {
                run_at: RunAt::Now,
                ..job
            },
        }
    }

    /// `due` as stored (microseconds since the Unix epoch).
    pub(crate) fn due_micros(&self) -> i64 {
        to_micros(self.due)
    }

    /// `next` as stored.
    pub(crate) fn next_micros(&self) -> i64 {
        to_micros(self.next)
    }
}

/// The UTC wall clock of schedulers: the system clock read once per process, advanced by
/// tokio's clock since (so it follows `tokio::time::pause` / `advance`), and never behind the
/// system clock.
pub(crate) fn now() -> SystemTime {
    static ANCHOR: OnceLock<(SystemTime, tokio::time::Instant)> = OnceLock::new();
    let (wall, instant) = *ANCHOR.get_or_init(|| (SystemTime::now(), tokio::time::Instant::now()));
    let elapsed = tokio::time::Instant::now().saturating_duration_since(instant);
    let advanced = wall.checked_add(elapsed).unwrap_or(wall);
    advanced.max(SystemTime::now())
}

/// What a worker's scheduler needs from the worker.
pub(crate) struct Scheduler {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) listener: Arc<dyn Listener<JobEvent>>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) stop: CancellationToken,
    pub(crate) store_backoff: Backoff,
    pub(crate) jobs: Vec<PeriodicJob>,
}

/// A periodic job and what this scheduler believes is its stored next tick.
struct Entry {
    job: PeriodicJob,
    due: Due,
}

#[derive(Clone, Copy)]
enum Due {
    /// Not known: read (or register) the row.
    Unknown,
    /// The stored next tick.
    At(SystemTime),
    /// The schedule has no tick left before the end of time.
    Never,
}

impl Scheduler {
    /// Enqueues every periodic job at its ticks until the worker stops.
    pub(crate) async fn run(self) {
        let mut entries: Vec<Entry> = self
            .jobs
            .iter()
            .map(|job| Entry {
                job: job.clone(),
                due: Due::Unknown,
            })
            .collect();
        let mut store_delays = self.store_backoff.delays();
        loop {
            if self.stop.is_cancelled() {
                return;
            }
            let mut failed = None;
            let mut reread = false;
            for entry in &mut entries {
                match self.step(entry).await {
                    Ok(Step::Wait) => {}
                    Ok(Step::Reread) => reread = true,
                    Err(error) => failed = Some(error),
                }
            }
            let sleep = match failed {
                Some(error @ Error::Unsupported(_)) => {
                    tracing::error!(%error, "palisade-jobs: periodic jobs cannot run on this store");
                    return;
                }
                Some(error) => {
                    let retry_in = store_delays.next().unwrap_or(MAX_SLEEP);
                    tracing::warn!(
                        %error,
                        retry_in = ?retry_in,
                        "palisade-jobs: periodic jobs: store unavailable; backing off"
                    );
                    self.listener.on_event(&JobEvent::StoreError {
                        operation: "periodic",
                        error: error.to_string().into(),
                        retry_in,
                    });
                    retry_in
                }
                None => {
                    store_delays = self.store_backoff.delays();
                    if reread {
                        continue;
                    }
                    let now = now();
                    entries
                        .iter()
                        .filter_map(|entry| match entry.due {
                            Due::At(due) => Some(due),
                            Due::Unknown | Due::Never => None,
                        })
                        .map(|due| due.duration_since(now).unwrap_or(Duration::ZERO))
                        .min()
                        .unwrap_or(MAX_SLEEP)
                        .min(MAX_SLEEP)
                }
            };
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = tokio::time::sleep(sleep) => {}
            }
        }
    }

    /// Reads the entry's next tick if needed and enqueues it if it is due.
    async fn step(&self, entry: &mut Entry) -> Result<Step, Error> {
        let job = &entry.job;
        let now = now();
        let due = match entry.due {
            Due::At(due) => due,
            Due::Never => return Ok(Step::Wait),
            Due::Unknown => {
                let Some(first) = job.schedule.next_after(now) else {
                    entry.due = Due::Never;
                    return Ok(Step::Wait);
                };
                let due = self
                    .store
                    .periodic_next(&job.name, job.schedule.expression(), first)
                    .await?;
                entry.due = Due::At(due);
                due
            }
        };
        if due > now {
            return Ok(Step::Wait);
        }
        let Some(next) = job.schedule.next_after(now) else {
            entry.due = Due::Never;
            return Ok(Step::Wait);
        };
        let tick = Tick::new(
            &*job.name,
            job.schedule.expression(),
            due,
            next,
            job.job.clone(),
        );
        match self.store.periodic_enqueue(&tick).await? {
            Some(enqueued) => {
                entry.due = Due::At(next);
                let lag = now.duration_since(due).unwrap_or(Duration::ZERO);
                Counters::add(&self.counters.periodic, 1);
                tracing::info!(
                    periodic = %job.name,
                    job.id = enqueued.id().get(),
                    job.kind = job.job.kind(),
                    created = enqueued.is_created(),
                    lag = ?lag,
                    "palisade-jobs: periodic job enqueued"
                );
                self.listener.on_event(&JobEvent::Enqueued {
                    created: usize::from(enqueued.is_created()),
                    existing: usize::from(!enqueued.is_created()),
                });
                self.listener.on_event(&JobEvent::PeriodicEnqueued {
                    name: Arc::clone(&job.name),
                    enqueued,
                    tick: due,
                    lag,
                });
                Ok(Step::Wait)
            }
            None => {
                // Another worker took the tick, or the schedule changed: read the row again.
                tracing::debug!(
                    periodic = %job.name,
                    "palisade-jobs: periodic tick taken by another worker"
                );
                entry.due = Due::Unknown;
                Ok(Step::Reread)
            }
        }
    }
}

enum Step {
    /// Nothing to do before the entry's next tick.
    Wait,
    /// The entry's next tick must be read again.
    Reread,
}

/// Checks the periodic jobs of one worker: names non-empty and unique.
pub(crate) fn validate(jobs: &[PeriodicJob]) -> Result<(), Error> {
    let mut names = std::collections::HashSet::new();
    for job in jobs {
        if job.name.is_empty() {
            return Err(Error::Config("a periodic job needs a name"));
        }
        if !names.insert(&*job.name) {
            return Err(Error::Config(
                "two periodic jobs of one worker have the same name",
            ));
        }
    }
    Ok(())
}
