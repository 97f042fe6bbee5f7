//! `CatchPanicLayer` (feature `http`): a panic in `poll_ready`, `call`, the response future
//! or the body becomes a `500` (or a body error), is reported, and the service serves on.

#![cfg(feature = "http")]

use std::convert::Infallible;
use std::future::ready;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use palisade_core::event::listener_fn;
use palisade_shutdown::{CatchPanicBody, CatchPanicLayer, Panicked, Shutdown, ShutdownEvent};
use tower::{Layer, Service, ServiceExt, service_fn};

/// A coordinator whose events are collected.
fn recorded() -> (Shutdown, Arc<Mutex<Vec<ShutdownEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&events);
    let shutdown = Shutdown::builder()
        .listener(listener_fn(move |event: &ShutdownEvent| {
            sink.lock().unwrap().push(event.clone());
        }))
        .build();
    (shutdown, events)
}

fn panics_reported(events: &Mutex<Vec<ShutdownEvent>>) -> Vec<String> {
    events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|event| match event {
            ShutdownEvent::HandlerPanicked { message } => Some(message.clone()),
            _ => None,
        })
        .collect()
}

fn ok_body(text: &'static str) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(text.as_bytes())))
}

async fn text<B>(response: Response<CatchPanicBody<B>>) -> String
where
    B: Body,
    B::Error: Into<palisade_core::BoxError>,
{
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn a_panic_in_call_answers_500_and_is_reported() {
    let (shutdown, events) = recorded();
    let mut service = shutdown
        .catch_panic_layer()
        .layer(service_fn(|request: Request<()>| {
            assert!(request.uri() != "/boom", "boom in call");
            ready(Ok::<_, Infallible>(ok_body("fine")))
        }));

    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::get("/boom").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(text(response).await, "");
    assert_eq!(panics_reported(&events), ["boom in call"]);

    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(text(response).await, "fine", "the service serves on");
}

#[tokio::test]
async fn a_panic_in_the_response_future_answers_500_and_is_reported() {
    let (shutdown, events) = recorded();
    let service =
        shutdown
            .catch_panic_layer()
            .layer(service_fn(|request: Request<()>| async move {
                tokio::task::yield_now().await;
                assert!(request.uri() != "/boom", "boom in the future");
                Ok::<_, Infallible>(ok_body("fine"))
            }));

    let response = service
        .clone()
        .oneshot(Request::get("/boom").body(()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(panics_reported(&events), ["boom in the future"]);
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(text(response).await, "fine");
}

/// Panics in `poll_ready` once, then is ready.
#[derive(Clone, Default)]
struct PanicsWhenFirstPolled {
    polled: bool,
}

impl Service<Request<()>> for PanicsWhenFirstPolled {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        if !self.polled {
            self.polled = true;
            panic!("boom in poll_ready");
        }
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<()>) -> Self::Future {
        ready(Ok(ok_body("fine")))
    }
}

#[tokio::test]
async fn a_panic_in_poll_ready_answers_the_next_call_500_without_calling_the_handler() {
    let mut service = CatchPanicLayer::new().layer(PanicsWhenFirstPolled::default());
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let response = service
        .ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap();
    assert_eq!(text(response).await, "fine");
}

/// Yields one frame, then panics.
struct PanicsAfterOneFrame {
    sent: bool,
}

impl Body for PanicsAfterOneFrame {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        assert!(!self.sent, "boom in the body");
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"first")))))
    }
}

#[tokio::test]
async fn a_panic_in_the_body_ends_it_with_an_error_and_is_reported() {
    let (shutdown, events) = recorded();
    let service = shutdown
        .catch_panic_layer()
        .layer(service_fn(|_: Request<()>| {
            ready(Ok::<_, Infallible>(Response::new(PanicsAfterOneFrame {
                sent: false,
            })))
        }));
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the head was out already"
    );
    let mut body = response.into_body();
    let frame = body.frame().await.unwrap().unwrap();
    assert_eq!(frame.into_data().unwrap(), "first");
    let error = body.frame().await.unwrap().unwrap_err();
    let panicked = error.downcast_ref::<Panicked>().unwrap();
    assert_eq!(panicked.message(), "boom in the body");
    assert!(body.frame().await.is_none(), "not polled again");
    assert!(body.is_end_stream());
    assert_eq!(panics_reported(&events), ["boom in the body"]);
}

#[tokio::test]
async fn without_a_panic_responses_and_errors_pass_through_untouched() {
    let service = CatchPanicLayer::new().layer(service_fn(|request: Request<()>| {
        ready(if request.uri() == "/error" {
            Err("handler error")
        } else {
            Ok(ok_body("fine"))
        })
    }));
    let error = service
        .clone()
        .oneshot(Request::get("/error").body(()).unwrap())
        .await
        .unwrap_err();
    assert_eq!(error, "handler error");
    let response = service.oneshot(Request::new(())).await.unwrap();
    assert_eq!(response.body().size_hint().exact(), Some(4));
    assert_eq!(text(response).await, "fine");
}
