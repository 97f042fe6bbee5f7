//! A handler that panics answers `500` instead of taking its connection (or the process)
//! down (feature `http`).
//!
//! [`CatchPanicLayer`] wraps an HTTP service and catches a panic wherever the handler
//! runs: in `poll_ready`, in `call`, in the response future, and in the response body.
//!
//! - Before the response exists (readiness, `call`, the future), the client gets
//!   `500 Internal Server Error` with an empty body.
//! - Once the response has started, a panicking body ends with a [`Panicked`] error, so the
//!   server aborts the response (the client sees it cut, never a truncated body that looks
//!   complete).
//!
//! Either way the panic is reported: a tracing `error` event with the panic's message and,
//! for a layer made by [`Shutdown::catch_panic_layer`], a
//! [`ShutdownEvent::HandlerPanicked`] to the coordinator's listener. The panic hook still
//! runs as usual (it prints the message, by default). Nothing is allocated unless a panic
//! happens.
//!
//! This is the patterns document's "unhandled rejection" hook done the Rust way: one bad
//! request fails alone and the process serves on. A handler that panicked may have left
//! shared state half-updated (a poisoned mutex, say): the layer only keeps the panic from
//! spreading.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use palisade_shutdown::{CatchPanicLayer, Shutdown};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let app = ServiceBuilder::new()
//!     .layer(shutdown.catch_panic_layer()) // or CatchPanicLayer::new()
//!     .service_fn(|request: Request<()>| async move {
//!         if request.uri() == "/boom" {
//!             panic!("boom");
//!         }
//!         Ok::<_, Infallible>(Response::new(String::from("fine")))
//!     });
//!
//! let response = app.clone().oneshot(Request::get("/boom").body(()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
//! let response = app.oneshot(Request::get("/").body(()).unwrap()).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! # }
//! ```

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::event::ShutdownEvent;
use crate::hook::panic_message;
use crate::shutdown::Shutdown;
use crate::state::State;

/// Wraps HTTP services in a [`CatchPanic`]; see the [module docs](self).
#[derive(Clone, Default)]
pub struct CatchPanicLayer {
    state: Option<Arc<State>>,
}

impl CatchPanicLayer {
    /// A layer that reports panics through tracing only.
    pub fn new() -> Self {
        Self::default()
    }
}

impl fmt::Debug for CatchPanicLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchPanicLayer")
            .field("reports_to_shutdown", &self.state.is_some())
            .finish()
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> CatchPanic<S> {
        CatchPanic {
            inner,
            state: self.state.clone(),
            panicked: None,
        }
    }
}

impl Shutdown {
    /// A [`CatchPanicLayer`] that also reports panics to this coordinator's listener as
    /// [`ShutdownEvent::HandlerPanicked`] (feature `http`).
    pub fn catch_panic_layer(&self) -> CatchPanicLayer {
        CatchPanicLayer {
            state: Some(Arc::clone(&self.state)),
        }
    }
}

/// An HTTP service whose panics become `500` answers; built by [`CatchPanicLayer`].
pub struct CatchPanic<S> {
    inner: S,
    state: Option<Arc<State>>,
    /// `poll_ready` panicked: the next call answers `500` without calling the inner service.
    panicked: Option<String>,
}

impl<S> CatchPanic<S> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for CatchPanic<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: self.state.clone(),
            panicked: None,
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for CatchPanic<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchPanic")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CatchPanic<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
    ResB::Error: Into<BoxError>,
{
    type Response = Response<CatchPanicBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        if self.panicked.is_some() {
            return Poll::Ready(Ok(()));
        }
        match catch_unwind(AssertUnwindSafe(|| self.inner.poll_ready(cx))) {
            Ok(ready) => ready,
            Err(panic) => {
                self.panicked = Some(report(self.state.as_deref(), panic.as_ref(), "poll_ready"));
                Poll::Ready(Ok(()))
            }
        }
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if self.panicked.take().is_some() {
            return ResponseFuture::panicked();
        }
        match catch_unwind(AssertUnwindSafe(|| self.inner.call(request))) {
            Ok(future) => ResponseFuture {
                kind: Kind::Called {
                    future,
                    state: self.state.clone(),
                },
            },
            Err(panic) => {
                report(self.state.as_deref(), panic.as_ref(), "call");
                ResponseFuture::panicked()
            }
        }
    }
}

pin_project! {
    /// The future of a [`CatchPanic`] call: the inner response, or `500` if the handler
    /// panicked.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            state: Option<Arc<State>>,
        },
        Panicked,
    }
}

impl<F> ResponseFuture<F> {
    fn panicked() -> Self {
        Self {
            kind: Kind::Panicked,
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<CatchPanicBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Called { future, state } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => Poll::Ready(result.map(|response| {
                        let (parts, body) = response.into_parts();
                        Response::from_parts(parts, CatchPanicBody::new(body, state.clone()))
                    })),
                    Err(panic) => {
                        report(state.as_deref(), panic.as_ref(), "the response future");
                        Poll::Ready(Ok(internal_server_error()))
                    }
                }
            }
            KindProj::Panicked => Poll::Ready(Ok(internal_server_error())),
        }
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

#[cold]
fn internal_server_error<B>() -> Response<CatchPanicBody<B>> {
    let mut response = Response::new(CatchPanicBody::empty());
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}

/// Logs and reports a caught panic; returns its message.
#[cold]
fn report(state: Option<&State>, panic: &(dyn Any + Send), place: &'static str) -> String {
    let message = panic_message(panic);
    tracing::error!(panic = %message, place, "request handler panicked");
    if let Some(state) = state {
        state.emit(&ShutdownEvent::HandlerPanicked {
            message: message.clone(),
        });
    }
    message
}

pin_project! {
    /// A response body whose panics end it with a [`Panicked`] error; made by
    /// [`CatchPanic`]. Its errors are boxed: the inner body's, and [`Panicked`].
    pub struct CatchPanicBody<B> {
        #[pin]
        inner: Option<B>,
        state: Option<Arc<State>>,
    }
}

impl<B> CatchPanicBody<B> {
    fn new(inner: B, state: Option<Arc<State>>) -> Self {
        Self {
            inner: Some(inner),
            state,
        }
    }

    /// An empty body, as the `500` answers have.
    pub fn empty() -> Self {
        Self {
            inner: None,
            state: None,
        }
    }
}

impl<B> Default for CatchPanicBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> fmt::Debug for CatchPanicBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchPanicBody")
            .field("empty", &self.inner.is_none())
            .finish()
    }
}

impl<B> Body for CatchPanicBody<B>
where
    B: Body,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        match catch_unwind(AssertUnwindSafe(|| inner.poll_frame(cx))) {
            Ok(frame) => frame.map(|frame| frame.map(|frame| frame.map_err(Into::into))),
            Err(panic) => {
                // The body is not polled again: a panicked body may be in any state.
                this.inner.set(None);
                let message = report(this.state.as_deref(), panic.as_ref(), "the response body");
                Poll::Ready(Some(Err(Panicked { message }.into())))
            }
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A response body panicked after its response had started; the body ends with this error
/// (see [`CatchPanicBody`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the response body panicked: {message}")]
pub struct Panicked {
    message: String,
}

impl Panicked {
    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}
