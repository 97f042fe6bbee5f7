//! A server that drains what it accepted on SIGTERM, then says what happened and exits with
//! the shutdown's code (features `serve` and `signal`).
//!
//! ```text
//! cargo run -p palisade-shutdown --example drain_server --features serve,signal
//! curl localhost:3000/work; curl -N localhost:3000/events; curl localhost:3000/health
//! kill -TERM <pid>     # a second SIGTERM (or Ctrl-C) forces the stop
//! ```
//!
//! Routes: `/work` (answers after 20 ms), `/slow` (answers only once the drain has begun),
//! `/events` (an SSE stream that never ends by itself, so the drain deadline cuts it),
//! `/panic` (answers `500` through `CatchPanicLayer`), `/health` (the readiness probe).
//! Four cleanup hooks run in order: database, cache (which fails on purpose, to show that
//! the others run anyway), queue, logs.
//!
//! It prints one line per event on stdout, `drain-server <what> key=value ...`; the
//! real-process test (`tests/process.rs`) reads them. Settings come from the environment:
//! `DRAIN_ADDR` (default `127.0.0.1:3000`), `DRAIN_GRACE_MS` (default 5000),
//! `DRAIN_GRACE_PROBES` (the grace delay ends once `/health` has answered `503` this many
//! times; default: the whole delay) and `DRAIN_DEADLINE_MS` (default 30000).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http::header;
use http_body::Frame;
use palisade_core::event::listener_fn;
use palisade_shutdown::{Hook, Phase, Shutdown, ShutdownEvent, serve};
use tokio::time::{Interval, MissedTickBehavior};
use tower::ServiceBuilder;

fn main() -> ExitCode {
    ExitCode::from(run())
}

/// Runs the server until its shutdown is done; returns the exit code.
pub(crate) fn run() -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("drain-server: cannot start the runtime: {error}");
            return 2;
        }
    };
    runtime.block_on(serve_until_done())
}

fn millis_from_env(name: &str, default: u64) -> Duration {
    let millis = std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default);
    Duration::from_millis(millis)
}

/// Prints the coordinator's events, one line each.
fn print_event(event: &ShutdownEvent) {
    match event {
        ShutdownEvent::Triggered { count } => println!("drain-server triggered count={count}"),
        ShutdownEvent::PhaseChanged {
            to,
            in_flight,
            tasks,
            ..
        } => println!("drain-server phase to={to} in_flight={in_flight} tasks={tasks}"),
        ShutdownEvent::StoppedAccepting {
            open_connections, ..
        } => println!("drain-server stopped_accepting open_connections={open_connections}"),
        ShutdownEvent::ConnectionsCut { count } => {
            println!("drain-server connections_cut count={count}");
        }
        ShutdownEvent::HandlerPanicked { message } => {
            println!("drain-server handler_panicked message={message:?}");
        }
        ShutdownEvent::HookFinished { name, outcome, .. } => {
            println!("drain-server hook name={name} outcome={}", outcome.as_str());
        }
        _ => {}
    }
}

async fn serve_until_done() -> u8 {
    let addr = std::env::var("DRAIN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let mut builder = Shutdown::builder().grace(millis_from_env("DRAIN_GRACE_MS", 5_000));
    if let Some(probes) = std::env::var("DRAIN_GRACE_PROBES")
        .ok()
        .and_then(|value| value.parse().ok())
    {
        builder = builder.grace_until_probed(probes);
    }
    let shutdown = builder
        .drain_deadline(millis_from_env("DRAIN_DEADLINE_MS", 30_000))
        .cancel_grace(Duration::from_millis(500))
        .on_signals()
        .listener(listener_fn(print_event))
        .hook(Hook::new("database", || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok::<_, Infallible>(())
        }))
        .hook(Hook::new("cache", || async {
            Err::<(), _>("cache flush failed: connection reset (on purpose)")
        }))
        .hook(Hook::new("queue", || async { Ok::<_, Infallible>(()) }))
        .hook(Hook::new("logs", || async { Ok::<_, Infallible>(()) }))
        .build();

    let handled = Arc::new(AtomicU64::new(0));
    let app = Router::new()
        .route(
            "/work",
            get({
                let handled = Arc::clone(&handled);
                move || work(Arc::clone(&handled))
            }),
        )
        .route(
            "/slow",
            get({
                let shutdown = shutdown.clone();
                move || slow(shutdown.clone())
            }),
        )
        .route(
            "/events",
            get({
                let shutdown = shutdown.clone();
                move || events(shutdown.clone())
            }),
        )
        .route("/panic", get(panics))
        .route_service("/health", shutdown.health());
    let app = ServiceBuilder::new()
        .layer(shutdown.http_layer())
        .layer(shutdown.catch_panic_layer())
        .service(app.with_state(()));

    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("drain-server: cannot listen on {addr}: {error}");
            return 2;
        }
    };
    let local: Option<SocketAddr> = listener.local_addr().ok();
    let server = tokio::spawn(serve(listener, app, &shutdown).into_future());

    // `build` installed the signal handlers: a SIGTERM sent as soon as we say where we are
    // is kept for `run`. The server task follows the phases `run` drives.
    match local {
        Some(local) => println!("drain-server listening addr={local}"),
        None => println!("drain-server listening addr={addr}"),
    }

    let report = match shutdown.run().await {
        Ok(report) => report,
        Err(error) => {
            eprintln!("drain-server: {error}");
            return 2;
        }
    };
    if server.await.is_err() {
        eprintln!("drain-server: the server task panicked");
    }
    println!(
        "drain-server report code={} forced={} requests_at_drain={} tasks_at_drain={} \
         requests_cancelled={} tasks_cancelled={} abandoned={} handled={}",
        report.code(),
        report.forced,
        report.requests_at_drain,
        report.tasks_at_drain,
        report.requests_cancelled,
        report.tasks_cancelled,
        report.abandoned,
        handled.load(Ordering::Acquire),
    );
    report.code()
}

/// Counts the request, works 20 ms, answers `done`.
async fn work(handled: Arc<AtomicU64>) -> &'static str {
    handled.fetch_add(1, Ordering::AcqRel);
    tokio::time::sleep(Duration::from_millis(20)).await;
    "done"
}

/// In flight before the shutdown, answers during the drain.
async fn slow(shutdown: Shutdown) -> String {
    println!("drain-server slow_started");
    shutdown.wait_for(Phase::Draining).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    format!("slow done during {}", shutdown.phase())
}

#[allow(clippy::unused_async)]
async fn panics() -> &'static str {
    panic!("boom at /panic")
}

/// An SSE stream: an event every 50 ms, saying the phase, forever. A real stream would end
/// when told to (a `ShutdownGuard`'s `stopping`); this one ignores the drain, so the
/// deadline cuts it.
async fn events(shutdown: Shutdown) -> impl IntoResponse {
    let mut every = tokio::time::interval(Duration::from_millis(50));
    every.set_missed_tick_behavior(MissedTickBehavior::Delay);
    (
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::new(Ticks {
            every,
            n: 0,
            shutdown,
        }),
    )
}

struct Ticks {
    every: Interval,
    n: u64,
    shutdown: Shutdown,
}

impl http_body::Body for Ticks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = &mut *self;
        this.every.poll_tick(cx).map(|_| {
            this.n += 1;
            let event = format!("data: {} {}\n\n", this.n, this.shutdown.phase());
            Some(Ok(Frame::data(Bytes::from(event))))
        })
    }
}
