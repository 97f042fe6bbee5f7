//! The schema's migrations, embedded in the crate and applied when a store opens.
//!
//! They are tracked in the table `palisade_jobs_migrations`, not in sqlx's
//! `_sqlx_migrations`, so that an application's own sqlx migrations in the same database never
//! see them (and vice versa). Each migration runs in a transaction, under a lock (SQLite:
//! `BEGIN IMMEDIATE`; PostgreSQL: an advisory transaction lock), so processes starting together
//! apply it once.

/// One step of the schema.
#[derive(Debug)]
pub(crate) struct Migration {
    pub(crate) version: i64,
    pub(crate) description: &'static str,
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    pub(crate) sqlite: &'static str,
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) postgres: &'static str,
}

/// Every migration, oldest first.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "jobs and dead jobs",
        sqlite: include_str!("migrations/sqlite/0001_jobs.sql"),
        postgres: include_str!("migrations/postgres/0001_jobs.sql"),
    },
    Migration {
        version: 2,
        description: "periodic jobs",
        sqlite: include_str!("migrations/sqlite/0002_periodic.sql"),
        postgres: include_str!("migrations/postgres/0002_periodic.sql"),
    },
    Migration {
        version: 3,
        description: "autovacuum the jobs table early",
        sqlite: include_str!("migrations/sqlite/0003_autovacuum.sql"),
        postgres: include_str!("migrations/postgres/0003_autovacuum.sql"),
    },
];

/// The newest version this crate knows.
pub(crate) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |migration| migration.version)
}

/// The table that records applied migrations (same SQL for both backends).
pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS palisade_jobs_migrations (\
    version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at BIGINT NOT NULL)";
