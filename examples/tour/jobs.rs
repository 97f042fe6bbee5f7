//! The durable job queue on SQLite (a file in a temporary directory): a job that fails once
//! and succeeds on its retry, and one that fails every attempt and lands in the dead-letter
//! queue. The lines printed are the queue's own events, as its listener receives them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade::core::Backoff;
use palisade::core::event::listener_fn;
use palisade::jobs::{
    DEFAULT_QUEUE, DeadQuery, Job, JobEvent, JobId, JobState, Jobs, NewJob, Worker,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Context, TourError};

/// Charges a card; the payment processor times out the first time it sees an order.
#[derive(Debug, Serialize, Deserialize)]
struct ChargeCard {
    order: u32,
    cents: u64,
}

impl Job for ChargeCard {
    const TYPE: &'static str = "charge_card";
}

/// Pushes a customer to the CRM, which rejects every attempt.
#[derive(Debug, Serialize, Deserialize)]
struct SyncCrm {
    customer: String,
}

impl Job for SyncCrm {
    const TYPE: &'static str = "sync_crm";
}

/// How many attempts the CRM job gets before it is dead-lettered.
const CRM_ATTEMPTS: u32 = 3;

/// Runs the section; returns its summary line.
pub(crate) async fn run() -> Result<String, TourError> {
    let dir = tempfile::tempdir().context("creating a directory for the job database")?;
    let (events, mut received) = mpsc::unbounded_channel::<JobEvent>();
    let jobs = Jobs::sqlite(dir.path().join("jobs.db"))
        .await
        .context("opening the SQLite job queue")?
        .with_listener(listener_fn(move |event: &JobEvent| {
            // The receiver lives until the end of the section.
            let _ = events.send(event.clone());
        }));

    let seen_orders = Arc::new(Mutex::new(HashSet::new()));
    let charge = tower::service_fn(move |job: ChargeCard| {
        let first_time = seen_orders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job.order);
        async move {
            if first_time {
                Err(format!(
                    "payment processor timed out charging order {}",
                    job.order
                ))
            } else {
                Ok(())
            }
        }
    });
    let crm = tower::service_fn(|job: SyncCrm| async move {
        Err::<(), _>(format!(
            "CRM rejected customer {:?}: unknown field 'tier'",
            job.customer
        ))
    });
    let worker = Worker::builder(&jobs)
        .queue(DEFAULT_QUEUE, 4)
        .handler(charge)
        .handler(crm)
        .retry_backoff(Backoff::constant(Duration::from_millis(100)))
        .build()
        .context("building the job worker")?
        .spawn();

    let charge_id = jobs
        .enqueue(&ChargeCard {
            order: 1042,
            cents: 4_999,
        })
        .await
        .context("enqueueing charge_card")?
        .id();
    let crm_job = NewJob::new(&SyncCrm {
        customer: "ada@example.com".into(),
    })
    .context("encoding sync_crm")?
    .max_attempts(CRM_ATTEMPTS);
    let crm_id = jobs
        .insert(crm_job)
        .await
        .context("enqueueing sync_crm")?
        .id();
    let kinds: HashMap<JobId, &str> =
        HashMap::from([(charge_id, ChargeCard::TYPE), (crm_id, SyncCrm::TYPE)]);
    let kind = |id: &JobId| kinds.get(id).copied().unwrap_or("?");

    // Follow the queue's events until both jobs are settled.
    let (mut completed, mut dead) = (false, false);
    tokio::time::timeout(Duration::from_secs(15), async {
        while !(completed && dead) {
            let Some(event) = received.recv().await else {
                break;
            };
            match event {
                JobEvent::Failed {
                    id,
                    attempt,
                    retry_in,
                    ..
                } => println!(
                    "  job {} {:<12} attempt {attempt} failed, retry in {} ms",
                    id.get(),
                    kind(&id),
                    retry_in.as_millis()
                ),
                JobEvent::Completed { id, run_time, .. } => {
                    completed |= id == charge_id;
                    println!(
                        "  job {} {:<12} completed (handler ran {run_time:?})",
                        id.get(),
                        kind(&id),
                    );
                }
                JobEvent::DeadLettered { id, attempts, .. } => {
                    dead |= id == crm_id;
                    println!(
                        "  job {} {:<12} attempt {attempts} failed: dead-lettered",
                        id.get(),
                        kind(&id)
                    );
                }
                _ => {}
            }
        }
    })
    .await
    .context("waiting for the jobs to settle")?;
    if !(completed && dead) {
        return Err(TourError::check(
            "jobs",
            "the queue's events stopped before both jobs settled",
        ));
    }

    let charged = jobs
        .job(charge_id)
        .await
        .context("reading charge_card")?
        .context("charge_card's record")?;
    if charged.state != JobState::Completed {
        return Err(TourError::check(
            "jobs",
            format!("charge_card is {:?}", charged.state),
        ));
    }
    let dead_jobs = jobs
        .dead_jobs(&DeadQuery::new())
        .await
        .context("listing the dead-letter queue")?;
    let dead_job = dead_jobs
        .iter()
        .find(|job| job.id == crm_id)
        .context("sync_crm in the dead-letter queue")?;
    println!(
        "  dead-letter queue: {} job(s); job {} {} after {}/{} attempts, last error: {}",
        dead_jobs.len(),
        dead_job.id.get(),
        dead_job.kind,
        dead_job.attempts,
        dead_job.max_attempts,
        dead_job.last_error
    );
    let metrics = worker.shutdown(Duration::from_secs(2)).await;
    println!(
        "  worker: {} processed, {} failed attempts retried, {} dead-lettered",
        metrics.processed, metrics.failed, metrics.dead_lettered
    );
    Ok(format!(
        "charge_card completed on attempt {} of {}; sync_crm dead-lettered after {} attempts; worker: {} processed, {} retried, {} dead",
        charged.attempts,
        charged.max_attempts,
        dead_job.attempts,
        metrics.processed,
        metrics.failed,
        metrics.dead_lettered
    ))
}
