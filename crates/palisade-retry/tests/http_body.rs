//! Streaming request bodies (feature `http`): buffered up to a limit and sent again, or
//! streamed through once when longer.

#![cfg(feature = "http")]

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use palisade_core::BoxError;
use palisade_core::backoff::Backoff;
use palisade_retry::http::{BodyReadFailed, BufferBodyLayer, ReplayBody};
use palisade_retry::{Attempts, RetryConfig, RetryLayer};
use tower::{ServiceBuilder, ServiceExt};

/// A streaming body that is not `Clone` and does not know its length: its frames, then an
/// error if `fails`.
struct Chunks {
    frames: VecDeque<Frame<Bytes>>,
    fails: bool,
}

impl Chunks {
    fn new(parts: &[&'static str]) -> Self {
        Self {
            frames: parts.iter().map(|p| Frame::data(Bytes::from(*p))).collect(),
            fails: false,
        }
    }

    fn with_trailers(mut self, trailers: HeaderMap) -> Self {
        self.frames.push_back(Frame::trailers(trailers));
        self
    }

    fn failing(mut self) -> Self {
        self.fails = true;
        self
    }
}

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        if let Some(frame) = self.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if std::mem::take(&mut self.fails) {
            return Poll::Ready(Some(Err(std::io::Error::other("client went away"))));
        }
        Poll::Ready(None)
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::new()
    }
}

/// What one attempt received: its body and trailers.
type Received = Arc<Mutex<Vec<(Bytes, Option<HeaderMap>)>>>;

/// An upstream that reads every attempt's whole body and answers the `n`-th attempt with
/// `statuses[n]` (the last one after that).
fn upstream(
    received: Received,
    statuses: &'static [u16],
) -> impl tower::Service<
    Request<ReplayBody<Chunks>>,
    Response = Response<()>,
    Error = BoxError,
    Future: Send,
> + Clone {
    tower::service_fn(move |request: Request<ReplayBody<Chunks>>| {
        let received = Arc::clone(&received);
        async move {
            let collected = request.into_body().collect().await?;
            let trailers = collected.trailers().cloned();
            let body = collected.to_bytes();
            let n = {
                let mut received = received.lock().unwrap();
                received.push((body, trailers));
                received.len() - 1
            };
            let status = statuses[n.min(statuses.len() - 1)];
            Ok::<_, BoxError>(Response::builder().status(status).body(())?)
        }
    })
}

fn client(
    max: u64,
    received: &Received,
    statuses: &'static [u16],
) -> impl tower::Service<Request<Chunks>, Response = Response<()>, Error = BoxError> {
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(BufferBodyLayer::new(max))
        .layer(RetryLayer::http(config))
        .service(upstream(Arc::clone(received), statuses))
}

fn put(body: Chunks) -> Request<Chunks> {
    Request::put("http://store/items/7").body(body).unwrap()
}

fn bodies(received: &Received) -> Vec<Bytes> {
    received
        .lock()
        .unwrap()
        .iter()
        .map(|(body, _)| body.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_within_the_limit_is_sent_again_whole() {
    let received = Received::default();
    let response = client(64, &received, &[503, 502, 200])
        .oneshot(put(Chunks::new(&["hello", ", ", "world"])))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(3)));
    assert_eq!(bodies(&received), vec![Bytes::from("hello, world"); 3]);
}

#[tokio::test(start_paused = true)]
async fn a_body_exactly_at_the_limit_is_buffered() {
    let received = Received::default();
    let response = client(12, &received, &[503, 200])
        .oneshot(put(Chunks::new(&["hello", ", ", "world"])))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(bodies(&received).len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_body_past_the_limit_is_sent_once_whole_and_not_retried() {
    let received = Received::default();
    let response = client(6, &received, &[503, 200])
        .oneshot(put(Chunks::new(&["hello", ", ", "world", "!"])))
        .await
        .unwrap();

    // The one attempt's outcome, not retried: the body could not be kept.
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(1)));
    // Nothing lost: what was read before the limit, then the rest of the stream.
    assert_eq!(bodies(&received), vec![Bytes::from("hello, world!")]);
}

#[tokio::test(start_paused = true)]
async fn a_body_announced_longer_than_the_limit_is_not_read_ahead() {
    let received = Received::default();
    let body = http_body_util::Full::new(Bytes::from_static(b"0123456789"));
    let config = RetryConfig::builder()
        .backoff(Backoff::constant(Duration::from_millis(10)))
        .build()
        .unwrap();
    let seen = Arc::clone(&received);
    let response = ServiceBuilder::new()
        .layer(BufferBodyLayer::new(4))
        .layer(RetryLayer::http(config))
        .service_fn(
            move |request: Request<ReplayBody<http_body_util::Full<Bytes>>>| {
                let seen = Arc::clone(&seen);
                async move {
                    assert!(!request.body().is_buffered());
                    assert_eq!(request.body().size_hint().exact(), Some(10));
                    let body = request.into_body().collect().await?.to_bytes();
                    seen.lock().unwrap().push((body, None));
                    Ok::<_, BoxError>(Response::builder().status(503).body(())?)
                }
            },
        )
        .oneshot(Request::put("http://store/").body(body).unwrap())
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bodies(&received), vec![Bytes::from("0123456789")]);
}

#[tokio::test(start_paused = true)]
async fn trailers_are_sent_with_every_attempt() {
    let mut trailers = HeaderMap::new();
    trailers.insert("checksum", HeaderValue::from_static("abc"));
    let received = Received::default();
    let response = client(64, &received, &[503, 200])
        .oneshot(put(Chunks::new(&["data"]).with_trailers(trailers.clone())))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    let received = received.lock().unwrap();
    assert_eq!(received.len(), 2);
    for (body, got) in received.iter() {
        assert_eq!(body, "data");
        assert_eq!(got.as_ref(), Some(&trailers));
    }
}

#[tokio::test(start_paused = true)]
async fn a_body_that_fails_while_read_fails_the_call_without_calling_upstream() {
    let received = Received::default();
    let error = client(64, &received, &[200])
        .oneshot(put(Chunks::new(&["partial"]).failing()))
        .await
        .unwrap_err();

    let failed = error
        .downcast_ref::<BodyReadFailed>()
        .expect("a BodyReadFailed");
    let source = std::error::Error::source(failed).expect("the body's error");
    assert_eq!(source.to_string(), "client went away");
    assert!(bodies(&received).is_empty(), "upstream never called");
}

#[tokio::test(start_paused = true)]
async fn a_buffered_post_is_still_not_retried_by_default() {
    let received = Received::default();
    let response = client(64, &received, &[503, 200])
        .oneshot(
            Request::post("http://store/orders")
                .body(Chunks::new(&["order"]))
                .unwrap(),
        )
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(bodies(&received), vec![Bytes::from("order")]);
}

#[tokio::test(start_paused = true)]
async fn an_empty_body_is_sent_again() {
    let received = Received::default();
    let response = client(64, &received, &[503, 200])
        .oneshot(put(Chunks::new(&[])))
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(bodies(&received), vec![Bytes::new(); 2]);
}
