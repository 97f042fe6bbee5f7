//! What can go wrong when talking to the queue.

/// An error from the job queue's API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database refused or could not be reached.
    #[error("job store: {0}")]
    Database(#[from] sqlx::Error),
    /// A job's payload did not serialize to JSON.
    #[error("job payload does not serialize to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    /// The schema could not be brought up to date.
    #[error("job store migration {version} ({description}) failed: {source}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// What the migration does.
        description: &'static str,
        /// Why it failed.
        #[source]
        source: sqlx::Error,
    },
    /// The database holds a schema newer than this version of the crate knows.
    #[error("job store schema is at version {found}, newer than this crate's {known}")]
    SchemaTooNew {
        /// The version found in the database.
        found: i64,
        /// The newest version this crate knows.
        known: i64,
    },
    /// A stored row did not have the expected shape.
    #[error("job store holds an unexpected value: {0}")]
    Corrupt(String),
    /// A worker or store setting was out of range.
    #[error("invalid job queue configuration: {0}")]
    Config(&'static str),
    /// The store does not implement an operation (a [`Store`](crate::Store) written
    /// elsewhere that keeps a method's default).
    #[error("the job store does not support {0}")]
    Unsupported(&'static str),
}

impl Error {
    /// Whether the error is about reaching the database (worth retrying later), rather than
    /// about the request.
    #[must_use]
    pub fn is_connection(&self) -> bool {
        match self {
            Self::Database(error) => matches!(
                error,
                sqlx::Error::Io(_)
                    | sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::WorkerCrashed
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::Protocol(_)
            ),
            _ => false,
        }
    }
}
