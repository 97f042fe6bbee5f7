//! A private PostgreSQL: fresh databases, kill -9 and restart, pause and resume.

use std::time::Duration;

use palisade_testkit::PostgresServer;
use sqlx::{Connection, PgConnection};

/// A server this test may break; `None` (skip) without PostgreSQL or with `DATABASE_URL`.
fn private_postgres() -> Option<PostgresServer> {
    let pg = PostgresServer::start_or_skip()?;
    if pg.pid().is_none() {
        eprintln!("skipping: DATABASE_URL points at an external server, which cannot be faulted");
        return None;
    }
    Some(pg)
}

async fn table_exists(conn: &mut PgConnection, table: &str) -> bool {
    sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(conn)
        .await
        .expect("to_regclass")
}

async fn kept_values(url: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    sqlx::query_scalar("SELECT v FROM kept ORDER BY v")
        .fetch_all(&mut conn)
        .await
        .expect("SELECT")
}

#[tokio::test]
async fn fresh_databases_are_separate() {
    let Some(pg) = PostgresServer::start_or_skip() else {
        return;
    };
    let first = pg.fresh_database().await.expect("first database");
    let second = pg.fresh_database().await.expect("second database");
    assert_ne!(first, second);

    let mut a = PgConnection::connect(&first).await.expect("connect first");
    let mut b = PgConnection::connect(&second)
        .await
        .expect("connect second");
    sqlx::query("CREATE TABLE only_in_first (id int)")
        .execute(&mut a)
        .await
        .expect("CREATE TABLE");
    assert!(table_exists(&mut a, "only_in_first").await);
    assert!(!table_exists(&mut b, "only_in_first").await);
}

#[tokio::test]
async fn killed_server_keeps_committed_data_after_restart() {
    let Some(mut pg) = private_postgres() else {
        return;
    };
    let url = pg.fresh_database().await.expect("database");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    sqlx::query("CREATE TABLE kept (v text)")
        .execute(&mut conn)
        .await
        .expect("CREATE TABLE");
    let mut tx = conn.begin().await.expect("BEGIN");
    sqlx::query("INSERT INTO kept VALUES ('committed')")
        .execute(&mut *tx)
        .await
        .expect("INSERT");
    tx.commit().await.expect("COMMIT");
    let mut open = PgConnection::connect(&url).await.expect("connect");
    let mut tx = open.begin().await.expect("BEGIN");
    sqlx::query("INSERT INTO kept VALUES ('uncommitted')")
        .execute(&mut *tx)
        .await
        .expect("INSERT");

    pg.kill().expect("kill");
    assert_eq!(pg.pid(), None);
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "a killed server accepted a connection"
    );
    pg.restart().expect("restart");

    assert_eq!(kept_values(&url).await, ["committed"]);
    drop(tx);
}

#[tokio::test]
async fn running_server_restarts_with_its_data() {
    let Some(mut pg) = private_postgres() else {
        return;
    };
    let url = pg.fresh_database().await.expect("database");
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    sqlx::raw_sql("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('committed')")
        .execute(&mut conn)
        .await
        .expect("INSERT");

    // The open session does not hold the restart up: the shutdown is a fast one.
    pg.restart().expect("restart");
    assert_eq!(kept_values(&url).await, ["committed"]);
}

#[tokio::test]
async fn paused_server_answers_only_after_resume() {
    let Some(mut pg) = private_postgres() else {
        return;
    };
    let mut conn = PgConnection::connect(pg.url()).await.expect("connect");

    pg.pause().expect("pause");
    let answer = tokio::time::timeout(
        Duration::from_millis(300),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&mut conn),
    )
    .await;
    assert!(answer.is_err(), "a paused server answered: {answer:?}");

    pg.resume().expect("resume");
    let mut conn = PgConnection::connect(pg.url())
        .await
        .expect("connect after resume");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT 1");
    assert_eq!(one, 1);
}
