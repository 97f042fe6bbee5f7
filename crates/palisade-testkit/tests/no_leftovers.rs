//! Servers die with their handle: dropped normally or while a panicking thread unwinds.
//!
//! PostgreSQL's children (backends, background processes) each run in their own session,
//! so they are found by their parent pid in `/proc`.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use palisade_testkit::{NatsServer, PostgresServer, RedisServer};
use rustix::process::{Pid, test_kill_process};
use sqlx::{Connection, PgConnection};

/// The pids of the children of `pid`, from `/proc/*/stat`.
fn children_of(pid: u32) -> Vec<u32> {
    let parent_of = |stat: &str| -> Option<u32> {
        // "pid (comm) state ppid ...", where comm may contain spaces and parentheses.
        let (_, fields) = stat.rsplit_once(')')?;
        fields.split_whitespace().nth(1)?.parse().ok()
    };
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|stat| parent_of(&stat) == Some(pid))
        })
        .collect()
}

/// `pid` and its children.
fn family(pid: u32) -> Vec<u32> {
    let mut pids = children_of(pid);
    pids.push(pid);
    pids
}

/// Whether none of `pids` is left. Polls: a killed child of a killed parent lingers as a
/// zombie until init reaps it.
fn all_gone(pids: &[u32]) -> bool {
    let alive = |&pid: &u32| {
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32")).expect("pid is not 0");
        test_kill_process(pid).is_ok()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids.iter().any(alive) {
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Starts a server in a thread that then panics; returns the pids of the server (`family`
/// of the pid it started), or `None` when the server was skipped or external.
fn pids_of_server_in_panicking_thread<S: 'static>(
    start: fn() -> Option<S>,
    pid: fn(&S) -> Option<u32>,
) -> Option<Vec<u32>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let thread = thread::spawn(move || {
        let server = start();
        let pids = server.as_ref().and_then(pid).map(family);
        let started = pids.is_some();
        tx.send(pids).expect("send pids");
        assert!(!started, "the test failed while its server ran");
    });
    let pids = rx.recv().expect("the thread sent the pids");
    let joined = thread.join();
    assert_eq!(
        joined.is_err(),
        pids.is_some(),
        "the thread panicked iff a server ran"
    );
    pids
}

#[test]
fn dropped_redis_server_leaves_no_process() {
    let Some(redis) = RedisServer::start_or_skip() else {
        return;
    };
    let Some(pid) = redis.pid() else {
        return; // external server
    };
    drop(redis);
    assert!(all_gone(&[pid]), "redis-server {pid} outlived its handle");
}

#[test]
fn redis_server_of_a_panicked_thread_leaves_no_process() {
    let Some(pids) =
        pids_of_server_in_panicking_thread(RedisServer::start_or_skip, RedisServer::pid)
    else {
        return;
    };
    assert!(all_gone(&pids), "redis-server {pids:?} outlived the panic");
}

#[test]
fn dropped_nats_server_leaves_no_process() {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    let Some(pid) = nats.pid() else {
        return; // external server
    };
    drop(nats);
    assert!(all_gone(&[pid]), "nats-server {pid} outlived its handle");
}

#[test]
fn nats_server_of_a_panicked_thread_leaves_no_process() {
    let Some(pids) = pids_of_server_in_panicking_thread(NatsServer::start_or_skip, NatsServer::pid)
    else {
        return;
    };
    assert!(all_gone(&pids), "nats-server {pids:?} outlived the panic");
}

#[tokio::test]
async fn dropped_postgres_server_leaves_none_of_its_processes() {
    let Some(pg) = PostgresServer::start_or_skip() else {
        return;
    };
    let Some(pid) = pg.pid() else {
        return; // external server
    };
    let mut conn = PgConnection::connect(pg.url()).await.expect("connect");
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT");
    let pids = family(pid);
    assert!(
        pids.contains(&backend.unsigned_abs()),
        "{backend} is a child of {pid}"
    );

    drop(pg);
    assert!(
        all_gone(&pids),
        "a process of postgres {pids:?} outlived its handle"
    );
}

#[test]
fn postgres_server_of_a_panicked_thread_leaves_none_of_its_processes() {
    let Some(pids) =
        pids_of_server_in_panicking_thread(PostgresServer::start_or_skip, PostgresServer::pid)
    else {
        return;
    };
    assert!(pids.len() > 1, "the postmaster has background processes");
    assert!(
        all_gone(&pids),
        "a process of postgres {pids:?} outlived the panic"
    );
}
