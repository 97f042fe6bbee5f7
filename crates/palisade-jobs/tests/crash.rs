//! Real processes: a worker process SIGKILLed mid-run, and two worker processes on one
//! PostgreSQL.
//!
//! The worker processes are this test's own binary, re-run with an environment variable that
//! makes the test run a worker instead of the test (as `palisade-shutdown`'s process test
//! does). The test waits on database state, never on durations.
//!
//! What happened is read from an audit table that triggers on `palisade_jobs` fill **inside
//! the store's own transactions**: a row per claim (the job and its new lease token) and a
//! row per completion (the job and the token it held when it was completed). A claim or a
//! completion is in the audit table exactly when it committed, so a process killed at any
//! point leaves a true record.

#![cfg(all(unix, feature = "sqlite", feature = "postgres"))]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use palisade_jobs::postgres::PostgresStore;
use palisade_jobs::sqlite::SqliteStore;
use palisade_jobs::{JobId, JobState, Jobs, NewJob, QueueStats, Worker};
use palisade_testkit::PostgresServer;
use support::{Work, until};
use tokio::process::{Child, Command};

/// Set in a worker process: which worker to run (`crash` or `overlap`).
const CHILD: &str = "PALISADE_JOBS_CHILD";
/// `postgres` or `sqlite`.
const BACKEND: &str = "PALISADE_JOBS_BACKEND";
/// The PostgreSQL URL or the SQLite file.
const DATABASE: &str = "PALISADE_JOBS_DATABASE";
/// The worker's name, recorded with its runs.
const NAME: &str = "PALISADE_JOBS_WORKER_NAME";
/// A safety net so a broken test fails instead of hanging; never reached when it works.
const HANG: Duration = Duration::from_secs(120);
/// The `application_name` of a worker process's PostgreSQL sessions.
const APPLICATION: &str = "palisade-jobs-test-worker";

/// Short leases, so the dead worker's jobs are rescued soon.
const LEASE: Duration = Duration::from_secs(1);

/// The crash test's jobs: every fifth hangs in the worker that will be killed.
const CRASH_JOBS: u32 = 40;
fn hangs(n: u32) -> bool {
    n % 5 == 4
}

/// The overlap test's jobs.
const OVERLAP_JOBS: u32 = 200;

/// Runs `test` in a fresh runtime, or, in a worker process, the worker.
fn run<F: Future<Output = ()>>(test: F) {
    if let Ok(role) = std::env::var(CHILD) {
        child(&role);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(HANG, test)
                .await
                .expect("the process test hung");
        });
}

mod a_worker_killed_mid_run_loses_no_job_and_completes_none_twice {
    #[test]
    fn postgres() {
        super::run(super::killed_worker(super::Backend::Postgres));
    }

    #[test]
    fn sqlite() {
        super::run(super::killed_worker(super::Backend::Sqlite));
    }
}

#[test]
fn two_worker_processes_never_run_one_job_at_the_same_time() {
    run(two_workers());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    const fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }

    const fn test(self) -> &'static str {
        match self {
            Self::Postgres => {
                "a_worker_killed_mid_run_loses_no_job_and_completes_none_twice::postgres"
            }
            Self::Sqlite => "a_worker_killed_mid_run_loses_no_job_and_completes_none_twice::sqlite",
        }
    }
}

/// A test database: the queue, a pool for the test's own SQL, and what keeps it alive.
struct Db {
    backend: Backend,
    jobs: Jobs,
    sql: Sql,
    /// The PostgreSQL URL or the SQLite file, for the worker processes.
    location: String,
    _keep: Keep,
}

#[allow(dead_code)]
enum Keep {
    Postgres(PostgresServer),
    Sqlite(tempfile::TempDir),
}

enum Sql {
    Postgres(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

/// One audit row: `(seq, job, token, event)`.
type Audit = (i64, i64, i64, String);

const POSTGRES_AUDIT: &str = "
CREATE TABLE audit (seq BIGSERIAL PRIMARY KEY, job_id BIGINT NOT NULL, token BIGINT NOT NULL,
                    event TEXT NOT NULL);
CREATE FUNCTION audit_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.state = 'running' AND NEW.lease_token <> OLD.lease_token THEN
        INSERT INTO audit (job_id, token, event) VALUES (NEW.id, NEW.lease_token, 'claim');
    END IF;
    IF NEW.state = 'completed' AND OLD.state <> 'completed' THEN
        INSERT INTO audit (job_id, token, event) VALUES (NEW.id, OLD.lease_token, 'complete');
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_jobs AFTER UPDATE ON palisade_jobs
    FOR EACH ROW EXECUTE FUNCTION audit_jobs();
CREATE TABLE runs (id BIGSERIAL PRIMARY KEY, job_id BIGINT NOT NULL, worker TEXT NOT NULL,
                   started_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
                   ended_at TIMESTAMPTZ);";

const SQLITE_AUDIT: &str = "
CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id INTEGER NOT NULL,
                    token INTEGER NOT NULL, event TEXT NOT NULL);
CREATE TRIGGER audit_claim AFTER UPDATE ON palisade_jobs
    WHEN NEW.state = 'running' AND NEW.lease_token <> OLD.lease_token
BEGIN
    INSERT INTO audit (job_id, token, event) VALUES (NEW.id, NEW.lease_token, 'claim');
END;
CREATE TRIGGER audit_complete AFTER UPDATE ON palisade_jobs
    WHEN NEW.state = 'completed' AND OLD.state <> 'completed'
BEGIN
    INSERT INTO audit (job_id, token, event) VALUES (NEW.id, OLD.lease_token, 'complete');
END;";

impl Db {
    /// A fresh database with the audit triggers; `None` (skipped) when PostgreSQL is not
    /// installed.
    async fn open(backend: Backend) -> Option<Self> {
        let db = match backend {
            Backend::Postgres => {
                let server = tokio::task::spawn_blocking(PostgresServer::start_or_skip)
                    .await
                    .unwrap()?;
                let url = server.fresh_database().await.unwrap();
                let store = PostgresStore::connect(&url).await.unwrap();
                let sql = Sql::Postgres(store.pool().clone());
                Self {
                    backend,
                    jobs: Jobs::new(store),
                    sql,
                    location: url,
                    _keep: Keep::Postgres(server),
                }
            }
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("jobs.db");
                let store = SqliteStore::open(&path).await.unwrap();
                let sql = Sql::Sqlite(store.writer().clone());
                Self {
                    backend,
                    jobs: Jobs::new(store),
                    sql,
                    location: path.to_str().unwrap().to_owned(),
                    _keep: Keep::Sqlite(dir),
                }
            }
        };
        match &db.sql {
            Sql::Postgres(pool) => {
                sqlx::raw_sql(POSTGRES_AUDIT).execute(pool).await.unwrap();
            }
            Sql::Sqlite(pool) => {
                sqlx::raw_sql(SQLITE_AUDIT).execute(pool).await.unwrap();
            }
        }
        Some(db)
    }

    async fn audit(&self) -> Vec<Audit> {
        const SELECT: &str = "SELECT seq, job_id, token, event FROM audit ORDER BY seq";
        match &self.sql {
            Sql::Postgres(pool) => sqlx::query_as(SELECT).fetch_all(pool).await.unwrap(),
            Sql::Sqlite(pool) => sqlx::query_as(SELECT).fetch_all(pool).await.unwrap(),
        }
    }

    /// How many sessions the worker process `name` still has open (PostgreSQL): a session
    /// outlives its killed client until it has finished its statement and seen the client
    /// gone, and may commit in between.
    async fn worker_sessions(&self, name: &str) -> i64 {
        match &self.sql {
            Sql::Postgres(pool) => sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = $1 AND datname = current_database()",
            )
            .bind(format!("{APPLICATION}-{name}"))
            .fetch_one(pool)
            .await
            .unwrap(),
            Sql::Sqlite(_) => 0,
        }
    }

    async fn stats(&self) -> QueueStats {
        self.jobs.stats().await.unwrap().pop().unwrap_or_default()
    }

    /// A worker process running `role`, named `name`.
    fn spawn_worker(&self, test: &str, role: &str, name: &str) -> Child {
        Command::new(std::env::current_exe().unwrap())
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD, role)
            .env(BACKEND, self.backend.name())
            .env(DATABASE, &self.location)
            .env(NAME, name)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }
}

/// SIGKILLs a worker process and waits until it and (on PostgreSQL) its sessions are gone.
async fn kill(db: &Db, child: &mut Child, name: &str) {
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert_eq!(status.signal(), Some(9), "killed, not exited: {status:?}");
    until("the killed worker's sessions to end", || async {
        (db.worker_sessions(name).await == 0).then_some(())
    })
    .await;
}

async fn killed_worker(backend: Backend) {
    let Some(db) = Db::open(backend).await else {
        return;
    };
    let batch: Vec<NewJob> = (0..CRASH_JOBS)
        .map(|n| NewJob::new(&Work { n }).unwrap())
        .collect();
    let ids: Vec<JobId> = db
        .jobs
        .enqueue_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(|enqueued| enqueued.id())
        .collect();
    let hanging: Vec<JobId> = (0..CRASH_JOBS)
        .filter(|n| hangs(*n))
        .map(|n| ids[n as usize])
        .collect();

    // The doomed worker completes jobs until two of the hanging ones hold slots; it is killed
    // with whatever else it holds at that moment.
    let mut doomed = db.spawn_worker(backend.test(), "crash", "doomed");
    until("the doomed worker to hold two hanging jobs", || async {
        let mut running = 0;
        for id in &hanging {
            let job = db.jobs.job(*id).await.unwrap().unwrap();
            running += usize::from(job.state == JobState::Running);
        }
        (running >= 2).then_some(())
    })
    .await;
    kill(&db, &mut doomed, "doomed").await;
    let before = db.audit().await;
    let at_kill = db.stats().await;

    // What the dead worker held: its claims that it did not complete.
    let completed_by_doomed: HashSet<(i64, i64)> = before
        .iter()
        .filter(|(_, _, _, event)| event == "complete")
        .map(|(_, job, token, _)| (*job, *token))
        .collect();
    let held: Vec<(i64, i64)> = before
        .iter()
        .filter(|(_, _, _, event)| event == "claim")
        .map(|(_, job, token, _)| (*job, *token))
        .filter(|lease| !completed_by_doomed.contains(lease))
        .collect();
    assert!(held.len() >= 2, "killed mid-run: {held:?}");
    assert!(!completed_by_doomed.is_empty(), "it completed some first");
    assert_eq!(at_kill.running, held.len() as u64, "{at_kill:?}");

    // A live worker rescues what the dead one held once the leases expire, and runs the rest.
    let survivor = Worker::builder(&db.jobs)
        .queue("default", 4)
        // Its own leases are long: on a loaded machine none of them expires, so all it
        // rescues is what the dead worker held.
        .lease(Duration::from_secs(5))
        .rescue_interval(Duration::from_millis(100))
        .poll_interval(Duration::from_millis(50))
        .handler(tower::service_fn(|_: Work| async {
            Ok::<_, std::io::Error>(())
        }))
        .build()
        .unwrap()
        .spawn();
    until("every job to complete", || async {
        let stats = db.stats().await;
        (stats.completed == u64::from(CRASH_JOBS)).then_some(stats)
    })
    .await;
    let metrics = survivor.shutdown(Duration::from_secs(10)).await;
    let audit = db.audit().await;
    eprintln!(
        "{}: the doomed worker completed {} and held {} at the kill; the survivor {metrics:?}",
        backend.name(),
        completed_by_doomed.len(),
        held.len()
    );

    // Every job completed exactly once, under the token of its latest claim.
    let mut latest_claim = HashMap::<i64, i64>::new();
    let mut completions = BTreeMap::<i64, Vec<i64>>::new();
    for (_, job, token, event) in &audit {
        match event.as_str() {
            "claim" => {
                let previous = latest_claim.insert(*job, *token);
                assert!(previous < Some(*token), "tokens grow: {audit:?}");
            }
            "complete" => {
                assert_eq!(
                    latest_claim.get(job),
                    Some(token),
                    "job {job} completed under a stale lease: {audit:?}"
                );
                completions.entry(*job).or_default().push(*token);
            }
            other => panic!("unexpected audit event {other}"),
        }
    }
    assert_eq!(completions.len(), ids.len());
    for id in &ids {
        let tokens = &completions[&id.get()];
        assert_eq!(tokens.len(), 1, "job {id} completed {tokens:?}");
    }

    // The dead worker's leases never completed anything: each job it held was rescued,
    // claimed again and completed under the new token.
    for (job, token) in &held {
        let completed = completions[job][0];
        assert!(completed > *token, "job {job}: completed under {completed}");
        let record = db.jobs.job(JobId::from_i64(*job)).await.unwrap().unwrap();
        assert_eq!(record.state, JobState::Completed);
        assert_eq!(record.lease_token, completed);
        assert!(
            record
                .last_error
                .as_deref()
                .is_some_and(|error| error.starts_with("lease expired")),
            "{record:?}"
        );
    }
    assert_eq!(metrics.rescued, held.len() as u64);
    assert_eq!(
        metrics.processed,
        u64::from(CRASH_JOBS) - completed_by_doomed.len() as u64
    );
}

async fn two_workers() {
    let Some(db) = Db::open(Backend::Postgres).await else {
        return;
    };
    const TEST: &str = "two_worker_processes_never_run_one_job_at_the_same_time";
    let mut a = db.spawn_worker(TEST, "overlap", "a");
    let mut b = db.spawn_worker(TEST, "overlap", "b");
    // Both are connected (and listening) before the jobs come.
    until("both workers to connect", || async {
        let names: Vec<String> = match &db.sql {
            Sql::Postgres(pool) => sqlx::query_scalar(
                "SELECT DISTINCT application_name FROM pg_stat_activity \
                 WHERE application_name LIKE $1 || '%' AND datname = current_database()",
            )
            .bind(APPLICATION)
            .fetch_all(pool)
            .await
            .unwrap(),
            Sql::Sqlite(_) => unreachable!(),
        };
        (names.len() == 2).then_some(())
    })
    .await;
    let batch: Vec<NewJob> = (0..OVERLAP_JOBS)
        .map(|n| NewJob::new(&Work { n }).unwrap())
        .collect();
    db.jobs.enqueue_batch(&batch).await.unwrap();
    until("every job to complete", || async {
        let stats = db.stats().await;
        (stats.completed == u64::from(OVERLAP_JOBS)).then_some(())
    })
    .await;
    kill(&db, &mut a, "a").await;
    kill(&db, &mut b, "b").await;

    let Sql::Postgres(pool) = &db.sql else {
        unreachable!()
    };
    let runs: Vec<(i64, String, f64, Option<f64>)> = sqlx::query_as(
        "SELECT job_id, worker, extract(epoch FROM started_at)::float8, \
                extract(epoch FROM ended_at)::float8 \
         FROM runs ORDER BY job_id, started_at, id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut by_job = BTreeMap::<i64, Vec<(String, f64, Option<f64>)>>::new();
    for (job, worker, started, ended) in runs {
        by_job
            .entry(job)
            .or_default()
            .push((worker, started, ended));
    }
    assert_eq!(by_job.len(), OVERLAP_JOBS as usize, "every job ran");
    let mut per_worker = BTreeMap::<String, usize>::new();
    for (job, runs) in &by_job {
        for pair in runs.windows(2) {
            let (_, _, ended) = &pair[0];
            let (_, started, _) = &pair[1];
            assert!(
                ended.is_some_and(|ended| ended <= *started),
                "job {job} ran twice at once: {runs:?}"
            );
        }
        for (worker, _, _) in runs {
            *per_worker.entry(worker.clone()).or_default() += 1;
        }
    }
    eprintln!("runs per worker: {per_worker:?}");
    assert_eq!(per_worker.len(), 2, "both workers ran jobs: {per_worker:?}");

    // And each job completed exactly once, under its latest claim.
    let mut latest_claim = HashMap::<i64, i64>::new();
    let mut completions = HashMap::<i64, usize>::new();
    for (_, job, token, event) in db.audit().await {
        if event == "claim" {
            latest_claim.insert(job, token);
        } else {
            assert_eq!(latest_claim.get(&job), Some(&token), "stale completion");
            *completions.entry(job).or_default() += 1;
        }
    }
    assert_eq!(completions.len(), OVERLAP_JOBS as usize);
    assert!(completions.values().all(|n| *n == 1), "{completions:?}");
}

/// A worker process: runs `role` until it is killed (or, as a safety net, [`HANG`]).
fn child(role: &str) -> ! {
    let backend = std::env::var(BACKEND).unwrap();
    let database = std::env::var(DATABASE).unwrap();
    let name = std::env::var(NAME).unwrap();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let (jobs, pool) = match backend.as_str() {
                "postgres" => {
                    let separator = if database.contains('?') { '&' } else { '?' };
                    let url = format!("{database}{separator}application_name={APPLICATION}-{name}");
                    let store = PostgresStore::connect(&url).await.unwrap();
                    let pool = store.pool().clone();
                    (Jobs::new(store), Some(pool))
                }
                _ => (Jobs::new(SqliteStore::open(&database).await.unwrap()), None),
            };
            let worker = match role {
                "crash" => crash_worker(&jobs),
                "overlap" => overlap_worker(&jobs, pool.unwrap(), name),
                other => panic!("unknown worker role {other}"),
            };
            let _worker = worker.spawn();
            tokio::time::sleep(HANG).await;
        });
    std::process::exit(1)
}

/// The worker to be killed: completes jobs, each after a moment (so that some are usually in
/// flight when it is killed), but hangs on every fifth.
fn crash_worker(jobs: &Jobs) -> Worker {
    Worker::builder(jobs)
        .queue("default", 4)
        .lease(LEASE)
        .poll_interval(Duration::from_millis(50))
        .handler(tower::service_fn(|work: Work| async move {
            if hangs(work.n) {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, std::io::Error>(())
        }))
        .build()
        .unwrap()
}

/// A worker that records each run's start and end, and holds every run until both workers
/// have started one, so the two run jobs at the same time.
fn overlap_worker(jobs: &Jobs, pool: sqlx::PgPool, name: String) -> Worker {
    Worker::builder(jobs)
        .queue("default", 4)
        .claim_batch(2)
        // Long enough that a lease never expires under a running handler on a loaded machine.
        .lease(Duration::from_secs(5))
        .heartbeat(Duration::from_millis(200))
        .poll_interval(Duration::from_millis(50))
        .handler(tower::service_fn(move |work: Work| {
            let pool = pool.clone();
            let name = name.clone();
            async move {
                let id: i64 = sqlx::query_scalar(
                    "INSERT INTO runs (job_id, worker) \
                     SELECT id, $2 FROM palisade_jobs WHERE payload = $1::jsonb \
                     RETURNING id",
                )
                .bind(serde_json::to_string(&work).unwrap())
                .bind(&name)
                .fetch_one(&pool)
                .await?;
                loop {
                    let workers: i64 =
                        sqlx::query_scalar("SELECT count(DISTINCT worker) FROM runs")
                            .fetch_one(&pool)
                            .await?;
                    if workers >= 2 {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                sqlx::query("UPDATE runs SET ended_at = clock_timestamp() WHERE id = $1")
                    .bind(id)
                    .execute(&pool)
                    .await?;
                Ok::<_, sqlx::Error>(())
            }
        }))
        .build()
        .unwrap()
}
