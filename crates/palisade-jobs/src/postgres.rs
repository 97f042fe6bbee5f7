//! [`PostgresStore`]: how the queue scales past one machine.
//!
//! Workers in any number of processes claim batches with `FOR UPDATE SKIP LOCKED`, so they
//! never wait on each other's rows and never claim the same job twice. Every enqueue, release,
//! replay and rescue sends a `NOTIFY` on the channel `palisade_jobs` (a cancellation, on
//! `palisade_jobs_cancel`); each process keeps one `LISTEN` connection and wakes its workers,
//! which still poll as a fallback for notifications lost while that connection was down.
//! Times come from the database's clock (`palisade_jobs_now()`), shared by every process.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use sqlx::postgres::{PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection as _, Executor as _, Row as _};
use tokio_util::sync::CancellationToken;

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

/// The channel that announces new runnable jobs.
pub const JOBS_CHANNEL: &str = "palisade_jobs";
/// The channel that announces cancelled jobs.
pub const CANCEL_CHANNEL: &str = "palisade_jobs_cancel";

/// The advisory lock key that serialises migrations ("palisade" + "jobs", as ASCII-ish hex).
const MIGRATION_LOCK: i64 = 0x7061_6c69_6a6f_6273;

/// At most this many idle worker connections are kept (see [`WorkerConnections`]); more,
/// while more statements overlap, are opened and closed as needed.
const MAX_IDLE_WORKER_CONNECTIONS: usize = 8;

/// An idle worker connection unused for longer than this is pinged before it is used again,
/// so a connection the server or a proxy closed while the queue was quiet is replaced
/// quietly instead of failing a statement. Under load connections are reused well within
/// it, and no statement pays for a ping.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

/// The PostgreSQL job store; see the [module docs](self). Cheap to clone: clones share the
/// pool, the `LISTEN` connection and the worker connections.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: PgPool,
    signals: Arc<Signals>,
    listener: Arc<ListenerState>,
    held: Arc<WorkerConnections>,
}

/// The connections the workers' statements (claims, outcomes, heartbeats, next-due looks)
/// run on: taken from the pool once (its `after_connect` runs) and detached from it, then
/// kept. A pooled statement costs two round trips more than the statement: a ping when the
/// connection is taken (`test_before_acquire`) and another when it is given back. A statement
/// that fails drops its connection and the idle ones with it (a restarted server has killed
/// them all), and the next takes a fresh one: the failure reaches the worker, which backs off
/// and retries the round as for any store error; leases still fence what it sends again.
#[derive(Debug, Default)]
struct WorkerConnections {
    /// Idle connections, each with when it was last given back.
    idle: Mutex<Vec<(PgConnection, tokio::time::Instant)>>,
}

impl WorkerConnections {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PgConnection, tokio::time::Instant)>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
struct ListenerState {
    started: Mutex<bool>,
    stop: CancellationToken,
}

impl Drop for ListenerState {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl PostgresStore {
    /// Connects to `url` with a pool of 10 connections (5 s to get one), and brings the
    /// schema up to date.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when the server cannot be reached; [`Error::Migration`] or
    /// [`Error::SchemaTooNew`] when the schema cannot be brought up to date.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        Self::from_pool(pool).await
    }

    /// Uses `pool` (sized and configured by the caller) and brings the schema up to date.
    ///
    /// Workers' claims, outcomes and heartbeats run on connections taken from `pool` and
    /// detached from it, which the store keeps (up to 8 idle) and replaces when a statement
    /// on one fails: they do not count against the pool's `max_connections`.
    ///
    /// # Errors
    ///
    /// As for [`connect`](Self::connect).
    pub async fn from_pool(pool: PgPool) -> Result<Self> {
        migrate(&pool).await?;
        Ok(Self {
            pool,
            signals: Arc::new(Signals::default()),
            listener: Arc::new(ListenerState::default()),
            held: Arc::new(WorkerConnections::default()),
        })
    }

    /// The pool, to begin transactions in which to [enqueue](Self::enqueue_in).
    #[must_use]
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Enqueues `jobs` inside the caller's transaction (`&mut *tx`) or on a connection of
    /// theirs, so they exist only if it commits; the `NOTIFY` is delivered at the commit too.
    /// Returns, for each job, its id or the existing job with its unique key.
    ///
    /// # Errors
    ///
    /// [`Error::Database`] when a statement fails.
    pub async fn enqueue_in(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
        insert_on(conn, jobs).await
    }

    /// Closes the pool and the worker connections, and stops listening.
    pub async fn close(&self) {
        self.listener.stop.cancel();
        self.pool.close().await;
        let idle = std::mem::take(&mut *self.held.lock());
        for (conn, _) in idle {
            let _ = conn.close().await;
        }
    }

    /// A worker connection: an idle one (pinged first if it idled longer than
    /// [`CHECK_IDLE_AFTER`]), or a new one taken from the pool and detached.
    async fn worker_conn(&self) -> Result<PgConnection> {
        loop {
            let idle = self.held.lock().pop();
            let Some((mut conn, since)) = idle else {
                return Ok(self.pool.acquire().await?.detach());
            };
            if since.elapsed() < CHECK_IDLE_AFTER {
                return Ok(conn);
            }
            match conn.ping().await {
                Ok(()) => return Ok(conn),
                Err(error) => {
                    tracing::debug!(%error, "an idle worker connection was closed; replacing it");
                }
            }
        }
    }

    /// Ends a statement run on `conn` (from [`worker_conn`](Self::worker_conn)): keeps the
    /// connection when it succeeded; when it failed, drops it and the idle ones.
    fn worker_done<T>(&self, conn: PgConnection, result: sqlx::Result<T>) -> Result<T> {
        match result {
            Ok(value) => {
                let mut idle = self.held.lock();
                if idle.len() < MAX_IDLE_WORKER_CONNECTIONS && !self.pool.is_closed() {
                    idle.push((conn, tokio::time::Instant::now()));
                } else {
                    drop(idle);
                    tokio::spawn(async move {
                        let _ = conn.close().await;
                    });
                }
                Ok(value)
            }
            Err(error) => {
                drop(conn);
                let idle = std::mem::take(&mut *self.held.lock());
                drop(idle);
                Err(error.into())
            }
        }
    }

    async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

async fn migrate(pool: &PgPool) -> Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *tx)
        .await?;
    tx.execute(migrate::CREATE_TABLE).await?;
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
    for migration in MIGRATIONS.iter().filter(|m| m.version > current) {
        let failed = |source| Error::Migration {
            version: migration.version,
            description: migration.description,
            source,
        };
        sqlx::raw_sql(migration.postgres)
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        sqlx::query(
            "INSERT INTO palisade_jobs_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(migration.version)
        .bind(migration.description)
        .bind(now_micros())
        .execute(&mut *tx)
        .await
        .map_err(failed)?;
        tracing::info!(
            version = migration.version,
            description = migration.description,
            "palisade-jobs: applied PostgreSQL migration"
        );
    }
    tx.commit().await?;
    Ok(())
}

const INSERT: &str = "\
WITH input AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[], $5::int4[],
                         $6::int8[], $7::int8[], $8::text[])
        WITH ORDINALITY AS i(queue, kind, payload, priority, max_attempts, at, delay, unique_key, ord)
), clock AS (
    SELECT palisade_jobs_now() AS now
), inserted AS (
    INSERT INTO palisade_jobs (queue, kind, payload, priority, max_attempts, created_at,
                               scheduled_at, unique_key)
    SELECT i.queue, i.kind, i.payload::jsonb, i.priority, i.max_attempts, clock.now,
           COALESCE(i.at, clock.now + i.delay), i.unique_key
    FROM input AS i, clock
    ORDER BY i.ord
    ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN ('pending', 'running')
    DO NOTHING
    RETURNING id, unique_key
), notified AS (
    SELECT pg_notify('palisade_jobs', '') AS sent
)
SELECT inserted.id, inserted.unique_key FROM inserted, notified ORDER BY inserted.id";

async fn insert_on(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<Vec<Enqueued>> {
    let mut results: Vec<Option<Enqueued>> = vec![None; jobs.len()];
    let mut todo: Vec<usize> = (0..jobs.len()).collect();
    // A job whose key is taken returns the holder; if the holder finishes before we look it
    // up, the key is free and the job is inserted again. Bounded, as the holder must finish
    // in between each time.
    for _ in 0..10 {
        if todo.is_empty() {
            break;
        }
        let batch: Vec<&NewJob> = todo.iter().map(|&i| &jobs[i]).collect();
        let rows = sqlx::query(INSERT)
            .bind(batch.iter().map(|j| j.queue.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.kind.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.payload.as_str()).collect::<Vec<_>>())
            .bind(batch.iter().map(|j| j.priority).collect::<Vec<_>>())
            .bind(
                batch
                    .iter()
                    .map(|j| i32::try_from(j.max_attempts).unwrap_or(i32::MAX))
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|j| match j.run_at {
                        RunAt::At(at) => Some(to_micros(at)),
                        RunAt::Now | RunAt::In(_) => None,
                    })
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|j| match j.run_at {
                        RunAt::In(delay) => duration_micros(delay),
                        RunAt::Now | RunAt::At(_) => 0,
                    })
                    .collect::<Vec<_>>(),
            )
            .bind(
                batch
                    .iter()
                    .map(|j| j.unique_key.as_deref())
                    .collect::<Vec<_>>(),
            )
            .fetch_all(&mut *conn)
            .await?;
        // Ids were drawn in input order, so the inserted rows, by id, follow the input,
        // skipping the jobs whose key was taken.
        let mut inserted = rows.iter().peekable();
        let mut taken = Vec::new();
        for &i in &todo {
            let key = jobs[i].unique_key.as_deref();
            let next = match inserted.peek() {
                Some(row) => Some((
                    row.try_get::<i64, _>(0)?,
                    row.try_get::<Option<String>, _>(1)?,
                )),
                None => None,
            };
            match next {
                Some((id, row_key)) if key.is_none() || row_key.as_deref() == key => {
                    inserted.next();
                    results[i] = Some(Enqueued::Created(JobId(id)));
                }
                _ => taken.push(i),
            }
        }
        if taken.is_empty() {
            break;
        }
        let keys: Vec<&str> = taken
            .iter()
            .filter_map(|&i| jobs[i].unique_key.as_deref())
            .collect();
        let holders = sqlx::query(
            "SELECT unique_key, id FROM palisade_jobs \
             WHERE unique_key = ANY($1) AND state IN ('pending', 'running')",
        )
        .bind(&keys)
        .fetch_all(&mut *conn)
        .await?;
        let mut holder_of = std::collections::HashMap::new();
        for row in &holders {
            holder_of.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
        }
        todo.clear();
        for i in taken {
            let key = jobs[i].unique_key.as_deref().unwrap_or_default();
            match holder_of.get(key) {
                Some(&id) => results[i] = Some(Enqueued::Existing(JobId(id))),
                None => todo.push(i),
            }
        }
    }
    results
        .into_iter()
        .map(|result| {
            result.ok_or_else(|| {
                Error::Corrupt("a unique key kept changing hands while enqueueing".to_owned())
            })
        })
        .collect()
}

const CLAIM: &str = "\
WITH clock AS (
    SELECT palisade_jobs_now() AS now
), picked AS (
    SELECT id FROM palisade_jobs
    WHERE state = 'pending' AND queue = $1 AND scheduled_at <= (SELECT now FROM clock)
    ORDER BY priority, scheduled_at, id
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
UPDATE palisade_jobs AS j
SET state = 'running', attempts = j.attempts + 1, lease_token = j.lease_token + 1,
    started_at = clock.now, lease_expires_at = clock.now + $3
FROM picked, clock
WHERE j.id = picked.id
RETURNING j.id, j.kind, j.payload::text, j.priority, j.attempts, j.max_attempts, j.lease_token,
          clock.now - j.scheduled_at, j.scheduled_at";

/// The common table expressions that record outcomes: completions (`$1`, `$2`: ids,
/// tokens), retries (`$3`..`$6`: ids, tokens, errors, delays) and dead jobs (`$7`..`$9`:
/// ids, tokens, errors), each fenced by its lease token.
macro_rules! finish_ctes {
    () => {
        "WITH clock AS (
    SELECT palisade_jobs_now() AS now
), done AS (
    UPDATE palisade_jobs AS j
    SET state = 'completed', finished_at = clock.now, lease_expires_at = NULL
    FROM unnest($1::int8[], $2::int8[]) AS c(id, token), clock
    WHERE j.id = c.id AND j.lease_token = c.token AND j.state = 'running'
    RETURNING j.id, j.lease_token
), retried AS (
    UPDATE palisade_jobs AS j
    SET state = 'pending', scheduled_at = clock.now + c.delay, last_error = c.error,
        lease_expires_at = NULL
    FROM unnest($3::int8[], $4::int8[], $5::text[], $6::int8[]) AS c(id, token, error, delay), clock
    WHERE j.id = c.id AND j.lease_token = c.token AND j.state = 'running'
    RETURNING j.id, j.lease_token
), dead AS (
    DELETE FROM palisade_jobs AS j
    USING unnest($7::int8[], $8::int8[], $9::text[]) AS c(id, token, error)
    WHERE j.id = c.id AND j.lease_token = c.token AND j.state = 'running'
    RETURNING j.id, j.queue, j.kind, j.payload, j.priority, j.attempts, j.max_attempts,
              j.created_at, j.unique_key, c.error, j.lease_token
), buried AS (
    INSERT INTO palisade_jobs_dead (id, queue, kind, payload, priority, attempts, max_attempts,
                                    created_at, failed_at, unique_key, last_error, lease_token)
    SELECT id, queue, kind, payload, priority, attempts, max_attempts, created_at,
           (SELECT now FROM clock), unique_key, error, lease_token
    FROM dead
    RETURNING id, lease_token
), applied AS (
    SELECT id, lease_token FROM done
    UNION ALL SELECT id, lease_token FROM retried
    UNION ALL SELECT id, lease_token FROM buried
)"
    };
}

const FINISH: &str = concat!(finish_ctes!(), "\nSELECT id, lease_token FROM applied");

/// Records outcomes and claims (`$10`: queue, `$11`: limit, `$12`: lease) in one statement.
/// The claim reads the snapshot from before the outcomes, which is fine: it takes pending
/// jobs, the outcomes touch running ones. Rows tagged 0 are applied leases (id, token),
/// rows tagged 1 are claims.
const FINISH_AND_CLAIM: &str = concat!(
    finish_ctes!(),
    ", picked AS (
    SELECT id FROM palisade_jobs
    WHERE state = 'pending' AND queue = $10 AND scheduled_at <= (SELECT now FROM clock)
    ORDER BY priority, scheduled_at, id
    LIMIT $11
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE palisade_jobs AS j
    SET state = 'running', attempts = j.attempts + 1, lease_token = j.lease_token + 1,
        started_at = clock.now, lease_expires_at = clock.now + $12
    FROM picked, clock
    WHERE j.id = picked.id
    RETURNING j.id, j.kind, j.payload::text AS payload, j.priority, j.attempts, j.max_attempts,
              j.lease_token, clock.now - j.scheduled_at AS pickup, j.scheduled_at
)
SELECT 0 AS tag, id, NULL::text, NULL::text, NULL::int4, NULL::int4, NULL::int4, lease_token,
       NULL::int8, NULL::int8
FROM applied
UNION ALL
SELECT 1, id, kind, payload, priority, attempts, max_attempts, lease_token, pickup, scheduled_at
FROM claimed"
);

const RESCUE: &str = "\
WITH clock AS (
    SELECT palisade_jobs_now() AS now
), expired AS (
    SELECT id FROM palisade_jobs
    WHERE state = 'running' AND lease_expires_at < (SELECT now FROM clock)
    FOR UPDATE SKIP LOCKED
), dead AS (
    DELETE FROM palisade_jobs AS j USING expired
    WHERE j.id = expired.id AND j.attempts >= j.max_attempts
    RETURNING j.id, j.queue, j.kind, j.payload, j.priority, j.attempts, j.max_attempts,
              j.created_at, j.unique_key, j.lease_token
), buried AS (
    INSERT INTO palisade_jobs_dead (id, queue, kind, payload, priority, attempts, max_attempts,
                                    created_at, failed_at, unique_key, last_error, lease_token)
    SELECT id, queue, kind, payload, priority, attempts, max_attempts, created_at,
           (SELECT now FROM clock), unique_key, $1, lease_token
    FROM dead
    RETURNING id
), requeued AS (
    UPDATE palisade_jobs AS j
    SET state = 'pending', scheduled_at = clock.now, last_error = $1, lease_expires_at = NULL
    FROM expired, clock
    WHERE j.id = expired.id AND j.attempts < j.max_attempts
    RETURNING j.id
)
SELECT (SELECT count(*) FROM requeued), (SELECT count(*) FROM buried)";

/// Binds `$1`..`$9` of [`finish_ctes!`] from `outcomes`.
fn bind_outcomes<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    outcomes: &'q [Outcome],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    let mut done = Vec::new();
    let (mut retry_ids, mut retry_tokens, mut retry_errors, mut retry_delays) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut dead_ids, mut dead_tokens, mut dead_errors) = (Vec::new(), Vec::new(), Vec::new());
    for outcome in outcomes {
        match outcome {
            Outcome::Completed(lease) => done.push(*lease),
            Outcome::Retry {
                lease,
                error,
                retry_in,
            } => {
                retry_ids.push(lease.id.0);
                retry_tokens.push(lease.token);
                retry_errors.push(error.as_str());
                retry_delays.push(duration_micros(*retry_in));
            }
            Outcome::Dead { lease, error } => {
                dead_ids.push(lease.id.0);
                dead_tokens.push(lease.token);
                dead_errors.push(error.as_str());
            }
        }
    }
    let (done_ids, done_tokens) = ids(&done);
    query
        .bind(done_ids)
        .bind(done_tokens)
        .bind(retry_ids)
        .bind(retry_tokens)
        .bind(retry_errors)
        .bind(retry_delays)
        .bind(dead_ids)
        .bind(dead_tokens)
        .bind(dead_errors)
}

fn ids(leases: &[Lease]) -> (Vec<i64>, Vec<i64>) {
    leases.iter().map(|lease| (lease.id.0, lease.token)).unzip()
}

fn leases(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<Lease>> {
    rows.iter()
        .map(|row| {
            Ok(Lease {
                id: JobId(row.try_get(0)?),
                token: row.try_get(1)?,
            })
        })
        .collect()
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn signals(&self) -> &Arc<Signals> {
        &self.signals
    }

    fn listen(&self) {
        let mut started = self
            .listener
            .started
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if *started {
            return;
        }
        *started = true;
        let pool = self.pool.clone();
        let signals = Arc::downgrade(&self.signals);
        let stop = self.listener.stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = listen(pool, signals) => {}
            }
        });
    }

    fn insert<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            // The insert's NOTIFY wakes the workers, this process's too: one wake-up per
            // enqueue. A second, in-process one would arrive at about the same time and make
            // a worker claim again, for nothing, and record its finished outcomes early.
            insert_on(&mut conn, jobs).await
        })
    }

    fn claim<'a>(
        &'a self,
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        Box::pin(async move {
            let mut conn = self.worker_conn().await?;
            let rows = sqlx::query(CLAIM)
                .bind(queue)
                .bind(i64::from(limit))
                .bind(duration_micros(lease))
                .fetch_all(&mut conn)
                .await;
            let rows = self.worker_done(conn, rows)?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in &rows {
                let scheduled: i64 = row.try_get(8)?;
                claimed.push((row::claimed(row)?, scheduled));
            }
            claimed.sort_by_key(|(job, scheduled)| (job.priority, *scheduled, job.id));
            Ok(claimed.into_iter().map(|(job, _)| job).collect())
        })
    }

    fn finish<'a>(&'a self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<Vec<Lease>>> {
        Box::pin(async move {
            let mut conn = self.worker_conn().await?;
            let rows = bind_outcomes(sqlx::query(FINISH), outcomes)
                .fetch_all(&mut conn)
                .await;
            let rows = self.worker_done(conn, rows)?;
            leases(&rows)
        })
    }

    fn finish_and_claim<'a>(
        &'a self,
        outcomes: &'a [Outcome],
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(Vec<Lease>, Vec<Claimed>)>> {
        Box::pin(async move {
            let mut conn = self.worker_conn().await?;
            let rows = bind_outcomes(sqlx::query(FINISH_AND_CLAIM), outcomes)
                .bind(queue)
                .bind(i64::from(limit))
                .bind(duration_micros(lease))
                .fetch_all(&mut conn)
                .await;
            let rows = self.worker_done(conn, rows)?;
            let mut applied = Vec::new();
            let mut claimed = Vec::new();
            for row in &rows {
                let tag: i32 = row.try_get(0)?;
                if tag == 0 {
                    applied.push(Lease {
                        id: JobId(row.try_get(1)?),
                        token: row.try_get(7)?,
                    });
                } else {
                    let pickup: i64 = row.try_get(8)?;
                    let scheduled: i64 = row.try_get(9)?;
                    let job = Claimed {
                        id: JobId(row.try_get(1)?),
                        kind: row.try_get(2)?,
                        payload: row.try_get(3)?,
                        priority: row.try_get(4)?,
                        attempt: u32::try_from(row.try_get::<i32, _>(5)?).unwrap_or(0),
                        max_attempts: u32::try_from(row.try_get::<i32, _>(6)?).unwrap_or(0),
                        lease_token: row.try_get(7)?,
                        pickup: Duration::from_micros(non_negative(pickup)),
                    };
                    claimed.push((job, scheduled));
                }
            }
            claimed.sort_by_key(|(job, scheduled)| (job.priority, *scheduled, job.id));
            Ok((applied, claimed.into_iter().map(|(job, _)| job).collect()))
        })
    }

    fn heartbeat<'a>(
        &'a self,
        held: &'a [Lease],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Lease>>> {
        Box::pin(async move {
            let (id, token) = ids(held);
            let mut conn = self.worker_conn().await?;
            let rows = sqlx::query(
                "UPDATE palisade_jobs AS j SET lease_expires_at = palisade_jobs_now() + $3 \
                 FROM unnest($1::int8[], $2::int8[]) AS c(id, token) \
                 WHERE j.id = c.id AND j.lease_token = c.token AND j.state = 'running' \
                 RETURNING j.id, j.lease_token",
            )
            .bind(id)
            .bind(token)
            .bind(duration_micros(lease))
            .fetch_all(&mut conn)
            .await;
            let rows = self.worker_done(conn, rows)?;
            leases(&rows)
        })
    }

    fn release<'a>(&'a self, held: &'a [Lease]) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (id, token) = ids(held);
            let released = sqlx::query(
                "UPDATE palisade_jobs AS j SET state = 'pending', scheduled_at = palisade_jobs_now(), \
                 attempts = GREATEST(j.attempts - 1, 0), lease_expires_at = NULL \
                 FROM unnest($1::int8[], $2::int8[]) AS c(id, token) \
                 WHERE j.id = c.id AND j.lease_token = c.token AND j.state = 'running'",
            )
            .bind(id)
            .bind(token)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if released > 0 {
                self.notify(JOBS_CHANNEL, "").await?;
                self.signals.jobs_available();
            }
            Ok(released)
        })
    }

    fn rescue(&self) -> BoxFuture<'_, Result<Rescued>> {
        Box::pin(async move {
            let row = sqlx::query(RESCUE)
                .bind(LEASE_EXPIRED)
                .fetch_one(&self.pool)
                .await?;
            let rescued = Rescued {
                requeued: non_negative(row.try_get(0)?),
                dead_lettered: non_negative(row.try_get(1)?),
            };
            if rescued.requeued > 0 {
                self.notify(JOBS_CHANNEL, "").await?;
                self.signals.jobs_available();
            }
            Ok(rescued)
        })
    }

    fn next_due<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Duration>>> {
        Box::pin(async move {
            let mut conn = self.worker_conn().await?;
            let next: sqlx::Result<Option<i64>> = sqlx::query_scalar(
                "SELECT MIN(scheduled_at) - palisade_jobs_now() FROM palisade_jobs \
                 WHERE state = 'pending' AND queue = $1",
            )
            .bind(queue)
            .fetch_one(&mut conn)
            .await;
            let next = self.worker_done(conn, next)?;
            Ok(next.map(|micros| Duration::from_micros(non_negative(micros))))
        })
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT queue, CASE WHEN state = 'pending' AND scheduled_at > palisade_jobs_now() \
                 THEN 'scheduled' ELSE state END AS bucket, count(*) FROM palisade_jobs \
                 GROUP BY queue, bucket \
                 UNION ALL SELECT queue, 'dead', count(*) FROM palisade_jobs_dead GROUP BY queue \
                 UNION ALL SELECT queue, 'oldest_available', min(scheduled_at) FROM palisade_jobs \
                 WHERE state = 'pending' AND scheduled_at <= palisade_jobs_now() GROUP BY queue",
            )
            .fetch_all(&self.pool)
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
                record_columns!("payload::text"),
                " FROM palisade_jobs WHERE id = $1"
            ))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(row::record).transpose()
        })
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<bool>> {
        Box::pin(async move {
            let changed = sqlx::query(
                "UPDATE palisade_jobs SET state = 'cancelled', finished_at = palisade_jobs_now(), \
                 lease_expires_at = NULL WHERE id = $1 AND state IN ('pending', 'running')",
            )
            .bind(id.0)
            .execute(&self.pool)
            .await?
            .rows_affected();
            if changed == 1 {
                self.notify(CANCEL_CHANNEL, &id.0.to_string()).await?;
                self.signals.job_cancelled();
            }
            Ok(changed == 1)
        })
    }

    fn dead_jobs<'a>(&'a self, query: &'a DeadQuery) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                dead_columns!("payload::text"),
                " FROM palisade_jobs_dead WHERE ($1::text IS NULL OR queue = $1) AND id > $2 ",
                "ORDER BY id LIMIT $3"
            ))
            .bind(query.queue.as_deref())
            .bind(query.after.map_or(i64::MIN, JobId::get))
            .bind(query.limit_or_default())
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(row::dead).collect()
        })
    }

    fn dead_job(&self, id: JobId) -> BoxFuture<'_, Result<Option<DeadJob>>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                dead_columns!("payload::text"),
                " FROM palisade_jobs_dead WHERE id = $1"
            ))
            .bind(id.0)
            .fetch_optional(&self.pool)
            .await?;
            row.as_ref().map(row::dead).transpose()
        })
    }

    fn replay(&self, id: JobId) -> BoxFuture<'_, Result<Option<Enqueued>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let moved: Option<i64> = sqlx::query_scalar(
                "WITH moved AS ( \
                     INSERT INTO palisade_jobs (id, queue, kind, payload, priority, attempts, \
                         max_attempts, created_at, scheduled_at, unique_key, last_error, lease_token) \
                     SELECT id, queue, kind, payload, priority, 0, max_attempts, created_at, \
                         palisade_jobs_now(), unique_key, last_error, lease_token \
                     FROM palisade_jobs_dead WHERE id = $1 \
                     ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL \
                         AND state IN ('pending', 'running') DO NOTHING \
                     RETURNING id \
                 ), gone AS ( \
                     DELETE FROM palisade_jobs_dead WHERE id IN (SELECT id FROM moved) RETURNING id \
                 ) SELECT id FROM gone",
            )
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await?;
            let replayed = if moved.is_some() {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(JOBS_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
                Some(Enqueued::Created(id))
            } else {
                let existing: Option<i64> = sqlx::query_scalar(
                    "SELECT j.id FROM palisade_jobs_dead AS d JOIN palisade_jobs AS j \
                     ON j.unique_key = d.unique_key AND j.state IN ('pending', 'running') \
                     WHERE d.id = $1",
                )
                .bind(id.0)
                .fetch_optional(&mut *tx)
                .await?;
                existing.map(|id| Enqueued::Existing(JobId(id)))
            };
            tx.commit().await?;
            if moved.is_some() {
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
            Ok(sqlx::query(
                "DELETE FROM palisade_jobs_dead WHERE ($1::int8 IS NULL OR id = $1) \
                 AND ($2::text IS NULL OR queue = $2)",
            )
            .bind(id.map(JobId::get))
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
    }

    fn purge_finished(&self, before: SystemTime) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            Ok(sqlx::query(
                "DELETE FROM palisade_jobs WHERE state IN ('completed', 'cancelled') \
                 AND finished_at < $1",
            )
            .bind(to_micros(before))
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
    }

    fn jobs<'a>(&'a self, query: &'a JobQuery) -> BoxFuture<'a, Result<Vec<JobRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                record_columns!("payload::text"),
                " FROM palisade_jobs WHERE ($1::text IS NULL OR queue = $1) ",
                "AND ($2::text IS NULL OR state = $2) AND id > $3 ORDER BY id LIMIT $4"
            ))
            .bind(query.queue.as_deref())
            .bind(query.state.map(crate::JobState::as_str))
            .bind(query.after.map_or(i64::MIN, JobId::get))
            .bind(query.limit_or_default())
            .fetch_all(&self.pool)
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
            Ok(sqlx::query(
                "DELETE FROM palisade_jobs_dead WHERE failed_at < $1 \
                 AND ($2::text IS NULL OR queue = $2)",
            )
            .bind(to_micros(before))
            .bind(queue)
            .execute(&self.pool)
            .await?
            .rows_affected())
        })
    }

    fn periodic_jobs(&self) -> BoxFuture<'_, Result<Vec<PeriodicRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT name, schedule, next_run_at, last_run_at, last_job_id \
                 FROM palisade_jobs_periodic ORDER BY name",
            )
            .fetch_all(&self.pool)
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
            let mut tx = self.pool.begin().await?;
            sqlx::query(
                "INSERT INTO palisade_jobs_periodic (name, schedule, next_run_at) \
                 VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET \
                 schedule = EXCLUDED.schedule, next_run_at = EXCLUDED.next_run_at \
                 WHERE palisade_jobs_periodic.schedule <> EXCLUDED.schedule",
            )
            .bind(name)
            .bind(schedule)
            .bind(to_micros(first))
            .execute(&mut *tx)
            .await?;
            // A statement of its own: it sees a row another process inserted meanwhile.
            let next: i64 = sqlx::query_scalar(
                "SELECT next_run_at FROM palisade_jobs_periodic WHERE name = $1",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(from_micros(next))
        })
    }

    fn periodic_enqueue<'a>(&'a self, tick: &'a Tick) -> BoxFuture<'a, Result<Option<Enqueued>>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            // A racing worker waits here for the winner's commit, then finds next_run_at
            // changed and updates nothing.
            let advanced = sqlx::query(
                "UPDATE palisade_jobs_periodic SET next_run_at = $4, last_run_at = $3 \
                 WHERE name = $1 AND schedule = $2 AND next_run_at = $3",
            )
            .bind(&tick.name)
            .bind(&tick.schedule)
            .bind(tick.due_micros())
            .bind(tick.next_micros())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if advanced == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let enqueued = insert_on(&mut tx, std::slice::from_ref(&tick.job))
                .await?
                .pop()
                .ok_or_else(|| Error::Corrupt("the store returned no id".to_owned()))?;
            sqlx::query("UPDATE palisade_jobs_periodic SET last_job_id = $2 WHERE name = $1")
                .bind(&tick.name)
                .bind(enqueued.id().get())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.signals.jobs_available();
            Ok(Some(enqueued))
        })
    }
}

/// Keeps a `LISTEN` connection and turns notifications into wake-ups, reconnecting with
/// backoff; after each (re)connection it wakes the workers, since notifications sent while
/// it was down are lost.
async fn listen(pool: PgPool, signals: std::sync::Weak<Signals>) {
    let backoff = palisade_core::Backoff::exponential(
        Duration::from_millis(100),
        2.0,
        Duration::from_secs(5),
    )
    .map(|backoff| backoff.with_jitter(palisade_core::Jitter::Full))
    .unwrap_or_default();
    let mut delays = backoff.delays();
    loop {
        let connected = async {
            let mut listener = PgListener::connect_with(&pool).await?;
            listener.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL]).await?;
            Ok::<_, sqlx::Error>(listener)
        }
        .await;
        match connected {
            Ok(mut listener) => {
                delays = backoff.delays();
                let Some(strong) = signals.upgrade() else {
                    return;
                };
                strong.jobs_available();
                strong.job_cancelled();
                drop(strong);
                loop {
                    // `try_recv`: a lost connection is an error here, not a silent reconnect,
                    // so the wake-up after reconnecting is ours to send.
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            let Some(signals) = signals.upgrade() else {
                                return;
                            };
                            if notification.channel() == CANCEL_CHANNEL {
                                signals.job_cancelled();
                            } else {
                                signals.jobs_available();
                            }
                        }
                        Ok(None) => {
                            tracing::warn!("palisade-jobs: LISTEN connection lost; reconnecting");
                            break;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "palisade-jobs: LISTEN connection failed; reconnecting");
                            break;
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "palisade-jobs: cannot LISTEN; workers poll until it can");
            }
        }
        if signals.strong_count() == 0 {
            return;
        }
        tokio::time::sleep(delays.next().unwrap_or(Duration::from_secs(5))).await;
    }
}
