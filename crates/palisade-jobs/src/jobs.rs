//! [`Jobs`]: the typed API over a store.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::event::JobEvent;
use crate::job::{DeadJob, Enqueued, Job, JobId, JobRecord, NewJob};
use crate::periodic::PeriodicRecord;
use crate::store::{DeadQuery, JobQuery, QueueStats, Result, Store};
use palisade_core::Listener;

/// The job queue: enqueue, inspect, cancel, and manage the dead-letter table. Cheap to clone;
/// clones share the store.
///
/// Workers are built from it with [`Worker::builder`](crate::Worker::builder).
#[derive(Clone)]
pub struct Jobs {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) listener: Arc<dyn Listener<JobEvent>>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Jobs {
    /// The queue over `store`.
    pub fn new(store: impl Store) -> Self {
        Self::from_arc(Arc::new(store))
    }

    /// The queue over a shared store.
    pub fn from_arc(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            listener: Arc::new(()),
        }
    }

    /// Opens (creating it if missing) a SQLite database with the default settings; see
    /// [`SqliteStore`](crate::sqlite::SqliteStore).
    ///
    /// # Errors
    ///
    /// As for [`SqliteStore::open`](crate::sqlite::SqliteStore::open).
    #[cfg(feature = "sqlite")]
    pub async fn sqlite(path: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(Self::new(crate::sqlite::SqliteStore::open(path).await?))
    }

    /// Connects to PostgreSQL; see [`PostgresStore`](crate::postgres::PostgresStore).
    ///
    /// # Errors
    ///
    /// As for [`PostgresStore::connect`](crate::postgres::PostgresStore::connect).
    #[cfg(feature = "postgres")]
    pub async fn postgres(url: &str) -> Result<Self> {
        Ok(Self::new(
            crate::postgres::PostgresStore::connect(url).await?,
        ))
    }

    /// Sends the queue's [`JobEvent`]s (and those of the workers built from it) to
    /// `listener`, such as core's `MetricsListener`.
    #[must_use]
    pub fn with_listener(mut self, listener: impl Listener<JobEvent> + 'static) -> Self {
        self.listener = Arc::new(listener);
        self
    }

    /// The store.
    #[must_use]
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Enqueues `job` on the default queue with the default options, to run at once.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`](crate::Error::Serialize) when the payload does not serialize;
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn enqueue<J: Job>(&self, job: &J) -> Result<Enqueued> {
        self.insert(NewJob::new(job)?).await
    }

    /// Enqueues `job` to run no earlier than `at`.
    ///
    /// # Errors
    ///
    /// As for [`enqueue`](Self::enqueue).
    pub async fn enqueue_at<J: Job>(&self, job: &J, at: SystemTime) -> Result<Enqueued> {
        self.insert(NewJob::new(job)?.run_at(at)).await
    }

    /// Enqueues `job` to run no earlier than `delay` from now (by the database's clock).
    ///
    /// # Errors
    ///
    /// As for [`enqueue`](Self::enqueue).
    pub async fn enqueue_in<J: Job>(&self, job: &J, delay: Duration) -> Result<Enqueued> {
        self.insert(NewJob::new(job)?.run_in(delay)).await
    }

    /// Enqueues one job with its options ([`NewJob`]: queue, priority, attempts, unique key,
    /// schedule).
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn insert(&self, job: NewJob) -> Result<Enqueued> {
        let mut enqueued = self.enqueue_batch(std::slice::from_ref(&job)).await?;
        enqueued
            .pop()
            .ok_or_else(|| crate::Error::Corrupt("the store returned no id".to_owned()))
    }

    /// Enqueues many jobs in one transaction and one round trip (PostgreSQL: one statement
    /// over arrays). Returns, for each job in order, its id or the existing job with its unique
    /// key.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails; then none was
    /// stored.
    pub async fn enqueue_batch(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let enqueued = self.store.insert(jobs).await?;
        let created = enqueued.iter().filter(|e| e.is_created()).count();
        tracing::debug!(jobs = jobs.len(), created, "palisade-jobs: enqueued");
        self.listener.on_event(&JobEvent::Enqueued {
            created,
            existing: enqueued.len() - created,
        });
        Ok(enqueued)
    }

    /// The job `id` as stored, if it exists (dead jobs are in [`dead_job`](Self::dead_job)).
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn job(&self, id: JobId) -> Result<Option<JobRecord>> {
        self.store.job(id).await
    }

    /// Lists jobs (dead jobs are in [`dead_jobs`](Self::dead_jobs)), ids ascending.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails;
    /// [`Error::Unsupported`](crate::Error::Unsupported) from a store that does not list.
    pub async fn list(&self, query: &JobQuery) -> Result<Vec<JobRecord>> {
        self.store.jobs(query).await
    }

    /// Cancels a pending or running job and returns whether it was one. A running job's
    /// handler is stopped at its worker's next heartbeat (at once in the same process) and
    /// its outcome is not recorded.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn cancel(&self, id: JobId) -> Result<bool> {
        let cancelled = self.store.cancel(id).await?;
        if cancelled {
            tracing::info!(job.id = id.get(), "palisade-jobs: job cancelled");
            self.listener.on_event(&JobEvent::Cancelled { id });
        }
        Ok(cancelled)
    }

    /// Counts per queue and state (the depth of each queue).
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn stats(&self) -> Result<Vec<QueueStats>> {
        let stats = self.store.stats().await?;
        for queue in &stats {
            self.listener.on_event(&JobEvent::Depth(queue.clone()));
        }
        Ok(stats)
    }

    /// Lists dead jobs, ids ascending.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn dead_jobs(&self, query: &DeadQuery) -> Result<Vec<DeadJob>> {
        self.store.dead_jobs(query).await
    }

    /// The dead job `id`, if there is one.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn dead_job(&self, id: JobId) -> Result<Option<DeadJob>> {
        self.store.dead_job(id).await
    }

    /// Moves the dead job `id` back into its queue under its own id, attempts reset, to run
    /// at once. `None` when there is no such dead job; [`Enqueued::Existing`] when a pending
    /// or running job holds its unique key (the dead job then stays where it is).
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn replay(&self, id: JobId) -> Result<Option<Enqueued>> {
        let replayed = self.store.replay(id).await?;
        if let Some(Enqueued::Created(id)) = replayed {
            tracing::info!(job.id = id.get(), "palisade-jobs: dead job replayed");
            self.listener.on_event(&JobEvent::Replayed { id });
        }
        Ok(replayed)
    }

    /// Deletes the dead job `id`; returns whether there was one.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn purge_dead(&self, id: JobId) -> Result<bool> {
        Ok(self.store.purge_dead(Some(id), None).await? == 1)
    }

    /// Deletes all dead jobs, of `queue` when given; returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn purge_all_dead(&self, queue: Option<&str>) -> Result<u64> {
        self.store.purge_dead(None, queue).await
    }

    /// Deletes the dead jobs dead-lettered before `before`, of `queue` when given; returns
    /// how many.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails;
    /// [`Error::Unsupported`](crate::Error::Unsupported) from a store that cannot.
    pub async fn purge_dead_before(&self, before: SystemTime, queue: Option<&str>) -> Result<u64> {
        self.store.purge_dead_before(before, queue).await
    }

    /// The stored periodic jobs with their next and last ticks, names ascending.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails;
    /// [`Error::Unsupported`](crate::Error::Unsupported) from a store without periodic jobs.
    pub async fn periodic_jobs(&self) -> Result<Vec<PeriodicRecord>> {
        self.store.periodic_jobs().await
    }

    /// Deletes completed and cancelled jobs that finished before `before`; returns how many.
    ///
    /// # Errors
    ///
    /// [`Error::Database`](crate::Error::Database) when the store fails.
    pub async fn purge_finished(&self, before: SystemTime) -> Result<u64> {
        self.store.purge_finished(before).await
    }
}
