//! Faults: lost workers and their leases, stale outcomes, graceful drain, and a PostgreSQL
//! server killed and restarted mid-run.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use palisade_jobs::store::{
    BoxFuture, Claimed, DeadQuery, Lease, Outcome, QueueStats, Rescued, Signals, Store,
};
use palisade_jobs::{
    Backoff, DeadJob, Enqueued, Error, JobId, JobRecord, JobState, Jobs, NewJob, Worker,
};
use palisade_shutdown::{Phase, Shutdown};
use support::{Db, Events, Work, until, until_state};

fn succeed() -> impl tower::Service<
    Work,
    Response = (),
    Error = std::io::Error,
    Future = std::future::Ready<Result<(), std::io::Error>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_: Work| std::future::ready(Ok(())))
}

async fn expired_lease_is_rescued_and_the_stale_outcome_refused(
    jobs: Jobs,
    _db: Db,
    events: Events,
) {
    let id = jobs.enqueue(&Work { n: 1 }).await.unwrap().id();
    let store = Arc::clone(jobs.store());
    // A worker claims the job and stalls: it never heartbeats.
    let stalled = store
        .claim("default", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(stalled.len(), 1);
    let stale = stalled[0].lease();
    assert_eq!(stalled[0].attempt, 1);

    // A live worker rescues it once the lease has expired, and completes it.
    let worker = Worker::builder(&jobs)
        .queue("default", 1)
        .rescue_interval(Duration::from_millis(50))
        .handler(succeed())
        .build()
        .unwrap()
        .spawn();
    let done = until_state(&jobs, id, JobState::Completed).await;
    assert_eq!(done.attempts, 2, "the lost attempt counts");
    assert_eq!(done.lease_token, stale.token + 1);
    assert!(
        done.last_error
            .as_deref()
            .unwrap()
            .starts_with("lease expired"),
        "{:?}",
        done.last_error
    );

    // The stalled worker wakes up: its heartbeat and its outcome are refused.
    assert!(
        store
            .heartbeat(&[stale], Duration::from_secs(5))
            .await
            .unwrap()
            .is_empty()
    );
    let late = [Outcome::Dead {
        lease: stale,
        error: "late failure".to_owned(),
    }];
    assert!(store.finish(&late).await.unwrap().is_empty());
    assert!(store.release(&[stale]).await.unwrap() == 0);
    assert_eq!(
        jobs.job(id).await.unwrap().unwrap(),
        done,
        "nothing changed"
    );
    assert!(jobs.dead_job(id).await.unwrap().is_none());

    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.rescued, 1);
    assert_eq!(events.count("rescued"), 1);
}
on_both!(expired_lease_is_rescued_and_the_stale_outcome_refused);

async fn expired_last_attempt_is_dead_lettered(jobs: Jobs, _db: Db, _events: Events) {
    let job = NewJob::new(&Work { n: 1 }).unwrap().max_attempts(1);
    let id = jobs.insert(job).await.unwrap().id();
    let store = Arc::clone(jobs.store());
    store
        .claim("default", 1, Duration::from_millis(50))
        .await
        .unwrap();
    let dead = until("the lost last attempt to be dead-lettered", || async {
        store.rescue().await.unwrap();
        jobs.dead_job(id).await.unwrap()
    })
    .await;
    assert!(dead.last_error.starts_with("lease expired"));
    assert_eq!(dead.attempts, 1);
}
on_both!(expired_last_attempt_is_dead_lettered);

/// A store whose heartbeats fail, as for a worker cut off from the database (or stalled)
/// while its handler runs; everything else passes through.
#[derive(Debug)]
struct NoHeartbeat(Arc<dyn Store>);

impl Store for NoHeartbeat {
    fn backend(&self) -> &'static str {
        self.0.backend()
    }
    fn signals(&self) -> &Arc<Signals> {
        self.0.signals()
    }
    fn insert<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>, Error>> {
        self.0.insert(jobs)
    }
    fn claim<'a>(
        &'a self,
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>, Error>> {
        self.0.claim(queue, limit, lease)
    }
    fn finish<'a>(&'a self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<Vec<Lease>, Error>> {
        self.0.finish(outcomes)
    }
    fn heartbeat<'a>(
        &'a self,
        _leases: &'a [Lease],
        _lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Lease>, Error>> {
        Box::pin(async { Err(Error::Database(sqlx::Error::PoolTimedOut)) })
    }
    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<u64, Error>> {
        self.0.release(leases)
    }
    fn rescue(&self) -> BoxFuture<'_, Result<Rescued, Error>> {
        self.0.rescue()
    }
    fn next_due<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Duration>, Error>> {
        self.0.next_due(queue)
    }
    fn stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>, Error>> {
        self.0.stats()
    }
    fn job(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>, Error>> {
        self.0.job(id)
    }
    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<bool, Error>> {
        self.0.cancel(id)
    }
    fn dead_jobs<'a>(&'a self, query: &'a DeadQuery) -> BoxFuture<'a, Result<Vec<DeadJob>, Error>> {
        self.0.dead_jobs(query)
    }
    fn dead_job(&self, id: JobId) -> BoxFuture<'_, Result<Option<DeadJob>, Error>> {
        self.0.dead_job(id)
    }
    fn replay(&self, id: JobId) -> BoxFuture<'_, Result<Option<Enqueued>, Error>> {
        self.0.replay(id)
    }
    fn purge_dead<'a>(
        &'a self,
        id: Option<JobId>,
        queue: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64, Error>> {
        self.0.purge_dead(id, queue)
    }
    fn purge_finished(&self, before: SystemTime) -> BoxFuture<'_, Result<u64, Error>> {
        self.0.purge_finished(before)
    }
}

async fn a_worker_that_lost_its_lease_cannot_overwrite_the_rescued_job(
    jobs: Jobs,
    _db: Db,
    events: Events,
) {
    let gate = Arc::new(tokio::sync::Notify::new());
    let waiting = Arc::clone(&gate);
    let stale_calls = Arc::new(AtomicU32::new(0));
    let calls = Arc::clone(&stale_calls);
    // Worker A: cannot heartbeat, and its handler fails only after the job was rescued.
    let cut_off = Jobs::from_arc(Arc::new(NoHeartbeat(Arc::clone(jobs.store()))))
        .with_listener(events.listener());
    let a = Worker::builder(&cut_off)
        .queue("default", 1)
        .lease(Duration::from_millis(300))
        .heartbeat(Duration::from_millis(100))
        .store_backoff(Backoff::constant(Duration::from_millis(20)))
        .handler(tower::service_fn(move |_: Work| {
            calls.fetch_add(1, Ordering::SeqCst);
            let gate = Arc::clone(&waiting);
            async move {
                gate.notified().await;
                Err::<(), _>(std::io::Error::other("stale failure"))
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let id = jobs.enqueue(&Work { n: 1 }).await.unwrap().id();
    until("worker A to start the job", || async {
        (stale_calls.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;

    // Worker B rescues the job after A's lease expires, and completes it.
    let b = Worker::builder(&jobs)
        .queue("default", 1)
        .rescue_interval(Duration::from_millis(50))
        .handler(succeed())
        .build()
        .unwrap()
        .spawn();
    let done = until_state(&jobs, id, JobState::Completed).await;
    assert_eq!(done.attempts, 2);

    // A's handler ends now; its failure must not touch the completed job.
    gate.notify_one();
    until("worker A's outcome to be refused", || async {
        (a.metrics().stale == 1).then_some(())
    })
    .await;
    assert_eq!(jobs.job(id).await.unwrap().unwrap(), done);
    assert_eq!(events.count("stale_outcome"), 1);
    let a = a.shutdown(Duration::from_secs(5)).await;
    let b = b.shutdown(Duration::from_secs(5)).await;
    assert_eq!((a.processed, a.failed, a.stale), (0, 0, 1));
    assert_eq!(b.processed, 1);
}
on_both!(a_worker_that_lost_its_lease_cannot_overwrite_the_rescued_job);

async fn graceful_drain_finishes_in_flight_and_releases_the_rest(
    jobs: Jobs,
    _db: Db,
    events: Events,
) {
    let shutdown = Shutdown::builder()
        .drain_deadline(Duration::from_millis(500))
        .build();
    let started = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&started);
    let draining = shutdown.clone_wait_for_draining();
    let worker = Worker::builder(&jobs)
        .queue("default", 3)
        .handler(tower::service_fn(move |work: Work| {
            seen.fetch_add(1, Ordering::SeqCst);
            let drain = draining();
            async move {
                if work.n == 3 {
                    std::future::pending::<()>().await; // never finishes
                }
                drain.await; // finishes during the drain
                Ok::<_, std::io::Error>(())
            }
        }))
        .build()
        .unwrap()
        .spawn_with_shutdown(&shutdown);
    let batch: Vec<NewJob> = (1..=3).map(|n| NewJob::new(&Work { n }).unwrap()).collect();
    let ids: Vec<JobId> = jobs
        .enqueue_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    until("three jobs to run", || async {
        (started.load(Ordering::SeqCst) == 3).then_some(())
    })
    .await;

    shutdown.trigger();
    let report = shutdown.run().await.unwrap();
    assert_eq!(report.tasks_at_drain, 1, "the drain waited for the worker");
    let late = jobs.enqueue(&Work { n: 4 }).await.unwrap().id();

    for &id in &ids[..2] {
        let record = jobs.job(id).await.unwrap().unwrap();
        assert_eq!(
            record.state,
            JobState::Completed,
            "in-flight job {id} finished"
        );
    }
    let released = jobs.job(ids[2]).await.unwrap().unwrap();
    assert_eq!(
        released.state,
        JobState::Pending,
        "the stuck job was released"
    );
    assert_eq!(released.attempts, 0, "a released attempt does not count");
    assert!(released.scheduled_at <= SystemTime::now());
    let metrics = worker.join().await;
    assert_eq!((metrics.processed, metrics.released), (2, 1));
    assert_eq!(events.count("released"), 1);
    assert_eq!(
        started.load(Ordering::SeqCst),
        3,
        "nothing was claimed after the drain began"
    );
    assert_eq!(
        jobs.job(late).await.unwrap().unwrap().state,
        JobState::Pending
    );
}
on_both!(graceful_drain_finishes_in_flight_and_releases_the_rest);

/// `Shutdown::wait_for(Phase::Draining)` as a factory the handler can call per job.
trait WaitForDraining {
    fn clone_wait_for_draining(
        &self,
    ) -> Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;
}

impl WaitForDraining for Shutdown {
    fn clone_wait_for_draining(
        &self,
    ) -> Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync> {
        let phases = self.subscribe();
        Arc::new(move || {
            let mut phases = phases.clone();
            Box::pin(async move {
                let _ = phases.wait_for(|phase| *phase >= Phase::Draining).await;
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_finish_every_job_after_postgres_is_killed_and_restarted() {
    let Some((jobs, mut db, events)) = support::postgres().await else {
        return;
    };
    const JOBS: u32 = 1_000;
    let ran = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&ran);
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(200))
        .rescue_interval(Duration::from_millis(200))
        .store_backoff(Backoff::constant(Duration::from_millis(100)))
        .handler(tower::service_fn(move |_: Work| {
            count.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                Ok::<_, std::io::Error>(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let batch: Vec<NewJob> = (0..JOBS)
        .map(|n| NewJob::new(&Work { n }).unwrap())
        .collect();
    jobs.enqueue_batch(&batch).await.unwrap();
    until("some jobs to run", || async {
        (ran.load(Ordering::SeqCst) >= 30).then_some(())
    })
    .await;

    let server = db.postgres().unwrap();
    tokio::task::block_in_place(|| server.kill()).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| server.restart()).unwrap();

    let stats = until("every job to complete", || async {
        let stats = jobs.stats().await.ok()?;
        let queue = stats.into_iter().find(|s| s.queue == "default")?;
        (queue.completed == u64::from(JOBS)).then_some(queue)
    })
    .await;
    assert_eq!(
        (stats.available, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0)
    );
    assert!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().is_empty());
    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert!(events.count("store_error") > 0, "the worker saw the outage");
    assert!(ran.load(Ordering::SeqCst) >= JOBS);
    // A completion whose commit was lost with the server is refused, never applied twice.
    assert!(metrics.processed <= u64::from(JOBS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_whose_connections_are_terminated_reconnects_and_runs_every_job_once() {
    let Some((jobs, db, events)) = support::postgres().await else {
        return;
    };
    let Db::Postgres(_, url) = &db else {
        unreachable!("support::postgres gives a PostgreSQL database")
    };
    const JOBS: u32 = 200;
    let runs: Arc<Vec<AtomicU32>> = Arc::new((0..2 * JOBS).map(|_| AtomicU32::new(0)).collect());
    let count = Arc::clone(&runs);
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        .poll_interval(Duration::from_millis(200))
        .store_backoff(Backoff::constant(Duration::from_millis(100)))
        .handler(tower::service_fn(move |work: Work| {
            count[work.n as usize].fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok::<_, std::io::Error>(()))
        }))
        .build()
        .unwrap()
        .spawn();
    let completed = |n: u32| {
        let jobs = &jobs;
        move || async move {
            let stats = jobs.stats().await.ok()?;
            let queue = stats.into_iter().find(|s| s.queue == "default")?;
            (queue.completed == u64::from(n)).then_some(queue)
        }
    };
    let batch: Vec<NewJob> = (0..JOBS)
        .map(|n| NewJob::new(&Work { n }).unwrap())
        .collect();
    jobs.enqueue_batch(&batch).await.unwrap();
    until("the first batch to complete", completed(JOBS)).await;

    // Every other session of the database ends: the worker's connections, the pool's idle
    // ones and the LISTEN connection. Nothing is claimed now, so no job can be stranded.
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url)
        .await
        .unwrap();
    let terminated: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
    )
    .fetch_one(&mut admin)
    .await
    .unwrap();
    assert!(terminated > 0);
    let batch: Vec<NewJob> = (JOBS..2 * JOBS)
        .map(|n| NewJob::new(&Work { n }).unwrap())
        .collect();
    jobs.enqueue_batch(&batch).await.unwrap();

    let stats = until("the second batch to complete", completed(2 * JOBS)).await;
    assert_eq!(
        (stats.available, stats.scheduled, stats.running, stats.dead),
        (0, 0, 0, 0)
    );
    // Every connection the worker held was dead, so finishing the second batch means it
    // replaced them: after a failed statement (reported as a store error) or, for one that
    // idled past a second, after a failed ping (replaced quietly).
    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    for (n, runs) in runs.iter().enumerate() {
        assert_eq!(runs.load(Ordering::SeqCst), 1, "job {n} ran once");
    }
    assert_eq!(metrics.processed, u64::from(2 * JOBS));
    assert_eq!(events.count("stale_outcome"), 0);
}
