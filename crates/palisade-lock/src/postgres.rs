//! [`PostgresBackend`]: session-scoped advisory locks (feature `postgres`).

use std::fmt;
use std::time::Duration;

use sqlx::pool::PoolConnection;
use sqlx::postgres::PgPool;
use sqlx::{Connection, Postgres};

use crate::backend::{Backend, Grant};
use crate::{BackendError, FencingToken};

/// The sequence fencing tokens come from.
const SEQUENCE: &str = "palisade_lock_fence";

/// Locks as PostgreSQL session-scoped advisory locks (feature `postgres`).
///
/// A grant takes a connection out of the pool and runs `pg_try_advisory_lock` on the key's
/// 64-bit hash (`hashtextextended(key, 0)`) together with `nextval` of the sequence
/// `palisade_lock_fence` (created on [`new`](Self::new) if missing), which gives the
/// fencing token. The connection then belongs to the guard: it goes back to the pool only
/// after `pg_advisory_unlock` succeeded, and is closed instead when anything goes wrong, so
/// no pooled connection ever carries a lock.
///
/// **Guarantees**: the lock is held exactly as long as its session lives; the server ends
/// it when the holder unlocks, disconnects or dies. There is no server-side expiry: the TTL
/// only sets how often the watchdog checks that the session is alive (every TTL/3), and the
/// guard's validity is the TTL from the last check. A holder cut off from the server learns
/// of it at the next check, while the server may already have ended the session and granted
/// the key again: the fencing token (one sequence for all keys, so it grows with every
/// grant) is what keeps its late writes out. Two keys whose hashes collide share a lock:
/// safe, but it can make them wait for each other.
#[derive(Clone)]
pub struct PostgresBackend {
    pool: PgPool,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("pool_size", &self.pool.size())
            .finish_non_exhaustive()
    }
}

/// A [`PostgresBackend`] grant: the dedicated connection whose session holds the lock.
pub struct PostgresLease {
    connection: tokio::sync::Mutex<Dedicated>,
}

impl fmt::Debug for PostgresLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresLease").finish_non_exhaustive()
    }
}

/// A pooled connection that is closed, not returned to the pool, unless [`Dedicated::give_back`]
/// says it holds no lock.
struct Dedicated(Option<PoolConnection<Postgres>>);

impl Dedicated {
    fn give_back(&mut self) {
        drop(self.0.take());
    }
}

impl Drop for Dedicated {
    fn drop(&mut self) {
        if let Some(connection) = self.0.take() {
            // Closing the socket ends the session, and with it every lock it holds.
            drop(connection.detach());
        }
    }
}

fn failed(error: sqlx::Error) -> BackendError {
    BackendError::new("postgres query failed", error)
}

impl PostgresBackend {
    /// A backend on `pool`, creating the fencing sequence if it does not exist.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached or the sequence cannot be created.
    pub async fn new(pool: PgPool) -> Result<Self, BackendError> {
        let created = sqlx::query(&format!("CREATE SEQUENCE IF NOT EXISTS {SEQUENCE}"))
            .execute(&pool)
            .await;
        if let Err(error) = created {
            // Two processes creating it at once: one of them gets a unique violation.
            let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(SEQUENCE)
                .fetch_one(&pool)
                .await
                .map_err(failed)?;
            if !exists {
                return Err(failed(error));
            }
        }
        Ok(Self { pool })
    }

    /// A backend on a new pool for the database at `url`.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new), and when `url` is invalid.
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        let pool = PgPool::connect(url).await.map_err(failed)?;
        Self::new(pool).await
    }

    /// The pool connections are taken from.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

impl Backend for PostgresBackend {
    type Lease = PostgresLease;

    async fn try_acquire(
        &self,
        key: &str,
        _ttl: Duration,
    ) -> Result<Option<Grant<PostgresLease>>, BackendError> {
        let connection = self.pool.acquire().await.map_err(failed)?;
        let mut connection = Dedicated(Some(connection));
        let Some(conn) = connection.0.as_mut() else {
            return Err(BackendError::msg("no connection"));
        };
        let query = format!(
            "SELECT CASE WHEN pg_try_advisory_lock(hashtextextended($1, 0)) \
             THEN nextval('{SEQUENCE}') END"
        );
        // On an error `connection` is closed, in case the lock was taken.
        let token: Option<i64> = sqlx::query_scalar(&query)
            .bind(key)
            .fetch_one(&mut **conn)
            .await
            .map_err(failed)?;
        let Some(token) = token else {
            connection.give_back();
            return Ok(None);
        };
        let token =
            u64::try_from(token).map_err(|_| BackendError::msg("negative fencing token"))?;
        Ok(Some(Grant {
            token: FencingToken::new(token),
            lease: PostgresLease {
                connection: tokio::sync::Mutex::new(connection),
            },
        }))
    }

    async fn renew(
        &self,
        _key: &str,
        lease: &PostgresLease,
        _ttl: Duration,
    ) -> Result<bool, BackendError> {
        let mut connection = lease.connection.lock().await;
        let Some(conn) = connection.0.as_mut() else {
            return Ok(false);
        };
        // The lock lives as long as the session: a live session still holds it.
        conn.ping().await.map_err(failed)?;
        Ok(true)
    }

    async fn release(&self, key: &str, lease: &PostgresLease) -> Result<bool, BackendError> {
        let mut connection = lease.connection.lock().await;
        let Some(conn) = connection.0.as_mut() else {
            return Ok(false);
        };
        let unlocked: bool =
            sqlx::query_scalar("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(key)
                .fetch_one(&mut **conn)
                .await
                .map_err(|error| {
                    connection.0.take().map(PoolConnection::detach);
                    failed(error)
                })?;
        if unlocked {
            connection.give_back();
        } else {
            // Not ours any more: whatever this session is in, it does not go back.
            connection.0.take().map(PoolConnection::detach);
        }
        Ok(unlocked)
    }
}
