//! Decoding rows into the job model, the same for both backends.

use sqlx::{ColumnIndex, Decode, Row, Type};

use crate::error::Error;
use crate::job::{DeadJob, JobId, JobRecord, JobState, from_micros};

/// The column list [`record`] reads, in order (PostgreSQL casts `payload` to text).
macro_rules! record_columns {
    ($payload:literal) => {
        concat!(
            "id, queue, kind, ",
            $payload,
            ", state, priority, attempts, max_attempts, created_at, scheduled_at, ",
            "started_at, finished_at, unique_key, last_error, lease_token"
        )
    };
}

/// The column list [`dead`] reads, in order.
macro_rules! dead_columns {
    ($payload:literal) => {
        concat!(
            "id, queue, kind, ",
            $payload,
            ", priority, attempts, max_attempts, created_at, failed_at, unique_key, last_error"
        )
    };
}

pub(crate) use {dead_columns, record_columns};

fn get<'r, R, T>(row: &'r R, index: usize) -> Result<T, Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    T: Decode<'r, R::Database> + Type<R::Database>,
{
    row.try_get(index).map_err(Error::Database)
}

fn count(value: i32, what: &str) -> Result<u32, Error> {
    u32::try_from(value).map_err(|_| Error::Corrupt(format!("negative {what}: {value}")))
}

/// A [`JobRecord`] from a row with the columns of `record_columns!`.
pub(crate) fn record<R>(row: &R) -> Result<JobRecord, Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    let state: String = get(row, 4)?;
    Ok(JobRecord {
        id: JobId(get(row, 0)?),
        queue: get(row, 1)?,
        kind: get(row, 2)?,
        payload: get(row, 3)?,
        state: JobState::parse(&state)?,
        priority: get(row, 5)?,
        attempts: count(get(row, 6)?, "attempts")?,
        max_attempts: count(get(row, 7)?, "max_attempts")?,
        created_at: from_micros(get(row, 8)?),
        scheduled_at: from_micros(get(row, 9)?),
        started_at: get::<_, Option<i64>>(row, 10)?.map(from_micros),
        finished_at: get::<_, Option<i64>>(row, 11)?.map(from_micros),
        unique_key: get(row, 12)?,
        last_error: get(row, 13)?,
        lease_token: get(row, 14)?,
    })
}

/// A [`DeadJob`] from a row with the columns of `dead_columns!`.
pub(crate) fn dead<R>(row: &R) -> Result<DeadJob, Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<String>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(DeadJob {
        id: JobId(get(row, 0)?),
        queue: get(row, 1)?,
        kind: get(row, 2)?,
        payload: get(row, 3)?,
        priority: get(row, 4)?,
        attempts: count(get(row, 5)?, "attempts")?,
        max_attempts: count(get(row, 6)?, "max_attempts")?,
        created_at: from_micros(get(row, 7)?),
        failed_at: from_micros(get(row, 8)?),
        unique_key: get(row, 9)?,
        last_error: get(row, 10)?,
    })
}

/// A [`Claimed`](crate::store::Claimed) from a row with the columns
/// `id, kind, payload, priority, attempts, max_attempts, lease_token, pickup_micros`.
pub(crate) fn claimed<R>(row: &R) -> Result<crate::store::Claimed, Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> i32: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
{
    let pickup: i64 = get(row, 7)?;
    Ok(crate::store::Claimed {
        id: JobId(get(row, 0)?),
        kind: get(row, 1)?,
        payload: get(row, 2)?,
        priority: get(row, 3)?,
        attempt: count(get(row, 4)?, "attempts")?,
        max_attempts: count(get(row, 5)?, "max_attempts")?,
        lease_token: get(row, 6)?,
        pickup: std::time::Duration::from_micros(u64::try_from(pickup).unwrap_or(0)),
    })
}

/// A [`PeriodicRecord`](crate::periodic::PeriodicRecord) from a row with the columns
/// `name, schedule, next_run_at, last_run_at, last_job_id`.
pub(crate) fn periodic<R>(row: &R) -> Result<crate::periodic::PeriodicRecord, Error>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> i64: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> String: Decode<'r, R::Database> + Type<R::Database>,
    for<'r> Option<i64>: Decode<'r, R::Database> + Type<R::Database>,
{
    Ok(crate::periodic::PeriodicRecord {
        name: get(row, 0)?,
        schedule: get(row, 1)?,
        next_run_at: from_micros(get(row, 2)?),
        last_run_at: get::<_, Option<i64>>(row, 3)?.map(from_micros),
        last_job: get::<_, Option<i64>>(row, 4)?.map(JobId),
    })
}

/// A count from the database, never negative.
pub(crate) fn non_negative(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
