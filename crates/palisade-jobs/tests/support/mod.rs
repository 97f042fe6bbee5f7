//! What the job tests share: a queue on each backend, test jobs, and waiting on state.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use palisade_core::event::listener_fn;
use palisade_jobs::postgres::PostgresStore;
use palisade_jobs::sqlite::SqliteStore;
use palisade_jobs::{Job, JobEvent, JobId, JobRecord, JobState, Jobs};
use palisade_testkit::PostgresServer;
use serde::{Deserialize, Serialize};

/// What keeps a test's database alive.
pub enum Db {
    Sqlite(tempfile::TempDir),
    Postgres(PostgresServer, String),
}

impl Db {
    /// The PostgreSQL server, for fault tests.
    pub fn postgres(&mut self) -> Option<&mut PostgresServer> {
        match self {
            Self::Postgres(server, _) => Some(server),
            Self::Sqlite(_) => None,
        }
    }
}

/// A queue on a fresh SQLite file, and the events it reports.
pub async fn sqlite() -> (Jobs, Db, Events) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("jobs.db")).await.unwrap();
    let events = Events::default();
    let jobs = Jobs::new(store).with_listener(events.listener());
    (jobs, Db::Sqlite(dir), events)
}

/// A queue on a fresh database of a private PostgreSQL; `None` (skipped) when PostgreSQL
/// is not installed.
pub async fn postgres() -> Option<(Jobs, Db, Events)> {
    let server = tokio::task::spawn_blocking(PostgresServer::start_or_skip)
        .await
        .unwrap()?;
    let url = server.fresh_database().await.unwrap();
    let store = PostgresStore::connect(&url).await.unwrap();
    let events = Events::default();
    let jobs = Jobs::new(store).with_listener(events.listener());
    Some((jobs, Db::Postgres(server, url), events))
}

/// Runs the test `async fn name(jobs, db, events)` on SQLite and on PostgreSQL:
/// `on_both!(name)` makes `mod name { fn sqlite, fn postgres }`.
#[macro_export]
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let (jobs, db, events) = $crate::support::sqlite().await;
                super::$name(jobs, db, events).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                let Some((jobs, db, events)) = $crate::support::postgres().await else {
                    return;
                };
                super::$name(jobs, db, events).await;
            }
        }
    };
}

/// The events a queue reported, by kind.
#[derive(Clone, Default)]
pub struct Events(Arc<Mutex<Vec<JobEvent>>>);

impl Events {
    pub fn listener(&self) -> impl palisade_core::Listener<JobEvent> + 'static {
        let events = Arc::clone(&self.0);
        listener_fn(move |event: &JobEvent| events.lock().unwrap().push(event.clone()))
    }

    pub fn count(&self, kind: &str) -> usize {
        use palisade_core::Event as _;
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind() == kind)
            .count()
    }

    pub fn all(&self) -> Vec<JobEvent> {
        self.0.lock().unwrap().clone()
    }
}

/// A job that records itself and may be told to fail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Work {
    pub n: u32,
}

impl Job for Work {
    const TYPE: &'static str = "work";
}

/// Waits until `check` returns `Some`, polling every 20 ms. The 60 s limit is a safety net
/// for a broken test, not a timing assertion.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until job `id` is in `state`, and returns it.
pub async fn until_state(jobs: &Jobs, id: JobId, state: JobState) -> JobRecord {
    until(&format!("job {id} to be {state}"), || async {
        jobs.job(id)
            .await
            .unwrap()
            .filter(|record| record.state == state)
    })
    .await
}

/// A backoff that retries after 10 ms, for tests that retry.
pub fn quick_retries() -> palisade_jobs::Backoff {
    palisade_jobs::Backoff::constant(Duration::from_millis(10))
}
