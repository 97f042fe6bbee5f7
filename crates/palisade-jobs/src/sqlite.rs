//! [`SqliteStore`]: the embedded default. One file, no server.
//!
//! The database runs in WAL mode with a busy timeout, and every write of this process goes
//! through **one writer connection** (reads have their own small pool), so the queue never
//! fights itself for SQLite's single write lock. `synchronous` is `NORMAL` by default: in WAL
//! mode a commit survives a crash of the process, and the last commits can be lost only if the
//! machine loses power; [`SqliteConfig::synchronous_full`] makes every commit durable on disk
//! at the cost of an fsync each.
//!
//! Wake-ups are in-process: enqueueing through this store wakes the workers of this process at
//! once; jobs enqueued by another process are found by polling.

use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection as _, Row as _};

use crate::error::Error;
use crate::job::{
    DeadJob, Enqueued, JobId, JobRecord, NewJob, RunAt, duration_micros, from_micros, now_micros,
    to_micros,
};
use crate::migrate::{self, MIGRATIONS};
use crate::periodic::{PeriodicRecord, Tick};
use crate::row::{self, dead_columns, non_negative, record_columns};
use crate::store::{
    BoxFuture, Claimed, DeadQuery, JobQuery, LEASE_EXPIRED, Lease, Outcome, QueueStats, Rescued,
    Result, Signals, Store,
};

/// Runs `$body` (a future using `$conn`) in a write transaction on the writer connection,
/// taking SQLite's write lock at the start (`BEGIN IMMEDIATE`).
macro_rules! write_tx {
    ($store:expr, |$conn:ident| $body:expr) => {
        async {
            let mut tx = $store.writer.begin_with("BEGIN IMMEDIATE").await?;
            let value = {
                let $conn: &mut SqliteConnection = &mut tx;
                let result: Result<_, Error> = $body.await;
                result?
            };
            tx.commit().await?;
            Ok::<_, Error>(value)
        }
        .await
    };
}

/// How long a connection waits for another process's write lock, unless
/// [`SqliteConfig::busy_timeout`] says otherwise: 5 s.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`SqliteStore`] opens its database.
///
/// The default (for [`SqliteConfig::new`]): WAL, `synchronous=NORMAL`, busy timeout 5 s, one
/// writer connection, 4 reader connections, the file created if missing.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    path: PathBuf,
    synchronous_full: bool,
    busy_timeout: Duration,
    readers: u32,
}

impl SqliteConfig {
    /// The database file at `path` (created if missing), with the defaults above.
    pub fn new(path: impl AsRef<Path>) -> Self {
        Self {
            path: path.as_ref().to_owned(),
            synchronous_full: false,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            readers: 4,
        }
    }

    /// `synchronous=FULL`: every commit is fsynced, so it survives a power loss too.
    #[must_use]
    pub const fn synchronous_full(mut self) -> Self {
        self.synchronous_full = true;
        self
    }

    /// How long to wait for a write lock held by another process (default 5 s).
    #[must_use]
    pub const fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How many read connections to keep (default 4; at least 1).
    #[must_use]
    pub const fn readers(mut self, readers: u32) -> Self {
        self.readers = if readers == 0 { 1 } else { readers };
        self
    }

    fn options(&self) -> SqliteConnectOptions {
        SqliteConnectOptions::new()
            .filename(&self.path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(if self.synchronous_full {
                SqliteSynchronous::Full
            } else {
                SqliteSynchronous::Normal
            })
            .busy_timeout(self.busy_timeout)
            .foreign_keys(true)
    }
}

/// The SQLite job store; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    signals: Arc<Signals>,
}

impl SqliteStore {
    /// Opens (creating it if missing) the database at `path` with the default
    /// [`SqliteConfig`], and brings the schema up to date.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the file cannot be opened; [`Error::Migration`] or
    /// [`Error::SchemaTooNew`] when the schema cannot be brought up to date.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::connect(SqliteConfig::new(path)).await
    }

    /// Opens the database as `config` says, and brings the schema up to date.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub async fn connect(config: SqliteConfig) -> Result<Self> {
        let options = config.options();
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(options.clone())
            .await?;
        migrate(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.readers)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self {
            writer,
            reader,
            signals: Arc::new(Signals::default()),
        })
    }

    /// Opens a store from a `sqlite://` URL or a plain path (`sqlite://jobs.db`,
    /// `sqlite:///var/lib/app/jobs.db`, `jobs.db`), with the default settings.
    ///
    /// # Errors
    ///
    /// As for [`open`](Self::open).
    pub async fn connect_url(url: &str) -> Result<Self> {
        let path = SqliteConnectOptions::from_str(url)
            .map(|options| options.get_filename().to_owned())
            .unwrap_or_else(|_| PathBuf::from(url));
        Self::open(path).await
    }

    /// The pool of the one writer connection. Begin a transaction on it to enqueue jobs
    /// together with your own writes ([`enqueue_in`](Self::enqueue_in)): the workers' claims
    /// then wait for your commit instead of failing on SQLite's lock.
    #[must_use]
    pub fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    /// Enqueues `jobs` inside the caller's transaction (or on a connection of theirs), so they
    /// exist only if it commits. Returns, for each job, its id or the existing job with its
    /// unique key.
    ///
    /// The workers of this process are woken at once; if they look before the commit, they
    /// find the jobs at their next poll.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a statement fails.
    pub async fn enqueue_in(
        &self,
        conn: &mut SqliteConnection,
        jobs: &[NewJob],
    ) -> Result<Vec<Enqueued>> {
        let enqueued = insert_on(conn, jobs).await?;
        self.signals.jobs_available();
        Ok(enqueued)
    }

    /// Closes both pools.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

    async fn write_insert(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        write_tx!(self, |conn| insert_on(conn, jobs))
    }
}

async fn migrate(pool: &SqlitePool) -> Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query(migrate::CREATE_TABLE)
        .execute(&mut *conn)
        .await?;
    for migration in MIGRATIONS {
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let current: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM palisade_jobs_migrations")
                .fetch_one(&mut *tx)
                .await?;
        let current = current.unwrap_or(0);
        if current > migrate::latest() {
            return Err(Error::SchemaTooNew {
                found: current,
                known: migrate::latest(),
            });
        }
        if current >= migration.version {
            tx.commit().await?;
            continue;
        }
        let failed = |source| Error::Migration {
            version: migration.version,
            description: migration.description,
            source,
        };
        sqlx::raw_sql(migration.sqlite)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO palisade_jobs_migrations (version, description, applied_at) VALUES (?1, ?2, ?3)",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tx.commit().await.map_err(failed)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "palisade-jobs: applied SQLite migration"
        );
    }
    Ok(())
}

const ACTIVE: &str = "state IN ('pending', 'running')";

async fn insert_on(conn: &mut SqliteConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    let mut enqueued = Vec::with_capacity(jobs.len());
    for job in jobs {
        let now = now_micros();
        let scheduled = match job.run_at {
            RunAt::Now => now,
            RunAt::In(delay) => now.saturating_add(duration_micros(delay)),
            RunAt::At(at) => to_micros(at),
        };
        let created: Option<i64> = sqlx::query_scalar(concat!(
            "INSERT INTO palisade_jobs (queue, kind, payload, priority, max_attempts, created_at, ",
            "scheduled_at, unique_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ",
            "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running') ",
            "DO NOTHING RETURNING id"
        ))
        .bind(&job.queue)
        .bind(&job.kind)
        .bind(&job.payload)
        .bind(job.priority)
        .bind(i64::from(job.max_attempts))
        .bind(now)
        .bind(scheduled)
        .bind(job.unique_key.as_deref())
        .fetch_optional(&mut *conn)
        .await?;
        let result = match created {
            Some(id) => Enqueued::Created(JobId(id)),
            None => {
                let id: i64 = sqlx::query_scalar(&format!(
                    "SELECT id FROM palisade_jobs WHERE unique_key = ?1 AND {ACTIVE}"
                ))
                .bind(job.unique_key.as_deref())
                .fetch_one(&mut *conn)
                .await?;
                Enqueued::Existing(JobId(id))
            }
        };
        enqueued.push(result);
    }
    Ok(enqueued)
}

async fn claim_on(
    conn: &mut SqliteConnection,
    queue: &str,
    limit: u32,
    lease: Duration,
) -> Result<Vec<Claimed>> {
    let now = now_micros();
    let rows = sqlx::query(concat!(
        "UPDATE palisade_jobs SET state = 'running', attempts = attempts + 1, ",
        "lease_token = lease_token + 1, started_at = ?1, lease_expires_at = ?1 + ?2 ",
        "WHERE id IN (SELECT id FROM palisade_jobs WHERE state = 'pending' AND queue = ?3 ",
        "AND scheduled_at <= ?1 ORDER BY priority, scheduled_at, id LIMIT ?4) ",
        "RETURNING id, kind, payload, priority, attempts, max_attempts, lease_token, ",
        "?1 - scheduled_at, scheduled_at"
    ))
    .bind(now)
    .bind(duration_micros(lease))
    .bind(queue)
    .bind(i64::from(limit))
    .fetch_all(&mut *conn)
    .await?;
    let mut claimed = Vec::with_capacity(rows.len());
    for row in &rows {
        let scheduled: i64 = row.try_get(8)?;
        claimed.push((row::claimed(row)?, scheduled));
    }
    // RETURNING comes in no particular order: put it back in claim order.
    claimed.sort_by_key(|(job, scheduled)| (job.priority, *scheduled, job.id));
    Ok(claimed.into_iter().map(|(job, _)| job).collect())
}

/// `[[id, token], ...]`: leases as one JSON parameter, for set-based statements.
fn leases_json<'a>(leases: impl Iterator<Item = &'a Lease>) -> String {
    let mut json = String::from("[");
    for (i, lease) in leases.enumerate() {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!("[{},{}]", lease.id.0, lease.token));
    }
    json.push(']');
    json
}

/// The rows of `palisade_jobs` that are running under one of the leases in the JSON
/// parameter `?1` (the first `IN` finds them by id, the second checks the token).
const HELD: &str = "state = 'running' \
    AND id IN (SELECT value ->> 0 FROM json_each(?1)) \
    AND (id, lease_token) IN (SELECT value ->> 0, value ->> 1 FROM json_each(?1))";

fn leases_from(rows: &[sqlx::sqlite::SqliteRow]) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|row| {
            Ok(Lease {
                id: JobId(row.try_get(0)?),
                token: row.try_get(1)?,
            })
        })
        .collect()
}

async fn finish_on(conn: &mut SqliteConnection, outcomes: &[Outcome]) -> Result<Vec<Lease>> {
    let now = now_micros();
    let completed: Vec<&Lease> = outcomes
        .iter()
        .filter_map(|outcome| match outcome {
            Outcome::Completed(lease) => Some(lease),
            _ => None,
        })
        .collect();
    // Completions, the common case, in one statement.
    let mut applied = if completed.is_empty() {
        Vec::new()
    } else {
        let rows = sqlx::query(&format!(
            "UPDATE palisade_jobs SET state = 'completed', finished_at = ?2, \
             lease_expires_at = NULL WHERE {HELD} RETURNING id, lease_token"
        ))
        .bind(leases_json(completed.into_iter()))
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        leases_from(&rows)?
    };
    for outcome in outcomes {
        let lease = outcome.lease();
        let done = match outcome {
            Outcome::Completed(_) => continue,
            Outcome::Retry {
                error, retry_in, ..
            } => {
                sqlx::query(concat!(
                    "UPDATE palisade_jobs SET state = 'pending', scheduled_at = ?3, ",
                    "last_error = ?4, lease_expires_at = NULL ",
                    "WHERE id = ?1 AND lease_token = ?2 AND state = 'running'"
                ))
                .bind(lease.id.0)
                .bind(lease.token)
                .bind(now.saturating_add(duration_micros(*retry_in)))
                .bind(error)
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1
            }
            Outcome::Dead { error, .. } => bury(conn, lease, error, now).await?,
        };
        if done {
            applied.push(lease);
        }
    }
    Ok(applied)
}

/// Moves the running job under `lease` to the dead-letter table; returns whether it was.
async fn bury(conn: &mut SqliteConnection, lease: Lease, error: &str, now: i64) -> Result<bool> {
    let moved = sqlx::query(concat!(
        "INSERT INTO palisade_jobs_dead (id, queue, kind, payload, priority, attempts, max_attempts, ",
        "created_at, failed_at, unique_key, last_error, lease_token) ",
        "SELECT id, queue, kind, payload, priority, attempts, max_attempts, created_at, ?3, ",
        "unique_key, ?4, lease_token FROM palisade_jobs ",
        "WHERE id = ?1 AND lease_token = ?2 AND state = 'running'"
    ))
    .bind(lease.id.0)
    .bind(lease.token)
    .bind(now)
    .bind(error)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if moved == 0 {
        return Ok(false);
    }
    sqlx::query("DELETE FROM palisade_jobs WHERE id = ?1")
        .bind(lease.id.0)
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    fn insert<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>>> {
        Box::pin(async move {
            let enqueued = self.write_insert(jobs).await?;
            self.signals.jobs_available();
            Ok(enqueued)
        })
    }

    fn claim<'a>(
        &'a self,
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let mut conn = self.writer.acquire().await?;
            claim_on(&mut conn, queue, limit, lease).await
        })
    }

    fn finish<'a>(&'a self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<Vec<Lease>>> {
        Box::pin(async move { write_tx!(self, |conn| finish_on(conn, outcomes)) })
    }

    fn finish_and_claim<'a>(
        &'a self,
        outcomes: &'a [Outcome],
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(Vec<Lease>, Vec<Claimed>)>> {
        Box::pin(async move {
            write_tx!(self, |conn| async move {
                let applied = finish_on(conn, outcomes).await?;
                let claimed = claim_on(conn, queue, limit, lease).await?;
                Ok((applied, claimed))
            })
        })
    }

    fn heartbeat<'a>(
        &'a self,
        leases: &'a [Lease],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Lease>>> {
        Box::pin(async move {
            let until = now_micros().saturating_add(duration_micros(lease));
            write_tx!(self, |conn| async move {
                let rows = sqlx::query(&format!(
                    "UPDATE palisade_jobs SET lease_expires_at = ?2 WHERE {HELD} \
                     RETURNING id, lease_token"
                ))
                .bind(leases_json(leases.iter()))
                .bind(until)
                .fetch_all(&mut *conn)
                .await?;
                leases_from(&rows)
            })
        })
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let released = write_tx!(self, |conn| async move {
                let now = now_micros();
                let mut released = 0;
                for lease in leases {
                    released += sqlx::query(concat!(
                        "UPDATE palisade_jobs SET state = 'pending', scheduled_at = ?3, ",
                        "attempts = MAX(attempts - 1, 0), lease_expires_at = NULL ",
                        "WHERE id = ?1 AND lease_token = ?2 AND state = 'running'"
                    ))
                    .bind(lease.id.0)
                    .bind(lease.token)
                    .bind(now)
                    .execute(&mut *conn)
                    .await?
                    .rows_affected();
                }
                Ok(released)
            })?;
            if released > 0 {
                self.signals.jobs_available();
            }
            Ok(released)
        })
    }

    fn rescue(&self) -> BoxFuture<'_, Result<Rescued>> {
        Box::pin(async move {
            let rescued = write_tx!(self, |conn| async move {
                let now = now_micros();
                let expired = "state = 'running' AND lease_expires_at < ?1";
                let dead_lettered = sqlx::query(&format!(
                            "INSERT INTO palisade_jobs_dead (id, queue, kind, payload, priority, \
                             attempts, max_attempts, created_at, failed_at, unique_key, last_error, \
                             lease_token) SELECT id, queue, kind, payload, priority, attempts, \
                             max_attempts, created_at, ?1, unique_key, ?2, lease_token \
                             FROM palisade_jobs WHERE {expired} AND attempts >= max_attempts"
                        ))
                        .bind(now)
                        .bind(LEASE_EXPIRED)
                        .execute(&mut *conn)
                        .await?
                        .rows_affected();
                if dead_lettered > 0 {
                    sqlx::query(&format!(
                        "DELETE FROM palisade_jobs WHERE {expired} AND attempts >= max_attempts"
                    ))
                    .bind(now)
                    .execute(&mut *conn)
                    .await?;
                }
                let requeued = sqlx::query(&format!(
                    "UPDATE palisade_jobs SET state = 'pending', scheduled_at = ?1, \
                             last_error = ?2, lease_expires_at = NULL WHERE {expired}"
                ))
                .bind(now)
                .bind(LEASE_EXPIRED)
                .execute(&mut *conn)
                .await?
                .rows_affected();
                Ok(Rescued {
                    requeued,
                    dead_lettered,
                })
            })?;
            if rescued.requeued > 0 {
                self.signals.jobs_available();
            }
            Ok(rescued)
        })
    }

    fn next_due<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Duration>>> {
        Box::pin(async move {
            let next: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(scheduled_at) FROM palisade_jobs WHERE state = 'pending' AND queue = ?1",
            )
            .bind(queue)
            .fetch_one(&self.reader)
            .await?;
            Ok(next.map(|at| Duration::from_micros(non_negative(at.saturating_sub(now_micros())))))
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT queue, CASE WHEN state = 'pending' AND scheduled_at > ?1 ",
                "THEN 'scheduled' ELSE state END AS bucket, COUNT(*) FROM palisade_jobs ",
                "GROUP BY queue, bucket ",
                "UNION ALL SELECT queue, 'dead', COUNT(*) FROM palisade_jobs_dead GROUP BY queue ",
                "UNION ALL SELECT queue, 'oldest_available', MIN(scheduled_at) FROM palisade_jobs ",
                "WHERE state = 'pending' AND scheduled_at <= ?1 GROUP BY queue"
            ))
            .bind(now_micros())
            .fetch_all(&self.reader)
            .await?;
            let mut counts = Vec::with_capacity(rows.len());
            for row in &rows {
                counts.push((
                    row.try_get::<String, _>(0)?,
                    row.try_get::<String, _>(1)?,
                    non_negative(row.try_get::<i64, _>(2)?),
                ));
            }
            Ok(crate::store::collect_stats(counts))
        })
    }

    fn job(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                record_columns!("payload"),
                " FROM palisade_jobs WHERE id = ?1"
            ))
            .bind(id.0)
            .fetch_optional(&self.reader)
            .await?;
            row.as_ref().map(row::record).transpose()
        })
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let cancelled = write_tx!(self, |conn| async move {
                let changed = sqlx::query(&format!(
                    "UPDATE palisade_jobs SET state = 'cancelled', finished_at = ?2, \
                             lease_expires_at = NULL WHERE id = ?1 AND {ACTIVE}"
                ))
                .bind(id.0)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?
                .rows_affected();
                Ok(changed == 1)
            })?;
            if cancelled {
                self.signals.job_cancelled();
            }
            Ok(cancelled)
        })
    }

    fn dead_jobs<'a>(&'a self, query: &'a DeadQuery) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                dead_columns!("payload"),
                " FROM palisade_jobs_dead WHERE (?1 IS NULL OR queue = ?1) AND id > ?2 ",
                "ORDER BY id LIMIT ?3"
            ))
            .bind(query.queue.as_deref())
            .bind(query.after.map_or(i64::MIN, JobId::get))
            .bind(query.limit_or_default())
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(row::dead).collect()
        })
    }

    fn dead_job(&self, id: JobId) -> BoxFuture<'_, Result<Option<DeadJob>>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                dead_columns!("payload"),
                " FROM palisade_jobs_dead WHERE id = ?1"
            ))
            .bind(id.0)
            .fetch_optional(&self.reader)
            .await?;
            row.as_ref().map(row::dead).transpose()
        })
    }

    fn replay(&self, id: JobId) -> BoxFuture<'_, Result<Option<Enqueued>>> {
        Box::pin(async move {
            let replayed = write_tx!(self, |conn| async move {
                let inserted = sqlx::query(concat!(
                    "INSERT INTO palisade_jobs (id, queue, kind, payload, priority, attempts, ",
                    "max_attempts, created_at, scheduled_at, unique_key, last_error, lease_token) ",
                    "SELECT id, queue, kind, payload, priority, 0, max_attempts, created_at, ?2, ",
                    "unique_key, last_error, lease_token FROM palisade_jobs_dead WHERE id = ?1 ",
                    "ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL ",
                    "AND state IN ('pending', 'running') DO NOTHING"
                ))
                .bind(id.0)
                .bind(now_micros())
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if inserted == 1 {
                    sqlx::query("DELETE FROM palisade_jobs_dead WHERE id = ?1")
                        .bind(id.0)
                        .execute(&mut *conn)
                        .await?;
                    return Ok(Some(Enqueued::Created(id)));
                }
                let existing: Option<i64> = sqlx::query_scalar(&format!(
                    "SELECT j.id FROM palisade_jobs_dead AS d JOIN palisade_jobs AS j \
                             ON j.unique_key = d.unique_key AND j.{ACTIVE} WHERE d.id = ?1"
                ))
                .bind(id.0)
                .fetch_optional(&mut *conn)
                .await?;
                Ok(existing.map(|id| Enqueued::Existing(JobId(id))))
            })?;
            if matches!(replayed, Some(Enqueued::Created(_))) {
                self.signals.jobs_available();
            }
            Ok(replayed)
        })
    }

    fn purge_dead<'a>(
        &'a self,
        id: Option<JobId>,
        queue: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            write_tx!(self, |conn| async move {
                Ok(sqlx::query(
                    "DELETE FROM palisade_jobs_dead WHERE (?1 IS NULL OR id = ?1) \
                         AND (?2 IS NULL OR queue = ?2)",
                )
                .bind(id.map(JobId::get))
                .bind(queue)
                .execute(&mut *conn)
                .await?
                .rows_affected())
            })
        })
    }

    fn purge_finished(&self, before: SystemTime) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            write_tx!(self, |conn| async move {
                Ok(sqlx::query(
                    "DELETE FROM palisade_jobs WHERE state IN ('completed', 'cancelled') \
                         AND finished_at < ?1",
                )
                .bind(to_micros(before))
                .execute(&mut *conn)
                .await?
                .rows_affected())
            })
        })
    }

    fn jobs<'a>(&'a self, query: &'a JobQuery) -> BoxFuture<'a, Result<Vec<JobRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                record_columns!("payload"),
                " FROM palisade_jobs WHERE (?1 IS NULL OR queue = ?1) ",
                "AND (?2 IS NULL OR state = ?2) AND id > ?3 ORDER BY id LIMIT ?4"
            ))
            .bind(query.queue.as_deref())
            .bind(query.state.map(crate::JobState::as_str))
            .bind(query.after.map_or(i64::MIN, JobId::get))
            .bind(query.limit_or_default())
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(row::record).collect()
        })
    }

    fn purge_dead_before<'a>(
        &'a self,
        before: SystemTime,
        queue: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            write_tx!(self, |conn| async move {
                Ok(sqlx::query(
                    "DELETE FROM palisade_jobs_dead WHERE failed_at < ?1 \
                         AND (?2 IS NULL OR queue = ?2)",
                )
                .bind(to_micros(before))
                .bind(queue)
                .execute(&mut *conn)
                .await?
                .rows_affected())
            })
        })
    }

    fn periodic_jobs(&self) -> BoxFuture<'_, Result<Vec<PeriodicRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT name, schedule, next_run_at, last_run_at, last_job_id \
                 FROM palisade_jobs_periodic ORDER BY name",
            )
            .fetch_all(&self.reader)
            .await?;
            rows.iter().map(row::periodic).collect()
        })
    }

    fn periodic_next<'a>(
        &'a self,
        name: &'a str,
        schedule: &'a str,
        first: SystemTime,
    ) -> BoxFuture<'a, Result<SystemTime>> {
        Box::pin(async move {
            let next: i64 = write_tx!(self, |conn| async move {
                sqlx::query(concat!(
                    "INSERT INTO palisade_jobs_periodic (name, schedule, next_run_at) ",
                    "VALUES (?1, ?2, ?3) ON CONFLICT (name) DO UPDATE SET ",
                    "schedule = excluded.schedule, next_run_at = excluded.next_run_at ",
                    "WHERE palisade_jobs_periodic.schedule <> excluded.schedule"
                ))
                .bind(name)
                .bind(schedule)
                .bind(to_micros(first))
                .execute(&mut *conn)
                .await?;
                Ok(sqlx::query_scalar(
                    "SELECT next_run_at FROM palisade_jobs_periodic WHERE name = ?1",
                )
                .bind(name)
                .fetch_one(&mut *conn)
                .await?)
            })?;
            Ok(from_micros(next))
        })
    }

    fn periodic_enqueue<'a>(&'a self, tick: &'a Tick) -> BoxFuture<'a, Result<Option<Enqueued>>> {
        Box::pin(async move {
            let enqueued = write_tx!(self, |conn| async move {
                let advanced = sqlx::query(concat!(
                    "UPDATE palisade_jobs_periodic SET next_run_at = ?4, last_run_at = ?3 ",
                    "WHERE name = ?1 AND schedule = ?2 AND next_run_at = ?3"
                ))
                .bind(&tick.name)
                .bind(&tick.schedule)
                .bind(tick.due_micros())
                .bind(tick.next_micros())
                .execute(&mut *conn)
                .await?
                .rows_affected();
                if advanced == 0 {
                    return Ok(None);
                }
                let enqueued = insert_on(conn, std::slice::from_ref(&tick.job))
                    .await?
                    .pop()
                    .ok_or_else(|| Error::Corrupt("the store returned no id".to_owned()))?;
                sqlx::query("UPDATE palisade_jobs_periodic SET last_job_id = ?2 WHERE name = ?1")
                    .bind(&tick.name)
                    .bind(enqueued.id().get())
                    .execute(&mut *conn)
                    .await?;
                Ok(Some(enqueued))
            })?;
            if enqueued.is_some() {
                self.signals.jobs_available();
            }
            Ok(enqueued)
        })
    }
}
