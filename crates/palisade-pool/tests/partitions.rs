//! Partitions: each one gets its share of the limit and of the queue under contention,
//! borrows idle capacity only when allowed, and gets borrowed permits back as calls finish.
//! Jobs whose name starts with `api` are in the `api` partition, `batch…` in `batch`, the
//! others in no named partition (the rest).

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use palisade_core::BoxError;
use palisade_pool::{
    ConcurrencyPoolLayer, PartitionFn, PoolConfig, PoolConfigBuilder, PoolHandle, partition_fn,
    priority_fn,
};
use support::*;
use tokio::sync::oneshot;
use tower::{Layer, Service, ServiceExt};

type ByKind = PartitionFn<fn(&Job) -> &'static str>;

fn kind(job: &Job) -> &'static str {
    if job.name.starts_with("api") {
        "api"
    } else if job.name.starts_with("batch") {
        "batch"
    } else {
        "other"
    }
}

fn partitioned(
    config: PoolConfigBuilder,
    log: &Log,
) -> (
    impl Service<Job, Response = &'static str, Error = BoxError, Future: Send + 'static>
    + Clone
    + Send
    + 'static
    + use<>,
    PoolHandle,
) {
    let layer = ConcurrencyPoolLayer::new(config.build().expect("valid pool config"))
        .prioritize(priority_fn(|job: &Job| job.priority))
        .partition_by(partition_fn(kind as fn(&Job) -> &'static str));
    let _: &ConcurrencyPoolLayer<_, ByKind> = &layer;
    let handle = layer.handle();
    (layer.layer(jobs(Arc::clone(log))), handle)
}

/// A pool of 10: `api` 70 %, `batch` 30 %.
fn api_and_batch() -> PoolConfigBuilder {
    PoolConfig::builder(nz(10))
        .partition("api", 0.7)
        .partition("batch", 0.3)
        .no_queue_timeout()
}

fn counts(handle: &PoolHandle) -> (u32, u32) {
    (
        handle.partition_in_flight("api").unwrap(),
        handle.partition_in_flight("batch").unwrap(),
    )
}

#[derive(Default)]
struct Calls {
    tasks: Vec<tokio::task::JoinHandle<Result<&'static str, BoxError>>>,
    releases: Vec<oneshot::Sender<()>>,
}

/// Calls `n` held jobs named `name`.
async fn flood<S>(service: &mut S, calls: &mut Calls, name: &'static str, n: usize)
where
    S: Service<Job, Response = &'static str, Error = BoxError>,
    S::Future: Send + 'static,
{
    for _ in 0..n {
        let (job, release) = held(name);
        calls.tasks.push(spawn_call(service, job).await);
        calls.releases.push(release);
    }
}

#[tokio::test(start_paused = true)]
async fn without_borrowing_partitions_never_exceed_their_shares_under_contention() {
    let log = Log::default();
    let (mut service, handle) = partitioned(api_and_batch().borrow_idle_capacity(false), &log);
    assert_eq!(handle.partition_quota("api"), Some(7));
    assert_eq!(handle.partition_quota("batch"), Some(3));
    let mut calls = Calls::default();
    for _ in 0..20 {
        flood(&mut service, &mut calls, "batch", 2).await;
        flood(&mut service, &mut calls, "api", 1).await;
    }
    settle().await;
    assert_eq!(counts(&handle), (7, 3));
    assert_eq!(handle.partition_queued("api"), Some(13));
    assert_eq!(handle.partition_queued("batch"), Some(37));

    // Finish the calls in an order unrelated to partitions; both partitions stay at their
    // share while they have waiters.
    let Calls {
        mut tasks,
        mut releases,
    } = calls;
    let mut order: Vec<usize> = (0..releases.len()).collect();
    order.sort_by_key(|&i| (i * 37) % 61);
    let mut releases: Vec<_> = releases.drain(..).map(Some).collect();
    for i in order {
        if let Some(release) = releases[i].take() {
            let _ = release.send(());
        }
        settle().await;
        let (api, batch) = counts(&handle);
        assert!(api <= 7 && batch <= 3, "api {api}, batch {batch}");
        assert!(handle.in_flight() <= 10);
        if handle.partition_queued("api") > Some(0) {
            assert_eq!(api, 7, "api has waiters and room in its share");
        }
        if handle.partition_queued("batch") > Some(0) {
            assert_eq!(batch, 3, "batch has waiters and room in its share");
        }
    }
    for task in tasks.drain(..) {
        task.await.unwrap().unwrap();
    }
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}

#[tokio::test(start_paused = true)]
async fn without_borrowing_an_idle_partitions_share_stays_unused() {
    let log = Log::default();
    let (mut service, handle) = partitioned(api_and_batch().borrow_idle_capacity(false), &log);
    let mut calls = Calls::default();
    flood(&mut service, &mut calls, "batch", 10).await;
    settle().await;
    assert_eq!(counts(&handle), (0, 3));
    assert_eq!(handle.in_flight(), 3);
    assert_eq!(handle.partition_queued("batch"), Some(7));
    // An api call is admitted at once: its share is free.
    let api = spawn_call(&mut service, job("api", 5)).await;
    assert_eq!(api.await.unwrap().unwrap(), "api");
}

#[tokio::test(start_paused = true)]
async fn a_partition_borrows_idle_capacity_and_gives_it_back_as_calls_finish() {
    let log = Log::default();
    let (mut service, handle) = partitioned(api_and_batch(), &log);
    let mut batch = Calls::default();
    flood(&mut service, &mut batch, "batch", 12).await;
    settle().await;
    assert_eq!(
        counts(&handle),
        (0, 10),
        "batch borrows the whole idle pool"
    );
    assert_eq!(handle.partition_queued("batch"), Some(2));

    let mut api = Calls::default();
    flood(&mut service, &mut api, "api", 9).await;
    settle().await;
    assert_eq!(counts(&handle), (0, 10), "running calls keep their permits");

    // Finished batch calls give their permits to api, which is below its share, although
    // batch's waiters came first...
    for release in batch.releases.drain(..7) {
        release.send(()).unwrap();
    }
    settle().await;
    assert_eq!(counts(&handle), (7, 3));
    // ...and once api has its share, to batch again, now below its own: api's waiters can
    // only borrow, and batch's are entitled.
    batch.releases.remove(0).send(()).unwrap();
    settle().await;
    assert_eq!(counts(&handle), (7, 3));
    assert_eq!(handle.partition_queued("batch"), Some(1));
    assert_eq!(handle.partition_queued("api"), Some(2));
}

#[tokio::test(start_paused = true)]
async fn each_partition_has_its_share_of_the_queue() {
    let log = Log::default();
    let (mut service, handle) = partitioned(
        api_and_batch()
            .borrow_idle_capacity(false)
            .queue_capacity(10),
        &log,
    );
    let mut calls = Calls::default();
    // batch: 3 run, 3 wait (30 % of 10), the next is shed.
    flood(&mut service, &mut calls, "batch", 6).await;
    let shed = spawn_call(&mut service, job("batch", 5)).await;
    let error = shed.await.unwrap().unwrap_err();
    let _ = overloaded(&error);
    // api is unaffected: 7 run, 7 wait.
    flood(&mut service, &mut calls, "api", 14).await;
    settle().await;
    assert_eq!(handle.partition_queued("api"), Some(7));
    assert_eq!(handle.partition_queued("batch"), Some(3));
    let shed = spawn_call(&mut service, job("api", 5)).await;
    assert!(shed.await.unwrap().is_err());
}

#[tokio::test(start_paused = true)]
async fn requests_of_no_named_partition_share_the_rest() {
    let log = Log::default();
    let (mut service, handle) = partitioned(
        PoolConfig::builder(nz(10))
            .partition("api", 0.6)
            .borrow_idle_capacity(false)
            .no_queue_timeout(),
        &log,
    );
    let mut calls = Calls::default();
    flood(&mut service, &mut calls, "other", 6).await;
    flood(&mut service, &mut calls, "api", 8).await;
    settle().await;
    assert_eq!(handle.partition_in_flight("api"), Some(6));
    assert_eq!(handle.in_flight(), 10, "the rest runs 4");
    assert_eq!(handle.queued(), 4);
    assert_eq!(handle.partition_in_flight("other"), None, "not a partition");
}

#[tokio::test(start_paused = true)]
async fn quotas_follow_the_limit() {
    let log = Log::default();
    let (mut service, handle) = partitioned(api_and_batch().borrow_idle_capacity(false), &log);
    let mut calls = Calls::default();
    flood(&mut service, &mut calls, "api", 20).await;
    settle().await;
    assert_eq!(handle.partition_in_flight("api"), Some(7));
    handle.set_limit(nz(20)).unwrap();
    settle().await;
    assert_eq!(handle.partition_quota("api"), Some(14));
    assert_eq!(handle.partition_in_flight("api"), Some(14));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_callers_on_many_threads_keep_every_partition_within_its_share() {
    const CALLERS: u32 = 600;
    let (open, gate) = tokio::sync::watch::channel(false);
    let running = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let peaks = Arc::new([AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)]);
    let config = PoolConfig::builder(nz(10))
        .partition("api", 0.5)
        .partition("batch", 0.3)
        .borrow_idle_capacity(false)
        // Each partition's queue is its share of this: room for all its callers.
        .queue_capacity(CALLERS * 2)
        .no_queue_timeout()
        .build()
        .unwrap();
    let layer =
        ConcurrencyPoolLayer::new(config).partition_by(partition_fn(|n: &u32| match n % 3 {
            0 => "api",
            1 => "batch",
            _ => "other",
        }));
    let handle = layer.handle();
    let service = layer.layer(tower::service_fn({
        let (running, peaks) = (Arc::clone(&running), Arc::clone(&peaks));
        move |n: u32| {
            let (running, peaks) = (Arc::clone(&running), Arc::clone(&peaks));
            let mut gate = gate.clone();
            async move {
                let lane = (n % 3) as usize;
                let now = running[lane].fetch_add(1, Ordering::SeqCst) + 1;
                peaks[lane].fetch_max(now, Ordering::SeqCst);
                gate.wait_for(|open| *open).await.unwrap();
                tokio::task::yield_now().await;
                running[lane].fetch_sub(1, Ordering::SeqCst);
                Ok::<_, std::convert::Infallible>(n)
            }
        }
    }));
    let callers: Vec<_> = (0..CALLERS)
        .map(|n| tokio::spawn(service.clone().oneshot(n)))
        .collect();
    while handle.queued() < (CALLERS - 10) as usize {
        tokio::task::yield_now().await;
    }
    open.send(true).unwrap();
    for (n, caller) in (0..CALLERS).zip(callers) {
        assert_eq!(caller.await.unwrap().unwrap(), n);
    }
    let peaks: Vec<u32> = peaks.iter().map(|p| p.load(Ordering::SeqCst)).collect();
    assert_eq!(
        peaks,
        [5, 3, 2],
        "api 50 %, batch 30 %, the rest 20 % of 10"
    );
    assert_eq!((handle.in_flight(), handle.queued()), (0, 0));
}
