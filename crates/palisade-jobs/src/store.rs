//! The [`Store`] trait: what a backend (SQLite, PostgreSQL) does for the queue.
//!
//! Every method is one round trip to the database (one transaction), so the worker can batch:
//! claims, outcomes, heartbeats and releases each take a slice. Every write to a claimed job is
//! fenced: it names the job's lease token, and the store applies it only while the job is
//! still `running` with that token. A worker whose lease expired, whose job was rescued and
//! claimed again, or whose job was cancelled can never overwrite what happened since.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;

use crate::error::Error;
use crate::job::{DeadJob, Enqueued, JobId, JobRecord, JobState, NewJob, from_micros};

/// A boxed, `Send` future, as the object-safe [`Store`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The result type of the queue's API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A job a worker has claimed: what it needs to run it and to record the outcome.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Claimed {
    /// The job's id.
    pub id: JobId,
    /// The job type.
    pub kind: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// The priority.
    pub priority: i32,
    /// This attempt's number, from 1.
    pub attempt: u32,
    /// How many attempts the job may have.
    pub max_attempts: u32,
    /// The fencing token of this claim.
    pub lease_token: i64,
    /// How long the job waited between becoming runnable and this claim.
    pub pickup: Duration,
}

impl Claimed {
    /// The lease this claim holds.
    #[must_use]
    pub const fn lease(&self) -> Lease {
        Lease {
            id: self.id,
            token: self.lease_token,
        }
    }
}

/// A job's id with the lease token of one claim: what fenced writes name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lease {
    /// The job.
    pub id: JobId,
    /// The token its claim got.
    pub token: i64,
}

/// How an attempt ended, to be recorded with [`Store::finish`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler succeeded: the job is completed.
    Completed(Lease),
    /// The handler failed and the job has attempts left: it runs again after `retry_in`.
    Retry {
        /// The attempt's lease.
        lease: Lease,
        /// Why it failed.
        error: String,
        /// The backoff before the next attempt.
        retry_in: Duration,
    },
    /// The handler failed its last attempt: the job moves to the dead-letter table.
    Dead {
        /// The attempt's lease.
        lease: Lease,
        /// Why it failed.
        error: String,
    },
}

impl Outcome {
    /// The lease the outcome is recorded under.
    #[must_use]
    pub const fn lease(&self) -> Lease {
        match self {
            Self::Completed(lease) | Self::Retry { lease, .. } | Self::Dead { lease, .. } => *lease,
        }
    }
}

/// What one pass of [`Store::rescue`] did with jobs whose lease had expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Rescued {
    /// Jobs put back to pending, to run again at once.
    pub requeued: u64,
    /// Jobs whose expired attempt was their last: dead-lettered.
    pub dead_lettered: u64,
}

/// How many jobs one queue holds in each state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Pending jobs that may run now.
    pub available: u64,
    /// Pending jobs waiting for their scheduled time (delayed jobs and retries).
    pub scheduled: u64,
    /// Jobs claimed by a worker.
    pub running: u64,
    /// Completed jobs still stored.
    pub completed: u64,
    /// Cancelled jobs still stored.
    pub cancelled: u64,
    /// Jobs in the dead-letter table.
    pub dead: u64,
    /// When the longest-waiting runnable pending job became runnable (its scheduled time):
    /// `now` minus this is how far the queue lags. `None` when no job is runnable.
    pub oldest_available: Option<SystemTime>,
}

/// Which dead jobs [`Jobs::dead_jobs`](crate::Jobs::dead_jobs) lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadQuery {
    /// Only this queue (all queues when `None`).
    pub queue: Option<String>,
    /// Only ids above this one (for paging; ids ascending).
    pub after: Option<JobId>,
    /// At most this many (100 when `None`).
    pub limit: Option<u32>,
}

impl DeadQuery {
    /// All dead jobs of all queues, the first 100.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only `queue`.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only ids after `id`.
    #[must_use]
    pub const fn after(mut self, id: JobId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `limit`.
    #[must_use]
    pub const fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn limit_or_default(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100))
    }
}

/// Which jobs [`Jobs::list`](crate::Jobs::list) lists (dead jobs are listed by
/// [`DeadQuery`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct JobQuery {
    /// Only this queue (all queues when `None`).
    pub queue: Option<String>,
    /// Only jobs in this state (all states when `None`).
    pub state: Option<JobState>,
    /// Only ids above this one (for paging; ids ascending).
    pub after: Option<JobId>,
    /// At most this many (100 when `None`).
    pub limit: Option<u32>,
}

impl JobQuery {
    /// All jobs of all queues, the first 100.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only `queue`.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// Only jobs in `state`.
    #[must_use]
    pub const fn state(mut self, state: JobState) -> Self {
        self.state = Some(state);
        self
    }

    /// Only ids after `id`.
    #[must_use]
    pub const fn after(mut self, id: JobId) -> Self {
        self.after = Some(id);
        self
    }

    /// At most `limit`.
    #[must_use]
    pub const fn limit(mut self, limit: u32) -> Self {
        self.limit = Some(limit);
        self
    }

    pub(crate) fn limit_or_default(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100))
    }
}

/// Wake-ups a store pushes to the workers of this process.
///
/// SQLite fires them in-process on every enqueue, replay and release; PostgreSQL fires them
/// when a `NOTIFY` arrives from any process. Workers still poll, as a fallback.
#[derive(Debug, Default)]
pub struct Signals {
    jobs: Notify,
    jobs_sent: AtomicU64,
    cancel: Notify,
}

impl Signals {
    /// Tells waiting workers that jobs may be available.
    pub fn jobs_available(&self) {
        self.jobs_sent.fetch_add(1, Ordering::Release);
        self.jobs.notify_waiters();
    }

    /// How many [`jobs_available`](Self::jobs_available) wake-ups were sent so far: a worker
    /// that compares it before and after waiting on something else misses none.
    pub fn jobs_sent(&self) -> u64 {
        self.jobs_sent.load(Ordering::Acquire)
    }

    /// Tells workers that a running job may have been cancelled.
    pub fn job_cancelled(&self) {
        self.cancel.notify_waiters();
    }

    /// Resolves at the next [`jobs_available`](Self::jobs_available).
    pub fn wait_for_jobs(&self) -> tokio::sync::futures::Notified<'_> {
        self.jobs.notified()
    }

    /// Resolves at the next [`job_cancelled`](Self::job_cancelled).
    pub fn wait_for_cancel(&self) -> tokio::sync::futures::Notified<'_> {
        self.cancel.notified()
    }
}

/// A job store: one schema, behind which sits SQLite or PostgreSQL.
///
/// Most users never call it: [`Jobs`](crate::Jobs) wraps a store in the typed API and
/// [`Worker`](crate::Worker) drives it. It is public so that tools (an admin CLI, a bench)
/// can reach the same operations, and so that a test can wrap a store to inject faults.
///
/// Times are taken from the database's clock where the database has one worth sharing
/// (PostgreSQL, for every process that uses it) and from this machine's clock on SQLite.
pub trait Store: fmt::Debug + Send + Sync + 'static {
    /// The backend's name: `"sqlite"` or `"postgres"`.
    fn backend(&self) -> &'static str;

    /// The wake-ups of this store.
    fn signals(&self) -> &Arc<Signals>;

    /// Starts pushing wake-ups from other processes (PostgreSQL `LISTEN`), if the backend
    /// has them. Idempotent; workers call it when they start.
    fn listen(&self) {}

    /// Stores `jobs` in one transaction and returns, for each in order, its new id or the
    /// existing job holding its unique key.
    fn insert<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>>>;

    /// Claims up to `limit` runnable jobs of `queue`, lowest priority value first, then
    /// earliest scheduled, then oldest; each gets a new lease token and a lease of `lease`.
    fn claim<'a>(
        &'a self,
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>>;

    /// Records `outcomes` in one transaction and returns the leases that were current, whose
    /// outcome was applied; the others were stale and changed nothing.
    fn finish<'a>(&'a self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<Vec<Lease>>>;

    /// [`finish`](Self::finish) then [`claim`](Self::claim), in one round trip where the
    /// backend can (SQLite: one transaction; PostgreSQL: one statement), so a busy worker pays
    /// one round trip per batch instead of two. Both happen or, on error, neither.
    ///
    /// The default calls the two in turn; if the claim fails after the outcomes were
    /// recorded, it returns the recorded leases and no claims.
    fn finish_and_claim<'a>(
        &'a self,
        outcomes: &'a [Outcome],
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(Vec<Lease>, Vec<Claimed>)>> {
        Box::pin(async move {
            let applied = self.finish(outcomes).await?;
            match self.claim(queue, limit, lease).await {
                Ok(claimed) => Ok((applied, claimed)),
                Err(error) => {
                    tracing::warn!(%error, "palisade-jobs: claim after recording failed");
                    Ok((applied, Vec::new()))
                }
            }
        })
    }

    /// Extends the leases still held to `lease` from now and returns them; a lease missing
    /// from the answer is lost (expired and rescued, or the job was cancelled).
    fn heartbeat<'a>(
        &'a self,
        leases: &'a [Lease],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Lease>>>;

    /// Puts claimed jobs back to pending, to run again at once, without counting the attempt
    /// (a worker shutting down). Returns how many leases were still current.
    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<u64>>;

    /// Puts running jobs whose lease has expired back to pending (or, past their last
    /// attempt, into the dead-letter table).
    fn rescue(&self) -> BoxFuture<'_, Result<Rescued>>;

    /// How long until the next pending job of `queue` becomes runnable: zero when one is
    /// runnable now, `None` when the queue has no pending job.
    fn next_due<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Duration>>>;

    /// Counts per queue and state.
    fn stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>>>;

    /// The job `id`, if it exists (dead jobs are in [`dead_job`](Self::dead_job)).
    fn job(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>>>;

    /// Cancels a pending or running job; returns whether it was. A running job's worker
    /// loses its lease: its handler is stopped and its outcome is not recorded.
    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<bool>>;

    /// Lists dead jobs, ids ascending.
    fn dead_jobs<'a>(&'a self, query: &'a DeadQuery) -> BoxFuture<'a, Result<Vec<DeadJob>>>;

    /// The dead job `id`, if there is one.
    fn dead_job(&self, id: JobId) -> BoxFuture<'_, Result<Option<DeadJob>>>;

    /// Moves the dead job `id` back into the queue with its attempts reset, to run at once.
    /// `None` when there is no such dead job; [`Enqueued::Existing`] when a pending or
    /// running job holds its unique key (the dead job then stays).
    fn replay(&self, id: JobId) -> BoxFuture<'_, Result<Option<Enqueued>>>;

    /// Deletes dead jobs: the one with `id`, or all of them (of `queue`, when given) when
    /// `id` is `None`. Returns how many were deleted.
    fn purge_dead<'a>(
        &'a self,
        id: Option<JobId>,
        queue: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Deletes completed and cancelled jobs that finished before `before`. Returns how many.
    fn purge_finished(&self, before: SystemTime) -> BoxFuture<'_, Result<u64>>;

    /// Lists jobs (not dead ones), ids ascending.
    ///
    /// The default refuses with [`Error::Unsupported`]: a store that wraps another should
    /// forward it.
    fn jobs<'a>(&'a self, query: &'a JobQuery) -> BoxFuture<'a, Result<Vec<JobRecord>>> {
        let _ = query;
        Box::pin(std::future::ready(Err(Error::Unsupported("listing jobs"))))
    }

    /// Deletes the dead jobs dead-lettered before `before` (of `queue`, when given). Returns
    /// how many were deleted.
    ///
    /// The default refuses with [`Error::Unsupported`].
    fn purge_dead_before<'a>(
        &'a self,
        before: SystemTime,
        queue: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>> {
        let _ = (before, queue);
        Box::pin(std::future::ready(Err(Error::Unsupported(
            "purging dead jobs by age",
        ))))
    }

    /// The stored [periodic jobs](crate::periodic), names ascending.
    ///
    /// The default refuses with [`Error::Unsupported`].
    fn periodic_jobs(&self) -> BoxFuture<'_, Result<Vec<crate::periodic::PeriodicRecord>>> {
        Box::pin(std::future::ready(Err(Error::Unsupported("periodic jobs"))))
    }

    /// Registers the [periodic job](crate::periodic) `name` scheduled by the expression
    /// `schedule` and returns its stored next tick: `first` for a new row, and for a row that
    /// was stored with another expression (which is then replaced); otherwise the row's own
    /// next tick, untouched.
    ///
    /// The default refuses with [`Error::Unsupported`]: a store that wraps another should
    /// forward it.
    fn periodic_next<'a>(
        &'a self,
        name: &'a str,
        schedule: &'a str,
        first: SystemTime,
    ) -> BoxFuture<'a, Result<SystemTime>> {
        let _ = (name, schedule, first);
        Box::pin(std::future::ready(Err(Error::Unsupported("periodic jobs"))))
    }

    /// Enqueues the job of a periodic job's tick if, and only if, its row still holds
    /// `tick.schedule` and `tick.due` as its next tick, and moves that to `tick.next`, both in
    /// one transaction: of the workers racing for one tick exactly one gets `Some`. `None`
    /// when another worker took the tick or the schedule changed (read the row again with
    /// [`periodic_next`](Self::periodic_next)). The job is runnable at once.
    ///
    /// The default refuses with [`Error::Unsupported`].
    fn periodic_enqueue<'a>(
        &'a self,
        tick: &'a crate::periodic::Tick,
    ) -> BoxFuture<'a, Result<Option<Enqueued>>> {
        let _ = tick;
        Box::pin(std::future::ready(Err(Error::Unsupported("periodic jobs"))))
    }
}

/// The message stored when a job is rescued from a lost worker.
pub(crate) const LEASE_EXPIRED: &str = "lease expired: the worker running the job stopped heartbeating (crashed, stalled or cut off from the database)";

/// Per-queue stats from `(queue, bucket, count)` rows, queues in name order. The bucket
/// `oldest_available` carries a time in microseconds since the Unix epoch instead of a count.
pub(crate) fn collect_stats(counts: Vec<(String, String, u64)>) -> Vec<QueueStats> {
    let mut by_queue = std::collections::BTreeMap::<String, QueueStats>::new();
    for (queue, bucket, count) in counts {
        let stats = by_queue
            .entry(queue)
            .or_insert_with_key(|queue| QueueStats {
                queue: queue.clone(),
                ..QueueStats::default()
            });
        let slot = match bucket.as_str() {
            "pending" => &mut stats.available,
            "scheduled" => &mut stats.scheduled,
            "running" => &mut stats.running,
            "completed" => &mut stats.completed,
            "cancelled" => &mut stats.cancelled,
            "dead" => &mut stats.dead,
            "oldest_available" => {
                stats.oldest_available =
                    Some(from_micros(i64::try_from(count).unwrap_or(i64::MAX)));
                continue;
            }
            _ => continue,
        };
        *slot += count;
    }
    by_queue.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_group_counts_by_queue_in_name_order() {
        let rows = [
            ("mail", "pending", 3),
            ("billing", "running", 1),
            ("mail", "scheduled", 2),
            ("mail", "dead", 4),
            ("billing", "completed", 7),
            ("billing", "cancelled", 1),
            ("mail", "something-new", 9),
            ("mail", "oldest_available", 1_500_000),
        ];
        let stats = collect_stats(
            rows.iter()
                .map(|(q, b, n)| ((*q).to_owned(), (*b).to_owned(), *n))
                .collect(),
        );
        assert_eq!(stats.len(), 2);
        assert_eq!(stats[0].queue, "billing");
        assert_eq!(
            (stats[0].running, stats[0].completed, stats[0].cancelled),
            (1, 7, 1)
        );
        assert_eq!(stats[1].queue, "mail");
        assert_eq!(
            (stats[1].available, stats[1].scheduled, stats[1].dead),
            (3, 2, 4)
        );
        assert_eq!(stats[0].oldest_available, None);
        assert_eq!(
            stats[1].oldest_available,
            Some(std::time::UNIX_EPOCH + Duration::from_micros(1_500_000))
        );
    }
}
