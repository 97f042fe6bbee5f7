//! Test support for Palisade: private `redis-server`, PostgreSQL and `nats-server` instances
//! with fault injection.
//!
//! Tests that need a real Redis, PostgreSQL or NATS start their own from the binaries on
//! `PATH` with [`RedisServer`], [`PostgresServer`] and [`NatsServer`]. Each server gets an ephemeral port on
//! 127.0.0.1 and a temporary directory, so tests run in parallel without sharing state,
//! and it dies with its handle: dropping the handle (also while a failing test unwinds)
//! kills the server and reaps it. Fault tests [`kill`](RedisServer::kill) (SIGKILL),
//! [`pause`](RedisServer::pause) (SIGSTOP), [`resume`](RedisServer::resume) (SIGCONT),
//! [`stop`](RedisServer::stop) and [`restart`](RedisServer::restart) a server on the same
//! port.
//!
//! Tests with a Node.js peer install pinned npm packages once per build with
//! [`npm::NodeModules`].
//!
//! This crate is a dev-dependency only (`publish = false`), for Unix.
//!
//! # Environment
//!
//! | variable | effect |
//! | --- | --- |
//! | `REDIS_URL` | [`RedisServer::start`] returns a handle to this server instead of starting one |
//! | `DATABASE_URL` | [`PostgresServer::start`] returns a handle to this server instead of starting one; [`PostgresServer::fresh_database`] creates databases on it |
//! | `NATS_URL` | [`NatsServer::start`] returns a handle to this server instead of starting one |
//! | `PALISADE_PG_BIN` | the PostgreSQL bin directory (holding `initdb` and `postgres`) |
//! | `PALISADE_REQUIRE_SERVICES=1` | a missing binary fails the test instead of skipping it (CI sets it) |
//!
//! Handles to external servers know only their URL: the fault methods return
//! [`Error::External`] for them.
//!
//! # Skipping
//!
//! `start_or_skip()` returns `None` and prints the reason when the server's binary is not
//! installed, so a machine without Redis, PostgreSQL or NATS still runs the rest of the
//! suite. It panics instead when `PALISADE_REQUIRE_SERVICES=1`, and whenever an installed
//! server fails to start: that is a failure, not a reason to skip.
//!
//! # Example
//!
//! ```no_run
//! use palisade_testkit::{PostgresServer, RedisServer};
//!
//! # async fn a_test() {
//! // In a `#[tokio::test]`: each test starts its own servers.
//! let Some(mut redis) = RedisServer::start_or_skip() else { return };
//! let Some(mut pg) = PostgresServer::start_or_skip() else { return };
//! let database_url = pg.fresh_database().await.unwrap();
//!
//! // ... point the code under test at `redis.url()` and `database_url` ...
//!
//! // Then break things.
//! redis.pause().unwrap(); // commands hang
//! redis.resume().unwrap();
//! pg.kill().unwrap(); // kill -9 the postmaster and its backends
//! pg.restart().unwrap(); // same port, committed data kept
//! # let _ = database_url;
//! # }
//! ```

pub mod alloc;
mod error;
#[cfg(feature = "metrics")]
pub mod metrics;
mod nats;
pub mod npm;
mod postgres;
mod process;
mod redis;
#[cfg(feature = "tls")]
pub mod tls;

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub use error::Error;
pub use nats::NatsServer;
pub use postgres::PostgresServer;
pub use redis::RedisServer;

/// Whether tests must fail rather than skip when a server binary is missing: true when
/// `PALISADE_REQUIRE_SERVICES=1`.
#[must_use]
pub fn services_required() -> bool {
    env::var("PALISADE_REQUIRE_SERVICES").is_ok_and(|value| value == "1")
}

/// Turns a start result into "run" (`Some`), "skip" (`None`, with the reason printed) or a
/// panic; see the crate docs.
fn or_skip<T>(service: &str, started: Result<T, Error>) -> Option<T> {
    let error = match started {
        Ok(server) => return Some(server),
        Err(error) => error,
    };
    let missing = matches!(error, Error::BinaryNotFound { .. });
    if missing && !services_required() {
        let thread = std::thread::current();
        let test = thread.name().unwrap_or("test");
        eprintln!("skipping {test}: {service} is not installed: {error}");
        return None;
    }
    let mut message = format!("could not start {service}: {error}");
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    if missing {
        message.push_str(" (PALISADE_REQUIRE_SERVICES=1: a missing server fails the test)");
    }
    panic!("{message}");
}

/// The value of the environment variable `name`, unless it is unset or empty.
fn env_url(name: &str) -> Option<String> {
    env::var(name).ok().filter(|value| !value.is_empty())
}

/// The first executable `binary` in the directories of `PATH`.
fn find_on_path(binary: &'static str) -> Result<PathBuf, Error> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| Error::BinaryNotFound {
            binary,
            searched: format!("PATH={}", path.to_string_lossy()),
        })
}

/// Whether `path` is a file someone may execute.
fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

/// A fresh temporary directory named after the server it is for.
fn temp_dir(server: &str) -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix(&format!("palisade-{server}-"))
        .tempdir()
        .map_err(Error::io("could not create a temporary directory"))
}
