//! The real-process test: a real server (the `drain_server` example) runs as a child process,
//! takes concurrent HTTP load (keep-alive HTTP/1 and HTTP/2 connections, fresh connections,
//! a long SSE stream, a health poller), gets SIGTERM mid-load, and must drain everything it
//! accepted (features `serve` and `signal`).
//!
//! The child is this test's own binary, re-run with an environment variable that makes the
//! test run the example's server instead of the load: it is always built with the test, and
//! it is the example's code, compiled in as a module. The child prints one line per event
//! (`drain-server <what> key=value ...`); the test waits on those lines and on the sockets
//! (a refused connection, a closed stream), never on durations. The child's drain deadline
//! is short (1.5 s) so the test takes a few seconds. Its grace delay is long (60 s) but ends
//! as soon as `/health` has answered `503` once (`grace_until_probed(1)`): the health
//! poller, however late it runs on a loaded machine, sees the `503` before the server stops
//! accepting, and nothing waits out the 60 s.

#![cfg(all(feature = "serve", feature = "signal", unix))]

#[allow(dead_code)]
#[path = "../examples/drain_server.rs"]
mod drain_server;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustix::process::{Pid, Signal, kill_process};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// Set in the child: run the server, not the load.
const CHILD: &str = "PALISADE_DRAIN_SERVER_CHILD";
const TEST_NAME: &str = "sigterm_mid_load_drains_every_accepted_request";
/// A safety net so a broken build fails instead of hanging; never reached when it works.
const HANG: Duration = Duration::from_secs(120);

#[test]
fn sigterm_mid_load_drains_every_accepted_request() {
    if std::env::var_os(CHILD).is_some() {
        std::process::exit(i32::from(drain_server::run()));
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            tokio::time::timeout(HANG, drive())
                .await
                .expect("the real-process test hung");
        });
}

/// One `drain-server <what> key=value ...` line.
#[derive(Debug, Clone)]
struct Line {
    what: String,
    fields: HashMap<String, String>,
    raw: String,
}

impl Line {
    fn parse(raw: &str) -> Option<Self> {
        // Anywhere in the line: libtest's "test <name> ... " may come first.
        let start = raw.find("drain-server ")?;
        let mut words = raw[start + "drain-server ".len()..].split_whitespace();
        let what = words.next()?.to_owned();
        let fields = words
            .filter_map(|word| word.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect();
        Some(Self {
            what,
            fields,
            raw: raw.to_owned(),
        })
    }

    fn field(&self, key: &str) -> &str {
        self.fields
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.raw))
    }

    fn number(&self, key: &str) -> u64 {
        self.field(key).parse().unwrap()
    }
}

/// The child's lines, as they come, and all of them so far.
struct Lines {
    rx: mpsc::UnboundedReceiver<Line>,
    seen: Vec<Line>,
}

impl Lines {
    async fn wait_for(&mut self, what: &str, matches: impl Fn(&Line) -> bool) -> Line {
        if let Some(line) = self
            .seen
            .iter()
            .find(|line| line.what == what && matches(line))
        {
            return line.clone();
        }
        loop {
            let Some(line) = self.rx.recv().await else {
                panic!(
                    "the child ended without printing {what}; it printed {:#?}",
                    self.seen
                );
            };
            self.seen.push(line.clone());
            if line.what == what && matches(&line) {
                return line;
            }
        }
    }

    async fn rest(&mut self) {
        while let Some(line) = self.rx.recv().await {
            self.seen.push(line);
        }
    }

    fn all(&self, what: &str) -> Vec<&Line> {
        self.seen.iter().filter(|line| line.what == what).collect()
    }
}

fn spawn_child() -> (Child, Lines, tokio::task::JoinHandle<String>) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .env("DRAIN_ADDR", "127.0.0.1:0")
        .env("DRAIN_GRACE_MS", "60000")
        .env("DRAIN_GRACE_PROBES", "1")
        .env("DRAIN_DEADLINE_MS", "1500")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::spawn(async move {
        while let Ok(Some(raw)) = stdout.next_line().await {
            if let Some(line) = Line::parse(&raw) {
                let _ = tx.send(line);
            }
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let lines = Lines {
        rx,
        seen: Vec::new(),
    };
    (child, lines, stderr)
}

/// What one load worker saw.
#[derive(Debug, Default)]
struct Outcome {
    /// `200` with the whole body.
    ok: u64,
    /// Refused, or closed before any response: the server never took the request.
    not_accepted: u64,
    /// Anything else: a response that was not `200 done`, a body cut short.
    failures: Vec<String>,
}

fn get(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header(header::HOST, "localhost")
        .body(Empty::new())
        .unwrap()
}

/// Connects, or `None` if the server stopped accepting: refused, or reset (the listener
/// closed while this connection waited in its backlog).
async fn connect(addr: SocketAddr) -> Option<TcpStream> {
    match TcpStream::connect(addr).await {
        Ok(stream) => Some(stream),
        Err(error)
            if matches!(
                error.kind(),
                ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset
            ) =>
        {
            None
        }
        Err(error) => panic!("connect: {error}"),
    }
}

/// Sends `/work` and records what came back. Returns whether the connection can carry more.
async fn work_http1(
    sender: &mut http1::SendRequest<Empty<Bytes>>,
    outcome: &mut Outcome,
    ok: &watch::Sender<u64>,
) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let response = match sender.send_request(get("/work")).await {
        Ok(response) => response,
        // Closed before a response: the server did not take this request.
        Err(_) => {
            outcome.not_accepted += 1;
            return false;
        }
    };
    let closing = response
        .headers()
        .get(header::CONNECTION)
        .is_some_and(|value| value == "close");
    record(response, outcome, ok).await;
    !closing
}

async fn record(
    response: http::Response<hyper::body::Incoming>,
    outcome: &mut Outcome,
    ok: &watch::Sender<u64>,
) {
    let status = response.status();
    match response
        .into_body()
        .collect()
        .await
        .map(|body| body.to_bytes())
    {
        Ok(body) if status == StatusCode::OK && body == "done" => {
            outcome.ok += 1;
            ok.send_modify(|n| *n += 1);
        }
        Ok(body) => outcome.failures.push(format!("{status} {body:?}")),
        Err(error) => outcome
            .failures
            .push(format!("{status} then a body error: {error}")),
    }
}

/// Keep-alive HTTP/1: many requests per connection, reconnecting when the server closes it.
async fn keep_alive_worker(addr: SocketAddr, ok: watch::Sender<u64>) -> Outcome {
    let mut outcome = Outcome::default();
    while let Some(stream) = connect(addr).await {
        let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            outcome.not_accepted += 1;
            continue;
        };
        tokio::spawn(conn);
        while work_http1(&mut sender, &mut outcome, &ok).await {}
    }
    outcome.not_accepted += 1;
    outcome
}

/// One request per connection.
async fn fresh_worker(addr: SocketAddr, ok: watch::Sender<u64>) -> Outcome {
    let mut outcome = Outcome::default();
    while let Some(stream) = connect(addr).await {
        let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            outcome.not_accepted += 1;
            continue;
        };
        tokio::spawn(conn);
        work_http1(&mut sender, &mut outcome, &ok).await;
    }
    outcome.not_accepted += 1;
    outcome
}

/// HTTP/2: many streams per connection, reconnecting after `GOAWAY`.
async fn http2_worker(addr: SocketAddr, ok: watch::Sender<u64>) -> Outcome {
    let mut outcome = Outcome::default();
    while let Some(stream) = connect(addr).await {
        let Ok((mut sender, conn)) =
            http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
        else {
            outcome.not_accepted += 1;
            continue;
        };
        tokio::spawn(conn);
        loop {
            if sender.ready().await.is_err() {
                break;
            }
            match sender.send_request(get("/work")).await {
                Ok(response) => record(response, &mut outcome, &ok).await,
                // Refused by GOAWAY, or the connection closed: never taken.
                Err(_) => {
                    outcome.not_accepted += 1;
                    break;
                }
            }
        }
    }
    outcome.not_accepted += 1;
    outcome
}

/// What the health poller saw.
#[derive(Debug)]
struct Health {
    /// The statuses, in order, each once.
    statuses: Vec<StatusCode>,
    /// For each `503`: whether it told the connection to close.
    unavailable_closing: Vec<bool>,
}

/// Polls `/health` over a keep-alive connection, reconnecting when the server closes it,
/// until refused. Says on `healthy` when it has seen its first `200`.
///
/// The child's grace delay lasts until `/health` has answered `503` once, and until then
/// the server accepts and serves as usual: however late this task runs after the
/// trigger, its next probe is answered `503` (on an HTTP/1 connection, with
/// `Connection: close`) before the server stops accepting.
async fn health_poller(addr: SocketAddr, healthy: oneshot::Sender<()>) -> Health {
    let mut healthy = Some(healthy);
    let mut health = Health {
        statuses: Vec::new(),
        unavailable_closing: Vec::new(),
    };
    while let Some(stream) = connect(addr).await {
        let Ok((mut sender, conn)) = http1::handshake(TokioIo::new(stream)).await else {
            continue;
        };
        tokio::spawn(conn);
        loop {
            if sender.ready().await.is_err() {
                break;
            }
            // Closed before a response: the server closed the idle connection.
            let Ok(response) = sender.send_request(get("/health")).await else {
                break;
            };
            let status = response.status();
            let closing = response
                .headers()
                .get(header::CONNECTION)
                .is_some_and(|value| value == "close");
            let _ = response.into_body().collect().await;
            if health.statuses.last() != Some(&status) {
                health.statuses.push(status);
            }
            if status == StatusCode::OK
                && let Some(healthy) = healthy.take()
            {
                let _ = healthy.send(());
            }
            if status == StatusCode::SERVICE_UNAVAILABLE {
                health.unavailable_closing.push(closing);
            }
            if closing {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    health
}

/// Reads the SSE stream to its end: the phases its events named, and whether it was cut
/// (ended with an error) rather than ended.
async fn sse_reader(addr: SocketAddr, events: Arc<AtomicU64>) -> (Vec<String>, bool) {
    let stream = connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get("/events")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let mut phases: Vec<String> = Vec::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let text = String::from_utf8_lossy(&data).into_owned();
                // "data: <n> <phase>\n\n"
                let phase = text
                    .split_whitespace()
                    .nth(2)
                    .unwrap_or_default()
                    .to_owned();
                if phases.last() != Some(&phase) {
                    phases.push(phase);
                }
                events.fetch_add(1, Ordering::AcqRel);
            }
            Some(Err(_)) => return (phases, true),
            None => return (phases, false),
        }
    }
}

/// One request whose answer waits for the drain: in flight across the trigger.
async fn slow_request(addr: SocketAddr) -> (StatusCode, String) {
    let stream = connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get("/slow")).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn drive() {
    let (mut child, mut lines, stderr) = spawn_child();
    let addr: SocketAddr = lines
        .wait_for("listening", |_| true)
        .await
        .field("addr")
        .parse()
        .unwrap();

    // Before any shutdown: a panicking handler answers 500, and the server lives on.
    let stream = connect(addr).await.unwrap();
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let response = sender.send_request(get("/panic")).await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let panicked = lines.wait_for("handler_panicked", |_| true).await;
    assert!(panicked.raw.contains("boom at /panic"), "{}", panicked.raw);
    drop(sender);

    // The load.
    let (ok_tx, mut ok_rx) = watch::channel(0u64);
    let mut workers = JoinSet::new();
    for _ in 0..3 {
        workers.spawn(keep_alive_worker(addr, ok_tx.clone()));
        workers.spawn(fresh_worker(addr, ok_tx.clone()));
    }
    workers.spawn(http2_worker(addr, ok_tx.clone()));
    let (healthy_tx, healthy) = oneshot::channel();
    let health = tokio::spawn(health_poller(addr, healthy_tx));
    let sse_events = Arc::new(AtomicU64::new(0));
    let sse = tokio::spawn(sse_reader(addr, Arc::clone(&sse_events)));
    let slow = tokio::spawn(slow_request(addr));

    // Mid-load: requests are flowing, health has said 200, the SSE stream is streaming, the
    // slow one is in.
    ok_rx.wait_for(|n| *n >= 30).await.unwrap();
    healthy.await.expect("the health poller saw a 200");
    lines.wait_for("slow_started", |_| true).await;
    while sse_events.load(Ordering::Acquire) == 0 {
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let pid = Pid::from_raw(i32::try_from(child.id().unwrap()).unwrap()).unwrap();
    kill_process(pid, Signal::TERM).unwrap();

    // Once the listener is closed, new connections are refused.
    lines.wait_for("stopped_accepting", |_| true).await;
    let refused = TcpStream::connect(addr).await.unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);

    let mut load = Outcome::default();
    while let Some(outcome) = workers.join_next().await {
        let outcome = outcome.unwrap();
        load.ok += outcome.ok;
        load.not_accepted += outcome.not_accepted;
        load.failures.extend(outcome.failures);
    }
    let health = health.await.unwrap();
    let (sse_phases, sse_cut) = sse.await.unwrap();
    let (slow_status, slow_body) = slow.await.unwrap();
    let status = child.wait().await.unwrap();
    lines.rest().await;
    let stderr = stderr.await.unwrap();
    let context = format!("child lines: {:#?}\nchild stderr:\n{stderr}", lines.seen);

    // Every request the server took completed successfully: no failure seen by a client,
    // and as many `200 done` as the server counted requests into its handler.
    let report = lines.wait_for("report", |_| true).await;
    eprintln!(
        "load: {} ok, {} not accepted; {health:?}; stream {sse_phases:?}; {}",
        load.ok, load.not_accepted, report.raw
    );
    assert!(load.failures.is_empty(), "{:?}\n{context}", load.failures);
    assert_eq!(load.ok, report.number("handled"), "{load:?}\n{context}");
    assert!(load.not_accepted > 0, "every worker ends refused");

    // The request in flight across the trigger finished during the drain.
    assert_eq!(slow_status, StatusCode::OK);
    assert_eq!(slow_body, "slow done during draining");

    // Health went 503 from the trigger on, and never back; each 503 closed its keep-alive
    // connection.
    assert_eq!(
        health.statuses,
        [StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE],
        "{context}"
    );
    assert!(
        health.unavailable_closing.iter().all(|closing| *closing),
        "{health:?}"
    );

    // The SSE stream kept streaming through the drain and was cut at the deadline.
    assert!(sse_cut, "the stream was cut, not ended: {sse_phases:?}");
    assert!(
        sse_phases.iter().any(|phase| phase == "draining"),
        "{sse_phases:?}"
    );
    assert!(!sse_phases.iter().any(|phase| phase == "hooks"));

    // The phases, in order; the hooks in order, the failing one not stopping the rest.
    let phases: Vec<&str> = lines
        .all("phase")
        .iter()
        .map(|line| line.field("to"))
        .collect();
    assert_eq!(
        phases,
        [
            "unhealthy",
            "grace",
            "stop_accepting",
            "draining",
            "cancelling",
            "hooks",
            "done"
        ],
        "{context}"
    );
    let hooks: Vec<(&str, &str)> = lines
        .all("hook")
        .iter()
        .map(|line| (line.field("name"), line.field("outcome")))
        .collect();
    assert_eq!(
        hooks,
        [
            ("database", "completed"),
            ("cache", "failed"),
            ("queue", "completed"),
            ("logs", "completed"),
        ]
    );

    // The report: nothing forced or abandoned; the stream (and its connection) cancelled at
    // the deadline; the slow request and the stream were in flight when the drain began.
    assert_eq!(report.field("forced"), "false");
    assert_eq!(report.number("abandoned"), 0, "{context}");
    assert!(report.number("requests_cancelled") >= 1, "{context}");
    assert!(report.number("requests_at_drain") >= 2, "{context}");

    // Not clean (a stream was cut, a hook failed): exit code 1.
    assert_eq!(status.code(), Some(1), "{context}");
    assert_eq!(report.number("code"), 1);
}
