//! What the queue and its workers report: [`JobEvent`]s for core
//! [`Listener`](palisade_core::Listener)s, and the counters of [`Metrics`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use palisade_core::event::{Event, Reading};

use crate::job::{Enqueued, JobId};
use crate::store::{QueueStats, Rescued};

/// Something the queue or a worker did.
///
/// With core's `MetricsListener`, every event counts in `palisade_events_total`
/// (`component="jobs"`, `event=<kind>`), and the readings below are recorded:
///
/// | event | readings |
/// |---|---|
/// | `started` | histogram `palisade_jobs_pickup_seconds` (runnable to claimed) |
/// | `completed`, `failed`, `dead_lettered` | histogram `palisade_jobs_run_seconds` |
/// | `periodic_enqueued` | histogram `palisade_jobs_periodic_lag_seconds` (tick to enqueue) |
/// | `depth` | gauges `palisade_jobs_available`, `_scheduled`, `_running`, `_dead` (of one queue: use one listener instance per queue to keep them apart) |
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum JobEvent {
    /// Jobs were enqueued.
    Enqueued {
        /// How many new jobs were stored.
        created: usize,
        /// How many returned an existing job with the same unique key.
        existing: usize,
    },
    /// A worker claimed a job and started its handler.
    Started {
        /// The queue.
        queue: Arc<str>,
        /// The job.
        id: JobId,
        /// This attempt's number, from 1.
        attempt: u32,
        /// How long the job waited between becoming runnable and this claim.
        pickup: Duration,
    },
    /// A job's handler succeeded and the completion was recorded.
    Completed {
        /// The queue.
        queue: Arc<str>,
        /// The job.
        id: JobId,
        /// How long the handler ran.
        run_time: Duration,
    },
    /// A job's handler failed (or panicked, or the job could not be decoded) and it will run
    /// again.
    Failed {
        /// The queue.
        queue: Arc<str>,
        /// The job.
        id: JobId,
        /// The attempt that failed.
        attempt: u32,
        /// How long the handler ran.
        run_time: Duration,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// A job failed its last attempt and moved to the dead-letter table.
    DeadLettered {
        /// The queue.
        queue: Arc<str>,
        /// The job.
        id: JobId,
        /// How many attempts it made.
        attempts: u32,
        /// How long the last handler ran.
        run_time: Duration,
    },
    /// An outcome was refused because its lease was no longer current: the job was rescued
    /// by another worker, or cancelled, in the meantime. Nothing was overwritten.
    StaleOutcome {
        /// The queue.
        queue: Arc<str>,
        /// The job.
        id: JobId,
    },
    /// A worker's heartbeat found that it had lost a job's lease; the handler was stopped.
    LeaseLost {
        /// The queue.
        queue: Arc<str>,
        /// The job.
        id: JobId,
    },
    /// Jobs of lost workers (expired leases) were put back or dead-lettered.
    Rescued(Rescued),
    /// A worker shutting down put unfinished jobs back, to run again at once.
    Released {
        /// The queue.
        queue: Arc<str>,
        /// How many jobs.
        count: u64,
    },
    /// A job was cancelled.
    Cancelled {
        /// The job.
        id: JobId,
    },
    /// A dead job was put back into its queue.
    Replayed {
        /// The job.
        id: JobId,
    },
    /// The depth of one queue, per state.
    Depth(QueueStats),
    /// A worker's scheduler enqueued the job of a periodic job's tick (it also reports
    /// [`Enqueued`](Self::Enqueued)). Of all the workers sharing the database, only the one
    /// that enqueued a tick reports it.
    PeriodicEnqueued {
        /// The periodic job's name.
        name: Arc<str>,
        /// The job: new, or the pending or running one holding the job's unique key.
        enqueued: Enqueued,
        /// The tick, in UTC: the oldest missed one when the job catches up after the
        /// workers were down (see [`periodic`](crate::periodic#missed-ticks)).
        tick: SystemTime,
        /// How late the job was enqueued after its tick.
        lag: Duration,
    },
    /// A worker could not reach the database; it backs off and retries.
    StoreError {
        /// What it was doing: `"claim"`, `"finish"`, `"heartbeat"`, `"rescue"`, `"release"`,
        /// `"periodic"`.
        operation: &'static str,
        /// The error.
        error: Arc<str>,
        /// How long it waits before trying again.
        retry_in: Duration,
    },
}

impl Event for JobEvent {
    fn component(&self) -> &'static str {
        "jobs"
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Enqueued { .. } => "enqueued",
            Self::Started { .. } => "started",
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::DeadLettered { .. } => "dead_lettered",
            Self::StaleOutcome { .. } => "stale_outcome",
            Self::LeaseLost { .. } => "lease_lost",
            Self::Rescued(_) => "rescued",
            Self::Released { .. } => "released",
            Self::Cancelled { .. } => "cancelled",
            Self::Replayed { .. } => "replayed",
            Self::Depth(_) => "depth",
            Self::PeriodicEnqueued { .. } => "periodic_enqueued",
            Self::StoreError { .. } => "store_error",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            Self::Started { pickup, .. } => record(Reading::histogram(
                "palisade_jobs_pickup_seconds",
                pickup.as_secs_f64(),
            )),
            Self::Completed { run_time, .. }
            | Self::Failed { run_time, .. }
            | Self::DeadLettered { run_time, .. } => record(Reading::histogram(
                "palisade_jobs_run_seconds",
                run_time.as_secs_f64(),
            )),
            Self::PeriodicEnqueued { lag, .. } => record(Reading::histogram(
                "palisade_jobs_periodic_lag_seconds",
                lag.as_secs_f64(),
            )),
            Self::Depth(stats) => {
                record(Reading::gauge(
                    "palisade_jobs_available",
                    stats.available as f64,
                ));
                record(Reading::gauge(
                    "palisade_jobs_scheduled",
                    stats.scheduled as f64,
                ));
                record(Reading::gauge(
                    "palisade_jobs_running",
                    stats.running as f64,
                ));
                record(Reading::gauge("palisade_jobs_dead", stats.dead as f64));
            }
            _ => {}
        }
    }
}

/// A worker's counters (the patterns document's `getMetrics`), read with
/// [`WorkerHandle::metrics`](crate::WorkerHandle::metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Metrics {
    /// Jobs whose handler succeeded and whose completion was recorded.
    pub processed: u64,
    /// Failed attempts that will be retried.
    pub failed: u64,
    /// Jobs moved to the dead-letter table after their last attempt.
    pub dead_lettered: u64,
    /// Outcomes refused because the lease was no longer current.
    pub stale: u64,
    /// Jobs of lost workers this worker's rescue passes put back (or dead-lettered).
    pub rescued: u64,
    /// Jobs put back unfinished at shutdown.
    pub released: u64,
    /// Ticks of periodic jobs this worker enqueued (each tick is enqueued by one worker).
    pub periodic: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) processed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) stale: AtomicU64,
    pub(crate) rescued: AtomicU64,
    pub(crate) released: AtomicU64,
    pub(crate) periodic: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Metrics {
        Metrics {
            processed: self.processed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
            rescued: self.rescued.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            periodic: self.periodic.load(Ordering::Relaxed),
        }
    }
}
