//! The HTTP breaker (feature `http`): rejected requests get a response, not an error, so an
//! axum `Router` with `Infallible` errors takes it without a `HandleErrorLayer`.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, Response, StatusCode, header};
use axum::routing::get;
use palisade_breaker::{
    BreakerEvent, CircuitBreakerConfig, CircuitBreakerConfigBuilder, CircuitBreakerHandle,
    CircuitOpen, HttpCircuitBreakerLayer, State,
};
use palisade_core::backoff::Backoff;
use palisade_core::event::listener_fn;
use palisade_core::{BoxError, RetryAfter};
use tokio::sync::Semaphore;
use tokio_test::{assert_pending, assert_ready_ok};
use tower::{Layer, Service, ServiceExt};

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Two failures in a row trip it; open for a constant 10 s; one probe.
fn config() -> CircuitBreakerConfigBuilder {
    CircuitBreakerConfig::builder()
        .consecutive_failures(nz(2))
        .open_wait(Backoff::constant(Duration::from_secs(10)))
        .half_open_probes(nz(1))
}

/// The handlers behind the breaker: `/` and `/prices` answer with a settable status,
/// `/gated` waits for a permit first; all count the requests that reached them.
#[derive(Debug, Clone)]
struct Upstream {
    status: Arc<AtomicU16>,
    reached: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
}

impl Upstream {
    fn new() -> Self {
        Self {
            status: Arc::new(AtomicU16::new(200)),
            reached: Arc::new(AtomicUsize::new(0)),
            gate: Arc::new(Semaphore::new(0)),
        }
    }

    fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn reached(&self) -> usize {
        self.reached.load(Ordering::SeqCst)
    }

    fn router(&self) -> Router {
        let status = {
            let this = self.clone();
            move || async move {
                this.reached.fetch_add(1, Ordering::SeqCst);
                StatusCode::from_u16(this.status.load(Ordering::SeqCst)).unwrap()
            }
        };
        let gated = {
            let this = self.clone();
            move || async move {
                this.reached.fetch_add(1, Ordering::SeqCst);
                let _permit = this.gate.acquire().await.unwrap();
                StatusCode::OK
            }
        };
        Router::new()
            .route("/", get(status.clone()))
            .route("/prices", get(status.clone()))
            .route("/gated", get(gated))
    }
}

/// An app whose errors are `Infallible`: a plain `Router`, with the breaker as an ordinary
/// `Router::layer`, no `HandleErrorLayer`.
fn app(upstream: &Upstream, config: CircuitBreakerConfig) -> (Router, CircuitBreakerHandle) {
    let breaker = HttpCircuitBreakerLayer::new(config);
    let handle = breaker.handle();
    (upstream.router().layer(breaker), handle)
}

/// A response from a service that cannot fail: the type says so.
fn infallible<T>(result: Result<T, Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

fn get_request(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

async fn send(app: &Router, path: &str) -> Response<Body> {
    infallible(app.clone().oneshot(get_request(path)).await)
}

async fn body_text(response: Response<Body>) -> String {
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    String::from_utf8(bytes.to_vec()).unwrap()
}

fn retry_after(response: &Response<Body>) -> &str {
    response.headers()[header::RETRY_AFTER].to_str().unwrap()
}

async fn trip(app: &Router, upstream: &Upstream, handle: &CircuitBreakerHandle) {
    upstream.answer(500);
    for _ in 0..2 {
        assert_eq!(
            send(app, "/").await.status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn open_circuit_answers_503_with_retry_after_without_a_handle_error_layer() {
    let upstream = Upstream::new();
    let (app, handle) = app(&upstream, config().build().unwrap());
    trip(&app, &upstream, &handle).await;
    assert_eq!(upstream.reached(), 2);

    tokio::time::advance(Duration::from_millis(2_500)).await;
    let response = send(&app, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // 7.5 s left, rounded up: a client that waits this long never comes back early.
    assert_eq!(retry_after(&response), "8");
    assert_eq!(body_text(response).await, "");
    assert_eq!(
        upstream.reached(),
        2,
        "a rejected request reached the handler"
    );

    tokio::time::advance(Duration::from_millis(7_000)).await;
    let response = send(&app, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&response), "1");
    assert_eq!(handle.metrics().rejections, 2);

    // The wait is over: the next request is a probe and reaches the handler; it succeeds
    // and closes the breaker.
    tokio::time::advance(Duration::from_millis(500)).await;
    upstream.answer(200);
    assert_eq!(send(&app, "/").await.status(), StatusCode::OK);
    assert_eq!(upstream.reached(), 3);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_failed_probe_reopens_and_answers_503_again() {
    let upstream = Upstream::new();
    let (app, handle) = app(&upstream, config().build().unwrap());
    trip(&app, &upstream, &handle).await;

    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(
        send(&app, "/").await.status(),
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(upstream.reached(), 3);
    assert_eq!(handle.state(), State::Open);

    let response = send(&app, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&response), "10");
    assert_eq!(upstream.reached(), 3);
}

#[tokio::test(start_paused = true)]
async fn fallback_answers_while_open_and_gets_the_request() {
    let upstream = Upstream::new();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let events = Arc::new(AtomicUsize::new(0));
    let config = config()
        .listener(listener_fn({
            let events = Arc::clone(&events);
            move |event: &BreakerEvent| {
                if let BreakerEvent::Rejected { retry_after, .. } = event {
                    assert_eq!(*retry_after, Duration::from_secs(10));
                    events.fetch_add(1, Ordering::SeqCst);
                }
            }
        }))
        .build()
        .unwrap();
    let breaker = HttpCircuitBreakerLayer::new(config).fallback({
        let seen = Arc::clone(&seen);
        move |open: &CircuitOpen, request: Request<Body>| {
            let path = request.uri().path().to_owned();
            seen.lock()
                .unwrap()
                .push((path.clone(), open.retry_after()));
            Response::new(Body::from(format!("cached {path}")))
        }
    });
    let handle = breaker.handle();
    let app = upstream.router().layer(breaker);
    trip(&app, &upstream, &handle).await;

    let response = send(&app, "/prices").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::RETRY_AFTER).is_none());
    assert_eq!(body_text(response).await, "cached /prices");
    assert_eq!(
        *seen.lock().unwrap(),
        [("/prices".to_owned(), Some(Duration::from_secs(10)))]
    );
    assert_eq!(
        upstream.reached(),
        2,
        "a rejected request reached the handler"
    );
    // Answered by the fallback, still a rejection in the metrics and the events.
    assert_eq!(handle.metrics().rejections, 1);
    assert_eq!(events.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn client_errors_other_than_429_are_not_failures_under_the_default_classifier() {
    let upstream = Upstream::new();
    let (app, handle) = app(&upstream, config().build().unwrap());

    upstream.answer(404);
    for _ in 0..10 {
        assert_eq!(send(&app, "/").await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(upstream.reached(), 10);
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.metrics().failures, 0);

    upstream.answer(429);
    for _ in 0..2 {
        assert_eq!(
            send(&app, "/").await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_probe_frees_its_slot_and_records_nothing() {
    let upstream = Upstream::new();
    let (app, handle) = app(&upstream, config().build().unwrap());
    trip(&app, &upstream, &handle).await;
    tokio::time::advance(Duration::from_secs(10)).await;

    let mut probe = tokio_test::task::spawn(app.clone().oneshot(get_request("/gated")));
    assert_pending!(probe.poll());
    assert_eq!(upstream.reached(), 3);
    assert_eq!(handle.state(), State::HalfOpen);

    // The only probe slot is taken.
    let response = send(&app, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&response), "10");

    drop(probe);
    assert_eq!(handle.state(), State::HalfOpen);
    upstream.answer(200);
    assert_eq!(send(&app, "/").await.status(), StatusCode::OK);
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn forced_open_answers_503_with_the_configured_wait() {
    let upstream = Upstream::new();
    let (app, handle) = app(&upstream, config().build().unwrap());
    handle.force_open();

    let response = send(&app, "/").await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&response), "10");
    assert_eq!(upstream.reached(), 0);
}

#[derive(Debug, PartialEq)]
struct ConnectionReset;

#[tokio::test(start_paused = true)]
async fn inner_errors_keep_their_type_and_count_as_failures() {
    let breaker = HttpCircuitBreakerLayer::new(config().build().unwrap());
    let handle = breaker.handle();
    let service = breaker.layer(tower::service_fn(|_: Request<()>| async {
        Err::<Response<String>, _>(ConnectionReset)
    }));

    for _ in 0..2 {
        let error: ConnectionReset = service.clone().oneshot(Request::new(())).await.unwrap_err();
        assert_eq!(error, ConnectionReset);
    }
    assert_eq!(handle.state(), State::Open);

    let response: Response<String> = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "10");
}

#[tokio::test(start_paused = true)]
async fn poll_ready_answers_at_once_while_open_and_waits_for_the_inner_service_after() {
    let breaker = HttpCircuitBreakerLayer::new(config().build().unwrap());
    let handle = breaker.handle();
    let (mock, mut upstream) = tower_test::mock::pair::<Request<()>, Response<()>>();
    let mut service = tower_test::mock::Spawn::new(breaker.layer(mock));

    for _ in 0..2 {
        upstream.allow(1);
        assert_ready_ok!(service.poll_ready());
        let call = service.call(Request::new(()));
        let (_, respond) = upstream.next_request().await.unwrap();
        let mut failed = Response::new(());
        *failed.status_mut() = StatusCode::BAD_GATEWAY;
        respond.send_response(failed);
        assert_eq!(call.await.unwrap().status(), StatusCode::BAD_GATEWAY);
    }
    assert_eq!(handle.state(), State::Open);

    // The inner service is not ready, and is not asked: the breaker answers.
    upstream.allow(0);
    assert_ready_ok!(service.poll_ready());
    let response = service.call(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_pending!(tokio_test::task::spawn(upstream.next_request()).poll());

    // The wait is over: readiness is the inner service's again.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_pending!(service.poll_ready());
    upstream.allow(1);
    assert_ready_ok!(service.poll_ready());
}

#[test]
fn the_http_service_keeps_an_infallible_error_type() {
    fn assert_infallible<S: Service<Request<Body>, Error = Infallible>>(_: &S) {}
    let inner = tower::service_fn(|_: Request<Body>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let service = HttpCircuitBreakerLayer::new(CircuitBreakerConfig::default()).layer(inner);
    assert_infallible(&service);

    // The error-returning breaker, by contrast, boxes.
    fn assert_boxed<S: Service<Request<Body>, Error = BoxError>>(_: &S) {}
    assert_boxed(
        &palisade_breaker::CircuitBreakerLayer::new(CircuitBreakerConfig::default()).layer(
            tower::service_fn(|_: Request<Body>| async {
                Ok::<_, Infallible>(Response::new(Body::empty()))
            }),
        ),
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_counts_as_a_failure() {
    let breaker = HttpCircuitBreakerLayer::new(config().build().unwrap());
    let handle = breaker.handle();
    // A handler with a bug on GET.
    let service = breaker.layer(tower::service_fn(|request: Request<()>| async move {
        assert_ne!(request.method(), Method::GET, "handler bug");
        Ok::<_, Infallible>(Response::new(()))
    }));

    for _ in 0..2 {
        let call = tokio::spawn(service.clone().oneshot(Request::new(())));
        assert!(call.await.unwrap_err().is_panic());
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn a_probe_whose_inner_call_panics_frees_its_slot() {
    use std::panic::{AssertUnwindSafe, catch_unwind};

    let breaker = HttpCircuitBreakerLayer::new(config().build().unwrap());
    let handle = breaker.handle();
    // `call` itself panics on GET, before there is a future to poll.
    let mut service = breaker.layer(tower::service_fn(|request: Request<()>| {
        assert_ne!(
            request.method(),
            Method::GET,
            "the inner service's call panicked"
        );
        std::future::ready(Ok::<_, Infallible>(Response::new(())))
    }));
    handle.trip();
    tokio::time::advance(Duration::from_secs(10)).await;

    let ready = service.ready().await.unwrap();
    assert!(catch_unwind(AssertUnwindSafe(|| ready.call(Request::new(())))).is_err());
    // The probe was cancelled, not lost: its slot takes the next call, which closes.
    assert_eq!(handle.state(), State::HalfOpen);
    let post = Request::post("/").body(()).unwrap();
    let response = service.ready().await.unwrap().call(post).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(handle.state(), State::Closed);
}
