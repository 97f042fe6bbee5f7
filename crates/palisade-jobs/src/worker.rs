//! [`Worker`]: claims jobs, runs their handlers, records the outcomes.
//!
//! One worker serves one or more queues, each with its own concurrency. Per queue, one task
//! claims batches (`min(claim batch, free slots)`), runs each job's handler in a task of its
//! own (inside a `tracing` span), and records outcomes in batches, fenced by the lease token.
//! Outcomes ride along with the next claim (one statement and one commit for both); when
//! there is nothing to claim they wait up to the completion interval (50 ms) or until a claim
//! batch of them is ready, so a commit is paid per batch, not per job.
//! No database transaction is open while a handler runs. While jobs run, the worker
//! heartbeats their leases; a lease it finds lost (rescued after expiry, or cancelled) stops
//! the handler. One more task per worker rescues the jobs of lost workers (expired leases) and
//! reports queue depth.
//!
//! The worker wakes when the store says jobs are available (SQLite: in-process; PostgreSQL:
//! `LISTEN/NOTIFY`), when a delayed job comes due, and at least every poll interval. When the
//! database cannot be reached it backs off with core's [`Backoff`] and keeps its finished
//! outcomes until it can record them.
//!
//! # Shutdown
//!
//! [`WorkerHandle::stop`] (or a [`Shutdown`]'s drain, with
//! [`Worker::spawn_with_shutdown`]) stops claiming and lets running jobs finish;
//! [`WorkerHandle::cancel`] (or the drain deadline) stops the handlers still running and
//! releases their jobs, which run again at once elsewhere, without counting the attempt.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::{Backoff, Jitter, Listener};
use palisade_shutdown::Shutdown;
use tokio::task::{AbortHandle, JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::Instrument as _;

use crate::error::Error;
use crate::event::{Counters, JobEvent, Metrics};
use crate::handler::{ErasedHandler, ServiceHandler, panic_message};
use crate::job::{Job, JobId};
use crate::jobs::Jobs;
use crate::periodic::{PeriodicJob, Scheduler};
use crate::schedule::Schedule;
use crate::store::{Claimed, Lease, Outcome, Store};
use palisade_core::BoxError;

/// The lease a claim gets unless [`WorkerBuilder::lease`] says otherwise: 10 s. A crashed
/// worker's jobs run again about this long after its last heartbeat.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);
/// How often a worker looks for new jobs when nothing wakes it, unless
/// [`WorkerBuilder::poll_interval`] says otherwise: 1 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How many jobs one claim takes at most, unless [`WorkerBuilder::claim_batch`] says
/// otherwise: 100.
pub const DEFAULT_CLAIM_BATCH: u32 = 100;
/// How long a finished job's outcome may wait to be recorded with others, unless
/// [`WorkerBuilder::completion_interval`] says otherwise: 50 ms.
pub const DEFAULT_COMPLETION_INTERVAL: Duration = Duration::from_millis(50);

/// The default delays between attempts of a failed job: exponential from 1 s, factor 2,
/// capped at 10 minutes, with equal jitter.
#[must_use]
pub fn default_retry_backoff() -> Backoff {
    Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(600))
        .map_or_else(|_| Backoff::default(), |b| b.with_jitter(Jitter::Equal))
}

/// The default delays between tries when the database cannot be reached: exponential from
/// 100 ms, factor 2, capped at 5 s, with full jitter.
#[must_use]
pub fn default_store_backoff() -> Backoff {
    Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(5))
        .map_or_else(|_| Backoff::default(), |b| b.with_jitter(Jitter::Full))
}

#[derive(Debug, Clone)]
struct Config {
    lease: Duration,
    heartbeat: Duration,
    poll_interval: Duration,
    claim_batch: u32,
    completion_interval: Duration,
    rescue_interval: Duration,
    stats_interval: Option<Duration>,
    retry_backoff: Backoff,
    store_backoff: Backoff,
}

/// Builds a [`Worker`]; made by [`Worker::builder`].
///
/// The defaults: lease 10 s ([`DEFAULT_LEASE`]), heartbeat every third of the lease, rescue
/// pass every quarter of the lease, poll every 1 s, claims of up to 100 jobs, outcomes
/// recorded with the next claim or within 50 ms, retries after
/// [`default_retry_backoff`], store errors retried after [`default_store_backoff`], queue
/// depth reported every 10 s.
pub struct WorkerBuilder {
    jobs: Jobs,
    queues: Vec<(String, usize)>,
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler>>,
    periodic: Vec<PeriodicJob>,
    /// A periodic job's payload that did not serialize, reported by `build`.
    periodic_error: Option<Error>,
    lease: Duration,
    heartbeat: Option<Duration>,
    poll_interval: Duration,
    claim_batch: u32,
    completion_interval: Duration,
    rescue_interval: Option<Duration>,
    stats_interval: Option<Duration>,
    retry_backoff: Backoff,
    store_backoff: Backoff,
}

impl std::fmt::Debug for WorkerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerBuilder")
            .field("queues", &self.queues)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("periodic", &self.periodic)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl WorkerBuilder {
    /// Serves `queue`, running at most `concurrency` of its jobs at once.
    #[must_use]
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency));
        self
    }

    /// Runs jobs of type `J` with `service`, a tower `Service<J>`: stack palisade's layers
    /// (timeout, breaker, rate limit) on it as on any service. Each run uses a clone of it,
    /// after its `poll_ready`. An `Err` is a failed attempt, recorded with the error's
    /// message (its sources included).
    #[must_use]
    pub fn handler<J, S>(mut self, service: S) -> Self
    where
        J: Job,
        S: Service<J> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
    {
        self.handlers
            .insert(J::TYPE, Arc::new(ServiceHandler::<J, S>::new(service)));
        self
    }

    /// Enqueues `job` at every tick of `schedule` (UTC), under `name`, with the default job
    /// options; see [`periodic`](crate::periodic). Of all the workers that register the same
    /// name on one database, in any number of processes, exactly one enqueues each tick; after
    /// the workers were down over several ticks, one catch-up job is enqueued, not one per
    /// missed tick.
    ///
    /// The job runs like any other: this worker runs it only if it serves the job's queue and
    /// has its handler. A payload that does not serialize is reported by
    /// [`build`](Self::build).
    #[must_use]
    pub fn periodic<J: Job>(self, name: impl Into<String>, schedule: Schedule, job: &J) -> Self {
        match PeriodicJob::of(name, schedule, job) {
            Ok(job) => self.periodic_job(job),
            Err(error) => Self {
                periodic_error: self.periodic_error.or(Some(error)),
                ..self
            },
        }
    }

    /// Registers a [`PeriodicJob`], whose job carries its own options (queue, priority,
    /// attempts, unique key); see [`periodic`](Self::periodic).
    #[must_use]
    pub fn periodic_job(mut self, job: PeriodicJob) -> Self {
        self.periodic.push(job);
        self
    }

    /// How long a claim's lease lasts without a heartbeat (default 10 s): a crashed
    /// worker's jobs run again this long after its last heartbeat.
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often leases are renewed (default a third of the lease; must be shorter than
    /// the lease).
    #[must_use]
    pub const fn heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = Some(every);
        self
    }

    /// How often to look for jobs when nothing wakes the worker (default 1 s): the longest
    /// a job enqueued by a process that cannot wake this one waits.
    #[must_use]
    pub const fn poll_interval(mut self, every: Duration) -> Self {
        self.poll_interval = every;
        self
    }

    /// At most how many jobs one claim takes (default 100).
    #[must_use]
    pub const fn claim_batch(mut self, jobs: u32) -> Self {
        self.claim_batch = jobs;
        self
    }

    /// How long a finished job's outcome may wait to be recorded together with others
    /// (default 50 ms, [`DEFAULT_COMPLETION_INTERVAL`]).
    ///
    /// Outcomes always ride along with the next claim (one statement, one commit for both),
    /// so a busy queue records them at once. When the worker has nothing to claim, they wait
    /// up to this long, or until a claim batch of them is ready, so that a trickle of jobs
    /// costs one commit per interval instead of one per job, and that commit does not delay
    /// the next enqueue and claim (a durable commit waits for a disk flush). The job stays
    /// `running`, its lease renewed, until its outcome is recorded; stopping the worker records
    /// at once. `Duration::ZERO` records every outcome as soon as the worker sees it.
    #[must_use]
    pub const fn completion_interval(mut self, every: Duration) -> Self {
        self.completion_interval = every;
        self
    }

    /// How often to look for expired leases to rescue (default a quarter of the lease).
    #[must_use]
    pub const fn rescue_interval(mut self, every: Duration) -> Self {
        self.rescue_interval = Some(every);
        self
    }

    /// How often to report queue depth as [`JobEvent::Depth`] (default 10 s; `None`: never).
    #[must_use]
    pub const fn stats_interval(mut self, every: Option<Duration>) -> Self {
        self.stats_interval = every;
        self
    }

    /// The delays between attempts of a failed job (default [`default_retry_backoff`]).
    /// Attempt limits come from each job's `max_attempts`; the backoff's own limits are
    /// ignored (past them, its last delay is used again).
    #[must_use]
    pub const fn retry_backoff(mut self, backoff: Backoff) -> Self {
        self.retry_backoff = backoff;
        self
    }

    /// The delays between tries when the database cannot be reached (default
    /// [`default_store_backoff`]).
    #[must_use]
    pub const fn store_backoff(mut self, backoff: Backoff) -> Self {
        self.store_backoff = backoff;
        self
    }

    /// The worker.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when neither a queue nor a periodic job is given, a concurrency or
    /// the claim batch is zero, the lease is zero, the heartbeat is not shorter than the
    /// lease, or two periodic jobs share a name (or have none); [`Error::Serialize`] when the
    /// payload of a periodic job given to [`periodic`](Self::periodic) did not serialize.
    pub fn build(self) -> Result<Worker, Error> {
        if let Some(error) = self.periodic_error {
            return Err(error);
        }
        if self.queues.is_empty() && self.periodic.is_empty() {
            return Err(Error::Config(
                "a worker needs at least one queue or periodic job",
            ));
        }
        crate::periodic::validate(&self.periodic)?;
        if self.queues.iter().any(|(_, concurrency)| *concurrency == 0) {
            return Err(Error::Config("a queue's concurrency must be at least 1"));
        }
        if self.claim_batch == 0 {
            return Err(Error::Config("the claim batch must be at least 1"));
        }
        if self.lease.is_zero() {
            return Err(Error::Config("the lease must be longer than zero"));
        }
        let heartbeat = self.heartbeat.unwrap_or(self.lease / 3);
        if heartbeat.is_zero() || heartbeat >= self.lease {
            return Err(Error::Config(
                "the heartbeat must be longer than zero and shorter than the lease",
            ));
        }
        if self.poll_interval.is_zero() {
            return Err(Error::Config("the poll interval must be longer than zero"));
        }
        let rescue_interval = self.rescue_interval.unwrap_or(self.lease / 4);
        if rescue_interval.is_zero() {
            return Err(Error::Config(
                "the rescue interval must be longer than zero",
            ));
        }
        Ok(Worker {
            jobs: self.jobs,
            queues: self.queues,
            handlers: Arc::new(self.handlers),
            periodic: self.periodic,
            config: Config {
                lease: self.lease,
                heartbeat,
                poll_interval: self.poll_interval,
                claim_batch: self.claim_batch,
                completion_interval: self.completion_interval,
                rescue_interval,
                stats_interval: self.stats_interval,
                retry_backoff: self.retry_backoff,
                store_backoff: self.store_backoff,
            },
        })
    }
}

/// Runs the handlers of one or more queues; see the [module docs](self).
///
/// ```no_run
/// use std::time::Duration;
/// use palisade_jobs::{Job, Jobs, Worker};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendEmail { to: String }
/// impl Job for SendEmail { const TYPE: &'static str = "send_email"; }
///
/// # async fn demo() -> Result<(), palisade_jobs::Error> {
/// let jobs = Jobs::sqlite("jobs.db").await?;
/// let worker = Worker::builder(&jobs)
///     .queue("default", 8)
///     .handler(tower::service_fn(|email: SendEmail| async move {
///         let _ = email.to; // send it
///         Ok::<_, std::io::Error>(())
///     }))
///     .build()?
///     .spawn();
/// jobs.enqueue(&SendEmail { to: "a@example.com".into() }).await?;
/// // ...
/// let metrics = worker.shutdown(Duration::from_secs(30)).await;
/// # let _ = metrics;
/// # Ok(())
/// # }
/// ```
pub struct Worker {
    jobs: Jobs,
    queues: Vec<(String, usize)>,
    handlers: Arc<HashMap<&'static str, Arc<dyn ErasedHandler>>>,
    periodic: Vec<PeriodicJob>,
    config: Config,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("queues", &self.queues)
            .field("handlers", &self.handlers.keys().collect::<Vec<_>>())
            .field("periodic", &self.periodic)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Controls a spawned [`Worker`].
#[derive(Debug)]
pub struct WorkerHandle {
    stop: CancellationToken,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    task: tokio::task::JoinHandle<()>,
}

impl WorkerHandle {
    /// The worker's counters so far.
    #[must_use]
    pub fn metrics(&self) -> Metrics {
        self.counters.snapshot()
    }

    /// Stops claiming; running jobs finish and their outcomes are recorded.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Stops claiming and stops the running handlers at once; their jobs are released to
    /// run again at once, without counting the attempt.
    pub fn cancel(&self) {
        self.stop.cancel();
        self.cancel.cancel();
    }

    /// Whether the worker has finished.
    #[must_use]
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Waits for the worker to finish (after [`stop`](Self::stop) or [`cancel`](Self::cancel))
    /// and returns its counters.
    pub async fn join(self) -> Metrics {
        if let Err(error) = self.task.await {
            tracing::error!(%error, "palisade-jobs: worker task failed");
        }
        self.counters.snapshot()
    }

    /// The graceful stop: [`stop`](Self::stop), wait up to `deadline` for running jobs,
    /// then [`cancel`](Self::cancel) what remains; returns the counters.
    pub async fn shutdown(self, deadline: Duration) -> Metrics {
        self.stop();
        let cancel = self.cancel.clone();
        let timer = tokio::spawn(async move {
            tokio::time::sleep(deadline).await;
            cancel.cancel();
        });
        let metrics = self.join().await;
        timer.abort();
        metrics
    }
}

struct Shared {
    store: Arc<dyn Store>,
    listener: Arc<dyn Listener<JobEvent>>,
    handlers: Arc<HashMap<&'static str, Arc<dyn ErasedHandler>>>,
    config: Config,
    counters: Arc<Counters>,
    stop: CancellationToken,
    cancel: CancellationToken,
}

impl Worker {
    /// A builder for a worker on `jobs`' store; see [`WorkerBuilder`] for the defaults.
    #[must_use]
    pub fn builder(jobs: &Jobs) -> WorkerBuilder {
        WorkerBuilder {
            jobs: jobs.clone(),
            queues: Vec::new(),
            handlers: HashMap::new(),
            periodic: Vec::new(),
            periodic_error: None,
            lease: DEFAULT_LEASE,
            heartbeat: None,
            poll_interval: DEFAULT_POLL_INTERVAL,
            claim_batch: DEFAULT_CLAIM_BATCH,
            completion_interval: DEFAULT_COMPLETION_INTERVAL,
            rescue_interval: None,
            stats_interval: Some(Duration::from_secs(10)),
            retry_backoff: default_retry_backoff(),
            store_backoff: default_store_backoff(),
        }
    }

    /// Starts the worker on the current tokio runtime.
    #[must_use]
    pub fn spawn(self) -> WorkerHandle {
        self.spawn_with_tokens(CancellationToken::new(), CancellationToken::new(), None)
    }

    /// Starts the worker as long-lived work of `shutdown`: when the drain begins it stops
    /// claiming and lets running jobs finish; at the drain deadline it stops the handlers
    /// still running and releases their jobs. The drain waits for it.
    #[must_use]
    pub fn spawn_with_shutdown(self, shutdown: &Shutdown) -> WorkerHandle {
        let guard = shutdown.guard();
        let stop = guard.stop_token().child_token();
        let cancel = guard.cancel_token().child_token();
        self.spawn_with_tokens(stop, cancel, Some(guard))
    }

    fn spawn_with_tokens(
        self,
        stop: CancellationToken,
        cancel: CancellationToken,
        guard: Option<palisade_shutdown::ShutdownGuard>,
    ) -> WorkerHandle {
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            store: Arc::clone(&self.jobs.store),
            listener: Arc::clone(&self.jobs.listener),
            handlers: self.handlers,
            config: self.config,
            counters: Arc::clone(&counters),
            stop: stop.clone(),
            cancel: cancel.clone(),
        });
        let queues = self.queues;
        let periodic = self.periodic;
        let task = tokio::spawn(async move {
            shared.store.listen();
            let mut loops = JoinSet::new();
            for (queue, concurrency) in queues {
                let queue_loop = QueueLoop::new(Arc::clone(&shared), queue.into(), concurrency);
                loops.spawn(queue_loop.run());
            }
            if !periodic.is_empty() {
                let scheduler = Scheduler {
                    store: Arc::clone(&shared.store),
                    listener: Arc::clone(&shared.listener),
                    counters: Arc::clone(&shared.counters),
                    stop: shared.stop.clone(),
                    store_backoff: shared.config.store_backoff,
                    jobs: periodic,
                };
                loops.spawn(scheduler.run());
            }
            loops.spawn(maintain(Arc::clone(&shared)));
            while let Some(done) = loops.join_next().await {
                if let Err(error) = done {
                    tracing::error!(%error, "palisade-jobs: a worker loop failed");
                }
            }
            drop(guard);
        });
        WorkerHandle {
            stop,
            cancel,
            counters,
            task,
        }
    }
}

/// The worker's housekeeping: rescue passes and depth reports, until it stops.
async fn maintain(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut rescue = tokio::time::interval(config.rescue_interval);
    rescue.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stats = config.stats_interval.map(|every| {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    loop {
        tokio::select! {
            () = shared.stop.cancelled() => return,
            _ = rescue.tick() => match shared.store.rescue().await {
                Ok(rescued) => {
                    let total = rescued.requeued + rescued.dead_lettered;
                    if total > 0 {
                        Counters::add(&shared.counters.rescued, total);
                        tracing::warn!(
                            requeued = rescued.requeued,
                            dead_lettered = rescued.dead_lettered,
                            "palisade-jobs: rescued jobs whose lease expired"
                        );
                        shared.listener.on_event(&JobEvent::Rescued(rescued));
                    }
                }
                Err(error) => tracing::warn!(%error, "palisade-jobs: rescue pass failed"),
            },
            _ = async { stats.as_mut()?.tick().await; Some(()) }, if stats.is_some() => {
                match shared.store.stats().await {
                    Ok(queues) => {
                        for queue in queues {
                            shared.listener.on_event(&JobEvent::Depth(queue));
                        }
                    }
                    Err(error) => tracing::warn!(%error, "palisade-jobs: depth report failed"),
                }
            }
        }
    }
}

/// A job whose handler is running.
struct Running {
    claimed: Claimed,
    started: Instant,
    abort: AbortHandle,
}

/// A finished attempt whose outcome is not recorded yet.
struct Finished {
    outcome: Outcome,
    attempt: u32,
    run_time: Duration,
}

/// At most this many claims of one queue are on their way to the store at once, while the
/// last claim took all it asked for (a backlog): while one waits for its commit's disk flush,
/// the next one runs.
const CLAIMS_IN_FLIGHT: usize = 2;

/// A claim, with the outcomes it carried, back from the store.
struct ClaimDone {
    limit: u32,
    sent: Vec<Finished>,
    result: Result<(Vec<Lease>, Vec<Claimed>), Error>,
}

/// One queue of a worker: claims, runs, records.
struct QueueLoop {
    shared: Arc<Shared>,
    queue: Arc<str>,
    concurrency: usize,
    tasks: JoinSet<Result<(), String>>,
    running: HashMap<tokio::task::Id, Running>,
    by_job: HashMap<JobId, tokio::task::Id>,
    finished: Vec<Finished>,
    /// When the oldest outcome in `finished` must be recorded.
    record_by: Option<Instant>,
    /// Claims on their way to the store.
    claims: JoinSet<ClaimDone>,
    /// Slots held for the jobs the claims in flight may bring.
    reserved: usize,
    /// The leases of the outcomes the claims in flight carry.
    sending: std::collections::HashSet<Lease>,
    /// Whether the last claim took all it asked for: more may be waiting, so claims overlap.
    backlog: bool,
    store_delays: palisade_core::backoff::Delays,
    /// While the store fails: no store call before this instant.
    backoff_until: Option<Instant>,
}

impl QueueLoop {
    fn new(shared: Arc<Shared>, queue: Arc<str>, concurrency: usize) -> Self {
        let store_delays = shared.config.store_backoff.delays();
        Self {
            shared,
            queue,
            concurrency,
            tasks: JoinSet::new(),
            running: HashMap::new(),
            by_job: HashMap::new(),
            finished: Vec::new(),
            record_by: None,
            claims: JoinSet::new(),
            reserved: 0,
            sending: std::collections::HashSet::new(),
            backlog: false,
            store_delays,
            backoff_until: None,
        }
    }

    async fn run(mut self) {
        let shared = Arc::clone(&self.shared);
        let signals = Arc::clone(shared.store.signals());
        let config = &shared.config;
        let mut stopping = false;
        let mut next_heartbeat = Instant::now() + config.heartbeat;
        let mut next_poll = Instant::now();
        let mut signals_seen = signals.jobs_sent();
        loop {
            // Armed before looking, so that a wake-up sent while we look is not lost.
            let mut jobs_signal = pin!(signals.wait_for_jobs());
            jobs_signal.as_mut().enable();
            let mut cancel_signal = pin!(signals.wait_for_cancel());
            cancel_signal.as_mut().enable();

            if !stopping && shared.stop.is_cancelled() {
                stopping = true;
            }
            let store_ready = self
                .backoff_until
                .is_none_or(|until| Instant::now() >= until);
            if store_ready {
                self.backoff_until = None;
            }
            let free = self
                .concurrency
                .saturating_sub(self.running.len() + self.reserved);
            if signals.jobs_sent() != signals_seen {
                next_poll = Instant::now();
            }
            // One claim at a time, or a few overlapping ones while there is a backlog.
            let may_send =
                self.claims.is_empty() || (self.backlog && self.claims.len() < CLAIMS_IN_FLIGHT);
            let claim =
                !stopping && free > 0 && store_ready && may_send && Instant::now() >= next_poll;
            if claim {
                signals_seen = signals.jobs_sent();
                let limit = u32::try_from(free)
                    .unwrap_or(u32::MAX)
                    .min(config.claim_batch);
                self.send_claim(limit);
                continue;
            }
            // Outcomes ride along with every claim; on their own they wait for the
            // completion interval or a full batch (see `completion_interval`), and for the
            // claims in flight, which may carry the next ones.
            let record_alone = store_ready
                && !self.finished.is_empty()
                && self.claims.is_empty()
                && (stopping
                    || self.finished.len() >= config.claim_batch as usize
                    || self.record_by.is_none_or(|by| Instant::now() >= by));
            if record_alone {
                self.record().await;
            }
            if stopping
                && self.running.is_empty()
                && self.finished.is_empty()
                && self.claims.is_empty()
            {
                return;
            }
            let holding =
                !self.running.is_empty() || !self.finished.is_empty() || !self.sending.is_empty();
            if holding && Instant::now() >= next_heartbeat {
                self.heartbeat().await;
                next_heartbeat = Instant::now() + config.heartbeat;
                continue;
            }

            // While backing off from store errors, only the retry timer (and finishing
            // handlers) wake the loop: no busy polling.
            let can_claim = !stopping
                && self.running.len() + self.reserved < self.concurrency
                && self.backoff_until.is_none()
                && may_send;
            let retry_at = self.backoff_until;
            // (A claim on its way will carry the outcomes, or come back before they are due.)
            let record_at = self.record_by.filter(|_| {
                !self.finished.is_empty() && retry_at.is_none() && self.claims.is_empty()
            });
            tokio::select! {
                () = shared.cancel.cancelled() => {
                    self.cancel_all().await;
                    return;
                }
                () = shared.stop.cancelled(), if !stopping => stopping = true,
                Some(done) = self.claims.join_next(), if !self.claims.is_empty() => {
                    match self.claim_done(done) {
                        Some(true) => {
                            // There may be more waiting: claim again at once.
                            self.backlog = true;
                            next_poll = Instant::now();
                        }
                        Some(false) => {
                            // The queue had no more runnable jobs: wait for a wake-up (one
                            // sent since this claim began counts), the poll interval, or the
                            // next delayed job, whichever comes first.
                            self.backlog = false;
                            next_poll = Instant::now() + config.poll_interval;
                            if let Ok(Some(due)) = shared.store.next_due(&self.queue).await {
                                next_poll = next_poll.min(Instant::now() + due);
                            }
                        }
                        None => self.backlog = false,
                    }
                }
                Some(done) = self.tasks.join_next_with_id(), if !self.tasks.is_empty() => {
                    self.on_done(done);
                    while let Some(done) = self.tasks.try_join_next_with_id() {
                        self.on_done(done);
                    }
                }
                () = &mut jobs_signal, if can_claim => next_poll = Instant::now(),
                () = &mut cancel_signal, if !self.running.is_empty() => {
                    next_heartbeat = Instant::now();
                }
                () = tokio::time::sleep_until(next_poll), if can_claim => {}
                () = async { if let Some(at) = record_at { tokio::time::sleep_until(at).await } },
                    if record_at.is_some() => {}
                () = tokio::time::sleep_until(next_heartbeat), if holding => {}
                () = async { if let Some(at) = retry_at { tokio::time::sleep_until(at).await } },
                    if retry_at.is_some() => {}
            }
        }
    }

    fn store_ok(&mut self) {
        self.store_delays = self.shared.config.store_backoff.delays();
    }

    fn store_failed(&mut self, operation: &'static str, error: &Error) {
        let retry_in = self
            .store_delays
            .next()
            .unwrap_or(self.shared.config.poll_interval);
        self.backoff_until = Some(Instant::now() + retry_in);
        tracing::warn!(
            queue = %self.queue,
            operation,
            %error,
            retry_in = ?retry_in,
            "palisade-jobs: store unavailable; backing off"
        );
        self.shared.listener.on_event(&JobEvent::StoreError {
            operation,
            error: error.to_string().into(),
            retry_in,
        });
    }

    /// Sends a claim of up to `limit` jobs to the store, carrying the finished outcomes.
    fn send_claim(&mut self, limit: u32) {
        let sent = std::mem::take(&mut self.finished);
        self.record_by = None;
        self.sending
            .extend(sent.iter().map(|finished| finished.outcome.lease()));
        self.reserved += limit as usize;
        let shared = Arc::clone(&self.shared);
        let queue = Arc::clone(&self.queue);
        self.claims.spawn(async move {
            let lease = shared.config.lease;
            let result = if sent.is_empty() {
                shared
                    .store
                    .claim(&queue, limit, lease)
                    .await
                    .map(|claimed| (Vec::new(), claimed))
            } else {
                // One round trip for both.
                let outcomes: Vec<Outcome> = sent.iter().map(|f| f.outcome.clone()).collect();
                shared
                    .store
                    .finish_and_claim(&outcomes, &queue, limit, lease)
                    .await
            };
            ClaimDone {
                limit,
                sent,
                result,
            }
        });
    }

    /// Takes a claim back: settles the outcomes it carried and starts the jobs it brought.
    /// `Some(true)` when it took all it asked for, `Some(false)` when fewer, `None` when it
    /// failed (its outcomes wait to be sent again).
    fn claim_done(&mut self, done: Result<ClaimDone, JoinError>) -> Option<bool> {
        let done = match done {
            Ok(done) => done,
            Err(error) => {
                // Not expected: the store's futures do not panic. Its outcomes are lost to
                // this worker; their jobs run again when their leases expire.
                tracing::error!(%error, queue = %self.queue, "palisade-jobs: a claim task failed");
                if self.claims.is_empty() {
                    self.reserved = 0;
                    self.sending.clear();
                }
                return None;
            }
        };
        self.reserved = self.reserved.saturating_sub(done.limit as usize);
        for finished in &done.sent {
            self.sending.remove(&finished.outcome.lease());
        }
        match done.result {
            Ok((applied, claimed)) => {
                self.store_ok();
                self.settle(done.sent, &applied);
                let all = claimed.len() == done.limit as usize;
                for job in claimed {
                    self.start(job);
                }
                Some(all)
            }
            Err(error) => {
                if self.finished.is_empty() {
                    self.record_by = Some(Instant::now());
                }
                self.finished.extend(done.sent);
                self.store_failed("claim", &error);
                None
            }
        }
    }

    fn start(&mut self, job: Claimed) {
        let span = tracing::info_span!(
            "job",
            job.id = job.id.get(),
            job.kind = %job.kind,
            job.queue = %self.queue,
            job.attempt = job.attempt,
        );
        let run = match self.shared.handlers.get(job.kind.as_str()) {
            Some(handler) => handler.start(&job.payload),
            None => {
                let message = format!("no handler for job type `{}` on this worker", job.kind);
                Box::pin(std::future::ready(Err(message)))
            }
        };
        span.in_scope(|| {
            tracing::debug!(pickup = ?job.pickup, "palisade-jobs: job started");
        });
        self.shared.listener.on_event(&JobEvent::Started {
            queue: Arc::clone(&self.queue),
            id: job.id,
            attempt: job.attempt,
            pickup: job.pickup,
        });
        let abort = self.tasks.spawn(run.instrument(span));
        self.by_job.insert(job.id, abort.id());
        self.running.insert(
            abort.id(),
            Running {
                claimed: job,
                started: Instant::now(),
                abort,
            },
        );
    }

    fn on_done(&mut self, done: Result<(tokio::task::Id, Result<(), String>), JoinError>) {
        let (task, result) = match done {
            Ok((task, result)) => (task, Ok(result)),
            Err(error) => (error.id(), Err(error)),
        };
        let Some(run) = self.running.remove(&task) else {
            return; // stopped after its lease was lost: nothing to record
        };
        self.by_job.remove(&run.claimed.id);
        let run_time = run.started.elapsed();
        let job = run.claimed;
        let error = match result {
            Ok(Ok(())) => None,
            Ok(Err(message)) => Some(message),
            Err(error) if error.is_panic() => Some(format!(
                "handler panicked: {}",
                panic_message(&*error.into_panic())
            )),
            Err(_) => return, // aborted by us
        };
        let outcome = match error {
            None => Outcome::Completed(job.lease()),
            Some(error) if job.attempt >= job.max_attempts => Outcome::Dead {
                lease: job.lease(),
                error,
            },
            Some(error) => Outcome::Retry {
                lease: job.lease(),
                error,
                retry_in: retry_delay(&self.shared.config.retry_backoff, job.attempt),
            },
        };
        if self.finished.is_empty() {
            self.record_by = Some(Instant::now() + self.shared.config.completion_interval);
        }
        self.finished.push(Finished {
            outcome,
            attempt: job.attempt,
            run_time,
        });
    }

    /// The outcomes waiting to be recorded.
    fn outcomes(&self) -> Vec<Outcome> {
        self.finished.iter().map(|f| f.outcome.clone()).collect()
    }

    /// Records the finished outcomes in one round trip.
    async fn record(&mut self) {
        let outcomes = self.outcomes();
        match self.shared.store.finish(&outcomes).await {
            Ok(applied) => {
                self.store_ok();
                let finished = std::mem::take(&mut self.finished);
                self.record_by = None;
                self.settle(finished, &applied);
            }
            Err(error) => self.store_failed("finish", &error),
        }
    }

    /// Counts and reports the recorded outcomes; `applied` are the leases the store accepted,
    /// the others were stale.
    fn settle(&mut self, finished: Vec<Finished>, applied: &[Lease]) {
        let applied: std::collections::HashSet<Lease> = applied.iter().copied().collect();
        let counters = &self.shared.counters;
        let listener = &self.shared.listener;
        for finished in finished {
            let lease = finished.outcome.lease();
            let queue = Arc::clone(&self.queue);
            let id = lease.id;
            if !applied.contains(&lease) {
                Counters::add(&counters.stale, 1);
                tracing::warn!(
                    job.id = id.get(),
                    queue = %queue,
                    "palisade-jobs: outcome refused: the lease is no longer current (rescued or cancelled)"
                );
                listener.on_event(&JobEvent::StaleOutcome { queue, id });
                continue;
            }
            match finished.outcome {
                Outcome::Completed(_) => {
                    Counters::add(&counters.processed, 1);
                    tracing::debug!(job.id = id.get(), run_time = ?finished.run_time, "palisade-jobs: job completed");
                    listener.on_event(&JobEvent::Completed {
                        queue,
                        id,
                        run_time: finished.run_time,
                    });
                }
                Outcome::Retry {
                    error, retry_in, ..
                } => {
                    Counters::add(&counters.failed, 1);
                    tracing::warn!(
                        job.id = id.get(),
                        attempt = finished.attempt,
                        retry_in = ?retry_in,
                        %error,
                        "palisade-jobs: job failed; will retry"
                    );
                    listener.on_event(&JobEvent::Failed {
                        queue,
                        id,
                        attempt: finished.attempt,
                        run_time: finished.run_time,
                        retry_in,
                    });
                }
                Outcome::Dead { error, .. } => {
                    Counters::add(&counters.dead_lettered, 1);
                    tracing::error!(
                        job.id = id.get(),
                        attempts = finished.attempt,
                        %error,
                        "palisade-jobs: job failed its last attempt; dead-lettered"
                    );
                    listener.on_event(&JobEvent::DeadLettered {
                        queue,
                        id,
                        attempts: finished.attempt,
                        run_time: finished.run_time,
                    });
                }
            }
        }
    }

    /// Renews the leases of running jobs and of finished ones not yet recorded; stops the
    /// handlers whose lease is lost.
    async fn heartbeat(&mut self) {
        let leases: Vec<Lease> = self
            .running
            .values()
            .map(|run| run.claimed.lease())
            .chain(self.finished.iter().map(|f| f.outcome.lease()))
            .chain(self.sending.iter().copied())
            .collect();
        if leases.is_empty() {
            return;
        }
        let held = match self
            .shared
            .store
            .heartbeat(&leases, self.shared.config.lease)
            .await
        {
            Ok(held) => held,
            Err(error) => {
                self.store_failed("heartbeat", &error);
                return;
            }
        };
        let held: std::collections::HashSet<Lease> = held.into_iter().collect();
        for lease in leases {
            if held.contains(&lease) {
                continue;
            }
            let Some(task) = self.by_job.remove(&lease.id) else {
                continue; // finished; its outcome will be refused as stale
            };
            if let Some(run) = self.running.remove(&task) {
                run.abort.abort();
                tracing::warn!(
                    job.id = lease.id.get(),
                    queue = %self.queue,
                    "palisade-jobs: lease lost (rescued elsewhere or cancelled); handler stopped"
                );
                self.shared.listener.on_event(&JobEvent::LeaseLost {
                    queue: Arc::clone(&self.queue),
                    id: lease.id,
                });
            }
        }
    }

    /// The deadline: stop every handler, record what finished, release the rest.
    async fn cancel_all(&mut self) {
        while let Some(done) = self.tasks.try_join_next_with_id() {
            self.on_done(done);
        }
        let mut leases: Vec<Lease> = self.running.values().map(|r| r.claimed.lease()).collect();
        // Claims on their way: wait for them, settle what they carried, release what they
        // took without running it.
        while let Some(done) = self.claims.join_next().await {
            let Ok(done) = done else { continue };
            for finished in &done.sent {
                self.sending.remove(&finished.outcome.lease());
            }
            match done.result {
                Ok((applied, claimed)) => {
                    self.settle(done.sent, &applied);
                    leases.extend(claimed.iter().map(Claimed::lease));
                }
                Err(_) => self.finished.extend(done.sent),
            }
        }
        self.reserved = 0;
        self.tasks.shutdown().await;
        self.running.clear();
        self.by_job.clear();
        if !self.finished.is_empty() {
            self.record().await;
        }
        if leases.is_empty() {
            return;
        }
        match self.shared.store.release(&leases).await {
            Ok(count) => {
                Counters::add(&self.shared.counters.released, count);
                tracing::info!(queue = %self.queue, count, "palisade-jobs: released unfinished jobs");
                self.shared.listener.on_event(&JobEvent::Released {
                    queue: Arc::clone(&self.queue),
                    count,
                });
            }
            Err(error) => tracing::warn!(
                queue = %self.queue,
                %error,
                jobs = leases.len(),
                "palisade-jobs: could not release unfinished jobs; they run again when their lease expires"
            ),
        }
    }
}

/// The backoff before the attempt after `attempt` (from 1): the `attempt`-th delay, or the
/// last one the backoff gives.
fn retry_delay(backoff: &Backoff, attempt: u32) -> Duration {
    // Past 64 retries an exponential curve is at its cap anyway.
    let unlimited = (*backoff).with_max_attempts(NonZeroU32::MAX);
    let mut delays = unlimited.delays();
    let mut delay = Duration::ZERO;
    for _ in 0..attempt.clamp(1, 64) {
        match delays.next() {
            Some(next) => delay = next,
            None => break,
        }
    }
    delay
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_backoff_and_stay_at_its_last_delay() {
        let backoff = Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(8))
            .unwrap()
            .with_max_attempts(NonZeroU32::new(2).unwrap());
        let delays: Vec<_> = (1..=6)
            .map(|attempt| retry_delay(&backoff, attempt))
            .collect();
        // The backoff's own attempt limit is ignored: the job's max_attempts decides.
        assert_eq!(delays, [1, 2, 4, 8, 8, 8].map(Duration::from_secs));
        assert_eq!(
            retry_delay(&backoff, u32::MAX),
            Duration::from_secs(8),
            "huge attempt numbers are cheap and capped"
        );
    }

    #[test]
    fn default_retry_backoff_never_goes_below_half_its_nominal_delay() {
        let backoff = default_retry_backoff();
        for attempt in 1..=12 {
            let nominal = Duration::from_secs(1 << (attempt - 1)).min(Duration::from_secs(600));
            let delay = retry_delay(&backoff, attempt);
            assert!(
                delay >= nominal / 2 && delay <= nominal,
                "{attempt}: {delay:?}"
            );
        }
    }

    #[tokio::test]
    async fn builder_rejects_settings_that_cannot_work() {
        #[derive(Debug)]
        struct Nothing;
        impl Store for Nothing {
            fn backend(&self) -> &'static str {
                "nothing"
            }
            fn signals(&self) -> &Arc<crate::store::Signals> {
                unimplemented!()
            }
            fn insert<'a>(
                &'a self,
                _: &'a [crate::NewJob],
            ) -> crate::store::BoxFuture<'a, crate::store::Result<Vec<crate::Enqueued>>>
            {
                unimplemented!()
            }
            fn claim<'a>(
                &'a self,
                _: &'a str,
                _: u32,
                _: Duration,
            ) -> crate::store::BoxFuture<'a, crate::store::Result<Vec<Claimed>>> {
                unimplemented!()
            }
            fn finish<'a>(
                &'a self,
                _: &'a [Outcome],
            ) -> crate::store::BoxFuture<'a, crate::store::Result<Vec<Lease>>> {
                unimplemented!()
            }
            fn heartbeat<'a>(
                &'a self,
                _: &'a [Lease],
                _: Duration,
            ) -> crate::store::BoxFuture<'a, crate::store::Result<Vec<Lease>>> {
                unimplemented!()
            }
            fn release<'a>(
                &'a self,
                _: &'a [Lease],
            ) -> crate::store::BoxFuture<'a, crate::store::Result<u64>> {
                unimplemented!()
            }
            fn rescue(
                &self,
            ) -> crate::store::BoxFuture<'_, crate::store::Result<crate::store::Rescued>>
            {
                unimplemented!()
            }
            fn next_due<'a>(
                &'a self,
                _: &'a str,
            ) -> crate::store::BoxFuture<'a, crate::store::Result<Option<Duration>>> {
                unimplemented!()
            }
            fn stats(
                &self,
            ) -> crate::store::BoxFuture<'_, crate::store::Result<Vec<crate::QueueStats>>>
            {
                unimplemented!()
            }
            fn job(
                &self,
                _: JobId,
            ) -> crate::store::BoxFuture<'_, crate::store::Result<Option<crate::JobRecord>>>
            {
                unimplemented!()
            }
            fn cancel(&self, _: JobId) -> crate::store::BoxFuture<'_, crate::store::Result<bool>> {
                unimplemented!()
            }
            fn dead_jobs<'a>(
                &'a self,
                _: &'a crate::DeadQuery,
            ) -> crate::store::BoxFuture<'a, crate::store::Result<Vec<crate::DeadJob>>>
            {
                unimplemented!()
            }
            fn dead_job(
                &self,
                _: JobId,
            ) -> crate::store::BoxFuture<'_, crate::store::Result<Option<crate::DeadJob>>>
            {
                unimplemented!()
            }
            fn replay(
                &self,
                _: JobId,
            ) -> crate::store::BoxFuture<'_, crate::store::Result<Option<crate::Enqueued>>>
            {
                unimplemented!()
            }
            fn purge_dead<'a>(
                &'a self,
                _: Option<JobId>,
                _: Option<&'a str>,
            ) -> crate::store::BoxFuture<'a, crate::store::Result<u64>> {
                unimplemented!()
            }
            fn purge_finished(
                &self,
                _: std::time::SystemTime,
            ) -> crate::store::BoxFuture<'_, crate::store::Result<u64>> {
                unimplemented!()
            }
        }
        let jobs = Jobs::new(Nothing);
        let refused = |builder: WorkerBuilder| match builder.build() {
            Err(Error::Config(reason)) => reason,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        assert_eq!(
            refused(Worker::builder(&jobs)),
            "a worker needs at least one queue or periodic job"
        );
        let hourly = Schedule::cron("@hourly").unwrap();
        let job = crate::NewJob::from_json("tick", "{}");
        assert_eq!(
            refused(
                Worker::builder(&jobs)
                    .periodic_job(PeriodicJob::new("a", hourly.clone(), job.clone()))
                    .periodic_job(PeriodicJob::new("a", hourly.clone(), job.clone()))
            ),
            "two periodic jobs of one worker have the same name"
        );
        assert_eq!(
            refused(Worker::builder(&jobs).periodic_job(PeriodicJob::new(
                "",
                hourly.clone(),
                job.clone()
            ))),
            "a periodic job needs a name"
        );
        struct Unserializable;
        impl serde::Serialize for Unserializable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no"))
            }
        }
        impl<'de> serde::Deserialize<'de> for Unserializable {
            fn deserialize<D: serde::Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
                Err(serde::de::Error::custom("no"))
            }
        }
        impl Job for Unserializable {
            const TYPE: &'static str = "unserializable";
        }
        assert!(matches!(
            Worker::builder(&jobs)
                .queue("a", 1)
                .periodic("u", hourly.clone(), &Unserializable)
                .build(),
            Err(Error::Serialize(_))
        ));
        // A scheduler-only worker (no queue) is fine.
        assert!(
            Worker::builder(&jobs)
                .periodic_job(PeriodicJob::new("b", hourly, job))
                .build()
                .is_ok()
        );
        assert_eq!(
            refused(Worker::builder(&jobs).queue("a", 0)),
            "a queue's concurrency must be at least 1"
        );
        assert_eq!(
            refused(Worker::builder(&jobs).queue("a", 1).claim_batch(0)),
            "the claim batch must be at least 1"
        );
        assert_eq!(
            refused(
                Worker::builder(&jobs)
                    .queue("a", 1)
                    .heartbeat(DEFAULT_LEASE)
            ),
            "the heartbeat must be longer than zero and shorter than the lease"
        );
        assert_eq!(
            refused(Worker::builder(&jobs).queue("a", 1).lease(Duration::ZERO)),
            "the lease must be longer than zero"
        );
        let worker = Worker::builder(&jobs).queue("a", 1).build().unwrap();
        assert_eq!(worker.config.heartbeat, DEFAULT_LEASE / 3);
        assert_eq!(worker.config.rescue_interval, DEFAULT_LEASE / 4);
    }
}
