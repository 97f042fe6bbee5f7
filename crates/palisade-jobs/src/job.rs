//! The job model: the [`Job`] trait, the rows a queue stores and what enqueueing returns.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;

/// The queue a job goes to unless [`NewJob::queue`] says otherwise.
pub const DEFAULT_QUEUE: &str = "default";

/// The priority of a job unless [`NewJob::priority`] says otherwise. Lower runs first.
pub const DEFAULT_PRIORITY: i32 = 5;

/// How many times a job runs before it is dead-lettered, unless [`NewJob::max_attempts`] says
/// otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A kind of work: a serde payload with a stable type name.
///
/// The name is stored with every job and picks the handler that runs it, so it must not change
/// while jobs of the type may still be queued. The payload is stored as JSON.
///
/// ```
/// use palisade_jobs::Job;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail {
///     to: String,
///     subject: String,
/// }
///
/// impl Job for SendEmail {
///     const TYPE: &'static str = "send_email";
/// }
/// ```
pub trait Job: Serialize + DeserializeOwned + Send + 'static {
    /// The stable name of the job type, such as `"send_email"`.
    const TYPE: &'static str;
}

/// A job's id, unique within its store (dead jobs keep the id they had).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub(crate) i64);

impl JobId {
    /// The id as stored in the database.
    #[must_use]
    pub const fn get(self) -> i64 {
        self.0
    }

    /// The job with the database id `id`.
    #[must_use]
    pub const fn from_i64(id: i64) -> Self {
        Self(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Where a job is in its life. Dead jobs are not here: they live in the dead-letter table
/// ([`DeadJob`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Waiting to run: now, or at its scheduled time (delayed jobs and retries).
    Pending,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Ran successfully.
    Completed,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// The name stored in the `state` column.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Cancelled => "cancelled",
        }
    }

    pub(crate) fn parse(state: &str) -> Result<Self, Error> {
        match state {
            "pending" => Ok(Self::Pending),
            "running" => Ok(Self::Running),
            "completed" => Ok(Self::Completed),
            "cancelled" => Ok(Self::Cancelled),
            other => Err(Error::Corrupt(format!("unknown job state `{other}`"))),
        }
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// When a new job may first run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunAt {
    /// At once.
    Now,
    /// This long after it is stored (measured by the database's clock).
    In(Duration),
    /// At this time.
    At(SystemTime),
}

/// A job ready to be enqueued: its type, payload and options.
///
/// Made from a typed job with [`NewJob::new`]; the defaults are queue [`DEFAULT_QUEUE`],
/// priority [`DEFAULT_PRIORITY`] (5; lower runs first), [`DEFAULT_MAX_ATTEMPTS`] (5) attempts,
/// no unique key, run at once.
///
/// ```
/// # use palisade_jobs::{Job, NewJob};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Report { month: u32 }
/// # impl Job for Report { const TYPE: &'static str = "report"; }
/// use std::time::Duration;
///
/// let job = NewJob::new(&Report { month: 1 })?
///     .queue("reports")
///     .priority(10)
///     .max_attempts(3)
///     .unique_key("report-2024-01")
///     .run_in(Duration::from_secs(60));
/// # Ok::<(), palisade_jobs::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct NewJob {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) payload: String,
    pub(crate) priority: i32,
    pub(crate) max_attempts: u32,
    pub(crate) unique_key: Option<String>,
    pub(crate) run_at: RunAt,
}

impl NewJob {
    /// A job of type `J::TYPE` with `job` serialized as its payload.
    ///
    /// # Errors
    ///
    /// [`Error::Serialize`] when the payload does not serialize to JSON.
    pub fn new<J: Job>(job: &J) -> Result<Self, Error> {
        let payload = serde_json::to_string(job).map_err(Error::Serialize)?;
        Ok(Self::from_json(J::TYPE, payload))
    }

    /// A job of type `kind` with an already serialized JSON payload (for tools that move jobs
    /// without knowing their Rust types). The payload is not checked here; a payload that is
    /// not JSON is refused by PostgreSQL and fails in the handler on SQLite.
    pub fn from_json(kind: impl Into<String>, payload: impl Into<String>) -> Self {
        Self {
            queue: DEFAULT_QUEUE.to_owned(),
            kind: kind.into(),
            payload: payload.into(),
            priority: DEFAULT_PRIORITY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            unique_key: None,
            run_at: RunAt::Now,
        }
    }

    /// Puts the job on `queue` (default [`DEFAULT_QUEUE`]).
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// Sets the priority: lower runs first (default 5).
    #[must_use]
    pub const fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// How many times the job may run before it is dead-lettered (default 5; at least 1: a
    /// zero counts as 1).
    #[must_use]
    pub const fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = if attempts == 0 { 1 } else { attempts };
        self
    }

    /// A unique key: while a job with this key is pending or running, enqueueing another one
    /// returns the existing job ([`Enqueued::Existing`]) instead. Keys are unique across
    /// queues; once the job completes, fails for good or is cancelled, the key is free again.
    #[must_use]
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }

    /// Runs the job no earlier than `delay` after it is stored, by the database's clock.
    #[must_use]
    pub const fn run_in(mut self, delay: Duration) -> Self {
        self.run_at = RunAt::In(delay);
        self
    }

    /// Runs the job no earlier than `at`.
    #[must_use]
    pub const fn run_at(mut self, at: SystemTime) -> Self {
        self.run_at = RunAt::At(at);
        self
    }

    /// The job type.
    #[must_use]
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The queue.
    #[must_use]
    pub fn queue_name(&self) -> &str {
        &self.queue
    }
}

/// What enqueueing a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Enqueued {
    /// The job was stored under this id.
    Created(JobId),
    /// A pending or running job already had the unique key: this is its id, and nothing new
    /// was stored.
    Existing(JobId),
}

impl Enqueued {
    /// The id of the new or the existing job.
    #[must_use]
    pub const fn id(self) -> JobId {
        match self {
            Self::Created(id) | Self::Existing(id) => id,
        }
    }

    /// Whether a new job was stored.
    #[must_use]
    pub const fn is_created(self) -> bool {
        matches!(self, Self::Created(_))
    }
}

/// A job as stored, for inspection ([`Jobs::job`](crate::Jobs::job)).
///
/// Times are in the database's clock.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct JobRecord {
    /// The id.
    pub id: JobId,
    /// The queue.
    pub queue: String,
    /// The job type ([`Job::TYPE`]).
    pub kind: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// Where the job is in its life.
    pub state: JobState,
    /// The priority; lower runs first.
    pub priority: i32,
    /// How many times it has been claimed (a run that was released at shutdown does not count).
    pub attempts: u32,
    /// How many attempts it may have before it is dead-lettered.
    pub max_attempts: u32,
    /// When it was enqueued.
    pub created_at: SystemTime,
    /// When it may run next (for a pending job), or when it last became runnable.
    pub scheduled_at: SystemTime,
    /// When its current or last run started.
    pub started_at: Option<SystemTime>,
    /// When it completed or was cancelled.
    pub finished_at: Option<SystemTime>,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// The error of its last failed attempt, if any.
    pub last_error: Option<String>,
    /// The fencing token of its current or last lease: it grows by one at every claim, and only
    /// the worker holding the current token may record the outcome.
    pub lease_token: i64,
}

/// A job that failed its last allowed attempt, kept in the dead-letter table
/// ([`Jobs::dead_jobs`](crate::Jobs::dead_jobs)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DeadJob {
    /// The id it had (and gets back when replayed).
    pub id: JobId,
    /// The queue.
    pub queue: String,
    /// The job type.
    pub kind: String,
    /// The payload, as JSON text.
    pub payload: String,
    /// The priority.
    pub priority: i32,
    /// How many attempts it made.
    pub attempts: u32,
    /// How many it was allowed.
    pub max_attempts: u32,
    /// When it was first enqueued.
    pub created_at: SystemTime,
    /// When it was dead-lettered.
    pub failed_at: SystemTime,
    /// Its unique key, if any.
    pub unique_key: Option<String>,
    /// The error of its last attempt.
    pub last_error: String,
}

/// Microseconds since the Unix epoch, as stored; times before the epoch are stored as 0.
pub(crate) fn to_micros(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
    })
}

/// A stored time back as a `SystemTime`.
pub(crate) fn from_micros(micros: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(micros).unwrap_or(0))
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_micros(duration: Duration) -> i64 {
    i64::try_from(duration.as_micros()).unwrap_or(i64::MAX)
}

/// Microseconds since the Unix epoch, now, by this machine's clock.
pub(crate) fn now_micros() -> i64 {
    to_micros(SystemTime::now())
}
