//! No-op jobs end to end, side by side in one run (issue 8's benchmark):
//!
//! ```sh
//! cargo bench -p palisade-benches --bench jobs -- [BACKLOG...]   # default: 20000 200000
//! ```
//!
//! For each backlog and backend, every contender gets a fresh database and measures the
//! enqueue rate one job at a time (2,000 jobs) and in batches of 1,000 (the rest of the
//! backlog), the end-to-end rate at which one worker drains the whole backlog (from the
//! worker's start to the last completion), and the pickup latency (enqueue call to handler
//! start) of jobs enqueued one at a time into an idle worker, p50 / p99.
//!
//! - `palisade`: `palisade-jobs` (one worker, concurrency 200, claims of 100).
//! - `apalis`: apalis 1.0 (`apalis-sqlite` / `apalis-postgres` 1.0) with its defaults (batch
//!   size 10, no concurrency limit) and with `batch_size(100)`. Its drain is cut off after
//!   [`PEER_CAP`]; the rate is then what it processed in that time. Its pickup latency is
//!   measured once (first backlog, fresh storage, [`PEER_PICKUPS`] samples): it polls.
//! - `floor` (PostgreSQL only): a hand-written sqlx loop on its own table that claims 100
//!   pending jobs with `FOR UPDATE SKIP LOCKED` (marking them running), and marks them done
//!   in a second statement: two round trips and two commits per 100 jobs.
//!
//! Durability: PostgreSQL is the testkit's private server started durable (`fsync=on`,
//! `synchronous_commit=on`). SQLite runs in WAL mode with `synchronous=NORMAL` for every
//! contender (apalis's `setup` sets `synchronous=OFF` on the connection it runs on, so its
//! storage gets a fresh pool with `NORMAL`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::{BoxDynError, TaskSink as _, WorkerBuilder, WorkerContext};
use palisade_jobs::postgres::PostgresStore;
use palisade_jobs::sqlite::{SqliteConfig, SqliteStore};
use palisade_jobs::{Job, Jobs, NewJob, Worker};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// Jobs enqueued one at a time before the batches.
const SINGLE: u64 = 2_000;
/// Jobs per enqueue batch.
const BATCH: u64 = 1_000;
/// Pickup samples for our queue; apalis polls, so it gets fewer.
const PICKUPS: usize = 500;
const PEER_PICKUPS: usize = 20;
/// How long a peer may take to drain a backlog before it is cut off.
const PEER_CAP: Duration = Duration::from_secs(20);

#[derive(Clone, Serialize, Deserialize)]
struct Noop {
    n: u64,
}

impl Job for Noop {
    const TYPE: &'static str = "noop";
}

/// One contender's numbers.
struct Row {
    single: f64,
    batched: f64,
    processed: f64,
    note: String,
    p50: Option<Duration>,
    p99: Option<Duration>,
}

fn print(backend: &str, backlog: u64, name: &str, row: &Row) {
    let ms =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1e3));
    println!(
        "{backend:<8} {backlog:>7} {name:<18} {:>9.0} {:>9.0} {:>10.0} {:>8} {:>8} {}",
        row.single,
        row.batched,
        row.processed,
        ms(row.p50),
        ms(row.p99),
        row.note
    );
}

fn percentiles(mut samples: Vec<Duration>) -> (Option<Duration>, Option<Duration>) {
    if samples.is_empty() {
        return (None, None);
    }
    samples.sort();
    let p50 = samples[samples.len() / 2];
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    (Some(p50), Some(p99))
}

// ---- palisade-jobs ----

async fn palisade(jobs: Jobs, backlog: u64) -> Row {
    let started = Instant::now();
    for n in 0..SINGLE {
        jobs.enqueue(&Noop { n }).await.unwrap();
    }
    let single = SINGLE as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut n = SINGLE;
    while n < backlog {
        let batch: Vec<NewJob> = (n..(n + BATCH).min(backlog))
            .map(|n| NewJob::new(&Noop { n }).unwrap())
            .collect();
        n += batch.len() as u64;
        jobs.enqueue_batch(&batch).await.unwrap();
    }
    let batched = (backlog - SINGLE) as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let worker = Worker::builder(&jobs)
        .queue("default", 200)
        .claim_batch(100)
        .stats_interval(None)
        .handler(tower::service_fn(|_: Noop| {
            std::future::ready(Ok::<_, std::io::Error>(()))
        }))
        .build()
        .unwrap()
        .spawn();
    // The worker's own counter counts recorded completions.
    while worker.metrics().processed < backlog {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let processed = backlog as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        worker.shutdown(Duration::from_secs(5)).await.processed,
        backlog
    );

    let (tx, mut rx) = mpsc::unbounded_channel();
    let worker = Worker::builder(&jobs)
        .queue("latency", 8)
        .stats_interval(None)
        .handler(tower::service_fn(move |_: Noop| {
            let _ = tx.send(Instant::now());
            std::future::ready(Ok::<_, std::io::Error>(()))
        }))
        .build()
        .unwrap()
        .spawn();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut pickups = Vec::new();
    for n in 0..PICKUPS as u64 {
        let job = NewJob::new(&Noop { n }).unwrap().queue("latency");
        let sent = Instant::now();
        jobs.insert(job).await.unwrap();
        pickups.push(rx.recv().await.unwrap() - sent);
    }
    worker.shutdown(Duration::from_secs(5)).await;
    let (p50, p99) = percentiles(pickups);
    Row {
        single,
        batched,
        processed,
        note: String::new(),
        p50,
        p99,
    }
}

// ---- apalis 1.0 ----

/// Jobs the apalis handler has run, and the count at which it stops its worker.
static APALIS_DONE: AtomicU64 = AtomicU64::new(0);
static APALIS_TARGET: AtomicU64 = AtomicU64::new(u64::MAX);
/// Where the apalis pickup handler reports.
static APALIS_PICKUP: Mutex<Option<mpsc::UnboundedSender<Instant>>> = Mutex::new(None);

async fn apalis_noop(_: Noop, ctx: WorkerContext) -> Result<(), BoxDynError> {
    if let Some(tx) = APALIS_PICKUP.lock().unwrap().as_ref() {
        let _ = tx.send(Instant::now());
    }
    if APALIS_DONE.fetch_add(1, Ordering::Relaxed) + 1 == APALIS_TARGET.load(Ordering::Relaxed) {
        let _ = ctx.stop();
    }
    Ok(())
}

/// The apalis run for one fresh storage: `$storage` is an expression making a storage on a
/// fresh database (evaluated twice: drain, then pickup). A macro, since apalis's worker
/// bounds are long to spell out generically.
macro_rules! apalis_run {
    ($storage:expr, $backlog:expr, $pickup:expr) => {{
        let backlog: u64 = $backlog;
        let mut storage = $storage;
        let started = Instant::now();
        for n in 0..SINGLE {
            storage.push(Noop { n }).await.unwrap();
        }
        let single = SINGLE as f64 / started.elapsed().as_secs_f64();

        let started = Instant::now();
        let mut n = SINGLE;
        while n < backlog {
            let batch: Vec<Noop> = (n..(n + BATCH).min(backlog)).map(|n| Noop { n }).collect();
            n += batch.len() as u64;
            storage.push_bulk(batch).await.unwrap();
        }
        let batched = (backlog - SINGLE) as f64 / started.elapsed().as_secs_f64();

        APALIS_DONE.store(0, Ordering::Relaxed);
        APALIS_TARGET.store(backlog, Ordering::Relaxed);
        let worker = WorkerBuilder::new("bench")
            .backend(storage.clone())
            .build(apalis_noop);
        let started = Instant::now();
        let mut run = tokio::spawn(worker.run());
        let note = match tokio::time::timeout(PEER_CAP, &mut run).await {
            Ok(result) => {
                result.unwrap().unwrap();
                String::new()
            }
            Err(_) => {
                run.abort();
                format!(
                    "(cut off after {}s: {} of {backlog})",
                    PEER_CAP.as_secs(),
                    APALIS_DONE.load(Ordering::Relaxed)
                )
            }
        };
        let processed =
            APALIS_DONE.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
        APALIS_TARGET.store(u64::MAX, Ordering::Relaxed);

        // Pickup into an idle worker, on a fresh storage (so once, not per backlog).
        let mut pickups = Vec::new();
        if $pickup {
            let mut storage = $storage;
            let (tx, mut rx) = mpsc::unbounded_channel();
            *APALIS_PICKUP.lock().unwrap() = Some(tx);
            let worker = WorkerBuilder::new("pickup")
                .backend(storage.clone())
                .build(apalis_noop);
            let run = tokio::spawn(worker.run());
            tokio::time::sleep(Duration::from_millis(200)).await;
            for n in 0..PEER_PICKUPS as u64 {
                let sent = Instant::now();
                storage.push(Noop { n }).await.unwrap();
                match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
                    Ok(Some(ran)) => pickups.push(ran - sent),
                    _ => break,
                }
            }
            run.abort();
            *APALIS_PICKUP.lock().unwrap() = None;
        }
        let (p50, p99) = percentiles(pickups);
        Row {
            single,
            batched,
            processed,
            note,
            p50,
            p99,
        }
    }};
}

/// Their storage's config: the defaults, or `batch_size(batch)`.
macro_rules! apalis_config {
    ($config:ty, $batch:expr) => {
        match $batch {
            None => <$config>::default(),
            Some(size) => <$config>::default().batch_size(size),
        }
    };
}

async fn apalis_sqlite(backlog: u64, batch: Option<usize>, pickup: bool) -> Row {
    use apalis_sqlite::{Config, SqliteConnectOptions, SqlitePool, SqliteStorage};
    let dir = tempfile::tempdir().unwrap();
    let counter = AtomicU64::new(0);
    let fresh = || async {
        let path = dir.path().join(format!(
            "apalis-{}.db",
            counter.fetch_add(1, Ordering::Relaxed)
        ));
        let options = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true)
            .pragma("journal_mode", "WAL")
            .pragma("synchronous", "NORMAL");
        let setup = SqlitePool::connect_with(options.clone()).await.unwrap();
        SqliteStorage::setup(&setup).await.unwrap();
        setup.close().await;
        let pool = SqlitePool::connect_with(options).await.unwrap();
        SqliteStorage::<Noop>::new(&pool).with_config(apalis_config!(Config, batch))
    };
    apalis_run!(fresh().await, backlog, pickup)
}

async fn apalis_postgres(url: &str, backlog: u64, batch: Option<usize>, pickup: bool) -> Row {
    use apalis_postgres::{Config, PgPool, PostgresStorage};
    let fresh = || async {
        let pool = PgPool::connect(url).await.unwrap();
        PostgresStorage::setup(&pool).await.unwrap();
        PostgresStorage::<Noop>::new(&pool).with_config(apalis_config!(Config, batch))
    };
    apalis_run!(fresh().await, backlog, pickup)
}

// ---- the floor ----

async fn floor(url: &str, backlog: u64) -> Row {
    use sqlx::{Connection as _, PgConnection};
    let mut conn = PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE floor_jobs (
             id bigserial PRIMARY KEY,
             payload jsonb NOT NULL,
             state smallint NOT NULL DEFAULT 0
         );
         CREATE INDEX floor_jobs_pending ON floor_jobs (id) WHERE state = 0;",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let started = Instant::now();
    for n in 0..SINGLE {
        sqlx::query("INSERT INTO floor_jobs (payload) VALUES ($1::jsonb)")
            .bind(serde_json::to_string(&Noop { n }).unwrap())
            .execute(&mut conn)
            .await
            .unwrap();
    }
    let single = SINGLE as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut n = SINGLE;
    while n < backlog {
        let batch: Vec<String> = (n..(n + BATCH).min(backlog))
            .map(|n| serde_json::to_string(&Noop { n }).unwrap())
            .collect();
        n += batch.len() as u64;
        sqlx::query(
            "INSERT INTO floor_jobs (payload) SELECT p::jsonb FROM UNNEST($1::text[]) AS p",
        )
        .bind(batch)
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let batched = (backlog - SINGLE) as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut done = 0;
    loop {
        let claimed: Vec<(i64, String)> = sqlx::query_as(
            "UPDATE floor_jobs SET state = 1 WHERE id IN (
                 SELECT id FROM floor_jobs WHERE state = 0 ORDER BY id LIMIT 100
                 FOR UPDATE SKIP LOCKED
             ) RETURNING id, payload::text",
        )
        .fetch_all(&mut conn)
        .await
        .unwrap();
        if claimed.is_empty() {
            break;
        }
        // The no-op "handlers": decode the payload, as every queue does.
        let ids: Vec<i64> = claimed
            .iter()
            .map(|(id, payload)| {
                let _: Noop = serde_json::from_str(payload).unwrap();
                *id
            })
            .collect();
        sqlx::query("UPDATE floor_jobs SET state = 2 WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut conn)
            .await
            .unwrap();
        done += ids.len() as u64;
    }
    assert_eq!(done, backlog);
    let processed = backlog as f64 / started.elapsed().as_secs_f64();
    Row {
        single,
        batched,
        processed,
        note: String::new(),
        p50: None,
        p99: None,
    }
}

async fn fresh_pg(server: &palisade_testkit::PostgresServer) -> String {
    server.fresh_database().await.unwrap()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    // `cargo bench` passes `--bench`; every other argument is a backlog.
    let mut backlogs: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    if backlogs.is_empty() {
        backlogs = vec![20_000, 200_000];
    }
    let server = match palisade_testkit::PostgresServer::start_durable() {
        Ok(server) => Some(server),
        Err(error) => {
            println!("PostgreSQL skipped: {error}");
            None
        }
    };
    println!(
        "{:<8} {:>7} {:<18} {:>9} {:>9} {:>10} {:>8} {:>8}",
        "backend", "backlog", "contender", "single/s", "batch/s", "jobs/s", "p50 ms", "p99 ms"
    );
    for (i, &backlog) in backlogs.iter().enumerate() {
        let pickup = i == 0;
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::connect(SqliteConfig::new(dir.path().join("jobs.db")))
            .await
            .unwrap();
        print(
            "sqlite",
            backlog,
            "palisade",
            &palisade(Jobs::new(store), backlog).await,
        );
        print(
            "sqlite",
            backlog,
            "apalis default",
            &apalis_sqlite(backlog, None, pickup).await,
        );
        print(
            "sqlite",
            backlog,
            "apalis batch 100",
            &apalis_sqlite(backlog, Some(100), pickup).await,
        );
        if let Some(server) = &server {
            let url = fresh_pg(server).await;
            let store = PostgresStore::connect(&url).await.unwrap();
            print(
                "postgres",
                backlog,
                "palisade",
                &palisade(Jobs::new(store), backlog).await,
            );
            print(
                "postgres",
                backlog,
                "floor (sqlx)",
                &floor(&fresh_pg(server).await, backlog).await,
            );
            print(
                "postgres",
                backlog,
                "apalis default",
                &apalis_postgres(&fresh_pg(server).await, backlog, None, pickup).await,
            );
            print(
                "postgres",
                backlog,
                "apalis batch 100",
                &apalis_postgres(&fresh_pg(server).await, backlog, Some(100), pickup).await,
            );
        }
    }
}
