//! Periodic jobs on both backends, under paused tokio time: a job at each tick, each tick
//! once across workers sharing a database, one catch-up job after downtime, a changed
//! expression resetting the next tick, and the store's compare-and-set itself.
//!
//! Tests run on a paused current-thread runtime and never wait on the wall clock. Every store
//! call runs on a second runtime, on real time, from a blocking task: tokio does not
//! auto-advance paused time while a blocking task runs, so test time moves only when every
//! task waits on a timer, never in the middle of a database round trip (and sqlx's own
//! timeouts run on real time).

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use palisade_jobs::periodic::Tick;
use palisade_jobs::postgres::PostgresStore;
use palisade_jobs::sqlite::SqliteStore;
use palisade_jobs::store::{
    BoxFuture, Claimed, DeadQuery, Lease, Outcome, QueueStats, Rescued, Signals, Store,
};
use palisade_jobs::{
    DeadJob, Enqueued, Error, JobEvent, JobId, JobRecord, Jobs, NewJob, PeriodicJob, Schedule,
    ScheduleError, Worker, WorkerHandle,
};
use palisade_testkit::PostgresServer;
use support::{Events, Work};
use tokio::sync::mpsc;

/// A database for one test and a runtime on real time that runs every store call.
struct Env {
    runtime: Option<tokio::runtime::Runtime>,
    db: Db,
}

enum Db {
    Sqlite(tempfile::TempDir),
    Postgres {
        _server: PostgresServer,
        url: String,
    },
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Env {
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
    }

    fn sqlite() -> Self {
        Self {
            runtime: Some(Self::runtime()),
            db: Db::Sqlite(tempfile::tempdir().unwrap()),
        }
    }

    async fn postgres() -> Option<Self> {
        let runtime = Self::runtime();
        let handle = runtime.handle().clone();
        let (server, url) = tokio::task::spawn_blocking(move || {
            let server = PostgresServer::start_or_skip()?;
            let url = handle.block_on(server.fresh_database()).unwrap();
            Some((server, url))
        })
        .await
        .unwrap()?;
        Some(Self {
            runtime: Some(runtime),
            db: Db::Postgres {
                _server: server,
                url,
            },
        })
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.runtime.as_ref().unwrap().handle().clone()
    }

    /// A queue on a store of its own (its own connections, as another process would have)
    /// on the test's database, reporting to `events`.
    async fn jobs(&self, events: &Events) -> Jobs {
        let handle = self.handle();
        let store: Arc<dyn Store> = match &self.db {
            Db::Sqlite(dir) => {
                let path = dir.path().join("jobs.db");
                Arc::new(on(&handle, move || SqliteStore::open(path)).await.unwrap())
            }
            Db::Postgres { url, .. } => {
                let url = url.clone();
                Arc::new(
                    on(&handle, move || async move {
                        PostgresStore::connect(&url).await
                    })
                    .await
                    .unwrap(),
                )
            }
        };
        Jobs::new(OffRuntime {
            inner: store,
            handle,
        })
        .with_listener(events.listener())
    }
}

/// Runs the future `make` makes on `handle`'s runtime, from a blocking task, which holds
/// paused time still.
async fn on<T, F, Fut>(handle: &tokio::runtime::Handle, make: F) -> T
where
    T: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = T>,
{
    let handle = handle.clone();
    tokio::task::spawn_blocking(move || handle.block_on(make()))
        .await
        .unwrap()
}

/// Runs the test `async fn name(env)` on SQLite and on PostgreSQL, on paused time.
macro_rules! on_both {
    ($name:ident) => {
        mod $name {
            #[tokio::test(start_paused = true)]
            async fn sqlite() {
                super::$name(super::Env::sqlite()).await;
            }

            #[tokio::test(start_paused = true)]
            async fn postgres() {
                let Some(env) = super::Env::postgres().await else {
                    return;
                };
                super::$name(env).await;
            }
        }
    };
}

/// A worker on `jobs` that runs `Work` jobs by sending their number to `done`, with a
/// periodic job `name` on `schedule`.
fn worker(
    jobs: &Jobs,
    name: &str,
    schedule: &str,
    done: mpsc::UnboundedSender<u32>,
) -> WorkerHandle {
    Worker::builder(jobs)
        .queue("default", 4)
        .handler(tower::service_fn(move |work: Work| {
            let done = done.clone();
            async move {
                let _ = done.send(work.n);
                Ok::<_, std::io::Error>(())
            }
        }))
        .periodic(name, Schedule::cron(schedule).unwrap(), &Work { n: 7 })
        .build()
        .unwrap()
        .spawn()
}

/// The ticks and lags of the periodic jobs enqueued, in order.
fn ticks(events: &Events) -> Vec<(SystemTime, Duration)> {
    events
        .all()
        .into_iter()
        .filter_map(|event| match event {
            JobEvent::PeriodicEnqueued { tick, lag, .. } => Some((tick, lag)),
            _ => None,
        })
        .collect()
}

fn since_epoch(time: SystemTime) -> Duration {
    time.duration_since(UNIX_EPOCH).unwrap()
}

/// How many jobs the database holds, in any state.
async fn stored(jobs: &Jobs) -> u64 {
    jobs.stats()
        .await
        .unwrap()
        .iter()
        .map(|q| q.available + q.scheduled + q.running + q.completed + q.cancelled + q.dead)
        .sum()
}

async fn a_schedule_enqueues_a_job_at_each_tick(env: Env) {
    let events = Events::default();
    let jobs = env.jobs(&events).await;
    let (done, mut ran) = mpsc::unbounded_channel();
    let worker = worker(&jobs, "every-minute", "* * * * *", done);
    for _ in 0..5 {
        assert_eq!(ran.recv().await, Some(7));
    }
    let metrics = worker.shutdown(Duration::from_secs(5)).await;

    let ticks = ticks(&events);
    assert!(ticks.len() >= 5, "{ticks:?}");
    for (tick, lag) in &ticks {
        assert_eq!(since_epoch(*tick).as_secs() % 60, 0, "on a whole minute");
        assert_eq!(since_epoch(*tick).subsec_nanos(), 0);
        assert!(
            *lag < Duration::from_secs(1),
            "enqueued at its tick: {lag:?}"
        );
    }
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].0.duration_since(pair[0].0).unwrap(),
            Duration::from_secs(60),
            "one job per tick, none skipped: {ticks:?}"
        );
    }
    assert_eq!(metrics.periodic, ticks.len() as u64);
    assert_eq!(stored(&jobs).await, ticks.len() as u64);
    assert_eq!(events.count("periodic_enqueued"), ticks.len());
}
on_both!(a_schedule_enqueues_a_job_at_each_tick);

async fn sub_minute_intervals_tick_on_time(env: Env) {
    let events = Events::default();
    let jobs = env.jobs(&events).await;
    let (done, mut ran) = mpsc::unbounded_channel();
    let worker = worker(&jobs, "every-5s", "@every 5s", done);
    for _ in 0..4 {
        assert_eq!(ran.recv().await, Some(7));
    }
    worker.shutdown(Duration::from_secs(5)).await;
    let ticks = ticks(&events);
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].0.duration_since(pair[0].0).unwrap(),
            Duration::from_secs(5)
        );
    }
    assert_eq!(since_epoch(ticks[0].0).as_micros() % 5_000_000, 0);
}
on_both!(sub_minute_intervals_tick_on_time);

async fn two_workers_enqueue_each_tick_once(env: Env) {
    let events = Events::default();
    // Two stores with their own connections: two processes sharing one database.
    let first = env.jobs(&events).await;
    let second = env.jobs(&events).await;
    let (done, mut ran) = mpsc::unbounded_channel();
    let workers = [
        worker(&first, "shared", "* * * * *", done.clone()),
        worker(&second, "shared", "* * * * *", done),
    ];
    for _ in 0..6 {
        assert_eq!(ran.recv().await, Some(7));
    }
    let mut enqueued_by = Vec::new();
    for worker in workers {
        enqueued_by.push(worker.shutdown(Duration::from_secs(5)).await.periodic);
    }

    let ticks = ticks(&events);
    assert!(ticks.len() >= 6, "{ticks:?}");
    for pair in ticks.windows(2) {
        assert_eq!(
            pair[1].0.duration_since(pair[0].0).unwrap(),
            Duration::from_secs(60),
            "each tick once: {ticks:?}"
        );
    }
    assert_eq!(enqueued_by.iter().sum::<u64>(), ticks.len() as u64);
    assert_eq!(stored(&first).await, ticks.len() as u64);
}
on_both!(two_workers_enqueue_each_tick_once);

async fn a_worker_down_over_many_ticks_catches_up_with_one_job(env: Env) {
    let events = Events::default();
    let jobs = env.jobs(&events).await;
    let (done, mut ran) = mpsc::unbounded_channel();
    let before = worker(&jobs, "catch-up", "* * * * *", done.clone());
    assert_eq!(ran.recv().await, Some(7));
    before.shutdown(Duration::from_secs(5)).await;
    let first = ticks(&events)[0].0;

    // Down for ten minutes: ten ticks go by.
    tokio::time::advance(Duration::from_secs(600)).await;
    let after = worker(&jobs, "catch-up", "* * * * *", done);
    assert_eq!(ran.recv().await, Some(7));
    assert_eq!(ran.recv().await, Some(7));
    after.shutdown(Duration::from_secs(5)).await;

    let ticks = ticks(&events);
    assert_eq!(ticks.len(), 3, "{ticks:?}");
    let (catch_up, lag) = ticks[1];
    assert_eq!(
        catch_up,
        first + Duration::from_secs(60),
        "the catch-up job stands for the oldest missed tick"
    );
    assert!(lag >= Duration::from_secs(540), "{lag:?}");
    let resumed = ticks[2].0.duration_since(catch_up).unwrap();
    assert!(
        resumed >= Duration::from_secs(600),
        "the missed ticks were not enqueued one by one: {ticks:?}"
    );
    assert_eq!(stored(&jobs).await, 3);
}
on_both!(a_worker_down_over_many_ticks_catches_up_with_one_job);

async fn a_changed_expression_resets_the_next_tick(env: Env) {
    let events = Events::default();
    let jobs = env.jobs(&events).await;
    let started = SystemTime::now();
    // Registered earlier with a yearly expression whose next tick is a year away.
    let a_year_on = started + Duration::from_secs(365 * 24 * 3600);
    let stored_next = jobs
        .store()
        .periodic_next("report", "0 0 1 1 *", a_year_on)
        .await
        .unwrap();
    assert_eq!(stored_next, whole_micros(a_year_on));

    let (done, mut ran) = mpsc::unbounded_channel();
    let worker = worker(&jobs, "report", "* * * * *", done);
    assert_eq!(ran.recv().await, Some(7));
    worker.shutdown(Duration::from_secs(5)).await;
    let tick = ticks(&events)[0].0;
    assert!(
        tick < started + Duration::from_secs(3600),
        "the new expression's first tick, not the old one's: {tick:?}"
    );
}
on_both!(a_changed_expression_resets_the_next_tick);

async fn a_failing_periodic_job_is_retried_then_dead_lettered(env: Env) {
    let events = Events::default();
    let jobs = env.jobs(&events).await;
    let job = NewJob::new(&Work { n: 3 }).unwrap().max_attempts(2);
    let (attempted, mut attempts) = mpsc::unbounded_channel();
    let worker = Worker::builder(&jobs)
        .queue("default", 1)
        .handler(tower::service_fn(move |work: Work| {
            let _ = attempted.send(work.n);
            async { Err::<(), _>(std::io::Error::other("report service down")) }
        }))
        .retry_backoff(support::quick_retries())
        .periodic_job(PeriodicJob::new(
            "failing",
            Schedule::cron("@hourly").unwrap(),
            job,
        ))
        .build()
        .unwrap()
        .spawn();
    // The tick's job, then its retry.
    assert_eq!(attempts.recv().await, Some(3));
    assert_eq!(attempts.recv().await, Some(3));
    let dead = support::until("the periodic job to be dead-lettered", || async {
        jobs.dead_jobs(&DeadQuery::new())
            .await
            .unwrap()
            .into_iter()
            .next()
    })
    .await;
    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!((dead.kind.as_str(), dead.attempts), ("work", 2));
    assert_eq!(dead.last_error, "report service down");
    assert_eq!(
        (metrics.periodic, metrics.failed, metrics.dead_lettered),
        (1, 1, 1)
    );
}
on_both!(a_failing_periodic_job_is_retried_then_dead_lettered);

/// `time` as stored: whole microseconds.
fn whole_micros(time: SystemTime) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(since_epoch(time).as_micros() as u64)
}

async fn the_store_advances_a_tick_only_from_the_tick_it_holds(env: Env) {
    let events = Events::default();
    let jobs = env.jobs(&events).await;
    let store = jobs.store();
    let t0 = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let minute = Duration::from_secs(60);
    let job = NewJob::new(&Work { n: 1 }).unwrap();

    assert_eq!(store.periodic_next("p", "* * * * *", t0).await.unwrap(), t0);
    // Registering again keeps the stored tick.
    assert_eq!(
        store
            .periodic_next("p", "* * * * *", t0 + minute)
            .await
            .unwrap(),
        t0
    );
    let tick = Tick::new("p", "* * * * *", t0, t0 + minute, job.clone());
    let first = store.periodic_enqueue(&tick).await.unwrap();
    assert!(matches!(first, Some(Enqueued::Created(_))), "{first:?}");
    // The same tick again (a second worker that read the same row): refused.
    assert_eq!(store.periodic_enqueue(&tick).await.unwrap(), None);
    // A tick read under another expression: refused.
    let other = Tick::new("p", "@hourly", t0 + minute, t0 + 2 * minute, job.clone());
    assert_eq!(store.periodic_enqueue(&other).await.unwrap(), None);
    // An unknown name: refused.
    let unknown = Tick::new("q", "* * * * *", t0, t0 + minute, job.clone());
    assert_eq!(store.periodic_enqueue(&unknown).await.unwrap(), None);
    assert_eq!(
        store.periodic_next("p", "* * * * *", t0).await.unwrap(),
        t0 + minute
    );
    // Racing for one tick from two stores (two processes): exactly one wins.
    let rival = env.jobs(&events).await;
    let next = Tick::new("p", "* * * * *", t0 + minute, t0 + 2 * minute, job.clone());
    let (a, b) = tokio::join!(
        store.periodic_enqueue(&next),
        rival.store().periodic_enqueue(&next)
    );
    let winners = [a.unwrap(), b.unwrap()].into_iter().flatten().count();
    assert_eq!(winners, 1);
    assert_eq!(stored(&jobs).await, 2);

    // A new expression resets the stored tick.
    assert_eq!(
        store
            .periodic_next("p", "@hourly", t0 + 9 * minute)
            .await
            .unwrap(),
        t0 + 9 * minute
    );
    // The job is runnable at once, whatever its own options said.
    let delayed = job.run_in(Duration::from_secs(86_400));
    let tick = Tick::new("p", "@hourly", t0 + 9 * minute, t0 + 69 * minute, delayed);
    let id = store.periodic_enqueue(&tick).await.unwrap().unwrap().id();
    let record = jobs.job(id).await.unwrap().unwrap();
    assert!(record.scheduled_at <= record.created_at, "{record:?}");
}
on_both!(the_store_advances_a_tick_only_from_the_tick_it_holds);

#[test]
fn a_bad_expression_is_a_typed_error() {
    use palisade_jobs::schedule::{CronField, FieldProblem};
    match Schedule::cron("*/5 25 * * MON") {
        Err(ScheduleError::Field {
            field: CronField::Hour,
            token,
            problem: FieldProblem::OutOfRange { min: 0, max: 23 },
        }) => assert_eq!(token, "25"),
        other => panic!("{other:?}"),
    }
    let error = Schedule::cron("0 12 * SEPT *").unwrap_err();
    assert_eq!(
        error.to_string(),
        "cron month field: `SEPT` is not a number or a name"
    );
    assert!(matches!(
        Schedule::cron("0 12 * *"),
        Err(ScheduleError::FieldCount { found: 4, .. })
    ));
    assert!(matches!(
        Schedule::cron("0 0 31 2 *"),
        Err(ScheduleError::Never(_))
    ));
    assert!(matches!(
        Schedule::every(Duration::ZERO),
        Err(ScheduleError::Interval(_))
    ));
}

/// A store that runs every call of `inner` on another runtime's `handle`, from a blocking
/// task (see the file's docs).
#[derive(Debug)]
struct OffRuntime {
    inner: Arc<dyn Store>,
    handle: tokio::runtime::Handle,
}

type Result<T> = std::result::Result<T, Error>;

impl OffRuntime {
    fn off<T, F>(&self, call: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn Store>) -> BoxFuture<'static, Result<T>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        let handle = self.handle.clone();
        Box::pin(async move { on(&handle, move || call(inner)).await })
    }
}

impl Store for OffRuntime {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    fn signals(&self) -> &Arc<Signals> {
        self.inner.signals()
    }

    fn listen(&self) {
        let _runtime = self.handle.enter();
        self.inner.listen();
    }

    fn insert<'a>(&'a self, jobs: &'a [NewJob]) -> BoxFuture<'a, Result<Vec<Enqueued>>> {
        let jobs = jobs.to_vec();
        self.off(move |s| Box::pin(async move { s.insert(&jobs).await }))
    }

    fn claim<'a>(
        &'a self,
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Claimed>>> {
        let queue = queue.to_owned();
        self.off(move |s| Box::pin(async move { s.claim(&queue, limit, lease).await }))
    }

    fn finish<'a>(&'a self, outcomes: &'a [Outcome]) -> BoxFuture<'a, Result<Vec<Lease>>> {
        let outcomes = outcomes.to_vec();
        self.off(move |s| Box::pin(async move { s.finish(&outcomes).await }))
    }

    fn finish_and_claim<'a>(
        &'a self,
        outcomes: &'a [Outcome],
        queue: &'a str,
        limit: u32,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(Vec<Lease>, Vec<Claimed>)>> {
        let (outcomes, queue) = (outcomes.to_vec(), queue.to_owned());
        self.off(move |s| {
            Box::pin(async move { s.finish_and_claim(&outcomes, &queue, limit, lease).await })
        })
    }

    fn heartbeat<'a>(
        &'a self,
        leases: &'a [Lease],
        lease: Duration,
    ) -> BoxFuture<'a, Result<Vec<Lease>>> {
        let leases = leases.to_vec();
        self.off(move |s| Box::pin(async move { s.heartbeat(&leases, lease).await }))
    }

    fn release<'a>(&'a self, leases: &'a [Lease]) -> BoxFuture<'a, Result<u64>> {
        let leases = leases.to_vec();
        self.off(move |s| Box::pin(async move { s.release(&leases).await }))
    }

    fn rescue(&self) -> BoxFuture<'_, Result<Rescued>> {
        self.off(|s| Box::pin(async move { s.rescue().await }))
    }

    fn next_due<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<Option<Duration>>> {
        let queue = queue.to_owned();
        self.off(move |s| Box::pin(async move { s.next_due(&queue).await }))
    }

    fn stats(&self) -> BoxFuture<'_, Result<Vec<QueueStats>>> {
        self.off(|s| Box::pin(async move { s.stats().await }))
    }

    fn job(&self, id: JobId) -> BoxFuture<'_, Result<Option<JobRecord>>> {
        self.off(move |s| Box::pin(async move { s.job(id).await }))
    }

    fn cancel(&self, id: JobId) -> BoxFuture<'_, Result<bool>> {
        self.off(move |s| Box::pin(async move { s.cancel(id).await }))
    }

    fn dead_jobs<'a>(&'a self, query: &'a DeadQuery) -> BoxFuture<'a, Result<Vec<DeadJob>>> {
        let query = query.clone();
        self.off(move |s| Box::pin(async move { s.dead_jobs(&query).await }))
    }

    fn dead_job(&self, id: JobId) -> BoxFuture<'_, Result<Option<DeadJob>>> {
        self.off(move |s| Box::pin(async move { s.dead_job(id).await }))
    }

    fn replay(&self, id: JobId) -> BoxFuture<'_, Result<Option<Enqueued>>> {
        self.off(move |s| Box::pin(async move { s.replay(id).await }))
    }

    fn purge_dead<'a>(
        &'a self,
        id: Option<JobId>,
        queue: Option<&'a str>,
    ) -> BoxFuture<'a, Result<u64>> {
        let queue = queue.map(str::to_owned);
        self.off(move |s| Box::pin(async move { s.purge_dead(id, queue.as_deref()).await }))
    }

    fn purge_finished(&self, before: SystemTime) -> BoxFuture<'_, Result<u64>> {
        self.off(move |s| Box::pin(async move { s.purge_finished(before).await }))
    }

    fn periodic_next<'a>(
        &'a self,
        name: &'a str,
        schedule: &'a str,
        first: SystemTime,
    ) -> BoxFuture<'a, Result<SystemTime>> {
        let (name, schedule) = (name.to_owned(), schedule.to_owned());
        self.off(move |s| Box::pin(async move { s.periodic_next(&name, &schedule, first).await }))
    }

    fn periodic_enqueue<'a>(&'a self, tick: &'a Tick) -> BoxFuture<'a, Result<Option<Enqueued>>> {
        let tick = tick.clone();
        self.off(move |s| Box::pin(async move { s.periodic_enqueue(&tick).await }))
    }
}
