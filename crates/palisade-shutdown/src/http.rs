//! HTTP: requests that last until their response body ends, `Connection: close` while
//! shutting down, `503` answers, and the health endpoint (feature `http`).
//!
//! [`HttpShutdownLayer`] is [`ShutdownLayer`](crate::ShutdownLayer) for
//! `http::Request`/`http::Response` services (an axum `Router`, a hyper service):
//!
//! - a request counts as in flight until its response **body** ends (or is dropped), so a
//!   streaming response (SSE, a download) holds the drain open, as it should;
//! - once the shutdown is triggered, responses to HTTP/1 requests carry
//!   `Connection: close`, so keep-alive clients reconnect (to another instance) instead of
//!   sending more requests here (HTTP/2 has no such header; a server sends GOAWAY);
//! - rejections are answers, not errors: `503 Service Unavailable` (with `Retry-After` if
//!   [configured](HttpShutdownLayer::retry_after)); the inner service's error type is kept,
//!   so an axum `Router` with `Infallible` errors needs no `HandleErrorLayer`;
//! - at the deadline, a request still waiting for its response is answered `503`, and a
//!   body still streaming ends with a [`ShuttingDown`] error (the server aborts it).
//!
//! [`HealthService`] answers `200 {"status":"healthy","uptime_s":…}` while running and
//! `503 {"status":"shutting-down"}` from the trigger on: mount it as the readiness probe.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode, header};
//! use palisade_shutdown::{Phase, Shutdown};
//! use tower::{Layer, ServiceExt, service_fn};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let shutdown = Shutdown::new();
//! let app = shutdown.http_layer().layer(service_fn(|_: Request<String>| async {
//!     Ok::<_, Infallible>(Response::new(String::from("hello")))
//! }));
//! let health = shutdown.health();
//!
//! let response = health.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//!
//! shutdown.trigger();
//! let response = health.oneshot(Request::new(())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.body(), r#"{"status":"shutting-down"}"#);
//!
//! // Still served during the grace delay, but the keep-alive connection is told to close.
//! let response = app.oneshot(Request::new(String::new())).await.unwrap();
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.headers()[header::CONNECTION], "close");
//! # }
//! ```

use std::convert::Infallible;
use std::future::{Future, Ready, ready};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::{HeaderValue, Request, Response, StatusCode, Version, header};
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use palisade_core::reject::{Rejection, ShuttingDown};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::layer::Admission;
use crate::phase::Phase;
use crate::shutdown::Shutdown;
use crate::state::{CANCELLING, Core, Deadline, InFlight, RUNNING, State};

/// Wraps HTTP services in an [`HttpShutdownService`]; see the [module docs](self).
/// Made by [`Shutdown::http_layer`] or [`HttpShutdownLayer::new`].
#[derive(Clone)]
pub struct HttpShutdownLayer {
    state: Arc<State>,
    admission: Admission,
}

impl HttpShutdownLayer {
    /// A layer tracking requests for `shutdown`, serving new requests until the deadline.
    pub fn new(shutdown: &Shutdown) -> Self {
        Self {
            state: Arc::clone(&shutdown.state),
            admission: Admission::SERVE,
        }
    }

    /// Answers new requests with `503` from [`Phase::StopAccepting`] on, instead of serving
    /// them until the deadline.
    #[must_use]
    pub fn reject_while_draining(mut self) -> Self {
        self.admission = self.admission.reject_while_draining();
        self
    }

    /// `503` answers carry `Retry-After` with this delay, in whole seconds rounded up (none
    /// by default: another instance can take the request at once).
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.admission = self.admission.retry_after(retry_after);
        self
    }
}

impl std::fmt::Debug for HttpShutdownLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShutdownLayer")
            .field("admission", &self.admission)
            .field("state", &self.state)
            .finish()
    }
}

impl<S> Layer<S> for HttpShutdownLayer {
    type Service = HttpShutdownService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpShutdownService {
            inner,
            core: self.state.core,
            state: Arc::clone(&self.state),
            admission: self.admission,
            rejecting: false,
        }
    }
}

/// An HTTP service whose requests a [`Shutdown`] tracks until their response bodies end;
/// built by [`HttpShutdownLayer`].
pub struct HttpShutdownService<S> {
    inner: S,
    core: &'static Core,
    state: Arc<State>,
    admission: Admission,
    rejecting: bool,
}

impl<S> HttpShutdownService<S> {
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

impl<S: Clone> Clone for HttpShutdownService<S> {
    /// The clone reports to the same coordinator; it starts unready.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: self.core,
            state: Arc::clone(&self.state),
            admission: self.admission,
            rejecting: false,
        }
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for HttpShutdownService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpShutdownService")
            .field("inner", &self.inner)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for HttpShutdownService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    ResB: Body,
{
    type Response = Response<ShutdownBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.core.phase() >= self.admission.reject_from {
            self.rejecting = true;
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let http1 = request.version() < Version::HTTP_2;
        // Once the deadline has passed nothing is tracked any more, even if `poll_ready`
        // came before it.
        if !self.rejecting && self.core.phase() < CANCELLING {
            let in_flight = self.core.start();
            return ResponseFuture {
                kind: Kind::Called {
                    future: self.inner.call(request),
                    in_flight: Some(in_flight),
                    deadline: Deadline::default(),
                    http1,
                },
            };
        }
        drop(request);
        self.reject(http1)
    }
}

impl<S> HttpShutdownService<S> {
    /// The rejected call's future, made out of line so that the hot path builds only the
    /// called one.
    #[cold]
    #[inline(never)]
    fn reject<F>(&mut self, http1: bool) -> ResponseFuture<F> {
        self.rejecting = false;
        ResponseFuture {
            kind: Kind::Rejected {
                rejection: self.admission.reject(&self.state),
                http1,
            },
        }
    }
}

pin_project! {
    /// The future of an [`HttpShutdownService`] call: the inner service's response with its
    /// body wrapped in a [`ShutdownBody`], or a `503`.
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
            in_flight: Option<InFlight>,
            deadline: Deadline,
            http1: bool,
        },
        Rejected {
            rejection: ShuttingDown,
            http1: bool,
        },
        Done,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body,
{
    type Output = Result<Response<ShutdownBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let output = match kind.as_mut().project() {
            KindProj::Called {
                future,
                in_flight,
                deadline,
                http1,
            } => {
                let Some(tracked) = in_flight.as_ref() else {
                    panic!("ResponseFuture polled after it completed");
                };
                let core = tracked.core();
                if Deadline::passed(core) {
                    Ok(unavailable(&ShuttingDown::new(), *http1))
                } else {
                    match future.poll(cx) {
                        Poll::Ready(Ok(response)) => {
                            let closing = *http1 && core.phase() != RUNNING;
                            // The body keeps the deadline registration, if the call
                            // waited: the same task usually polls it, so it need not
                            // register again.
                            let deadline = std::mem::take(deadline);
                            Ok(track(response, in_flight.take(), deadline, closing))
                        }
                        Poll::Ready(Err(error)) => Err(error),
                        Poll::Pending if deadline.poll_passed(tracked, cx) => {
                            Ok(unavailable(&ShuttingDown::new(), *http1))
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            KindProj::Rejected { rejection, http1 } => Ok(unavailable(rejection, *http1)),
            KindProj::Done => panic!("ResponseFuture polled after it completed"),
        };
        kind.set(Kind::Done);
        Poll::Ready(output)
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// The inner response, its body tracked; `Connection: close` added if `closing`.
#[inline]
fn track<B: Body>(
    response: Response<B>,
    in_flight: Option<InFlight>,
    deadline: Deadline,
    closing: bool,
) -> Response<ShutdownBody<B>> {
    let (mut parts, body) = response.into_parts();
    if closing {
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let body = if body.is_end_stream() {
        ShutdownBody::new(body, None, Deadline::default())
    } else {
        ShutdownBody::new(body, in_flight, deadline)
    };
    Response::from_parts(parts, body)
}

/// `503` (with `Retry-After` if the rejection has one), closing HTTP/1 connections.
#[cold]
fn unavailable<B>(rejection: &ShuttingDown, http1: bool) -> Response<ShutdownBody<B>> {
    let mut response: Response<ShutdownBody<B>> = Rejection::ShuttingDown(rejection).to_response();
    if http1 {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

pin_project! {
    /// A response body that keeps its request in flight until it ends (or is dropped);
    /// made by [`HttpShutdownService`].
    ///
    /// Its errors are boxed: the inner body's, and a [`ShuttingDown`] when the drain
    /// deadline cuts it.
    pub struct ShutdownBody<B> {
        #[pin]
        inner: Option<B>,
        in_flight: Option<InFlight>,
        deadline: Deadline,
    }
}

impl<B> ShutdownBody<B> {
    fn new(inner: B, in_flight: Option<InFlight>, deadline: Deadline) -> Self {
        Self {
            inner: Some(inner),
            in_flight,
            deadline,
        }
    }

    /// An empty body, as rejections have.
    pub fn empty() -> Self {
        Self {
            inner: None,
            in_flight: None,
            deadline: Deadline::default(),
        }
    }

    /// Whether the body still keeps its request in flight.
    pub fn is_tracked(&self) -> bool {
        self.in_flight.is_some()
    }
}

impl<B> Default for ShutdownBody<B> {
    fn default() -> Self {
        Self::empty()
    }
}

impl<B> std::fmt::Debug for ShutdownBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownBody")
            .field("empty", &self.inner.is_none())
            .field("tracked", &self.in_flight.is_some())
            .finish()
    }
}

impl<B> Body for ShutdownBody<B>
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
        let Some(mut inner) = this.inner.as_mut().as_pin_mut() else {
            return Poll::Ready(None);
        };
        if this
            .in_flight
            .as_ref()
            .is_some_and(|in_flight| Deadline::passed(in_flight.core()))
        {
            return cut(this.inner, this.in_flight, this.deadline);
        }
        match inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if inner.is_end_stream() {
                    end(this.in_flight, this.deadline);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                end(this.in_flight, this.deadline);
                Poll::Ready(Some(Err(error.into())))
            }
            Poll::Ready(None) => {
                end(this.in_flight, this.deadline);
                Poll::Ready(None)
            }
            Poll::Pending => match this.in_flight.as_ref() {
                Some(in_flight) if this.deadline.poll_passed(in_flight, cx) => {
                    cut(this.inner, this.in_flight, this.deadline)
                }
                _ => Poll::Pending,
            },
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

/// The body's request is over: no longer in flight, nor waiting for the deadline.
#[inline]
fn end(in_flight: &mut Option<InFlight>, deadline: &mut Deadline) {
    *in_flight = None;
    deadline.release();
}

/// Ends a body at the deadline: drops the inner body and the in-flight count.
#[cold]
fn cut<B, D>(
    mut inner: Pin<&mut Option<B>>,
    in_flight: &mut Option<InFlight>,
    deadline: &mut Deadline,
) -> Poll<Option<Result<Frame<D>, BoxError>>> {
    inner.set(None);
    end(in_flight, deadline);
    tracing::debug!("response body cut at the shutdown deadline");
    Poll::Ready(Some(Err(ShuttingDown::new().into())))
}

/// The health endpoint: `200 {"status":"healthy","uptime_s":…}` while the shutdown has not
/// been triggered, `503 {"status":"shutting-down"}` from the trigger on (feature `http`).
///
/// Use it as the **readiness** probe, so the load balancer takes the instance out of
/// rotation during the grace delay. (A liveness probe must keep answering `200` while the
/// instance drains, or the orchestrator kills it mid-drain.) Responses are JSON with
/// `Cache-Control: no-store`; the uptime is in whole seconds of tokio's clock since the
/// coordinator was built. Made by [`Shutdown::health`].
///
/// Every `503` it answers counts towards
/// [`grace_until_probed`](crate::ShutdownBuilder::grace_until_probed), which can end the
/// grace delay once the probes have seen it.
#[derive(Clone)]
pub struct HealthService {
    state: Arc<State>,
}

impl std::fmt::Debug for HealthService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthService")
            .field("phase", &self.state.phase())
            .finish()
    }
}

impl<B> Service<Request<B>> for HealthService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        let (status, body) = if self.state.phase() == Phase::Running {
            let uptime = self.state.started.elapsed().as_secs();
            (
                StatusCode::OK,
                format!(r#"{{"status":"healthy","uptime_s":{uptime}}}"#),
            )
        } else {
            self.state.probed_unhealthy();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                String::from(r#"{"status":"shutting-down"}"#),
            )
        };
        let mut response = Response::new(body);
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        ready(Ok(response))
    }
}

impl Shutdown {
    /// An [`HttpShutdownLayer`] that tracks HTTP requests, until their response bodies end,
    /// for this coordinator (feature `http`).
    pub fn http_layer(&self) -> HttpShutdownLayer {
        HttpShutdownLayer::new(self)
    }

    /// The [`HealthService`] for this coordinator (feature `http`).
    pub fn health(&self) -> HealthService {
        HealthService {
            state: Arc::clone(&self.state),
        }
    }
}
