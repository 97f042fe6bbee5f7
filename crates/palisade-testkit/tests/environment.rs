//! The environment: `REDIS_URL` / `DATABASE_URL` give handles that know only the external
//! server's URL; a missing binary skips a test, or fails it with
//! `PALISADE_REQUIRE_SERVICES=1`.
//!
//! The environment of this process is left alone: each outer test runs an ignored inner test
//! in a child process with the variables it needs.

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::panic;
use std::process::Command;

use palisade_testkit::{Error, NatsServer, PostgresServer, RedisServer};
use sqlx::{Connection, PgConnection};

/// Set for the child process, so the inner tests do nothing when run by hand.
const INNER: &str = "PALISADE_TESTKIT_INNER_TEST";

/// Runs the ignored test `name` of this test binary with the variables `vars` set and
/// the testkit's other variables unset.
fn run_inner(name: &str, vars: &[(&str, &str)]) {
    let exe = env::current_exe().expect("the test binary's path");
    let mut command = Command::new(exe);
    command.args([name, "--exact", "--ignored", "--nocapture"]);
    for var in [
        "REDIS_URL",
        "DATABASE_URL",
        "NATS_URL",
        "PALISADE_PG_BIN",
        "PALISADE_REQUIRE_SERVICES",
    ] {
        command.env_remove(var);
    }
    let output = command
        .envs(vars.iter().copied())
        .env(INNER, "1")
        .output()
        .expect("run the inner test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} with {vars:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Variables under which no server binary can be found.
const NO_BINARIES: [(&str, &str); 2] = [
    ("PATH", "/nonexistent"),
    ("PALISADE_PG_BIN", "/nonexistent"),
];

fn is_external(result: Result<(), Error>, method: &str) -> bool {
    matches!(result, Err(Error::External { method: m, .. }) if m == method)
}

#[test]
fn redis_url_gives_a_handle_that_refuses_fault_methods() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    run_inner("inner_redis_url", &[("REDIS_URL", redis.url())]);
}

#[test]
fn nats_url_gives_a_handle_that_refuses_fault_methods() {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    run_inner("inner_nats_url", &[("NATS_URL", nats.url())]);
}

#[test]
fn database_url_gives_a_handle_that_makes_databases_but_refuses_fault_methods() {
    let Some(pg) = PostgresServer::start_or_skip() else {
        return;
    };
    run_inner("inner_database_url", &[("DATABASE_URL", pg.url())]);
}

#[test]
#[ignore = "run by redis_url_gives_a_handle_that_refuses_fault_methods"]
fn inner_redis_url() {
    if env::var_os(INNER).is_none() {
        return;
    }
    let mut redis = RedisServer::start().expect("start");
    assert_eq!(redis.url(), env::var("REDIS_URL").unwrap());
    assert_eq!(redis.pid(), None);
    assert!(is_external(redis.kill(), "kill"));
    assert!(is_external(redis.stop(), "stop"));
    assert!(is_external(redis.pause(), "pause"));
    assert!(is_external(redis.resume(), "resume"));
    assert!(is_external(redis.restart(), "restart"));
}

#[test]
#[ignore = "run by nats_url_gives_a_handle_that_refuses_fault_methods"]
fn inner_nats_url() {
    if env::var_os(INNER).is_none() {
        return;
    }
    let mut nats = NatsServer::start().expect("start");
    assert_eq!(nats.url(), env::var("NATS_URL").unwrap());
    assert_eq!(nats.pid(), None);
    assert!(is_external(nats.kill(), "kill"));
    assert!(is_external(nats.stop(), "stop"));
    assert!(is_external(nats.pause(), "pause"));
    assert!(is_external(nats.resume(), "resume"));
    assert!(is_external(nats.restart(), "restart"));
}

#[tokio::test]
#[ignore = "run by database_url_gives_a_handle_that_makes_databases_but_refuses_fault_methods"]
async fn inner_database_url() {
    if env::var_os(INNER).is_none() {
        return;
    }
    let mut pg = PostgresServer::start().expect("start");
    assert_eq!(pg.url(), env::var("DATABASE_URL").unwrap());
    assert_eq!(pg.pid(), None);
    let refused = pg.kill().expect_err("kill of an external server");
    assert!(refused.to_string().contains(pg.url()), "{refused}");
    assert!(is_external(Err(refused), "kill"));
    assert!(is_external(pg.stop(), "stop"));
    assert!(is_external(pg.pause(), "pause"));
    assert!(is_external(pg.resume(), "resume"));
    assert!(is_external(pg.restart(), "restart"));

    let url = pg.fresh_database().await.expect("fresh database");
    let name = url.rsplit('/').next().unwrap();
    let mut conn = PgConnection::connect(&url).await.expect("connect");
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT");
    assert_eq!(current, name);
}

#[test]
fn missing_binaries_skip_the_test() {
    run_inner("inner_missing_binaries", &NO_BINARIES);
}

#[test]
fn missing_binaries_fail_the_test_when_services_are_required() {
    let mut vars = NO_BINARIES.to_vec();
    vars.push(("PALISADE_REQUIRE_SERVICES", "1"));
    run_inner("inner_missing_binaries_required", &vars);
}

#[test]
#[ignore = "run by missing_binaries_skip_the_test"]
fn inner_missing_binaries() {
    if env::var_os(INNER).is_none() {
        return;
    }
    assert!(matches!(
        RedisServer::start(),
        Err(Error::BinaryNotFound {
            binary: "redis-server",
            ..
        })
    ));
    assert!(matches!(
        PostgresServer::start(),
        Err(Error::BinaryNotFound {
            binary: "initdb",
            ..
        })
    ));
    assert!(matches!(
        NatsServer::start(),
        Err(Error::BinaryNotFound {
            binary: "nats-server",
            ..
        })
    ));
    assert!(RedisServer::start_or_skip().is_none());
    assert!(PostgresServer::start_or_skip().is_none());
    assert!(NatsServer::start_or_skip().is_none());
}

#[test]
#[ignore = "run by missing_binaries_fail_the_test_when_services_are_required"]
fn inner_missing_binaries_required() {
    if env::var_os(INNER).is_none() {
        return;
    }
    let message = |payload: Box<dyn std::any::Any + Send>| {
        payload
            .downcast::<String>()
            .map(|message| *message)
            .unwrap_or_default()
    };
    let redis = panic::catch_unwind(RedisServer::start_or_skip).expect_err("a panic");
    let redis = message(redis);
    assert!(redis.contains("`redis-server` not found"), "{redis}");
    let pg = panic::catch_unwind(PostgresServer::start_or_skip).expect_err("a panic");
    let pg = message(pg);
    assert!(pg.contains("`initdb` not found"), "{pg}");
    let nats = panic::catch_unwind(NatsServer::start_or_skip).expect_err("a panic");
    let nats = message(nats);
    assert!(nats.contains("`nats-server` not found"), "{nats}");
}

#[test]
fn failed_start_of_an_installed_server_fails_the_test_with_its_log() {
    let bin = tempfile::tempdir().expect("temp dir");
    for program in ["initdb", "postgres"] {
        let script = bin.path().join(program);
        fs::write(
            &script,
            format!("#!/bin/sh\necho \"{program}: broken on purpose\" >&2\nexit 3\n"),
        )
        .expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod");
    }
    // As root the scripts run as the `postgres` user, who must reach them.
    fs::set_permissions(bin.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = bin.path().to_str().expect("utf-8 path");
    run_inner("inner_failed_start", &[("PALISADE_PG_BIN", bin)]);
}

#[test]
#[ignore = "run by failed_start_of_an_installed_server_fails_the_test_with_its_log"]
fn inner_failed_start() {
    if env::var_os(INNER).is_none() {
        return;
    }
    let error = PostgresServer::start().expect_err("a broken initdb");
    assert!(
        matches!(&error, Error::Exited { program: "initdb", tail, .. } if tail.contains("initdb: broken on purpose")),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("exit status: 3"), "{message}");
    assert!(panic::catch_unwind(PostgresServer::start_or_skip).is_err());
}
