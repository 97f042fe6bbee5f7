//! An axum app behind Palisade's full server stack, with a health endpoint and a graceful
//! shutdown.
//!
//! ```sh
//! cargo run --release -p palisade-examples --example axum_server
//! cargo run --release -p palisade-examples --example axum_server -- --addr 0.0.0.0:8080
//! ADDR=127.0.0.1:4000 cargo run --release -p palisade-examples --example axum_server
//! # The same handlers without any layer (the baseline of the `load` example):
//! cargo run --release -p palisade-examples --example axum_server -- --bare
//! ```
//!
//! The layers, outermost first (the recommended order): the HTTP shutdown layer (every
//! request counted until its response body ends, `Connection: close` once shutting down),
//! a rate limit per `x-api-key` (10 per second, bursts of 20; requests without the header
//! share one limit), a concurrency pool (64 at once, 128 waiting at most 2 s), and a circuit
//! breaker (open for 10 s after 5 failures in a row). Each answers its refusals itself, so
//! the axum `Router` keeps `Infallible` errors and needs no `HandleErrorLayer`.
//!
//! Then try, in another terminal:
//!
//! ```sh
//! curl -i localhost:3000/                      # 200 hello
//! curl -i -d 'some bytes' localhost:3000/echo  # the body back
//! curl -i localhost:3000/health                # 200 {"status":"healthy",...}; outside the stack
//! curl -s localhost:3000/stats                 # the layers' counters as JSON
//! # 429 once the burst of 20 is spent (25 requests on one connection, back to back):
//! curl -s -o /dev/null -w '%{http_code} ' -H 'x-api-key: me' 'localhost:3000/?n=[1-25]'
//! curl -si -H 'x-api-key: me' localhost:3000/   # Retry-After, RateLimit, RateLimit-Policy
//! # 503 + Retry-After from the breaker after five 500s (every route, for 10 s):
//! for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' localhost:3000/fail; done
//! # 503 + Retry-After from the pool: start it with `--pool 1`; the second request waits
//! # 2 s in the queue behind the slow one, then is shed:
//! curl -s localhost:3000/slow/3000 & curl -i localhost:3000/
//! # Graceful shutdown: start a slow request, then Ctrl-C the server: the request completes.
//! curl -s localhost:3000/slow/3000 & sleep 0.5; kill -INT <server pid>
//! ```
//!
//! Options: `--addr HOST:PORT` (or `ADDR`, default `127.0.0.1:3000`), `--bare`, `--rate N`
//! (requests per second per key, default 10; bursts of twice that), `--pool N` (requests at
//! once, default 64).

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use palisade::breaker::{CircuitBreakerHandle, HttpCircuitBreakerLayer};
use palisade::core::Backoff;
use palisade::pool::PoolHandle;
use palisade::pool::http::HttpConcurrencyPoolLayer;
use palisade::prelude::*;
use palisade::rate_limit::{HeaderKey, KeyedRateLimitLayer, TooManyRequests};
use palisade::shutdown::serve;
use tokio::net::TcpListener;
use tower::ServiceBuilder;

/// The longest `/slow/{ms}` sleeps.
const MAX_SLOW: Duration = Duration::from_secs(30);

/// What went wrong before serving.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}\n\nusage: axum_server [--addr HOST:PORT] [--bare] [--rate N] [--pool N]")]
    Usage(String),
    #[error(
        "an axum server behind Palisade's layers\n\nusage: axum_server [--addr HOST:PORT] [--bare] [--rate N] [--pool N]"
    )]
    Help,
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("shutdown: {0}")]
    Shutdown(#[from] palisade::shutdown::RunError),
}

/// The command line.
#[derive(Debug)]
struct Args {
    addr: SocketAddr,
    bare: bool,
    rate: NonZeroU32,
    pool: NonZeroU32,
}

impl Args {
    fn parse() -> Result<Self, Error> {
        let mut args = Args {
            addr: parse_value(
                "ADDR",
                std::env::var("ADDR").as_deref().unwrap_or("127.0.0.1:3000"),
            )?,
            bare: false,
            rate: NonZeroU32::new(10).unwrap_or(NonZeroU32::MIN),
            pool: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        };
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            let mut value = |name: &str| {
                argv.next()
                    .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
            };
            match arg.as_str() {
                "--addr" => args.addr = parse_value("--addr", &value("--addr")?)?,
                "--rate" => args.rate = parse_value("--rate", &value("--rate")?)?,
                "--pool" => args.pool = parse_value("--pool", &value("--pool")?)?,
                "--bare" => args.bare = true,
                "-h" | "--help" => return Err(Error::Help),
                other => return Err(Error::Usage(format!("unknown argument {other:?}"))),
            }
        }
        Ok(args)
    }
}

fn parse_value<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, Error>
where
    T::Err: std::fmt::Display,
{
    text.parse()
        .map_err(|error| Error::Usage(format!("{name} {text:?}: {error}")))
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(code) => code,
        Err(Error::Help) => {
            println!("{}", Error::Help);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("axum_server: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<ExitCode, Error> {
    let args = Args::parse()?;
    // SIGTERM or Ctrl-C starts the drain; a second one forces the stop.
    let shutdown = Shutdown::builder()
        .on_signals()
        .drain_deadline(Duration::from_secs(10))
        .build();
    let listener = TcpListener::bind(args.addr)
        .await
        .map_err(|source| Error::Bind {
            addr: args.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: args.addr,
        source,
    })?;

    let app = if args.bare {
        handlers().route_service("/health", shutdown.health())
    } else {
        layered(&shutdown, &args)?
    };
    let mode = if args.bare {
        "bare: no layers".to_owned()
    } else {
        format!(
            "full stack: {} req/s per key, pool of {}",
            args.rate, args.pool
        )
    };
    // The `load` example reads this line: keep its shape.
    println!("listening on http://{addr} ({mode})");

    // `with_state` turns every handler into a route once, here, as `axum::serve` does
    // (through `into_make_service`); a `Router` served as it is would do that on every
    // request, and apply the layers to the handler again each time.
    let app = app.with_state(());
    let server = tokio::spawn(serve(listener, app, &shutdown).into_future());
    let report = shutdown.run().await?;
    if let Err(error) = server.await {
        eprintln!("axum_server: the server task failed: {error}");
    }
    println!(
        "shut down in {:?}: {} request(s) were in flight when the drain began, exit code {}",
        report.elapsed,
        report.requests_at_drain,
        report.code()
    );
    Ok(report.exit_code())
}

/// The app's handlers, with no layer.
fn handlers() -> Router {
    Router::new()
        .route("/", get(|| async { "hello from palisade\n" }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route("/slow/{ms}", get(slow))
        .route(
            "/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose\n") }),
        )
}

/// Sleeps `ms` milliseconds (at most 30 s), then answers.
async fn slow(Path(ms): Path<u64>) -> String {
    let delay = Duration::from_millis(ms).min(MAX_SLOW);
    tokio::time::sleep(delay).await;
    format!("slept {delay:?}\n")
}

/// The handlers behind the full stack, `/health` outside it, and `/stats`.
fn layered(shutdown: &Shutdown, args: &Args) -> Result<Router, Error> {
    let burst = args
        .rate
        .saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    let rate = KeyedRateLimitLayer::<Option<HeaderValue>, _>::new(
        Quota::per_second(args.rate).allow_burst(burst),
        HeaderKey::new(HeaderName::from_static("x-api-key")),
    )
    .respond_with(TooManyRequests::new());
    let pool = HttpConcurrencyPoolLayer::new(
        PoolConfig::builder(args.pool)
            .queue_capacity(args.pool.get().saturating_mul(2))
            .queue_timeout(Duration::from_secs(2))
            .name("app")
            .build()
            .map_err(|error| Error::Config(error.to_string()))?,
    );
    let breaker = HttpCircuitBreakerLayer::new(
        CircuitBreakerConfig::builder()
            .name("app")
            .consecutive_failures(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN))
            .open_wait(Backoff::constant(Duration::from_secs(10)))
            .build()
            .map_err(|error| Error::Config(error.to_string()))?,
    );
    let stats = Stats {
        pool: pool.handle(),
        breaker: breaker.handle(),
        shutdown: shutdown.clone(),
    };

    let stack = ServiceBuilder::new()
        .layer(shutdown.http_layer().retry_after(Duration::from_secs(5)))
        .layer(rate)
        .layer(pool)
        .layer(breaker);
    Ok(handlers()
        .layer(stack)
        .route_service("/health", shutdown.health())
        .route("/stats", get(move || stats.clone().json())))
}

/// The layers' counters, for `/stats`.
#[derive(Clone)]
struct Stats {
    pool: PoolHandle,
    breaker: CircuitBreakerHandle,
    shutdown: Shutdown,
}

impl Stats {
    async fn json(self) -> Json<serde_json::Value> {
        let breaker = self.breaker.metrics();
        Json(serde_json::json!({
            "phase": self.shutdown.phase().as_str(),
            "in_flight": self.shutdown.in_flight(),
            "pool": {
                "limit": self.pool.limit(),
                "in_flight": self.pool.in_flight(),
                "queued": self.pool.queued(),
            },
            "breaker": {
                "state": format!("{:?}", breaker.state),
                "calls": breaker.calls,
                "failures": breaker.failures,
                "rejections": breaker.rejections,
            },
        }))
    }
}
