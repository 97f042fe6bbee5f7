//! The one error type of the testkit.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What went wrong while starting, controlling or using a test server.
///
/// `Display` says what was wrong in one line (plus a log tail where there is one); the
/// underlying cause, if any, is available through [`std::error::Error::source`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A server binary is not installed where the testkit looks for it.
    ///
    /// [`RedisServer::start_or_skip`](crate::RedisServer::start_or_skip),
    /// [`PostgresServer::start_or_skip`](crate::PostgresServer::start_or_skip) and
    /// [`NatsServer::start_or_skip`](crate::NatsServer::start_or_skip) turn this
    /// error (and only this one) into a skipped test.
    #[error("`{binary}` not found (searched {searched})")]
    BinaryNotFound {
        /// The program that was looked for, e.g. `redis-server`.
        binary: &'static str,
        /// Where it was looked for.
        searched: String,
    },

    /// A program exited with a failure, or a server exited before it was ready.
    #[error("`{program}` exited with {status}; last lines of {}:\n{tail}", log.display())]
    Exited {
        /// The program, e.g. `initdb` or `postgres`.
        program: &'static str,
        /// How it exited.
        status: ExitStatus,
        /// The log file its output went to.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A server did not become ready before its deadline.
    #[error(
        "`{program}` did not become ready within {} s; last lines of {}:\n{tail}",
        timeout.as_secs(),
        log.display()
    )]
    NotReady {
        /// The server program.
        program: &'static str,
        /// How long the testkit waited.
        timeout: Duration,
        /// The log file its output went to.
        log: PathBuf,
        /// The last lines of that log.
        tail: String,
    },

    /// A server process or one of its children did not die after SIGKILL.
    #[error(
        "`{program}` (pid {pid}) or one of its children did not exit within {} s of SIGKILL",
        timeout.as_secs()
    )]
    NotGone {
        /// The server program.
        program: &'static str,
        /// The pid of the server.
        pid: u32,
        /// How long the testkit waited.
        timeout: Duration,
    },

    /// An operating-system call failed.
    #[error("{context}")]
    Io {
        /// What the testkit was doing, e.g. "could not create a temporary directory".
        context: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A fault method (`kill`, `pause`, `resume`, `stop`, `restart`) was called on a handle to
    /// an external server given by `REDIS_URL` / `DATABASE_URL` / `NATS_URL`.
    #[error(
        "`{method}` needs a server the testkit started, but this handle points at the external server {url}"
    )]
    External {
        /// The method that was called.
        method: &'static str,
        /// The external server's URL.
        url: String,
    },

    /// A method that needs a running server was called after `kill` or `stop`.
    #[error(
        "`{method}` needs a running `{program}`, but it was killed or stopped; call `restart` first"
    )]
    NotRunning {
        /// The method that was called.
        method: &'static str,
        /// The server program.
        program: &'static str,
    },

    /// The tests run as root, which PostgreSQL refuses, and there is no `postgres` OS user
    /// to run it as instead.
    #[error(
        "running as root, and PostgreSQL refuses to run as root, but /etc/passwd has no `postgres` user to run it as"
    )]
    NoPostgresUser,

    /// A database operation failed.
    #[error("{context}")]
    Database {
        /// What the testkit was doing, e.g. "could not connect to postgres://...".
        context: String,
        /// The cause.
        #[source]
        source: sqlx::Error,
    },
}

impl Error {
    /// Wraps an I/O error with what the testkit was doing.
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Self::Io { context, source }
    }

    /// Wraps a database error with what the testkit was doing.
    pub(crate) fn database(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> Self {
        let context = context.into();
        move |source| Self::Database { context, source }
    }
}
