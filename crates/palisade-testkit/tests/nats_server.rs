//! A private `nats-server`: start, kill, restart, pause and resume.
//!
//! The client is a raw TCP socket speaking the NATS text protocol: the testkit has no NATS
//! client dependency.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use palisade_testkit::{Error, NatsServer};

/// A server this test may break; `None` (skip) without `nats-server` or with `NATS_URL`.
fn private_nats() -> Option<NatsServer> {
    let nats = NatsServer::start_or_skip()?;
    if nats.pid().is_none() {
        eprintln!("skipping: NATS_URL points at an external server, which cannot be faulted");
        return None;
    }
    Some(nats)
}

/// `host:port` of a `nats://host:port` URL.
fn address(nats: &NatsServer) -> String {
    let url = nats.url();
    url.strip_prefix("nats://").unwrap_or(url).to_owned()
}

/// Connects, reads the server's `INFO`, sends `CONNECT` and `PING` and returns the answer
/// line, with a read timeout of `timeout`.
fn ping(nats: &NatsServer, timeout: Duration) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(address(nats))?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut info = String::new();
    reader.read_line(&mut info)?;
    assert!(info.starts_with("INFO {"), "{info}");
    stream.write_all(b"CONNECT {\"verbose\":false}\r\nPING\r\n")?;
    let mut answer = String::new();
    reader.read_line(&mut answer)?;
    Ok(answer)
}

const SECOND: Duration = Duration::from_secs(1);

#[test]
fn started_server_answers_ping() {
    let Some(nats) = NatsServer::start_or_skip() else {
        return;
    };
    assert!(nats.url().starts_with("nats://"), "{}", nats.url());
    assert_ne!(
        address(&nats),
        "127.0.0.1:4222",
        "never the system server's port"
    );
    assert_eq!(ping(&nats, SECOND).expect("PING"), "PONG\r\n");
}

#[test]
fn killed_server_answers_ping_again_after_restart() {
    let Some(mut nats) = private_nats() else {
        return;
    };
    let url = nats.url().to_owned();

    nats.kill().expect("kill");
    assert_eq!(nats.pid(), None);
    assert!(
        TcpStream::connect(address(&nats)).is_err(),
        "a killed server accepted a connection"
    );
    assert!(matches!(
        nats.pause(),
        Err(Error::NotRunning {
            method: "pause",
            ..
        })
    ));

    nats.restart().expect("restart");
    assert_eq!(nats.url(), url, "restart keeps the port");
    assert_eq!(ping(&nats, SECOND).expect("PING after restart"), "PONG\r\n");
}

#[test]
fn paused_server_answers_only_after_resume() {
    let Some(mut nats) = private_nats() else {
        return;
    };
    nats.pause().expect("pause");
    let answer = ping(&nats, Duration::from_millis(300));
    assert!(answer.is_err(), "a paused server answered: {answer:?}");

    nats.resume().expect("resume");
    assert_eq!(ping(&nats, SECOND).expect("PING after resume"), "PONG\r\n");
}

#[test]
fn stopped_server_restarts_on_the_same_port() {
    let Some(mut nats) = private_nats() else {
        return;
    };
    let first = nats.pid();
    nats.stop().expect("stop");
    assert_eq!(nats.pid(), None);
    nats.restart().expect("restart");
    assert_ne!(nats.pid(), first, "restart started a new process");
    assert_eq!(ping(&nats, SECOND).expect("PING after restart"), "PONG\r\n");
}
