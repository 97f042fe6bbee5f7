//! A SQLite-backed job queue with retries, a dead-letter queue, a replay and a graceful
//! shutdown.
//!
//! ```sh
//! cargo run -p palisade-jobs --example jobs_worker -- [--db PATH]
//! ```
//!
//! The queue lives in the SQLite file `PATH` (default: a file in a temporary directory,
//! removed on exit). Two typed jobs, each handled by a tower service with a timeout layer:
//!
//! - `charge_card`: a flaky payment gateway. Order `n` fails its first `n % 3` attempts
//!   ("gateway timeout"), then succeeds: the retries happen in the database, with backoff.
//! - `sync_crm`: a legacy CRM that is down. Every attempt fails; after its 3 attempts the
//!   job moves to the dead-letter queue with its last error.
//!
//! It enqueues a batch of 4 charges and 2 CRM syncs in one round trip, runs one worker until
//! every job has completed or died, prints the worker's counters, the queue's depth and the
//! dead-letter queue, then "brings the CRM back" and replays one dead job, which now
//! completes on its first attempt, and shuts the worker down gracefully.
//!
//! Expected output (ids are those of a fresh database; the order and the retry delays vary):
//!
//! ```text
//! queue: /tmp/.tmpnFgluc/jobs.db
//! enqueued 6 jobs in one batch: charge #1, #2, #3, #4, crm sync #5, #6
//!   charge #4 (order 4): attempt 1 failed, retry in 30ms
//!   charge #1 (order 1): attempt 1 failed, retry in 35ms
//!   charge #2 (order 2): attempt 1 failed, retry in 44ms
//!   charge #3 (order 3): completed
//!   crm sync #5: attempt 1 failed, retry in 46ms
//!   crm sync #6: attempt 1 failed, retry in 43ms
//!   charge #4 (order 4): completed
//!   charge #1 (order 1): completed
//!   crm sync #5: attempt 2 failed, retry in 66ms
//!   charge #2 (order 2): attempt 2 failed, retry in 95ms
//!   crm sync #6: attempt 2 failed, retry in 75ms
//!   crm sync #5: dead after 3 attempts
//!   crm sync #6: dead after 3 attempts
//!   charge #2 (order 2): completed
//! all 6 jobs finished or dead in 0.2s
//! worker metrics: processed 4, failed attempts 8, dead-lettered 2, stale 0, rescued 0, released 0
//! queue "default": completed 4, dead 2, pending 0, running 0
//! dead-letter queue (2):
//!   #5 sync_crm {"customer":"ada"} after 3 attempts: legacy CRM answered 503 Service Unavailable
//!   #6 sync_crm {"customer":"grace"} after 3 attempts: legacy CRM answered 503 Service Unavailable
//! the CRM is back; replaying #5
//!   crm sync #5: completed
//! job #5 is completed after 1 attempt; 1 job left in the dead-letter queue
//! worker shut down: processed 5, failed attempts 8, dead-lettered 2
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use palisade_core::event::listener_fn;
use palisade_jobs::{
    Backoff, DeadQuery, Enqueued, Jitter, Job, JobEvent, JobId, JobState, Jobs, NewJob, Worker,
};
use serde::{Deserialize, Serialize};
use tower::ServiceBuilder;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Charge an order's card through a gateway that times out now and then.
#[derive(Debug, Serialize, Deserialize)]
struct ChargeCard {
    order: u32,
    amount_cents: u64,
}

impl Job for ChargeCard {
    const TYPE: &'static str = "charge_card";
}

/// Copy a customer to the legacy CRM.
#[derive(Debug, Serialize, Deserialize)]
struct SyncCrm {
    customer: String,
}

impl Job for SyncCrm {
    const TYPE: &'static str = "sync_crm";
}

/// The handlers' failures.
#[derive(Debug, thiserror::Error)]
enum HandlerError {
    #[error("payment gateway timeout (order {order}, attempt {attempt})")]
    GatewayTimeout { order: u32, attempt: u32 },
    #[error("legacy CRM answered 503 Service Unavailable")]
    CrmDown,
}

/// How jobs are named in the output: `charge #1 (order 1)`.
type Labels = Arc<Mutex<HashMap<JobId, String>>>;

/// The job's label; `None` for a job this run did not enqueue (left in a `--db` file by an
/// earlier run).
fn known(labels: &Labels, id: JobId) -> Option<String> {
    labels
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&id)
        .cloned()
}

fn label(labels: &Labels, id: JobId) -> String {
    known(labels, id).unwrap_or_else(|| format!("job {id}"))
}

/// Prints what happens to each job, and counts this run's jobs that reached an end
/// (completed or dead) so that `main` can wait for them without polling the database.
fn event_printer(labels: Labels, finished: tokio::sync::watch::Sender<u64>) -> impl Fn(&JobEvent) {
    move |event: &JobEvent| match event {
        JobEvent::Failed {
            id,
            attempt,
            retry_in,
            ..
        } => println!(
            "  {}: attempt {attempt} failed, retry in {}ms",
            label(&labels, *id),
            retry_in.as_millis()
        ),
        JobEvent::Completed { id, .. } => {
            println!("  {}: completed", label(&labels, *id));
            if known(&labels, *id).is_some() {
                finished.send_modify(|n| *n += 1);
            }
        }
        JobEvent::DeadLettered { id, attempts, .. } => {
            println!("  {}: dead after {attempts} attempts", label(&labels, *id));
            if known(&labels, *id).is_some() {
                finished.send_modify(|n| *n += 1);
            }
        }
        _ => {}
    }
}

/// Waits until `n` jobs have finished, for at most 30 s.
async fn wait_finished(
    finished: &mut tokio::sync::watch::Receiver<u64>,
    n: u64,
) -> Result<(), BoxError> {
    let waited = tokio::time::timeout(
        Duration::from_secs(30),
        finished.wait_for(|done| *done >= n),
    )
    .await
    .map(|reached| reached.map(|_| ()));
    match waited {
        Ok(reached) => Ok(reached?),
        Err(_) => {
            let done = *finished.borrow();
            Err(format!("jobs did not finish within 30 s ({done} of {n})").into())
        }
    }
}

fn db_path() -> Result<(PathBuf, Option<tempfile::TempDir>), BoxError> {
    let mut argv = std::env::args().skip(1);
    match (argv.next().as_deref(), argv.next()) {
        (None, _) => {
            let temp = tempfile::tempdir()?;
            Ok((temp.path().join("jobs.db"), Some(temp)))
        }
        (Some("--db"), Some(path)) => Ok((PathBuf::from(path), None)),
        _ => Err("usage: jobs_worker [--db PATH]".into()),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    // `_temp` keeps (and at the end removes) the temporary directory.
    let (path, _temp) = db_path()?;
    println!("queue: {}", path.display());

    let labels: Labels = Arc::default();
    let (finished_tx, mut finished) = tokio::sync::watch::channel(0_u64);
    let jobs = Jobs::sqlite(&path)
        .await?
        .with_listener(listener_fn(event_printer(Arc::clone(&labels), finished_tx)));

    // The batch: one transaction, one round trip.
    let charges = [(1, 1_999), (2, 4_500), (3, 12_000), (4, 750)];
    let customers = ["ada", "grace"];
    let mut batch = Vec::new();
    for (order, amount_cents) in charges {
        batch.push(NewJob::new(&ChargeCard {
            order,
            amount_cents,
        })?);
    }
    for customer in customers {
        batch.push(
            NewJob::new(&SyncCrm {
                customer: customer.to_owned(),
            })?
            .max_attempts(3),
        );
    }
    let enqueued = jobs.enqueue_batch(&batch).await?;
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id()).collect();
    {
        let mut labels = labels.lock().unwrap_or_else(PoisonError::into_inner);
        for (id, (order, _)) in ids.iter().zip(charges) {
            labels.insert(*id, format!("charge {id} (order {order})"));
        }
        for id in &ids[charges.len()..] {
            labels.insert(*id, format!("crm sync {id}"));
        }
    }
    let names: Vec<String> = ids.iter().map(ToString::to_string).collect();
    println!(
        "enqueued {} jobs in one batch: charge {}, crm sync {}",
        ids.len(),
        names[..charges.len()].join(", "),
        names[charges.len()..].join(", ")
    );

    // The handlers: tower services, each behind a timeout layer.
    let attempts: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let charge = ServiceBuilder::new()
        .timeout(Duration::from_secs(5))
        .service_fn(move |job: ChargeCard| {
            let attempts = Arc::clone(&attempts);
            async move {
                let attempt = {
                    let mut attempts = attempts.lock().unwrap_or_else(PoisonError::into_inner);
                    let n = attempts.entry(job.order).or_insert(0);
                    *n += 1;
                    *n
                };
                // Order n fails its first n % 3 attempts.
                if attempt <= job.order % 3 {
                    return Err(HandlerError::GatewayTimeout {
                        order: job.order,
                        attempt,
                    });
                }
                let _charged = job.amount_cents;
                Ok(())
            }
        });
    let crm_up = Arc::new(AtomicBool::new(false));
    let crm = {
        let crm_up = Arc::clone(&crm_up);
        ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service_fn(move |job: SyncCrm| {
                let up = crm_up.load(Ordering::Acquire);
                async move {
                    let _customer = job.customer;
                    if up {
                        Ok(())
                    } else {
                        Err(HandlerError::CrmDown)
                    }
                }
            })
    };

    // Retries after 50 ms, 100 ms, 200 ms... (equal jitter) instead of the default 1 s, 2 s...
    let retry = Backoff::exponential(Duration::from_millis(50), 2.0, Duration::from_secs(1))?
        .with_jitter(Jitter::Equal);
    let started = Instant::now();
    let worker = Worker::builder(&jobs)
        .queue("default", 4)
        .retry_backoff(retry)
        .stats_interval(None)
        .handler(charge)
        .handler(crm)
        .build()?
        .spawn();

    wait_finished(&mut finished, ids.len() as u64).await?;
    println!(
        "all {} jobs finished or dead in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let m = worker.metrics();
    println!(
        "worker metrics: processed {}, failed attempts {}, dead-lettered {}, stale {}, rescued {}, released {}",
        m.processed, m.failed, m.dead_lettered, m.stale, m.rescued, m.released
    );
    for q in jobs.stats().await? {
        println!(
            "queue {:?}: completed {}, dead {}, pending {}, running {}",
            q.queue,
            q.completed,
            q.dead,
            q.available + q.scheduled,
            q.running
        );
    }
    let dead = jobs.dead_jobs(&DeadQuery::new()).await?;
    println!("dead-letter queue ({}):", dead.len());
    for job in &dead {
        println!(
            "  {} {} {} after {} attempts: {}",
            job.id, job.kind, job.payload, job.attempts, job.last_error
        );
    }

    // The CRM is back: replay this run's first dead job. It keeps its id, its attempts
    // start over.
    if let Some(first) = dead.iter().find(|job| known(&labels, job.id).is_some()) {
        crm_up.store(true, Ordering::Release);
        println!("the CRM is back; replaying {}", first.id);
        let done_before = *finished.borrow();
        match jobs.replay(first.id).await? {
            Some(Enqueued::Created(id)) => {
                wait_finished(&mut finished, done_before + 1).await?;
                let left = jobs.dead_jobs(&DeadQuery::new()).await?.len();
                match jobs.job(id).await? {
                    Some(record) => println!(
                        "job {id} is {} after {} attempt{}; {left} job{} left in the dead-letter queue",
                        record.state,
                        record.attempts,
                        if record.attempts == 1 { "" } else { "s" },
                        if left == 1 { "" } else { "s" },
                    ),
                    None => println!("job {id} is gone"),
                }
                if jobs.job(id).await?.map(|r| r.state) != Some(JobState::Completed) {
                    return Err(format!("replayed job {id} did not complete").into());
                }
            }
            Some(Enqueued::Existing(id)) => {
                println!("not replayed: job {id} holds its unique key");
            }
            None => println!("not replayed: {} is no longer dead", first.id),
        }
    }

    // Graceful: stop claiming, give running jobs 5 s, release the rest.
    let m = worker.shutdown(Duration::from_secs(5)).await;
    println!(
        "worker shut down: processed {}, failed attempts {}, dead-lettered {}",
        m.processed, m.failed, m.dead_lettered
    );
    Ok(())
}
