//! The server and client stacks the full-stack tests share: an axum app behind the
//! recommended server layers on a loopback port, and a hyper-util client behind retry,
//! circuit breaker and rate limits.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use palisade::breaker::{CircuitBreakerHandle, HttpCircuitBreakerLayer};
use palisade::core::classify::StatusClassify;
use palisade::core::event::listener_fn;
use palisade::core::{BoxError, Outcome};
use palisade::pool::PoolHandle;
use palisade::pool::http::HttpConcurrencyPoolLayer;
use palisade::prelude::*;
use palisade::rate_limit::{HeaderKey, KeyedRateLimitLayer, TooManyRequests, UpstreamLimitLayer};
use palisade::retry::http::HttpRetryLayer;
use palisade::retry::{RetryConfigBuilder, RetryEvent};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower::layer::util::{Identity, Stack};
use tower::{Service, ServiceBuilder};

/// The header the server's rate limit is keyed by.
pub(crate) const API_KEY: HeaderName = HeaderName::from_static("x-api-key");

pub(crate) fn n(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).expect("a non-zero test constant")
}

/// What the server's layers allow.
pub(crate) struct Limits {
    /// Per API key.
    pub(crate) rate: RateLimitConfig,
    pub(crate) pool: PoolConfig,
    pub(crate) breaker: CircuitBreakerConfig,
    /// The `Retry-After` of the shutdown layer's `503`s.
    pub(crate) shutdown_retry_after: Duration,
}

impl Limits {
    /// Limits no test request comes near.
    pub(crate) fn generous() -> Self {
        Self {
            rate: Quota::per_second(n(1_000)).into(),
            pool: PoolConfig::builder(n(64))
                .queue_capacity(64)
                .build()
                .expect("a valid pool"),
            breaker: CircuitBreakerConfig::builder()
                .consecutive_failures(n(100))
                .build()
                .expect("a valid breaker"),
            shutdown_retry_after: Duration::from_secs(5),
        }
    }
}

/// One request as the server answered it, recorded outside every layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Seen {
    pub(crate) path: String,
    pub(crate) status: StatusCode,
    pub(crate) retry_after: Option<String>,
    /// On tokio's clock: under `start_paused`, exact and independent of the machine's speed.
    pub(crate) at: Instant,
}

#[derive(Clone, Default)]
pub(crate) struct Log {
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Log {
    fn push(&self, seen: Seen) {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(seen);
    }

    pub(crate) fn all(&self) -> Vec<Seen> {
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// `(path, status)` of every request, in the order the server answered them.
    pub(crate) fn statuses(&self) -> Vec<(String, u16)> {
        self.all()
            .into_iter()
            .map(|seen| (seen.path, seen.status.as_u16()))
            .collect()
    }
}

/// What the handlers share.
#[derive(Clone)]
struct App {
    /// Requests that reached a handler.
    handled: Arc<AtomicUsize>,
    /// `/flaky` answers these statuses in order, then `200`.
    script: Arc<Mutex<VecDeque<StatusCode>>>,
    /// `/hold` waits for a permit here.
    release: Arc<Semaphore>,
    /// Woken when a request enters `/hold`.
    entered: Arc<Notify>,
}

impl Default for App {
    fn default() -> Self {
        Self {
            handled: Arc::default(),
            script: Arc::default(),
            release: Arc::new(Semaphore::new(0)),
            entered: Arc::default(),
        }
    }
}

async fn hello(State(app): State<App>) -> &'static str {
    app.handled.fetch_add(1, Ordering::SeqCst);
    "hello"
}

async fn echo(State(app): State<App>, body: Bytes) -> Bytes {
    app.handled.fetch_add(1, Ordering::SeqCst);
    body
}

async fn fail(State(app): State<App>) -> (StatusCode, &'static str) {
    app.handled.fetch_add(1, Ordering::SeqCst);
    (StatusCode::INTERNAL_SERVER_ERROR, "upstream down")
}

async fn flaky(State(app): State<App>) -> (StatusCode, &'static str) {
    app.handled.fetch_add(1, Ordering::SeqCst);
    let next = app
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front();
    (next.unwrap_or(StatusCode::OK), "flaky")
}

async fn hold(State(app): State<App>) -> &'static str {
    app.handled.fetch_add(1, Ordering::SeqCst);
    app.entered.notify_one();
    app.release
        .acquire()
        .await
        .expect("the semaphore is never closed")
        .forget();
    "held"
}

async fn record(State(log): State<Log>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    log.push(Seen {
        path,
        status: response.status(),
        retry_after,
        at: Instant::now(),
    });
    response
}

/// An axum app behind the recommended server stack, serving on a loopback port.
pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: Shutdown,
    pub(crate) pool: PoolHandle,
    pub(crate) breaker: CircuitBreakerHandle,
    pub(crate) log: Log,
    app: App,
}

impl TestServer {
    /// Routes: `GET /hello`, `POST /echo`, `GET /fail` (`500`), `GET /flaky` (see
    /// [`TestServer::script`]), `GET /hold` (see [`TestServer::release`]), and `GET /health`
    /// outside the stack.
    pub(crate) async fn start(limits: Limits) -> Self {
        let shutdown = Shutdown::new();
        let pool = HttpConcurrencyPoolLayer::new(limits.pool);
        let breaker = HttpCircuitBreakerLayer::new(limits.breaker);
        let (pool_handle, breaker_handle) = (pool.handle(), breaker.handle());

        // Outermost first: every request counted for the drain, cheap refusals before any
        // queueing, then the pool, then the breaker next to the handlers. Each layer answers
        // its refusals itself (429 / 503 + `Retry-After`), so the router stays `Infallible`.
        let stack = ServiceBuilder::new()
            .layer(
                shutdown
                    .http_layer()
                    .retry_after(limits.shutdown_retry_after),
            )
            .layer(
                KeyedRateLimitLayer::<Option<HeaderValue>, _>::with_config(
                    limits.rate,
                    HeaderKey::new(API_KEY),
                )
                .expect("a keyed limit rejects")
                .respond_with(TooManyRequests::new()),
            )
            .layer(pool)
            .layer(breaker);

        let app = App::default();
        let log = Log::default();
        let router: Router = Router::new()
            .route("/hello", get(hello))
            .route("/echo", post(echo))
            .route("/fail", get(fail))
            .route("/flaky", get(flaky))
            .route("/hold", get(hold))
            .layer(stack)
            .route_service("/health", shutdown.health())
            .layer(middleware::from_fn_with_state(log.clone(), record))
            .with_state(app.clone());

        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound listener");
        // axum's own server, which does not follow the shutdown's phases: its keep-alive
        // connections stay open, so the shutdown layer's answers can be seen on them.
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            shutdown,
            pool: pool_handle,
            breaker: breaker_handle,
            log,
            app,
        }
    }

    /// Requests that reached a handler.
    pub(crate) fn handled(&self) -> usize {
        self.app.handled.load(Ordering::SeqCst)
    }

    /// The statuses `/flaky` answers next, in order (then `200`).
    pub(crate) fn script(&self, statuses: impl IntoIterator<Item = StatusCode>) {
        self.app
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(statuses);
    }

    /// Resolves once a request is inside `/hold`.
    pub(crate) async fn held(&self) {
        self.app.entered.notified().await;
    }

    /// Lets one request held in `/hold` finish.
    pub(crate) fn release(&self) {
        self.app.release.add_permits(1);
    }

    pub(crate) fn uri(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Triggers the shutdown and runs it to the end. No connection is registered with it,
    /// so the drain finds nothing in flight.
    pub(crate) async fn shut_down(&self) {
        self.shutdown.trigger();
        let report = self.shutdown.run().await.expect("the first run");
        assert_eq!(report.code(), 0, "a clean shutdown: {report:?}");
    }
}

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A hyper-util client with a keep-alive connection pool.
pub(crate) fn http_client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub(crate) fn get_request(uri: &str, key: &str) -> http::Request<Full<Bytes>> {
    http::Request::get(uri)
        .header(API_KEY, HeaderValue::from_str(key).expect("an ASCII key"))
        .body(Full::default())
        .expect("a valid request")
}

/// Sends `request` on `client` and reads the whole answer.
pub(crate) async fn send<S>(
    client: &S,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::response::Parts, Bytes), BoxError>
where
    S: Service<http::Request<Full<Bytes>>, Response = http::Response<Incoming>> + Clone,
    S::Error: Into<BoxError>,
{
    use tower::ServiceExt;
    let response = client.clone().oneshot(request).await.map_err(Into::into)?;
    let (parts, body) = response.into_parts();
    Ok((parts, body.collect().await?.to_bytes()))
}

/// The retry layer's events, in order, and a wake-up on each.
#[derive(Clone, Default)]
pub(crate) struct Events {
    events: Arc<Mutex<Vec<RetryEvent>>>,
    retrying: Arc<Notify>,
}

impl Events {
    pub(crate) fn all(&self) -> Vec<RetryEvent> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Resolves once a retry is scheduled: the failed attempt's response has gone through
    /// every layer below the retry layer.
    pub(crate) async fn retrying(&self) {
        self.retrying.notified().await;
    }
}

/// Builds `retry` with a listener that records its events in `events`.
pub(crate) fn with_listener(retry: RetryConfigBuilder, events: &Events) -> RetryConfig {
    let sink = events.clone();
    retry
        .listener(listener_fn(move |event: &RetryEvent| {
            sink.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(*event);
            if matches!(event, RetryEvent::Retrying { .. }) {
                sink.retrying.notify_one();
            }
        }))
        .build()
        .expect("a valid retry configuration")
}

/// The client stack's layers, innermost first (as `ServiceBuilder` nests them).
type ClientLayers = Stack<
    RateLimitLayer,
    Stack<
        UpstreamLimitLayer,
        Stack<CircuitBreakerLayer<StatusClassify>, Stack<HttpRetryLayer, Identity>>,
    >,
>;

/// The client stack: retry outermost (with its budget), then the circuit breaker, then the
/// limiter that honours the upstream's `429` / `Retry-After`, then the client's own rate
/// limit, then hyper-util.
pub(crate) struct ClientStack {
    pub(crate) breaker: CircuitBreakerHandle,
    pub(crate) upstream: UpstreamLimitLayer,
    pub(crate) events: Events,
    layer: ServiceBuilder<ClientLayers>,
}

impl ClientStack {
    pub(crate) fn new(retry: RetryConfigBuilder, breaker: CircuitBreakerConfig) -> Self {
        let events = Events::default();
        let retry = with_listener(retry, &events);
        // A `429` is the server's limit, not its health: it does not count towards the
        // client's breaker (the upstream limiter deals with it).
        let classify =
            StatusClassify::default().with(StatusCode::TOO_MANY_REQUESTS, Outcome::Ignored);
        let breaker = CircuitBreakerLayer::with_classifier(breaker, classify);
        let upstream = UpstreamLimitLayer::new();
        let own_limit = RateLimitConfig::builder(Quota::per_second(n(1_000)))
            .wait_up_to(Duration::from_secs(1))
            .build()
            .expect("a valid rate limit");
        Self {
            breaker: breaker.handle(),
            upstream: upstream.clone(),
            events,
            layer: ServiceBuilder::new()
                .layer(HttpRetryLayer::http(retry))
                .layer(breaker)
                .layer(upstream)
                .layer(RateLimitLayer::new(own_limit)),
        }
    }

    /// The stack around `client`.
    pub(crate) fn service(
        &self,
        client: HttpClient,
    ) -> impl Service<
        http::Request<Full<Bytes>>,
        Response = http::Response<Incoming>,
        Error = BoxError,
        Future: Send,
    > + Clone
    + Send
    + 'static {
        self.layer.service(client)
    }
}

/// The error of a call, as the caller sees it.
pub(crate) fn is_circuit_open(error: &BoxError) -> bool {
    matches!(
        palisade::core::Rejection::find(&**error),
        Some(palisade::core::Rejection::CircuitOpen(_))
    )
}
