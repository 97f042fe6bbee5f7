//! No-op jobs end to end, side by side in one run (issue 8's benchmark):
//!
//! ```sh
//! cargo bench -p palisade-benches --bench jobs -- [BACKLOG...] [sqlite|postgres] [palisade|floor|apalis]
//! ```
//!
//! Backlogs default to 20000 and 200000; the words pick backends and contenders (default:
//! all). For each backlog and backend, every contender gets a fresh database and measures the
//! enqueue rate one job at a time (2,000 jobs) and in batches of 1,000 (the rest of the
//! backlog), the end-to-end rate at which one worker drains the whole backlog (from the
//! worker's start to the last completion), and the pickup latency (enqueue call to handler
//! start) of jobs enqueued one at a time into an idle worker, p50 / p99.
//!
//! Each row runs in a child process of its own (this binary again, with `--row`), which exits
//! when its numbers are printed: nothing a contender leaves running (an apalis worker cut off
//! after its time keeps draining in tasks of its own) shares the two cores with the next row.
//! Each PostgreSQL database is dropped and the server checkpointed before the next row.
//!
//! - `palisade`: `palisade-jobs` (one worker, concurrency 200, claims of 100).
//! - `apalis`: apalis 1.0 (`apalis-sqlite` / `apalis-postgres` 1.0) with its defaults (batch
//!   size 10, no concurrency limit) and with `batch_size(100)`. Its drain is cut off after
//!   [`PEER_CAP`]; the rate is then what it processed in that time. Its pickup latency is
//!   measured once (first backlog, fresh storage, [`PEER_PICKUPS`] samples, a child process
//!   of its own): with its default settings an idle worker sleeps until its heartbeat
//!   (30 s) and picked up nothing within 10 s, so the pickup worker polls every
//!   [`APALIS_POLL`] (`poll_with_interval`, as apalis's docs show); a job not picked up
//!   within [`PICKUP_WAIT`] ends the samples, and the row says so.
//! - `floor` (PostgreSQL only): a hand-written sqlx loop on its own table that claims 100
//!   pending jobs with `FOR UPDATE SKIP LOCKED` (marking them running), and marks them done
//!   in a second statement: two round trips and two commits per 100 jobs.
//!
//! For the PostgreSQL drains the note gives what the drain cost the server: transactions
//! that wrote (each one a WAL flush at its commit) and WAL bytes per job, and the `NOTIFY`s
//! sent on the queue's channel meanwhile.
//!
//! Durability: PostgreSQL is the testkit's private server started durable (`fsync=on`,
//! `synchronous_commit=on`). SQLite runs in WAL mode with `synchronous=NORMAL` for every
//! contender (apalis's `setup` sets `synchronous=OFF` on the connection it runs on, so its
//! storage gets a fresh pool with `NORMAL`).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use apalis::prelude::{BackendExt as _, BoxDynError, TaskSink as _, WorkerBuilder, WorkerContext};
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
/// How long a peer's idle worker may take to pick up one job before the pickup stops.
const PICKUP_WAIT: Duration = Duration::from_secs(10);
/// How often apalis's idle pickup worker polls (its `poll_with_interval`).
const APALIS_POLL: Duration = Duration::from_millis(100);

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

async fn palisade(jobs: Jobs, backlog: u64, url: Option<&str>) -> Row {
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

    let probe = match url {
        Some(url) => Some(Probe::start(url, "palisade_jobs").await),
        None => None,
    };
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
    let note = match probe {
        Some(probe) => probe.finish(backlog).await,
        None => String::new(),
    };
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
        note,
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
    ($storage:expr, $backlog:expr, $drain:expr, $pickup:expr, $url:expr) => {{
        let backlog: u64 = $backlog;
        let (single, batched, processed, note) = if $drain {
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
            let url: Option<&str> = $url;
            let probe = match url {
                Some(url) => Some(Probe::start(url, "apalis").await),
                None => None,
            };
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
            let done = APALIS_DONE.load(Ordering::Relaxed);
            let processed = done as f64 / started.elapsed().as_secs_f64();
            let note = match probe {
                Some(probe) => format!("{} {note}", probe.finish(done).await),
                None => note,
            };
            APALIS_TARGET.store(u64::MAX, Ordering::Relaxed);
            (single, batched, processed, note)
        } else {
            (0.0, 0.0, 0.0, String::new())
        };

        // Pickup into an idle worker, on a fresh storage, in a process of its own (so once,
        // not per backlog, and with no drain still running).
        let mut pickups = Vec::new();
        let mut note = note;
        if $pickup {
            let storage = $storage;
            let mut pusher = storage.clone();
            let (tx, mut rx) = mpsc::unbounded_channel();
            *APALIS_PICKUP.lock().unwrap() = Some(tx);
            // With its defaults an idle apalis worker sleeps until its heartbeat (30 s):
            // it is told to poll instead, as apalis's own docs do.
            let worker = WorkerBuilder::new("pickup")
                .backend(storage.poll_with_interval(APALIS_POLL))
                .build(apalis_noop);
            let run = tokio::spawn(worker.run());
            tokio::time::sleep(Duration::from_millis(200)).await;
            for n in 0..PEER_PICKUPS as u64 {
                let sent = Instant::now();
                pusher.push(Noop { n }).await.unwrap();
                match tokio::time::timeout(PICKUP_WAIT, rx.recv()).await {
                    Ok(Some(ran)) => pickups.push(ran - sent),
                    _ => {
                        // Said, not hidden.
                        note = format!(
                            "{note} (pickup: job {n} not picked up within {}s)",
                            PICKUP_WAIT.as_secs()
                        )
                        .trim_start()
                        .to_owned();
                        break;
                    }
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

async fn apalis_sqlite(backlog: u64, batch: Option<usize>, drain: bool, pickup: bool) -> Row {
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
    apalis_run!(fresh().await, backlog, drain, pickup, None)
}

async fn apalis_postgres(
    url: &str,
    backlog: u64,
    batch: Option<usize>,
    drain: bool,
    pickup: bool,
) -> Row {
    use apalis_postgres::{Config, PgPool, PostgresStorage};
    let fresh = || async {
        let pool = PgPool::connect(url).await.unwrap();
        PostgresStorage::setup(&pool).await.unwrap();
        PostgresStorage::<Noop>::new(&pool).with_config(apalis_config!(Config, batch))
    };
    apalis_run!(fresh().await, backlog, drain, pickup, Some(url))
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

    let probe = Probe::start(url, "floor").await;
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
    let note = probe.finish(backlog).await;
    Row {
        single,
        batched,
        processed,
        note,
        p50: None,
        p99: None,
    }
}

// ---- what a PostgreSQL drain costs the server ----

/// Counts, around a PostgreSQL drain, the transactions that wrote (each one a WAL flush at
/// its commit: the transaction ids drawn), the WAL written and the `NOTIFY`s sent on the
/// queue's channel.
struct Probe {
    conn: sqlx::PgConnection,
    xid: i64,
    lsn: i64,
    notified: std::sync::Arc<AtomicU64>,
    listening: tokio::task::JoinHandle<()>,
}

impl Probe {
    async fn start(url: &str, channel: &str) -> Self {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let mut listener = sqlx::postgres::PgListener::connect(url).await.unwrap();
        listener.listen(channel).await.unwrap();
        let notified = std::sync::Arc::new(AtomicU64::new(0));
        let count = std::sync::Arc::clone(&notified);
        let listening = tokio::spawn(async move {
            while listener.recv().await.is_ok() {
                count.fetch_add(1, Ordering::Relaxed);
            }
        });
        let (xid, lsn) = Self::read(&mut conn).await;
        Self {
            conn,
            xid,
            lsn,
            notified,
            listening,
        }
    }

    async fn read(conn: &mut sqlx::PgConnection) -> (i64, i64) {
        sqlx::query_as(
            "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8, \
             (pg_current_wal_lsn() - '0/0')::int8",
        )
        .fetch_one(conn)
        .await
        .unwrap()
    }

    /// "commits/job, WAL bytes/job, notifies" for `jobs` jobs.
    async fn finish(mut self, jobs: u64) -> String {
        let (xid, lsn) = Self::read(&mut self.conn).await;
        // Let the last notifications arrive.
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.listening.abort();
        let jobs = jobs.max(1) as f64;
        format!(
            "[{:.3} commits/job, {:.0} WAL B/job, {} NOTIFY]",
            (xid - self.xid) as f64 / jobs,
            (lsn - self.lsn) as f64 / jobs,
            self.notified.load(Ordering::Relaxed)
        )
    }
}

// ---- one row per child process ----

/// The contenders, by the name the parent passes to a child.
const CONTENDERS: &[(&str, &str, &str)] = &[
    ("sqlite", "palisade", "palisade"),
    ("sqlite", "apalis-default", "apalis default"),
    ("sqlite", "apalis-100", "apalis batch 100"),
    ("postgres", "palisade", "palisade"),
    ("postgres", "floor", "floor (sqlx)"),
    ("postgres", "apalis-default", "apalis default"),
    ("postgres", "apalis-100", "apalis batch 100"),
];

/// A child's work: one contender, one backlog, on a fresh database (`url` for PostgreSQL).
async fn row(backend: &str, contender: &str, backlog: u64, mode: &str, url: &str) -> Row {
    let drain = mode != "pickup";
    let pickup = mode != "drain";
    match (backend, contender) {
        ("sqlite", "palisade") => {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::connect(SqliteConfig::new(dir.path().join("jobs.db")))
                .await
                .unwrap();
            palisade(Jobs::new(store), backlog, None).await
        }
        ("sqlite", "apalis-default") => apalis_sqlite(backlog, None, drain, pickup).await,
        ("sqlite", "apalis-100") => apalis_sqlite(backlog, Some(100), drain, pickup).await,
        ("postgres", "palisade") => {
            let store = PostgresStore::connect(url).await.unwrap();
            palisade(Jobs::new(store), backlog, Some(url)).await
        }
        ("postgres", "floor") => floor(url, backlog).await,
        ("postgres", "apalis-default") => apalis_postgres(url, backlog, None, drain, pickup).await,
        ("postgres", "apalis-100") => apalis_postgres(url, backlog, Some(100), drain, pickup).await,
        other => panic!("no contender {other:?}"),
    }
}

/// The child: `jobs --row BACKEND CONTENDER BACKLOG MODE [URL]`, where MODE is `drain`,
/// `pickup` or `both` (our queue measures both in one process: its worker stops cleanly). Prints one line,
/// `ROW` and the numbers, tab-separated, and exits at once, so that nothing the contender
/// left running (an apalis worker cut off after its time keeps draining in tasks of its
/// own) shares the cores with the next row.
fn child(args: &[String]) -> ! {
    let [backend, contender, backlog, mode, rest @ ..] = args else {
        panic!("usage: jobs --row BACKEND CONTENDER BACKLOG MODE [URL]");
    };
    let backlog: u64 = backlog.parse().unwrap();
    let url = rest.first().cloned().unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let row = runtime.block_on(row(backend, contender, backlog, mode, &url));
    let us = |d: Option<Duration>| d.map_or("-".to_owned(), |d| d.as_micros().to_string());
    println!(
        "ROW\t{}\t{}\t{}\t{}\t{}\t{}",
        row.single,
        row.batched,
        row.processed,
        us(row.p50),
        us(row.p99),
        row.note
    );
    use std::io::Write as _;
    std::io::stdout().flush().unwrap();
    std::process::exit(0);
}

/// Runs one row in a child process and parses its line.
fn run_child(backend: &str, contender: &str, backlog: u64, mode: &str, url: &str) -> Row {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--row", backend, contender, &backlog.to_string(), mode, url])
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|line| line.starts_with("ROW\t"));
    let Some(line) = line.filter(|_| output.status.success()) else {
        return Row {
            single: 0.0,
            batched: 0.0,
            processed: 0.0,
            note: format!("(failed: {}; {stdout})", output.status),
            p50: None,
            p99: None,
        };
    };
    let fields: Vec<&str> = line.split('\t').collect();
    let us = |field: &str| field.parse().ok().map(Duration::from_micros);
    Row {
        single: fields[1].parse().unwrap(),
        batched: fields[2].parse().unwrap(),
        processed: fields[3].parse().unwrap(),
        p50: us(fields[4]),
        p99: us(fields[5]),
        note: fields.get(6).copied().unwrap_or_default().to_owned(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(at) = args.iter().position(|arg| arg == "--row") {
        child(&args[at + 1..]);
    }
    // `cargo bench` passes `--bench`; every other number is a backlog, every other word
    // picks contenders (`sqlite`, `postgres`, `palisade`, `floor`, `apalis`; default all).
    let mut backlogs: Vec<u64> = args.iter().filter_map(|arg| arg.parse().ok()).collect();
    if backlogs.is_empty() {
        backlogs = vec![20_000, 200_000];
    }
    let words: Vec<&str> = args
        .iter()
        .map(String::as_str)
        .filter(|arg| !arg.starts_with('-') && arg.parse::<u64>().is_err())
        .collect();
    let picked = |backend: &str, contender: &str| {
        let backends = words.iter().filter(|w| ["sqlite", "postgres"].contains(w));
        let backend_ok = backends.clone().count() == 0 || backends.clone().any(|w| *w == backend);
        let others: Vec<&&str> = words
            .iter()
            .filter(|w| !["sqlite", "postgres"].contains(w))
            .collect();
        backend_ok && (others.is_empty() || others.iter().any(|w| contender.starts_with(**w)))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
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
        for &(backend, contender, label) in CONTENDERS {
            if !picked(backend, contender) {
                continue;
            }
            if backend == "postgres" && server.is_none() {
                continue;
            }
            // On a fresh database each; PostgreSQL's dropped afterwards.
            let run = |mode: &str| match &server {
                Some(server) if backend == "postgres" => {
                    let url = runtime.block_on(server.fresh_database()).unwrap();
                    let row = run_child(backend, contender, backlog, mode, &url);
                    runtime.block_on(settle(server.url(), &url));
                    row
                }
                _ => run_child(backend, contender, backlog, mode, ""),
            };
            let row = if contender == "palisade" {
                run("both")
            } else if pickup && contender.starts_with("apalis") {
                let drained = run("drain");
                let picked = run("pickup");
                Row {
                    p50: picked.p50,
                    p99: picked.p99,
                    note: format!("{} {}", drained.note, picked.note)
                        .trim()
                        .to_owned(),
                    ..drained
                }
            } else {
                run("drain")
            };
            print(backend, backlog, label, &row);
        }
    }
}

/// Drops a finished row's database and checkpoints, so that the next row starts on a quiet
/// server (no autovacuum of the last row's table, no checkpoint due).
async fn settle(admin: &str, url: &str) {
    use sqlx::Connection as _;
    let name = url.rsplit('/').next().unwrap();
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    // Two statements: DROP DATABASE cannot run in a multi-statement query's transaction.
    sqlx::raw_sql(&format!("DROP DATABASE \"{name}\" WITH (FORCE)"))
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::raw_sql("CHECKPOINT")
        .execute(&mut conn)
        .await
        .unwrap();
}
