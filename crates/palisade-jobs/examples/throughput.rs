//! Throughput and pickup latency of no-op jobs, on SQLite and on a private PostgreSQL.
//!
//! ```sh
//! cargo run --release -p palisade-jobs --all-features --example throughput -- [JOBS] [sqlite|postgres|both]
//! ```
//!
//! For each backend: the enqueue rate one job at a time and in batches of 1,000, the
//! end-to-end rate at which one worker (concurrency 200, claims of 100) drains a backlog of
//! `JOBS` (default 20,000), and the pickup latency (enqueue call to handler start) of jobs
//! enqueued one at a time into an idle worker, p50 / p99.
//!
//! Commits are durable: SQLite runs in WAL mode with `synchronous=NORMAL` (a commit survives
//! a crash of the process; only a power loss can take the last ones), and the testkit's
//! private PostgreSQL is started with [`start_durable`] (`fsync=on`,
//! `synchronous_commit=on`: every commit waits for its WAL flush), as in production. The
//! side-by-side numbers, next to apalis and a hand-written floor, come from
//! `cargo bench -p palisade-benches --bench jobs`.
//!
//! [`start_durable`]: palisade_testkit::PostgresServer::start_durable

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use palisade_jobs::postgres::PostgresStore;
use palisade_jobs::sqlite::SqliteStore;
use palisade_jobs::{Job, Jobs, NewJob, Worker};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Noop {
    n: u64,
}

impl Job for Noop {
    const TYPE: &'static str = "noop";
}

async fn measure(name: &str, jobs: Jobs, backlog: u64) {
    // Enqueue, one at a time.
    let single = 2_000;
    let started = Instant::now();
    for n in 0..single {
        jobs.enqueue(&Noop { n }).await.unwrap();
    }
    let single_rate = single as f64 / started.elapsed().as_secs_f64();

    // Enqueue, batches of 1,000.
    let started = Instant::now();
    let mut n = single;
    while n < backlog {
        let batch: Vec<NewJob> = (n..(n + 1_000).min(backlog))
            .map(|n| NewJob::new(&Noop { n }).unwrap())
            .collect();
        n += batch.len() as u64;
        jobs.enqueue_batch(&batch).await.unwrap();
    }
    let batch_rate = (backlog - single) as f64 / started.elapsed().as_secs_f64();

    // Drain the backlog.
    let done = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&done);
    let started = Instant::now();
    let worker = Worker::builder(&jobs)
        .queue("default", 200)
        .claim_batch(100)
        .stats_interval(None)
        .handler(tower::service_fn(move |_: Noop| {
            count.fetch_add(1, Ordering::Relaxed);
            std::future::ready(Ok::<_, std::io::Error>(()))
        }))
        .build()
        .unwrap()
        .spawn();
    // Wait on the worker's own counter (recorded completions), not on the database.
    while worker.metrics().processed < backlog {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain_rate = backlog as f64 / started.elapsed().as_secs_f64();
    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.processed, backlog);
    assert_eq!(done.load(Ordering::Relaxed), backlog);
    let stats = jobs.stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| s.completed).sum::<u64>(), backlog);

    // Pickup latency into an idle worker.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
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
    for n in 0..500 {
        let job = NewJob::new(&Noop { n }).unwrap().queue("latency");
        let sent = Instant::now();
        jobs.insert(job).await.unwrap();
        let ran = rx.recv().await.unwrap();
        pickups.push(ran - sent);
    }
    worker.shutdown(Duration::from_secs(5)).await;
    pickups.sort();
    let p50 = pickups[pickups.len() / 2];
    let p99 = pickups[pickups.len() * 99 / 100];

    println!(
        "{name:>8}: enqueue {single_rate:>8.0}/s single, {batch_rate:>8.0}/s batched; \
         processed {drain_rate:>8.0} jobs/s (backlog {backlog}); pickup p50 {p50:.2?}, p99 {p99:.2?}"
    );
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let backlog: u64 = args
        .next()
        .map_or(20_000, |n| n.parse().expect("a job count"));
    let which = args.next().unwrap_or_else(|| "both".to_owned());
    if which == "sqlite" || which == "both" {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(dir.path().join("jobs.db")).await.unwrap();
        measure("sqlite", Jobs::new(store), backlog).await;
    }
    if which == "postgres" || which == "both" {
        let server = match palisade_testkit::PostgresServer::start_durable() {
            Ok(server) => server,
            Err(error) => {
                println!("postgres: skipped: {error}");
                return;
            }
        };
        let url = server.fresh_database().await.unwrap();
        let store = PostgresStore::connect(&url).await.unwrap();
        measure("postgres", Jobs::new(store), backlog).await;
    }
}
