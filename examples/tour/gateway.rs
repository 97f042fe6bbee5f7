//! The gateway: an axum router behind the full server stack, calling the upstream through
//! the client stack.
//!
//! Server stack, outermost first (every refusal is an HTTP answer, so the router keeps its
//! `Infallible` errors and needs no `HandleErrorLayer`):
//!
//! 1. `HttpShutdownLayer`: counts each request until its response body ends, for the drain.
//! 2. A keyed rate limit, one quota per `x-client` header: `429` + `Retry-After` +
//!    `RateLimit` headers.
//! 3. A concurrency pool with a priority queue (`x-priority`, 0 most urgent): `503` +
//!    `Retry-After` when the queue is full or a request waited too long.
//! 4. A circuit breaker around the handler: `503` + `Retry-After` while open.
//!
//! Client stack, towards the upstream, outermost first: retries with a budget (HTTP-aware:
//! `5xx`, `429`, `Retry-After`), a pause whenever the upstream answers `429` +
//! `Retry-After`, our own rate budget towards it (wait mode), and a circuit breaker.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::RETRY_AFTER;
use axum::http::{HeaderName, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use palisade::breaker::{
    BreakerEvent, CircuitBreakerConfig, CircuitBreakerHandle, CircuitBreakerLayer,
    HttpCircuitBreakerLayer,
};
use palisade::core::classify::{Outcome, StatusClassify};
use palisade::core::event::listener_fn;
use palisade::core::{Backoff, BoxError, Jitter, Rejection};
use palisade::pool::http::{HttpConcurrencyPoolLayer, PriorityHeader};
use palisade::pool::{PoolConfig, PoolEvent, PoolHandle};
use palisade::prelude::*;
use palisade::rate_limit::{
    HeaderKey, KeyedRateLimitLayer, RateLimitEvent, TooManyRequests, UpstreamLimitLayer,
};
use palisade::retry::{BudgetConfig, RetryEvent};
use palisade::shutdown::serve;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceBuilder;
use tower::util::{BoxCloneSyncService, ServiceExt as _};

use crate::error::{Context, TourError};
use crate::telemetry::{Breaker, Telemetry};

/// Requests per second each client may send (`x-client`), bursts of up to this many too.
pub(crate) const PER_CLIENT_QUOTA: u32 = 100;
/// Requests the handler runs at once; more wait in the pool's queue.
pub(crate) const POOL_LIMIT: u32 = 16;
/// Requests that may wait in the pool's queue.
pub(crate) const POOL_QUEUE: u32 = 48;
/// How long the `/report` route works before it calls the upstream.
pub(crate) const REPORT_WORK: Duration = Duration::from_millis(250);

/// The client stack's service: requests to the upstream, through retry, pause, rate budget
/// and breaker.
type UpstreamClient = BoxCloneSyncService<Request<Full<Bytes>>, Response<Incoming>, BoxError>;

/// The running gateway.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// Where it listens.
    pub(crate) addr: SocketAddr,
    /// Its shutdown coordinator.
    pub(crate) shutdown: Shutdown,
    /// The server task: ends once the listener is closed and every connection is gone.
    pub(crate) server: JoinHandle<()>,
    /// The pool's handle: in flight, queued.
    pub(crate) pool: PoolHandle,
    /// The server-side breaker's handle.
    pub(crate) breaker: CircuitBreakerHandle,
    /// The client-side (upstream) breaker's handle.
    pub(crate) upstream_breaker: CircuitBreakerHandle,
    /// What the layers reported.
    pub(crate) telemetry: Arc<Telemetry>,
}

#[derive(Clone)]
struct App {
    upstream: Arc<str>,
    client: UpstreamClient,
}

impl Gateway {
    /// Builds both stacks and serves on a loopback port.
    pub(crate) async fn start(upstream: SocketAddr) -> Result<Self, TourError> {
        let telemetry = Arc::new(Telemetry::default());
        let (client, upstream_breaker) = client_stack(&telemetry)?;
        let app = App {
            upstream: Arc::from(format!("http://{upstream}")),
            client,
        };

        let shutdown = Shutdown::builder()
            .drain_deadline(Duration::from_secs(5))
            .build();
        let router = Router::new()
            .route("/quote/{symbol}", get(quote))
            .route("/report/{id}", get(report))
            .route_service("/health", shutdown.health())
            .with_state(app);

        let on_limit = Arc::clone(&telemetry);
        let limit = RateLimitConfig::builder(Quota::per_second(nonzero(PER_CLIENT_QUOTA)))
            .name("per-client")
            .listener(listener_fn(move |e: &RateLimitEvent| {
                on_limit.on_rate_limit(e)
            }))
            .build()
            .context("configuring the per-client rate limit")?;
        let rate_limit = KeyedRateLimitLayer::with_config(
            limit,
            HeaderKey::new(HeaderName::from_static("x-client")),
        )
        .context("building the per-client rate limit")?
        .respond_with(TooManyRequests::new());

        let on_pool = Arc::clone(&telemetry);
        let pool = HttpConcurrencyPoolLayer::new(
            PoolConfig::builder(nonzero(POOL_LIMIT))
                .queue_capacity(POOL_QUEUE)
                .queue_timeout(Duration::from_millis(500))
                .name("gateway")
                .listener(listener_fn(move |e: &PoolEvent| on_pool.on_pool(e)))
                .build()
                .context("configuring the pool")?,
        )
        .prioritize(PriorityHeader::new(HeaderName::from_static("x-priority")));
        let pool_handle = pool.handle();

        // The handler fails when it cannot serve the upstream's price (a 502, or a 503 while
        // the upstream's own breaker is open); a 429 relays the upstream's pacing.
        let on_breaker = Arc::clone(&telemetry);
        let breaker = HttpCircuitBreakerLayer::with_classifier(
            CircuitBreakerConfig::builder()
                .name("gateway")
                .count_window(nonzero(40))
                .min_calls(20)
                .failure_rate(50.0)
                .open_wait(Backoff::constant(Duration::from_millis(1000)))
                .half_open_probes(nonzero(3))
                .listener(listener_fn(move |e: &BreakerEvent| {
                    on_breaker.on_breaker(Breaker::Gateway, e)
                }))
                .build()
                .context("configuring the gateway's breaker")?,
            StatusClassify::default().with(StatusCode::TOO_MANY_REQUESTS, Outcome::Ignored),
        );
        let breaker_handle = breaker.handle();

        let service = ServiceBuilder::new()
            .http_shutdown(&shutdown)
            .layer(rate_limit)
            .layer(pool)
            .layer(breaker)
            .service(router);

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the gateway's port")?;
        let addr = listener
            .local_addr()
            .context("reading the gateway's address")?;
        let server = tokio::spawn(serve(listener, service, &shutdown).into_future());
        Ok(Self {
            addr,
            shutdown,
            server,
            pool: pool_handle,
            breaker: breaker_handle,
            upstream_breaker,
            telemetry,
        })
    }
}

/// The client stack: retry (with budget) → pause on the upstream's `429` → our own rate
/// budget → breaker → hyper's client.
fn client_stack(
    telemetry: &Arc<Telemetry>,
) -> Result<(UpstreamClient, CircuitBreakerHandle), TourError> {
    let on_retry = Arc::clone(telemetry);
    let retry = RetryLayer::http(
        RetryConfig::builder()
            .max_attempts(nonzero(3))
            .backoff(
                Backoff::exponential(Duration::from_millis(20), 2.0, Duration::from_millis(200))
                    .context("configuring the retry backoff")?
                    .with_jitter(Jitter::Full),
            )
            .budget(BudgetConfig::new(0.2, 10, Duration::from_secs(10)))
            .attempt_timeout(Duration::from_secs(1))
            .deadline(Duration::from_millis(1500))
            .listener(listener_fn(move |e: &RetryEvent| on_retry.on_retry(e)))
            .build()
            .context("configuring the retries")?,
    );
    let budget = RateLimitConfig::builder(Quota::per_second(nonzero(1000)))
        .name("upstream-budget")
        .wait_up_to(Duration::from_millis(100))
        .build()
        .context("configuring the rate budget towards the upstream")?;
    let on_breaker = Arc::clone(telemetry);
    let breaker = CircuitBreakerLayer::with_classifier(
        CircuitBreakerConfig::builder()
            .name("upstream")
            .count_window(nonzero(20))
            .min_calls(10)
            .failure_rate(50.0)
            .open_wait(Backoff::constant(Duration::from_millis(600)))
            .half_open_probes(nonzero(3))
            .listener(listener_fn(move |e: &BreakerEvent| {
                on_breaker.on_breaker(Breaker::Upstream, e)
            }))
            .build()
            .context("configuring the upstream's breaker")?,
        // A 429 is the upstream pacing us (the pause layer handles it), not a failure.
        StatusClassify::default().with(StatusCode::TOO_MANY_REQUESTS, Outcome::Ignored),
    );
    let handle = breaker.handle();
    let http = palisade_examples::http_client::<Full<Bytes>>();
    let client = ServiceBuilder::new()
        .layer(retry)
        .layer(UpstreamLimitLayer::new().max_wait(Duration::from_secs(2)))
        .rate_limiter(budget)
        .layer(breaker)
        .service(http);
    Ok((BoxCloneSyncService::new(client), handle))
}

/// `GET /quote/{symbol}`: the upstream's price.
async fn quote(State(app): State<App>, Path(symbol): Path<String>) -> Response<Body> {
    call_upstream(&app, &symbol).await
}

/// `GET /report/{id}`: some slow work of our own, then the upstream's price.
async fn report(State(app): State<App>, Path(id): Path<u32>) -> Response<Body> {
    tokio::time::sleep(REPORT_WORK).await;
    call_upstream(&app, &format!("R{id}")).await
}

/// One call through the client stack, its outcome turned into the gateway's answer.
async fn call_upstream(app: &App, symbol: &str) -> Response<Body> {
    let request = match Request::get(format!("{}/price/{symbol}", app.upstream))
        .body(Full::new(Bytes::new()))
    {
        Ok(request) => request,
        Err(error) => return (StatusCode::BAD_REQUEST, error.to_string()).into_response(),
    };
    match app.client.clone().oneshot(request).await {
        Ok(response) => {
            let status = response.status();
            let retry_after = response.headers().get(RETRY_AFTER).cloned();
            match response.into_body().collect().await {
                Ok(body) if status.is_success() => {
                    (StatusCode::OK, body.to_bytes()).into_response()
                }
                // The upstream still asks us to wait after our retries: pass that on.
                Ok(_) if status == StatusCode::TOO_MANY_REQUESTS => {
                    let mut answer = StatusCode::TOO_MANY_REQUESTS.into_response();
                    if let Some(after) = retry_after {
                        answer.headers_mut().insert(RETRY_AFTER, after);
                    }
                    answer
                }
                Ok(_) => (
                    StatusCode::BAD_GATEWAY,
                    format!("upstream answered {status}"),
                )
                    .into_response(),
                Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
            }
        }
        // The client stack refused (open breaker, a pause longer than we wait): a 503 or
        // 429 with `Retry-After`, as the rejection says.
        Err(error) => match Rejection::find(&*error) {
            Some(rejection) => rejection.to_response(),
            None => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
        },
    }
}

/// One of the tour's non-zero constants.
pub(crate) fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).expect("the tour's settings are non-zero")
}
