//! Enqueueing inside the caller's own transaction: the job exists only if it commits.

mod support;

use palisade_jobs::postgres::PostgresStore;
use palisade_jobs::sqlite::SqliteStore;
use palisade_jobs::{JobState, Jobs, NewJob};
use support::Work;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_enqueue_rolls_back_with_the_callers_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("app.db")).await.unwrap();
    let jobs = Jobs::new(store.clone());
    sqlx::query("CREATE TABLE orders (id INTEGER PRIMARY KEY)")
        .execute(store.writer())
        .await
        .unwrap();
    let job = [NewJob::new(&Work { n: 1 }).unwrap()];

    let mut tx = store.writer().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled_back = store.enqueue_in(&mut tx, &job).await.unwrap()[0].id();
    tx.rollback().await.unwrap();
    assert!(jobs.job(rolled_back).await.unwrap().is_none());
    assert!(jobs.stats().await.unwrap().is_empty());

    let mut tx = store.writer().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (2)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let committed = store.enqueue_in(&mut tx, &job).await.unwrap()[0].id();
    tx.commit().await.unwrap();
    let record = jobs.job(committed).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Pending);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_enqueue_rolls_back_with_the_callers_transaction() {
    let Some((_, db, _)) = support::postgres().await else {
        return;
    };
    let support::Db::Postgres(_server, url) = &db else {
        unreachable!()
    };
    let store = PostgresStore::connect(url).await.unwrap();
    let jobs = Jobs::new(store.clone());
    sqlx::query("CREATE TABLE orders (id BIGINT PRIMARY KEY)")
        .execute(store.pool())
        .await
        .unwrap();
    let job = [NewJob::new(&Work { n: 1 }).unwrap().unique_key("order-1")];

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let rolled_back = PostgresStore::enqueue_in(&mut tx, &job).await.unwrap()[0].id();
    tx.rollback().await.unwrap();
    assert!(jobs.job(rolled_back).await.unwrap().is_none());

    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO orders (id) VALUES (1)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let committed = PostgresStore::enqueue_in(&mut tx, &job).await.unwrap()[0];
    assert!(
        committed.is_created(),
        "the rolled-back job did not keep the key"
    );
    tx.commit().await.unwrap();
    let record = jobs.job(committed.id()).await.unwrap().unwrap();
    assert_eq!(record.state, JobState::Pending);
}
