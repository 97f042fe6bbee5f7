//! The HTTP pool (feature `http`): shed requests get `503` + `Retry-After` from an axum
//! `Router` with `Infallible` errors, the permit is held until the response body ends, and
//! priorities come from a header.

#![cfg(feature = "http")]

use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderName, Request, StatusCode, Uri};
use axum::routing::get;
use http_body::Frame;
use http_body_util::BodyExt;
use palisade_pool::http::{HttpConcurrencyPoolLayer, PriorityHeader};
use palisade_pool::{PoolConfig, PoolConfigBuilder, PoolHandle};
use tokio::sync::{Semaphore, mpsc};
use tower::ServiceExt;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// A body streamed from a channel: it ends when the sender is dropped.
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

/// `/gated?name=..` logs its name and waits for a permit of the gate; `/stream` streams
/// what the test sends; `/` answers at once.
struct App {
    router: Router,
    handle: PoolHandle,
    gate: Arc<Semaphore>,
    log: Arc<Mutex<Vec<String>>>,
    stream: Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>,
}

fn app(config: PoolConfigBuilder) -> App {
    let gate = Arc::new(Semaphore::new(0));
    let log = Arc::new(Mutex::new(Vec::new()));
    let stream = Arc::new(Mutex::new(None));
    let layer = HttpConcurrencyPoolLayer::new(config.build().unwrap())
        .prioritize(PriorityHeader::new(HeaderName::from_static("x-priority")));
    let handle = layer.handle();
    let gated = {
        let (gate, log) = (Arc::clone(&gate), Arc::clone(&log));
        move |uri: Uri| async move {
            let query = uri.query().unwrap_or_default();
            let name = query.trim_start_matches("name=").to_owned();
            log.lock().unwrap().push(name);
            gate.acquire().await.unwrap().forget();
            "done"
        }
    };
    let streamed = {
        let stream = Arc::clone(&stream);
        move || async move {
            let receiver = stream.lock().unwrap().take().expect("one stream per test");
            Body::new(ChannelBody(receiver))
        }
    };
    let router = Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/gated", get(gated))
        .route("/stream", get(streamed))
        .layer(layer);
    App {
        router,
        handle,
        gate,
        log,
        stream,
    }
}

fn get_request(uri: &str) -> Request<Body> {
    Request::builder().uri(uri).body(Body::empty()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_full_pool_answers_503_with_retry_after_instead_of_an_error() {
    let app = app(PoolConfig::builder(nz(1))
        .queue_capacity(0)
        .retry_after(Duration::from_millis(2500)));
    let busy = tokio::spawn(app.router.clone().oneshot(get_request("/gated?name=busy")));
    tokio::task::yield_now().await;
    assert_eq!(app.handle.in_flight(), 1);

    let shed = app.router.clone().oneshot(get_request("/")).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "3");
    assert!(
        shed.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .is_empty()
    );

    app.gate.add_permits(1);
    let done = busy.await.unwrap().unwrap();
    assert_eq!(done.status(), StatusCode::OK);
    assert_eq!(done.into_body().collect().await.unwrap().to_bytes(), "done");
    assert_eq!(app.handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_request_that_waits_past_the_queue_timeout_gets_503() {
    let app = app(PoolConfig::builder(nz(1)).queue_timeout(Duration::from_secs(2)));
    let _busy = tokio::spawn(app.router.clone().oneshot(get_request("/gated?name=busy")));
    tokio::task::yield_now().await;
    let waiting = tokio::spawn(app.router.clone().oneshot(get_request("/")));
    tokio::task::yield_now().await;
    assert_eq!(app.handle.queued(), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    let shed = waiting.await.unwrap().unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(shed.headers()["retry-after"], "1");
    assert_eq!(app.handle.queued(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_permit_is_held_until_a_streaming_body_ends() {
    let app = app(PoolConfig::builder(nz(1)).queue_capacity(0));
    let (chunks, receiver) = mpsc::unbounded_channel();
    *app.stream.lock().unwrap() = Some(receiver);

    let response = app
        .router
        .clone()
        .oneshot(get_request("/stream"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    // The head is out, the body is not: still in flight, and a second request is shed.
    assert_eq!(app.handle.in_flight(), 1);
    let shed = app.router.clone().oneshot(get_request("/")).await.unwrap();
    assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);

    let mut body = response.into_body();
    chunks.send(Bytes::from_static(b"first")).unwrap();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    assert_eq!(
        app.handle.in_flight(),
        1,
        "a body half read holds the permit"
    );

    chunks.send(Bytes::from_static(b"last")).unwrap();
    drop(chunks);
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "last");
    assert!(body.frame().await.is_none());
    assert_eq!(
        app.handle.in_flight(),
        0,
        "the body's end gives the permit back"
    );
    let ok = app.router.clone().oneshot(get_request("/")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_response_body_dropped_unread_gives_the_permit_back() {
    let app = app(PoolConfig::builder(nz(1)));
    let (_chunks, receiver) = mpsc::unbounded_channel();
    *app.stream.lock().unwrap() = Some(receiver);
    let response = app
        .router
        .clone()
        .oneshot(get_request("/stream"))
        .await
        .unwrap();
    assert_eq!(app.handle.in_flight(), 1);
    drop(response);
    assert_eq!(app.handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_admitted_by_their_priority_header() {
    let app = app(PoolConfig::builder(nz(1)).no_queue_timeout());
    let busy = tokio::spawn(app.router.clone().oneshot(get_request("/gated?name=busy")));
    tokio::task::yield_now().await;
    let mut waiting = Vec::new();
    for (name, priority) in [("low", "9"), ("none", ""), ("urgent", "0"), ("high", "2")] {
        let mut request = Request::builder().uri(format!("/gated?name={name}"));
        if !priority.is_empty() {
            request = request.header("x-priority", priority);
        }
        let request = request.body(Body::empty()).unwrap();
        let router = app.router.clone();
        // The response (and with it the body's permit) is dropped as soon as it arrives.
        waiting.push(tokio::spawn(async move {
            router.oneshot(request).await.unwrap().status()
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(app.handle.queued(), 4);
    app.gate.add_permits(5);
    busy.await.unwrap().unwrap();
    for request in waiting {
        assert_eq!(request.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        *app.log.lock().unwrap(),
        ["busy", "urgent", "high", "none", "low"]
    );
}
