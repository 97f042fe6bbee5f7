//! The HTTP layer (feature `http`): a request lasts until its response body ends;
//! `Connection: close` on HTTP/1 once shutting down; `503` answers; the health endpoint.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use palisade_core::{BoxError, Rejection};
use palisade_shutdown::{Phase, RunError, Shutdown, ShutdownBody, ShutdownReport};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn spawn_run(shutdown: &Shutdown) -> JoinHandle<Result<ShutdownReport, RunError>> {
    let shutdown = shutdown.clone();
    tokio::spawn(async move { shutdown.run().await })
}

/// A streaming body fed by a channel, like an SSE stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|event| event.map(|data| Ok(Frame::data(data))))
    }
}

/// A handler answering with a stream of `events` events, one every `every`.
fn sse(
    events: u64,
    every: Duration,
) -> impl Service<Request<String>, Response = Response<ChannelBody>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    service_fn(move |_: Request<String>| async move {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            for n in 0..events {
                sleep(every).await;
                if tx
                    .send(Bytes::from(format!("data: {n}\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
        Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
    })
}

/// Reads a body to its end: the number of frames, the time the end came, and the error
/// that ended it, if one did.
async fn read_all<B>(body: ShutdownBody<B>) -> (usize, Instant, Option<BoxError>)
where
    B: Body,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut frames = 0;
    loop {
        match body.frame().await {
            Some(Ok(_)) => frames += 1,
            Some(Err(error)) => return (frames, Instant::now(), Some(error)),
            None => return (frames, Instant::now(), None),
        }
    }
}

fn hello()
-> impl Service<Request<String>, Response = Response<String>, Error = Infallible, Future: Send>
+ Clone
+ Send {
    service_fn(|_: Request<String>| async {
        Ok::<_, Infallible>(Response::new("hello".to_owned()))
    })
}

fn request(version: Version) -> Request<String> {
    Request::builder()
        .version(version)
        .body(String::new())
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_counts_until_its_response_body_ends() {
    let shutdown = Shutdown::new();
    let service = shutdown.http_layer().layer(sse(3, secs(1)));
    let response = service.oneshot(request(Version::HTTP_11)).await.unwrap();
    assert_eq!(shutdown.in_flight(), 1, "the head is out, the body is not");
    assert!(response.body().is_tracked());
    let (frames, _, error) = read_all(response.into_body()).await;
    assert_eq!((frames, error.is_none()), (3, true));
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_empty_or_dropped_body_is_not_in_flight() {
    let shutdown = Shutdown::new();
    let empty = shutdown
        .http_layer()
        .layer(service_fn(|_: Request<String>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let response = empty.oneshot(request(Version::HTTP_11)).await.unwrap();
    assert!(!response.body().is_tracked());
    assert_eq!(shutdown.in_flight(), 0);

    let streaming = shutdown.http_layer().layer(sse(3, secs(1)));
    let response = streaming.oneshot(request(Version::HTTP_11)).await.unwrap();
    assert_eq!(shutdown.in_flight(), 1);
    drop(response);
    assert_eq!(shutdown.in_flight(), 0, "a client that went away");
}

#[tokio::test(start_paused = true)]
async fn the_drain_waits_for_a_streaming_body_to_end() {
    let shutdown = Shutdown::new();
    let service = shutdown.http_layer().layer(sse(10, secs(1)));
    let response = service.oneshot(request(Version::HTTP_11)).await.unwrap();
    let reader = tokio::spawn(read_all(response.into_body()));
    let run = spawn_run(&shutdown);
    let triggered = Instant::now();
    shutdown.trigger();
    let cancelling = tokio::spawn({
        let reached = shutdown.wait_for(Phase::Cancelling);
        async move {
            reached.await;
            Instant::now()
        }
    });
    let report = run.await.unwrap().unwrap();
    let (frames, ended, error) = reader.await.unwrap();
    assert_eq!((frames, error.is_none()), (10, true));
    assert_eq!(ended - triggered, secs(10));
    assert_eq!(cancelling.await.unwrap() - triggered, secs(10));
    assert_eq!(report.requests_at_drain, 1);
    assert!(report.is_clean(), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_cut_at_the_deadline() {
    let shutdown = Shutdown::builder().drain_deadline(secs(30)).build();
    // An SSE stream with a heartbeat every 5 s, for an hour.
    let service = shutdown.http_layer().layer(sse(720, secs(5)));
    let response = service.oneshot(request(Version::HTTP_11)).await.unwrap();
    let reader = tokio::spawn(read_all(response.into_body()));
    let run = spawn_run(&shutdown);
    sleep(secs(1)).await;
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();

    let (frames, ended, error) = reader.await.unwrap();
    assert_eq!(
        ended - triggered,
        secs(30),
        "cut at the deadline, not at the next event"
    );
    assert_eq!(frames, 6, "the events sent before the deadline got through");
    let error = error.expect("the stream ends with an error");
    assert!(matches!(
        Rejection::find(&*error),
        Some(Rejection::ShuttingDown(_))
    ));
    assert_eq!((report.requests_cancelled, report.abandoned), (1, 0));
    assert_eq!(shutdown.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_sse_stream_without_heartbeats_is_cut_at_the_deadline() {
    // An SSE stream waiting on a channel nobody sends on: nothing wakes it once the
    // shutdown begins, so only the deadline can end it.
    let shutdown = Shutdown::builder()
        .drain_deadline(secs(30))
        .cancel_grace(secs(1))
        .build();
    let (events, rx) = mpsc::channel::<Bytes>(1);
    let rx = std::sync::Mutex::new(Some(rx));
    let quiet = service_fn(move |_: Request<String>| {
        let rx = rx.lock().unwrap().take().expect("one request");
        async move {
            // The call waits once (in this task), the body is read in another.
            tokio::task::yield_now().await;
            Ok::<_, Infallible>(Response::new(ChannelBody(rx)))
        }
    });
    let response = shutdown
        .http_layer()
        .layer(quiet)
        .oneshot(request(Version::HTTP_11))
        .await
        .unwrap();
    let reader = tokio::spawn(read_all(response.into_body()));
    tokio::task::yield_now().await;
    let run = spawn_run(&shutdown);
    sleep(secs(1)).await;
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.requests_cancelled, report.abandoned), (1, 0));

    let (frames, ended, error) = reader.await.unwrap();
    assert_eq!(frames, 0);
    assert_eq!(ended - triggered, secs(30), "cut at the deadline");
    let error = error.expect("the stream ends with an error");
    assert!(matches!(
        Rejection::find(&*error),
        Some(Rejection::ShuttingDown(_))
    ));
    assert_eq!(shutdown.in_flight(), 0);
    drop(events);
}

#[tokio::test(start_paused = true)]
async fn a_handler_stuck_since_before_the_trigger_is_answered_503_at_the_deadline() {
    let shutdown = Shutdown::builder().drain_deadline(secs(5)).build();
    let stuck = service_fn(|_: Request<String>| {
        std::future::pending::<Result<Response<String>, Infallible>>()
    });
    let call = tokio::spawn({
        let service = shutdown.http_layer().layer(stuck);
        async move {
            (
                service.oneshot(request(Version::HTTP_2)).await,
                Instant::now(),
            )
        }
    });
    tokio::task::yield_now().await;
    let run = spawn_run(&shutdown);
    let triggered = Instant::now();
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.requests_cancelled, report.abandoned), (1, 0));
    let (response, answered) = call.await.unwrap();
    assert_eq!(response.unwrap().status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answered - triggered, secs(5));
}

#[tokio::test(start_paused = true)]
async fn responses_to_http1_requests_carry_connection_close_once_shutting_down() {
    let shutdown = Shutdown::builder().grace(secs(10)).build();
    let service = shutdown.http_layer().layer(hello());

    let running = service
        .clone()
        .oneshot(request(Version::HTTP_11))
        .await
        .unwrap();
    assert!(!running.headers().contains_key(header::CONNECTION));

    shutdown.trigger();
    for version in [Version::HTTP_10, Version::HTTP_11] {
        let response = service.clone().oneshot(request(version)).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONNECTION],
            "close",
            "{version:?}"
        );
    }
    let http2 = service
        .clone()
        .oneshot(request(Version::HTTP_2))
        .await
        .unwrap();
    assert_eq!(http2.status(), StatusCode::OK);
    assert!(
        !http2.headers().contains_key(header::CONNECTION),
        "HTTP/2 forbids connection headers"
    );
}

#[tokio::test(start_paused = true)]
async fn reject_while_draining_answers_503_with_retry_after_without_calling_the_handler() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let handler = service_fn(move |_: Request<String>| {
        counter.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(String::new())) }
    });
    let shutdown = Shutdown::new();
    let service = shutdown
        .http_layer()
        .reject_while_draining()
        .retry_after(Duration::from_millis(1500))
        .layer(handler);
    let worker = shutdown.guard();
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    shutdown.wait_for(Phase::Draining).await;

    let response = service.oneshot(request(Version::HTTP_11)).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    assert_eq!(response.headers()[header::CONNECTION], "close");
    assert_eq!(calls.load(Ordering::SeqCst), 0);
    drop(worker);
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_response_still_pending_at_the_deadline_is_answered_503() {
    let shutdown = Shutdown::builder().drain_deadline(secs(5)).build();
    let handler = service_fn(|_: Request<String>| async {
        loop {
            sleep(secs(1)).await;
        }
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let call = tokio::spawn(
        shutdown
            .http_layer()
            .layer(handler)
            .oneshot(request(Version::HTTP_11)),
    );
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    let report = run.await.unwrap().unwrap();
    let response = call.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(report.requests_cancelled, 1);
}

#[tokio::test(start_paused = true)]
async fn health_answers_200_with_uptime_then_503_from_the_trigger_on() {
    let shutdown = Shutdown::builder().grace(secs(30)).build();
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .route_service("/health", shutdown.health())
        .layer(shutdown.http_layer());
    let get = |path: &'static str| {
        let app = app.clone();
        async move {
            let response = app
                .oneshot(Request::get(path).body(axum::body::Body::empty()).unwrap())
                .await
                .unwrap();
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (
                status,
                content_type,
                String::from_utf8(body.to_vec()).unwrap(),
            )
        }
    };

    sleep(secs(42)).await;
    let (status, content_type, body) = get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type.unwrap(), "application/json");
    assert_eq!(body, r#"{"status":"healthy","uptime_s":42}"#);

    shutdown.trigger();
    // At once: no `run`, no time passing.
    let (status, _, body) = get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, r#"{"status":"shutting-down"}"#);
    // The rest of the app still serves during the grace delay.
    assert_eq!(get("/").await.0, StatusCode::OK);
}

/// Asks the health endpoint once; its status.
async fn probe(shutdown: &Shutdown) -> StatusCode {
    shutdown
        .health()
        .oneshot(Request::new(()))
        .await
        .unwrap()
        .status()
}

#[tokio::test(start_paused = true)]
async fn the_grace_delay_ends_once_health_has_answered_503_as_often_as_configured() {
    let shutdown = Shutdown::builder()
        .grace(secs(60))
        .grace_until_probed(2)
        .build();
    assert_eq!(
        probe(&shutdown).await,
        StatusCode::OK,
        "a 200 does not count"
    );
    let run = spawn_run(&shutdown);
    shutdown.trigger();
    assert_eq!(probe(&shutdown).await, StatusCode::SERVICE_UNAVAILABLE);
    sleep(secs(10)).await;
    assert_eq!(shutdown.phase(), Phase::Grace, "one probe is not enough");

    let started = Instant::now();
    assert_eq!(probe(&shutdown).await, StatusCode::SERVICE_UNAVAILABLE);
    shutdown.wait_for(Phase::StopAccepting).await;
    assert_eq!(
        started.elapsed(),
        Duration::ZERO,
        "at once, not after the delay"
    );
    assert!(run.await.unwrap().unwrap().is_clean());
}

#[tokio::test(start_paused = true)]
async fn without_enough_probes_the_grace_delay_is_waited_out() {
    let shutdown = Shutdown::builder()
        .grace(secs(5))
        .grace_until_probed(3)
        .build();
    let run = spawn_run(&shutdown);
    let started = Instant::now();
    shutdown.trigger();
    assert_eq!(probe(&shutdown).await, StatusCode::SERVICE_UNAVAILABLE);
    shutdown.wait_for(Phase::StopAccepting).await;
    assert_eq!(started.elapsed(), secs(5));
    assert!(run.await.unwrap().unwrap().is_clean());
}

#[tokio::test(start_paused = true)]
async fn probes_answered_before_run_reaches_the_grace_delay_count() {
    let shutdown = Shutdown::builder()
        .grace(secs(60))
        .grace_until_probed(1)
        .build();
    shutdown.trigger();
    assert_eq!(probe(&shutdown).await, StatusCode::SERVICE_UNAVAILABLE);
    let started = Instant::now();
    let report = shutdown.run().await.unwrap();
    assert_eq!(started.elapsed(), Duration::ZERO);
    assert!(report.is_clean());
}
