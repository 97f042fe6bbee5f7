//! What the migrations leave in the database, beyond what the queue tests exercise.

mod support;

use palisade_jobs::postgres::PostgresStore;

/// Every claim leaves the claimed job's dead row version in the claim index until a vacuum
/// removes it, and each claim walks past them: the jobs table is vacuumed after 1 % of it
/// changed (plus 1,000 rows), not PostgreSQL's default 20 %.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_jobs_table_is_autovacuumed_early() {
    let Some((_, db, _)) = support::postgres().await else {
        return;
    };
    let support::Db::Postgres(_server, url) = &db else {
        unreachable!()
    };
    let store = PostgresStore::connect(url).await.unwrap();
    let options: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'palisade_jobs'::regclass",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for expected in [
        "autovacuum_vacuum_scale_factor=0.01",
        "autovacuum_vacuum_threshold=1000",
        "autovacuum_analyze_scale_factor=0.02",
    ] {
        assert!(
            options.iter().any(|option| option == expected),
            "{expected} missing from {options:?}"
        );
    }
    // Opening the store again finds the schema current and changes nothing.
    drop(PostgresStore::connect(url).await.unwrap());
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM palisade_jobs_migrations ORDER BY version")
            .fetch_all(store.pool())
            .await
            .unwrap();
    assert_eq!(versions, [1, 2, 3]);
}
