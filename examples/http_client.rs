//! A hyper-util HTTP client behind Palisade's client stack, calling a URL again and again
//! and printing each outcome, then the layers' counters.
//!
//! ```sh
//! # Against the `axum_server` example (started first, in another terminal):
//! cargo run --release -p palisade-examples --example http_client
//! cargo run --release -p palisade-examples --example http_client -- http://127.0.0.1:3000/fail
//! cargo run --release -p palisade-examples --example http_client -- --requests 60 --interval-ms 0
//! ```
//!
//! The stack, outermost first (the recommended client order):
//!
//! 1. **retry** (`RetryLayer::http`): 4 attempts, exponential backoff from 100 ms (×2, capped
//!    at 2 s, full jitter), a server's `Retry-After` instead when it sends one, 5 s per
//!    attempt, 30 s per call, and the default retry budget (20 % of recent calls plus 10
//!    per second); a `CircuitOpen` is never retried;
//! 2. **circuit breaker**: open for 5 s after 5 failures in a row (`5xx`, errors; a `429`
//!    is the server's limit, not its health, and does not count);
//! 3. **upstream limit**: after a `429` (or a `503` with `Retry-After`) every call waits
//!    until the server said to come back;
//! 4. **rate limit**: the client's own budget, 20 requests per second, waiting up to 5 s;
//! 5. hyper-util's pooling client.
//!
//! Against the server's default limit (10 per second per key, bursts of 20), the default
//! 40 requests 100 ms apart show `429`s being retried after their `Retry-After`; against
//! `/fail`, the retries and then the breaker opening.
//!
//! Options: `URL` (default `http://127.0.0.1:3000/`), `--requests N` (default 40),
//! `--interval-ms N` (between requests, default 100), `--key KEY` (the `x-api-key` header,
//! default `http-client`).

use std::num::NonZeroU32;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use palisade::core::classify::StatusClassify;
use palisade::core::event::listener_fn;
use palisade::core::{Backoff, BoxError, Jitter, Outcome, Rejection};
use palisade::prelude::*;
use palisade::rate_limit::UpstreamLimitLayer;
use palisade::retry::{Attempts, RetryEvent};
use tower::{ServiceBuilder, ServiceExt};

/// What went wrong before calling.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("{0}\n\nusage: http_client [URL] [--requests N] [--interval-ms N] [--key KEY]")]
    Usage(String),
    #[error(
        "an HTTP client behind Palisade's client stack\n\nusage: http_client [URL] [--requests N] [--interval-ms N] [--key KEY]"
    )]
    Help,
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// The command line.
#[derive(Debug)]
struct Args {
    uri: Uri,
    requests: u32,
    interval: Duration,
    key: HeaderValue,
}

impl Args {
    fn parse() -> Result<Self, Error> {
        let mut args = Args {
            uri: Uri::from_static("http://127.0.0.1:3000/"),
            requests: 40,
            interval: Duration::from_millis(100),
            key: HeaderValue::from_static("http-client"),
        };
        let mut argv = std::env::args().skip(1);
        while let Some(arg) = argv.next() {
            let mut value = |name: &str| {
                argv.next()
                    .ok_or_else(|| Error::Usage(format!("{name} needs a value")))
            };
            match arg.as_str() {
                "--requests" => args.requests = parse_value("--requests", &value("--requests")?)?,
                "--interval-ms" => {
                    let ms: u64 = parse_value("--interval-ms", &value("--interval-ms")?)?;
                    args.interval = Duration::from_millis(ms);
                }
                "--key" => args.key = parse_value("--key", &value("--key")?)?,
                "-h" | "--help" => return Err(Error::Help),
                flag if flag.starts_with('-') => {
                    return Err(Error::Usage(format!("unknown argument {flag:?}")));
                }
                url => args.uri = parse_value("URL", url)?,
            }
        }
        if args.uri.scheme_str() != Some("http") {
            return Err(Error::Usage(format!(
                "URL {}: only http:// URLs (this client has no TLS)",
                args.uri
            )));
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

/// What the retry layer reported.
#[derive(Debug, Default)]
struct RetryCounters {
    retries: AtomicU64,
    waited_ms: AtomicU64,
    budget_exhausted: AtomicU64,
    gave_up: AtomicU64,
}

impl RetryCounters {
    fn record(&self, event: &RetryEvent) {
        match event {
            RetryEvent::Retrying { delay, .. } => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                self.waited_ms.fetch_add(ms, Ordering::Relaxed);
            }
            RetryEvent::BudgetExhausted { .. } => {
                self.budget_exhausted.fetch_add(1, Ordering::Relaxed);
            }
            RetryEvent::GaveUp { .. } => {
                self.gave_up.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }
}

/// How the calls ended.
#[derive(Debug, Default)]
struct Tally {
    by_status: std::collections::BTreeMap<u16, u32>,
    circuit_open: u32,
    rate_limited: u32,
    other_errors: u32,
}

fn nonzero(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Help) => {
            println!("{}", Error::Help);
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("http_client: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Error> {
    let args = Args::parse()?;
    let config_error = |error: &dyn std::fmt::Display| Error::Config(error.to_string());

    let counters = Arc::new(RetryCounters::default());
    let sink = Arc::clone(&counters);
    let backoff = Backoff::exponential(Duration::from_millis(100), 2.0, Duration::from_secs(2))
        .map_err(|e| config_error(&e))?
        .with_jitter(Jitter::Full);
    let retry = RetryConfig::builder()
        .max_attempts(nonzero(4))
        .backoff(backoff)
        .attempt_timeout(Duration::from_secs(5))
        .deadline(Duration::from_secs(30))
        .listener(listener_fn(move |event: &RetryEvent| sink.record(event)))
        .build()
        .map_err(|e| config_error(&e))?;

    // A 429 is the server's limit, not its health: the upstream limit handles it.
    let classify = StatusClassify::default().with(StatusCode::TOO_MANY_REQUESTS, Outcome::Ignored);
    let breaker = CircuitBreakerLayer::with_classifier(
        CircuitBreakerConfig::builder()
            .name("upstream")
            .consecutive_failures(nonzero(5))
            .open_wait(Backoff::constant(Duration::from_secs(5)))
            .build()
            .map_err(|e| config_error(&e))?,
        classify,
    );
    let breaker_handle = breaker.handle();
    let upstream = UpstreamLimitLayer::new().max_wait(Duration::from_secs(30));
    let own_limit = RateLimitLayer::new(
        RateLimitConfig::builder(Quota::per_second(nonzero(20)))
            .wait_up_to(Duration::from_secs(5))
            .name("client")
            .build()
            .map_err(|e| config_error(&e))?,
    );
    let own_limit_handle = own_limit.handle();

    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(palisade::retry::RetryLayer::http(retry))
        .layer(breaker)
        .layer(upstream.clone())
        .layer(own_limit)
        .service(http);

    println!(
        "calling {} {} times, {:?} apart, x-api-key {:?}",
        args.uri, args.requests, args.interval, args.key
    );
    let mut tally = Tally::default();
    let started = Instant::now();
    for i in 1..=args.requests {
        let request = Request::get(args.uri.clone())
            .header("x-api-key", args.key.clone())
            .body(Full::default())
            .map_err(|e| config_error(&e))?;
        let sent = Instant::now();
        let outcome = call(client.clone(), request).await;
        let took = sent.elapsed();
        match outcome {
            Ok((status, attempts, body)) => {
                *tally.by_status.entry(status.as_u16()).or_default() += 1;
                let body = String::from_utf8_lossy(&body);
                let body: String = body.trim_end().chars().take(40).collect();
                println!("#{i:>3}  {status:<26} {attempts} attempt(s) {took:>10.1?}  {body:?}");
            }
            Err(error) => {
                match Rejection::find(&*error) {
                    Some(Rejection::CircuitOpen(_)) => tally.circuit_open += 1,
                    Some(Rejection::RateLimited(_)) => tally.rate_limited += 1,
                    _ => tally.other_errors += 1,
                }
                println!("#{i:>3}  error: {error} {took:>10.1?}");
            }
        }
        if i < args.requests && !args.interval.is_zero() {
            tokio::time::sleep(args.interval).await;
        }
    }

    let breaker = breaker_handle.metrics();
    println!();
    println!("{} calls in {:.1?}", args.requests, started.elapsed());
    println!(
        "  outcomes: {:?} by status; {} circuit open, {} rate limited, {} other errors",
        tally.by_status, tally.circuit_open, tally.rate_limited, tally.other_errors
    );
    println!(
        "  retry: {} retries ({} ms waited), {} refused by the budget, {} calls gave up",
        counters.retries.load(Ordering::Relaxed),
        counters.waited_ms.load(Ordering::Relaxed),
        counters.budget_exhausted.load(Ordering::Relaxed),
        counters.gave_up.load(Ordering::Relaxed),
    );
    println!(
        "  breaker: {:?}, {} calls / {} failures in its window, {} calls refused",
        breaker.state, breaker.calls, breaker.failures, breaker.rejections
    );
    println!(
        "  upstream limit: paused for {:?} more; own rate limit: {} of {} left",
        upstream.pause_left(),
        own_limit_handle.snapshot().remaining(),
        own_limit_handle.snapshot().limit()
    );
    Ok(())
}

/// One call through the stack: the status, the attempts it took and the body.
async fn call<S>(
    client: S,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, u32, Bytes), BoxError>
where
    S: tower::Service<
            Request<Full<Bytes>>,
            Response = http::Response<hyper::body::Incoming>,
            Error = BoxError,
        >,
{
    let response = client.oneshot(request).await?;
    let status = response.status();
    let attempts = response
        .extensions()
        .get::<Attempts>()
        .map_or(1, |attempts| attempts.0);
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, attempts, body))
}
