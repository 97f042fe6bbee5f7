//! A private `redis-server`: start, kill, restart, pause and resume.

use std::time::Duration;

use palisade_testkit::{Error, RedisServer};
use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

/// A server this test may break; `None` (skip) without `redis-server` or with `REDIS_URL`.
fn private_redis() -> Option<RedisServer> {
    let redis = RedisServer::start_or_skip()?;
    if redis.pid().is_none() {
        eprintln!("skipping: REDIS_URL points at an external server, which cannot be faulted");
        return None;
    }
    Some(redis)
}

/// A connection without the client's own response timeout, so only the test's timeouts apply.
async fn connect(redis: &RedisServer) -> redis::RedisResult<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(redis.url())?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

async fn ping(conn: &mut MultiplexedConnection) -> redis::RedisResult<String> {
    redis::cmd("PING").query_async(conn).await
}

#[tokio::test]
async fn started_server_answers_ping() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    assert!(redis.url().starts_with("redis://"), "{}", redis.url());
    let mut conn = connect(&redis).await.expect("connect");
    assert_eq!(ping(&mut conn).await.expect("PING"), "PONG");
}

#[tokio::test]
async fn killed_server_answers_ping_again_after_restart() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let url = redis.url().to_owned();

    redis.kill().expect("kill");
    assert_eq!(redis.pid(), None);
    assert!(
        connect(&redis).await.is_err(),
        "a killed server accepted a connection"
    );
    assert!(matches!(
        redis.pause(),
        Err(Error::NotRunning {
            method: "pause",
            ..
        })
    ));

    redis.restart().expect("restart");
    assert_eq!(redis.url(), url, "restart keeps the port");
    let mut conn = connect(&redis).await.expect("connect after restart");
    assert_eq!(ping(&mut conn).await.expect("PING"), "PONG");
}

#[tokio::test]
async fn paused_server_answers_only_after_resume() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let mut conn = connect(&redis).await.expect("connect");
    assert_eq!(ping(&mut conn).await.expect("PING"), "PONG");

    redis.pause().expect("pause");
    let answer = tokio::time::timeout(Duration::from_millis(300), ping(&mut conn)).await;
    assert!(answer.is_err(), "a paused server answered: {answer:?}");

    redis.resume().expect("resume");
    let mut conn = connect(&redis).await.expect("connect after resume");
    assert_eq!(ping(&mut conn).await.expect("PING"), "PONG");
}

#[tokio::test]
async fn running_server_restarts_on_the_same_port() {
    let Some(mut redis) = private_redis() else {
        return;
    };
    let first = redis.pid();
    redis.restart().expect("restart");
    assert_ne!(redis.pid(), first, "restart started a new process");
    let mut conn = connect(&redis).await.expect("connect after restart");
    assert_eq!(ping(&mut conn).await.expect("PING"), "PONG");
}
