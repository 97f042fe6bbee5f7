//! The queue's behaviour on both backends: retries, the dead-letter queue, priorities,
//! delays, unique keys, bad input, cancellation.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use palisade_jobs::store::Outcome;
use palisade_jobs::{DeadQuery, Enqueued, Job, JobQuery, JobState, Jobs, NewJob, Worker};
use support::{Db, Events, Work, quick_retries, until, until_state};

/// Fails the first `failures` attempts of each job, then succeeds.
fn flaky(
    failures: u32,
    calls: Arc<AtomicU32>,
) -> impl tower::Service<
    Work,
    Response = (),
    Error = std::io::Error,
    Future = impl Future<Output = Result<(), std::io::Error>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Work| {
        let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if call <= failures {
                Err(std::io::Error::other(format!("flaky failure {call}")))
            } else {
                Ok(())
            }
        }
    })
}

async fn retry_then_success(jobs: Jobs, _db: Db, events: Events) {
    let calls = Arc::new(AtomicU32::new(0));
    let worker = Worker::builder(&jobs)
        .queue("default", 2)
        .handler(flaky(2, Arc::clone(&calls)))
        .retry_backoff(quick_retries())
        .build()
        .unwrap()
        .spawn();
    let id = jobs.enqueue(&Work { n: 1 }).await.unwrap().id();

    let done = until_state(&jobs, id, JobState::Completed).await;
    assert_eq!(done.attempts, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(done.last_error.as_deref(), Some("flaky failure 2"));
    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        (metrics.processed, metrics.failed, metrics.dead_lettered),
        (1, 2, 0)
    );
    assert_eq!(events.count("failed"), 2);
    assert_eq!(events.count("completed"), 1);
    assert_eq!(events.count("started"), 3);
}
on_both!(retry_then_success);

async fn dead_letter_after_max_attempts_then_replay(jobs: Jobs, _db: Db, events: Events) {
    let calls = Arc::new(AtomicU32::new(0));
    // Fails 3 times: with 3 attempts allowed, the job dies; replayed, it succeeds.
    let worker = Worker::builder(&jobs)
        .queue("mail", 1)
        .handler(flaky(3, Arc::clone(&calls)))
        .retry_backoff(quick_retries())
        .build()
        .unwrap()
        .spawn();
    let job = NewJob::new(&Work { n: 7 })
        .unwrap()
        .queue("mail")
        .max_attempts(3);
    let id = jobs.insert(job).await.unwrap().id();

    let dead = until("the job to be dead-lettered", || async {
        jobs.dead_job(id).await.unwrap()
    })
    .await;
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.max_attempts, 3);
    assert_eq!(dead.queue, "mail");
    assert_eq!(dead.last_error, "flaky failure 3");
    assert!(
        jobs.job(id).await.unwrap().is_none(),
        "dead jobs leave the queue"
    );
    let listed = jobs
        .dead_jobs(&DeadQuery::new().queue("mail"))
        .await
        .unwrap();
    assert_eq!(listed.iter().map(|d| d.id).collect::<Vec<_>>(), [id]);
    assert!(
        jobs.dead_jobs(&DeadQuery::new().queue("other"))
            .await
            .unwrap()
            .is_empty()
    );
    let stats = jobs.stats().await.unwrap();
    assert_eq!(stats.iter().find(|s| s.queue == "mail").unwrap().dead, 1);

    assert_eq!(jobs.replay(id).await.unwrap(), Some(Enqueued::Created(id)));
    let done = until_state(&jobs, id, JobState::Completed).await;
    assert_eq!(
        done.attempts, 1,
        "a replayed job starts its attempts afresh"
    );
    assert!(jobs.dead_job(id).await.unwrap().is_none());
    assert_eq!(
        jobs.replay(id).await.unwrap(),
        None,
        "nothing left to replay"
    );

    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.dead_lettered, 1);
    assert_eq!(metrics.processed, 1);
    assert_eq!(events.count("dead_lettered"), 1);
    assert_eq!(events.count("replayed"), 1);
}
on_both!(dead_letter_after_max_attempts_then_replay);

async fn dead_jobs_can_be_purged(jobs: Jobs, _db: Db, _events: Events) {
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        .handler(flaky(u32::MAX, Arc::new(AtomicU32::new(0))))
        .build()
        .unwrap()
        .spawn();
    let batch: Vec<NewJob> = (0..3)
        .map(|n| NewJob::new(&Work { n }).unwrap().max_attempts(1))
        .collect();
    let ids: Vec<_> = jobs
        .enqueue_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    until("all three to be dead", || async {
        (jobs.dead_jobs(&DeadQuery::new()).await.unwrap().len() == 3).then_some(())
    })
    .await;
    let page = jobs
        .dead_jobs(&DeadQuery::new().after(ids[0]).limit(1))
        .await
        .unwrap();
    assert_eq!(page.iter().map(|d| d.id).collect::<Vec<_>>(), [ids[1]]);
    assert!(jobs.purge_dead(ids[0]).await.unwrap());
    assert!(!jobs.purge_dead(ids[0]).await.unwrap());
    assert_eq!(jobs.purge_all_dead(Some("default")).await.unwrap(), 2);
    assert!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().is_empty());
    worker.shutdown(Duration::from_secs(5)).await;
}
on_both!(dead_jobs_can_be_purged);

async fn jobs_are_listed_by_queue_and_state(jobs: Jobs, _db: Db, _events: Events) {
    let batch = [
        NewJob::new(&Work { n: 1 }).unwrap(),
        NewJob::new(&Work { n: 2 }).unwrap().queue("mail"),
        NewJob::new(&Work { n: 3 }).unwrap(),
        NewJob::new(&Work { n: 4 })
            .unwrap()
            .queue("mail")
            .run_in(Duration::from_secs(3_600)),
    ];
    let ids: Vec<_> = jobs
        .enqueue_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    // One claim on `default`: job 1 is running.
    let claimed = jobs
        .store()
        .claim("default", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claimed[0].id, ids[0]);

    let listed = |query: JobQuery| {
        let jobs = jobs.clone();
        async move {
            jobs.list(&query)
                .await
                .unwrap()
                .into_iter()
                .map(|record| record.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(listed(JobQuery::new()).await, ids);
    assert_eq!(
        listed(JobQuery::new().queue("mail")).await,
        [ids[1], ids[3]]
    );
    assert_eq!(
        listed(JobQuery::new().state(JobState::Pending)).await,
        [ids[1], ids[2], ids[3]]
    );
    assert_eq!(
        listed(JobQuery::new().state(JobState::Running)).await,
        [ids[0]]
    );
    assert_eq!(
        listed(JobQuery::new().queue("default").state(JobState::Pending)).await,
        [ids[2]]
    );
    assert_eq!(
        listed(JobQuery::new().after(ids[0]).limit(2)).await,
        [ids[1], ids[2]]
    );
    assert!(
        listed(JobQuery::new().state(JobState::Completed))
            .await
            .is_empty()
    );

    // `mail` has a runnable job (2) and a scheduled one (4); `default` has job 3 runnable.
    let stats = jobs.stats().await.unwrap();
    let mail = stats.iter().find(|s| s.queue == "mail").unwrap();
    assert_eq!((mail.available, mail.scheduled), (1, 1));
    let mail_since = mail.oldest_available.expect("mail has a runnable job");
    let record = jobs.job(ids[1]).await.unwrap().unwrap();
    assert_eq!(mail_since, record.scheduled_at);
    jobs.cancel(ids[1]).await.unwrap();
    let stats = jobs.stats().await.unwrap();
    let mail = stats.iter().find(|s| s.queue == "mail").unwrap();
    assert_eq!(mail.oldest_available, None, "only a scheduled job is left");
}
on_both!(jobs_are_listed_by_queue_and_state);

async fn dead_jobs_are_purged_by_age(jobs: Jobs, _db: Db, _events: Events) {
    let batch: Vec<NewJob> = ["default", "default", "mail"]
        .iter()
        .enumerate()
        .map(|(n, queue)| {
            NewJob::new(&Work { n: n as u32 })
                .unwrap()
                .queue(*queue)
                .max_attempts(1)
        })
        .collect();
    jobs.enqueue_batch(&batch).await.unwrap();
    for queue in ["default", "mail"] {
        let claimed = jobs
            .store()
            .claim(queue, 10, Duration::from_secs(60))
            .await
            .unwrap();
        let outcomes: Vec<_> = claimed
            .iter()
            .map(|claim| Outcome::Dead {
                lease: claim.lease(),
                error: "boom".to_owned(),
            })
            .collect();
        jobs.store().finish(&outcomes).await.unwrap();
    }
    assert_eq!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().len(), 3);

    let hour = Duration::from_secs(3_600);
    let an_hour_ago = SystemTime::now() - hour;
    assert_eq!(jobs.purge_dead_before(an_hour_ago, None).await.unwrap(), 0);
    let in_an_hour = SystemTime::now() + hour;
    assert_eq!(
        jobs.purge_dead_before(in_an_hour, Some("mail"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(jobs.purge_dead_before(in_an_hour, None).await.unwrap(), 2);
    assert!(jobs.dead_jobs(&DeadQuery::new()).await.unwrap().is_empty());
}
on_both!(dead_jobs_are_purged_by_age);

async fn periodic_jobs_are_listed(jobs: Jobs, _db: Db, _events: Events) {
    assert!(jobs.periodic_jobs().await.unwrap().is_empty());
    let first = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let store = jobs.store();
    store
        .periodic_next("nightly", "0 2 * * *", first)
        .await
        .unwrap();
    store
        .periodic_next("cleanup", "*/15 * * * *", first + Duration::from_secs(60))
        .await
        .unwrap();
    let periodic = jobs.periodic_jobs().await.unwrap();
    let rows: Vec<_> = periodic
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.schedule.as_str(),
                p.next_run_at,
                p.last_run_at,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                "cleanup",
                "*/15 * * * *",
                first + Duration::from_secs(60),
                None
            ),
            ("nightly", "0 2 * * *", first, None),
        ]
    );
}
on_both!(periodic_jobs_are_listed);

async fn lower_priority_values_run_first(jobs: Jobs, _db: Db, _events: Events) {
    // Enqueued before any worker runs, in an order that is not the priority order.
    let plan = [(3, 10), (1, 5), (2, 1), (4, 5), (5, 1), (6, 10)];
    let batch: Vec<NewJob> = plan
        .iter()
        .map(|&(n, priority)| NewJob::new(&Work { n }).unwrap().priority(priority))
        .collect();
    jobs.enqueue_batch(&batch).await.unwrap();

    let order = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&order);
    let worker = Worker::builder(&jobs)
        .queue("default", 1)
        .claim_batch(1)
        .handler(tower::service_fn(move |work: Work| {
            seen.lock().unwrap().push(work.n);
            async { Ok::<_, std::io::Error>(()) }
        }))
        .build()
        .unwrap()
        .spawn();
    until("all six to run", || async {
        (order.lock().unwrap().len() == 6).then_some(())
    })
    .await;
    worker.shutdown(Duration::from_secs(5)).await;
    // Priority 1 first, then 5, then 10; within a priority, first enqueued first.
    assert_eq!(*order.lock().unwrap(), [2, 5, 1, 4, 3, 6]);
}
on_both!(lower_priority_values_run_first);

async fn outcomes_wait_for_the_next_claim_or_the_stop(jobs: Jobs, _db: Db, events: Events) {
    let (ran, mut runs) = tokio::sync::mpsc::unbounded_channel();
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        // Longer than any test: only a claim, a full batch or the stop records outcomes.
        .completion_interval(Duration::from_secs(3600))
        .handler(tower::service_fn(move |work: Work| {
            let _ = ran.send(work.n);
            async { Ok::<_, std::io::Error>(()) }
        }))
        .build()
        .unwrap()
        .spawn();
    let first = jobs.enqueue(&Work { n: 1 }).await.unwrap().id();
    assert_eq!(runs.recv().await, Some(1));
    // Give a worker that records at once every chance to do so: this one must not.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        jobs.job(first).await.unwrap().unwrap().state,
        JobState::Running,
        "the outcome waits while there is nothing to claim"
    );
    assert_eq!(worker.metrics().processed, 0);

    // The next claim carries it.
    let second = jobs.enqueue(&Work { n: 2 }).await.unwrap().id();
    assert_eq!(runs.recv().await, Some(2));
    until_state(&jobs, first, JobState::Completed).await;

    // Stopping records what is left at once, without waiting for the interval.
    worker.stop();
    let metrics = tokio::time::timeout(Duration::from_secs(60), worker.join())
        .await
        .expect("the stop records the last outcome at once");
    assert_eq!(metrics.processed, 2);
    assert_eq!(
        jobs.job(second).await.unwrap().unwrap().state,
        JobState::Completed
    );
    assert_eq!(events.count("completed"), 2);
}

/// On SQLite only: the one wake-up per enqueue is in-process, so nothing but the test's
/// enqueues makes the worker claim. (A PostgreSQL worker also claims when its `LISTEN`
/// connection comes up, which could carry the first outcome at an instant the test does not
/// control.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_wait_for_the_next_claim_or_the_stop_sqlite() {
    let (jobs, db, events) = support::sqlite().await;
    outcomes_wait_for_the_next_claim_or_the_stop(jobs, db, events).await;
}

async fn delayed_jobs_do_not_run_early(jobs: Jobs, _db: Db, _events: Events) {
    let ran_at = Arc::new(Mutex::new(HashMap::new()));
    let seen = Arc::clone(&ran_at);
    let worker = Worker::builder(&jobs)
        .queue("default", 2)
        .handler(tower::service_fn(move |work: Work| {
            seen.lock().unwrap().insert(work.n, SystemTime::now());
            async { Ok::<_, std::io::Error>(()) }
        }))
        .build()
        .unwrap()
        .spawn();
    let at = SystemTime::now() + Duration::from_millis(700);
    let later = jobs.enqueue_at(&Work { n: 1 }, at).await.unwrap().id();
    let delayed = jobs
        .enqueue_in(&Work { n: 2 }, Duration::from_millis(500))
        .await
        .unwrap()
        .id();
    let now = jobs.enqueue(&Work { n: 3 }).await.unwrap().id();

    until_state(&jobs, now, JobState::Completed).await;
    let first = until_state(&jobs, delayed, JobState::Completed).await;
    let second = until_state(&jobs, later, JobState::Completed).await;
    worker.shutdown(Duration::from_secs(5)).await;

    for record in [&first, &second] {
        let started = record.started_at.unwrap();
        assert!(started >= record.scheduled_at, "{record:?} started early");
    }
    assert!(second.scheduled_at >= at - Duration::from_micros(1));
    let ran_at = ran_at.lock().unwrap();
    assert!(
        ran_at[&1] >= at,
        "ran at {:?}, scheduled for {at:?}",
        ran_at[&1]
    );
    assert!(first.scheduled_at >= first.created_at + Duration::from_millis(500));
}
on_both!(delayed_jobs_do_not_run_early);

async fn unique_keys_return_the_existing_job(jobs: Jobs, _db: Db, _events: Events) {
    let keyed = |n| NewJob::new(&Work { n }).unwrap().unique_key("invoice-42");
    let first = jobs.insert(keyed(1)).await.unwrap();
    assert!(first.is_created());
    assert_eq!(
        jobs.insert(keyed(2)).await.unwrap(),
        Enqueued::Existing(first.id())
    );
    // In one batch: a duplicate of a stored key, a new key twice, a job without key.
    let batch = [
        keyed(3),
        NewJob::new(&Work { n: 4 })
            .unwrap()
            .unique_key("invoice-43"),
        NewJob::new(&Work { n: 5 })
            .unwrap()
            .unique_key("invoice-43"),
        NewJob::new(&Work { n: 6 }).unwrap(),
    ];
    let enqueued = jobs.enqueue_batch(&batch).await.unwrap();
    assert_eq!(enqueued[0], Enqueued::Existing(first.id()));
    assert!(enqueued[1].is_created());
    assert_eq!(enqueued[2], Enqueued::Existing(enqueued[1].id()));
    assert!(enqueued[3].is_created());
    let stored = jobs.job(first.id()).await.unwrap().unwrap();
    let payload: Work = serde_json::from_str(&stored.payload).unwrap();
    assert_eq!(payload, Work { n: 1 }, "the first job kept its payload");

    // Once the job is done, the key is free again.
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        .handler(tower::service_fn(|_: Work| async {
            Ok::<_, std::io::Error>(())
        }))
        .build()
        .unwrap()
        .spawn();
    until_state(&jobs, first.id(), JobState::Completed).await;
    let again = jobs.insert(keyed(7)).await.unwrap();
    assert!(again.is_created());
    assert_ne!(again.id(), first.id());
    worker.shutdown(Duration::from_secs(5)).await;
}
on_both!(unique_keys_return_the_existing_job);

#[derive(serde::Serialize, serde::Deserialize)]
struct Strict {
    required: String,
}

impl Job for Strict {
    const TYPE: &'static str = "strict";
}

async fn bad_input_ends_in_recorded_failures(jobs: Jobs, _db: Db, _events: Events) {
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        .handler(tower::service_fn(|_: Strict| async {
            Ok::<_, std::io::Error>(())
        }))
        .handler(tower::service_fn(|work: Work| async move {
            if work.n == 13 {
                panic!("unlucky number {}", work.n);
            }
            Ok::<_, std::io::Error>(())
        }))
        .build()
        .unwrap()
        .spawn();
    let batch = [
        NewJob::from_json("nobody_handles_this", "{}").max_attempts(2),
        NewJob::from_json("strict", r#"{"other": 1}"#).max_attempts(1),
        NewJob::new(&Work { n: 13 }).unwrap().max_attempts(1),
        NewJob::new(&Work { n: 14 }).unwrap(),
    ];
    let ids: Vec<_> = jobs
        .enqueue_batch(&batch)
        .await
        .unwrap()
        .into_iter()
        .map(Enqueued::id)
        .collect();
    let mut errors = Vec::new();
    for &id in &ids[..3] {
        let dead = until("the bad job to be dead-lettered", || async {
            jobs.dead_job(id).await.unwrap()
        })
        .await;
        errors.push(dead.last_error);
    }
    assert_eq!(
        errors[0],
        "no handler for job type `nobody_handles_this` on this worker"
    );
    assert!(
        errors[1].starts_with(
            "payload does not deserialize as job type `strict`: missing field `required`"
        ),
        "{}",
        errors[1]
    );
    assert_eq!(errors[2], "handler panicked: unlucky number 13");
    // The worker survived all of it.
    until_state(&jobs, ids[3], JobState::Completed).await;
    assert!(!worker.is_finished());
    let metrics = worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.dead_lettered, 3);
    assert_eq!(metrics.failed, 1, "the unknown type had two attempts");
}
on_both!(bad_input_ends_in_recorded_failures);

async fn pending_and_running_jobs_can_be_cancelled(jobs: Jobs, _db: Db, _events: Events) {
    let pending = jobs
        .enqueue_in(&Work { n: 1 }, Duration::from_secs(3600))
        .await
        .unwrap()
        .id();
    assert!(jobs.cancel(pending).await.unwrap());
    assert!(!jobs.cancel(pending).await.unwrap(), "already cancelled");
    assert_eq!(
        jobs.job(pending).await.unwrap().unwrap().state,
        JobState::Cancelled
    );

    // A handler that never finishes on its own; dropping it marks `stopped`.
    struct Stopped(Arc<AtomicU32>);
    impl Drop for Stopped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let started = Arc::new(AtomicU32::new(0));
    let stopped = Arc::new(AtomicU32::new(0));
    let (s, d) = (Arc::clone(&started), Arc::clone(&stopped));
    let worker = Worker::builder(&jobs)
        .queue("default", 1)
        .handler(tower::service_fn(move |_: Work| {
            s.fetch_add(1, Ordering::SeqCst);
            let marker = Stopped(Arc::clone(&d));
            async move {
                let _marker = marker;
                std::future::pending::<()>().await;
                Ok::<_, std::io::Error>(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    let running = jobs.enqueue(&Work { n: 2 }).await.unwrap().id();
    until_state(&jobs, running, JobState::Running).await;
    until("the handler to start", || async {
        (started.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    assert!(jobs.cancel(running).await.unwrap());
    until("the handler to be stopped", || async {
        (stopped.load(Ordering::SeqCst) == 1).then_some(())
    })
    .await;
    let record = jobs.job(running).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Cancelled);
    assert!(record.finished_at.is_some());
    worker.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "the cancelled pending job never ran"
    );
}
on_both!(pending_and_running_jobs_can_be_cancelled);

async fn stats_count_jobs_per_queue_and_state(jobs: Jobs, _db: Db, events: Events) {
    jobs.enqueue(&Work { n: 1 }).await.unwrap();
    jobs.insert(NewJob::new(&Work { n: 2 }).unwrap().queue("b"))
        .await
        .unwrap();
    jobs.enqueue_in(&Work { n: 3 }, Duration::from_secs(3600))
        .await
        .unwrap();
    let stats = jobs.stats().await.unwrap();
    assert_eq!(stats.len(), 2);
    assert_eq!(stats[0].queue, "b");
    assert_eq!(stats[0].available, 1);
    assert_eq!(stats[1].queue, "default");
    assert_eq!((stats[1].available, stats[1].scheduled), (1, 1));
    assert_eq!(events.count("depth"), 2);
    assert_eq!(events.count("enqueued"), 3);
}
on_both!(stats_count_jobs_per_queue_and_state);
