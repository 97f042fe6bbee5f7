//! Jobs for the pool's tests: each one logs its name when the service starts it, and may hold
//! its permit until its caller lets it finish.

#![allow(dead_code, unreachable_pub)]

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use palisade_core::{BoxError, Overloaded, Rejection};
use palisade_pool::{ConcurrencyPoolLayer, PoolConfigBuilder, PriorityFn, priority_fn};
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

pub fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// What a job does once started.
#[derive(Debug)]
pub enum Then {
    /// Answers at once.
    Done,
    /// Answers when the sender is used or dropped.
    Hold(oneshot::Receiver<()>),
    Fail,
    Panic,
}

#[derive(Debug)]
pub struct Job {
    pub name: &'static str,
    pub priority: u8,
    pub then: Then,
}

pub fn job(name: &'static str, priority: u8) -> Job {
    Job {
        name,
        priority,
        then: Then::Done,
    }
}

/// A job that holds its permit until the returned sender is used or dropped.
pub fn held(name: &'static str) -> (Job, oneshot::Sender<()>) {
    let (release, hold) = oneshot::channel();
    let job = Job {
        name,
        priority: 5,
        then: Then::Hold(hold),
    };
    (job, release)
}

pub type Log = Arc<Mutex<Vec<&'static str>>>;

pub fn started(log: &Log) -> Vec<&'static str> {
    log.lock().unwrap().clone()
}

/// The jobs service: logs each job's name when it starts.
pub fn jobs(
    log: Log,
) -> impl Service<
    Job,
    Response = &'static str,
    Error = &'static str,
    Future = impl Future<Output = Result<&'static str, &'static str>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |job: Job| {
        log.lock().unwrap().push(job.name);
        async move {
            match job.then {
                Then::Done => Ok(job.name),
                Then::Hold(hold) => {
                    let _ = hold.await;
                    Ok(job.name)
                }
                Then::Fail => Err("job failed"),
                Then::Panic => panic!("job panicked"),
            }
        }
    })
}

pub type ByPriority = PriorityFn<fn(&Job) -> u8>;

fn job_priority(job: &Job) -> u8 {
    job.priority
}

/// A pool over the jobs service, prioritised by the jobs' priorities.
pub fn pool(config: PoolConfigBuilder) -> ConcurrencyPoolLayer<ByPriority> {
    ConcurrencyPoolLayer::new(config.build().expect("valid pool config"))
        .prioritize(priority_fn(job_priority as fn(&Job) -> u8))
}

pub fn service(
    layer: &ConcurrencyPoolLayer<ByPriority>,
    log: &Log,
) -> impl Service<Job, Response = &'static str, Error = BoxError, Future: Send + 'static>
+ Clone
+ Send
+ 'static
+ use<> {
    layer.layer(jobs(Arc::clone(log)))
}

/// Calls `service` now (so the call is admitted or queued in this order) and spawns its
/// response future.
pub async fn spawn_call<S>(
    service: &mut S,
    job: Job,
) -> tokio::task::JoinHandle<Result<&'static str, BoxError>>
where
    S: Service<Job, Response = &'static str, Error = BoxError>,
    S::Future: Send + 'static,
{
    let future = service.ready().await.expect("ready").call(job);
    tokio::spawn(future)
}

/// Lets spawned tasks run until none can make progress (time is paused).
pub async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// The `Overloaded` in `error`, or a panic saying what it was instead.
pub fn overloaded(error: &BoxError) -> Overloaded {
    match Rejection::find(&**error) {
        Some(Rejection::Overloaded(overloaded)) => *overloaded,
        _ => panic!("expected Overloaded, got {error}"),
    }
}
