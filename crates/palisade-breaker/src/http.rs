//! Answering an open circuit with an HTTP response instead of an error (feature `http`).
//!
//! A [`CircuitBreaker`](crate::CircuitBreaker) rejects calls with a [`CircuitOpen`] error,
//! which an axum [`Router`](https://docs.rs/axum/latest/axum/struct.Router.html) (whose
//! services must be `Infallible`) can only take behind a `HandleErrorLayer`. The
//! [`HttpCircuitBreakerLayer`] answers a rejected request itself:
//!
//! - by default with `503 Service Unavailable`, a `Retry-After` header giving the time left
//!   in whole seconds, rounded up (a client that waits that long never comes back early), and
//!   an empty body;
//! - or with what a [`fallback`](HttpCircuitBreakerLayer::fallback) makes of the request: a
//!   cached copy, a degraded page.
//!
//! The inner service's errors pass through unchanged, so an `Infallible` service stays
//! `Infallible`. Everything else is as for [`CircuitBreakerLayer`](crate::CircuitBreakerLayer):
//! one layer value is one breaker, [handles](HttpCircuitBreakerLayer::handle) steer it,
//! `poll_ready` fails fast while it is open, and rejections count in its metrics and events.
//!
//! What counts as a failure is by default [`StatusClassify`]: `5xx` and
//! `429 Too Many Requests` responses, and every `Err`. A `404` says nothing about the
//! service's health and counts as a success.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use palisade_breaker::{CircuitBreakerConfig, HttpCircuitBreakerLayer};
//! use palisade_core::Backoff;
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = CircuitBreakerConfig::builder()
//!     .consecutive_failures(NonZeroU32::new(2).unwrap())
//!     .open_wait(Backoff::constant(Duration::from_millis(1500)))
//!     .build()?;
//!
//! let service = ServiceBuilder::new()
//!     .layer(HttpCircuitBreakerLayer::new(config))
//!     .service_fn(|_: Request<()>| async {
//!         let response = Response::builder().status(StatusCode::BAD_GATEWAY).body(String::new());
//!         Ok::<_, std::convert::Infallible>(response.unwrap())
//!     });
//!
//! for _ in 0..2 {
//!     let response = service.clone().oneshot(Request::new(())).await?;
//!     assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
//! }
//!
//! // Open: an answer, not an error, and the upstream is not called.
//! let response = service.clone().oneshot(Request::new(())).await?;
//! assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(response.headers()["retry-after"], "2");
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::http::{Request, Response};
use palisade_core::classify::{Classify, StatusClassify};
use palisade_core::reject::{CircuitOpen, Rejection};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::CircuitBreakerConfig;
use crate::future::{Admission, Guard};
use crate::handle::CircuitBreakerHandle;
use crate::state::{Shared, Slot, Slots};

/// Makes the response to a request the breaker rejected.
///
/// Implemented by [`DefaultFallback`] (`503` + `Retry-After`) and by every
/// `Fn(&CircuitOpen, Request<ReqB>) -> Response<ResB>`; see
/// [`HttpCircuitBreakerLayer::fallback`].
pub trait Fallback<ReqB, ResB> {
    /// The response to `request`, which was not passed on because of `rejection`.
    fn respond(&self, rejection: &CircuitOpen, request: Request<ReqB>) -> Response<ResB>;
}

impl<F, ReqB, ResB> Fallback<ReqB, ResB> for F
where
    F: Fn(&CircuitOpen, Request<ReqB>) -> Response<ResB>,
{
    fn respond(&self, rejection: &CircuitOpen, request: Request<ReqB>) -> Response<ResB> {
        self(rejection, request)
    }
}

/// Answers a rejected request with `503 Service Unavailable`, a `Retry-After` header (the
/// time left in whole seconds, rounded up) and an empty body.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DefaultFallback;

impl<ReqB, ResB: Default> Fallback<ReqB, ResB> for DefaultFallback {
    fn respond(&self, rejection: &CircuitOpen, _request: Request<ReqB>) -> Response<ResB> {
        Rejection::CircuitOpen(rejection).to_response()
    }
}

/// Wraps HTTP services in an [`HttpCircuitBreaker`]: a circuit breaker that answers
/// rejected requests with a response (`503` + `Retry-After`, or a
/// [fallback](Self::fallback)'s) instead of an error (feature `http`).
///
/// **One layer value is one breaker**, shared by every service it builds, their clones, the
/// layer's clones and its [handles](Self::handle), as for
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// `C` decides what counts as a failure ([`StatusClassify`]: `5xx`, `429` and every `Err`);
/// `F` answers rejected requests ([`DefaultFallback`]: `503` + `Retry-After`). See the
/// [module docs](self) for an example.
pub struct HttpCircuitBreakerLayer<C = StatusClassify, F = DefaultFallback> {
    shared: Arc<Slots<C>>,
    fallback: F,
}

impl HttpCircuitBreakerLayer {
    /// A breaker that counts `5xx` and `429` responses and every `Err` as failures
    /// ([`StatusClassify::default`]) and answers rejected requests with `503` +
    /// `Retry-After`.
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self::with_classifier(config, StatusClassify::default())
    }
}

impl<C> HttpCircuitBreakerLayer<C> {
    /// A breaker whose failures are decided by `classify` (a [`StatusClassify`] with some
    /// codes reassigned, say), answering rejected requests with `503` + `Retry-After`.
    pub fn with_classifier(config: CircuitBreakerConfig, classify: C) -> Self {
        Self {
            shared: Arc::new(Slots::new(Shared::new(config, classify))),
            fallback: DefaultFallback,
        }
    }
}

impl<C, F> HttpCircuitBreakerLayer<C, F> {
    /// Answers rejected requests with `fallback` instead of `503` + `Retry-After`: a
    /// [`Fallback`], or a closure `Fn(&CircuitOpen, Request<ReqB>) -> Response<ResB>` (give
    /// its parameters' types). It runs in `call`, so it should be quick; it gets the
    /// request, so it can look up what to serve.
    ///
    /// Rejected requests still count as rejections in the breaker's metrics and events.
    ///
    /// # Example: serve from cache
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use std::num::NonZeroU32;
    /// use std::sync::{Arc, RwLock};
    /// use http::{Request, Response, StatusCode, header};
    /// use palisade_breaker::{CircuitBreakerConfig, CircuitOpen, HttpCircuitBreakerLayer};
    /// use palisade_core::{RetryAfter, reject::retry_after_value};
    /// use tower::{ServiceBuilder, ServiceExt};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Filled from successful responses elsewhere.
    /// let cache = Arc::new(RwLock::new(HashMap::from([
    ///     ("/prices".to_owned(), "{\"apple\":3}".to_owned()),
    /// ])));
    ///
    /// let config = CircuitBreakerConfig::builder()
    ///     .consecutive_failures(NonZeroU32::new(1).unwrap())
    ///     .build()?;
    /// let from_cache = move |open: &CircuitOpen, request: Request<()>| {
    ///     let cached = cache.read().unwrap().get(request.uri().path()).cloned();
    ///     match cached {
    ///         Some(body) => Response::builder()
    ///             .header(header::WARNING, "110 - \"response is stale\"")
    ///             .body(body)
    ///             .unwrap(),
    ///         None => Response::builder()
    ///             .status(StatusCode::SERVICE_UNAVAILABLE)
    ///             .header(header::RETRY_AFTER, retry_after_value(open.retry_after().unwrap_or_default()))
    ///             .body(String::new())
    ///             .unwrap(),
    ///     }
    /// };
    /// let breaker = HttpCircuitBreakerLayer::new(config).fallback(from_cache);
    ///
    /// let service = ServiceBuilder::new().layer(breaker).service_fn(|_: Request<()>| async {
    ///     let response = Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR);
    ///     Ok::<_, std::convert::Infallible>(response.body(String::new()).unwrap())
    /// });
    ///
    /// let request = || Request::builder().uri("/prices").body(()).unwrap();
    /// let failed = service.clone().oneshot(request()).await?;
    /// assert_eq!(failed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    ///
    /// let cached = service.clone().oneshot(request()).await?;
    /// assert_eq!(cached.status(), StatusCode::OK);
    /// assert_eq!(cached.body(), "{\"apple\":3}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn fallback<G>(self, fallback: G) -> HttpCircuitBreakerLayer<C, G> {
        HttpCircuitBreakerLayer {
            shared: self.shared,
            fallback,
        }
    }

    /// A handle to read and steer this breaker at runtime.
    pub fn handle(&self) -> CircuitBreakerHandle
    where
        C: Send + Sync + 'static,
    {
        CircuitBreakerHandle::new(Arc::clone(self.shared.shared()) as _)
    }
}

impl<C, F: Clone> Clone for HttpCircuitBreakerLayer<C, F> {
    /// The clone is the same breaker.
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            fallback: self.fallback.clone(),
        }
    }
}

impl<C, F> std::fmt::Debug for HttpCircuitBreakerLayer<C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCircuitBreakerLayer")
            .field("breaker", &self.shared)
            .field("fallback", &std::any::type_name::<F>())
            .finish()
    }
}

impl<S, C, F: Clone> Layer<S> for HttpCircuitBreakerLayer<C, F> {
    type Service = HttpCircuitBreaker<S, C, F>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpCircuitBreaker {
            inner,
            slot: self.shared.pick(),
            shared: Arc::clone(&self.shared),
            fallback: self.fallback.clone(),
            rejection: None,
        }
    }
}

/// An HTTP service guarded by a circuit breaker that answers rejected requests with a
/// response instead of an error; built by [`HttpCircuitBreakerLayer`] (feature `http`).
///
/// Its error type is the inner service's: an `Infallible` service stays `Infallible`.
///
/// While the breaker is open, `poll_ready` answers at once without polling the inner service
/// (which may be stuck on the very upstream that tripped the breaker), and the next `call`
/// is answered by the fallback. Half-open probe slots are taken in `call`, never in
/// `poll_ready`, so an idle connection's readiness check cannot hoard them.
pub struct HttpCircuitBreaker<S, C = StatusClassify, F = DefaultFallback> {
    inner: S,
    shared: Arc<Slots<C>>,
    /// The slot this service's calls take their references from.
    slot: Arc<Slot<C>>,
    fallback: F,
    /// A rejection decided by `poll_ready` without polling `inner`.
    rejection: Option<CircuitOpen>,
}

impl<S, C, F> HttpCircuitBreaker<S, C, F> {
    /// A handle to this service's breaker (the one shared with its layer and clones).
    pub fn handle(&self) -> CircuitBreakerHandle
    where
        C: Send + Sync + 'static,
    {
        CircuitBreakerHandle::new(Arc::clone(self.shared.shared()) as _)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C, F: Clone> Clone for HttpCircuitBreaker<S, C, F> {
    /// The clone shares the breaker; readiness is per service, so it starts unready.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            slot: self.shared.pick(),
            shared: Arc::clone(&self.shared),
            fallback: self.fallback.clone(),
            rejection: None,
        }
    }
}

impl<S: std::fmt::Debug, C, F> std::fmt::Debug for HttpCircuitBreaker<S, C, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared)
            .field("fallback", &std::any::type_name::<F>())
            .finish()
    }
}

impl<S, C, F, ReqB, ResB> Service<Request<ReqB>> for HttpCircuitBreaker<S, C, F>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    C: Classify<Response<ResB>, S::Error>,
    F: Fallback<ReqB, ResB>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, C, ResB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.fail_fast(&mut self.rejection) {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        let decided = self.rejection.take();
        match Admission::new::<C, Response<ResB>, S::Error>(&self.slot, decided) {
            Ok(admission) if admission.is_probe() => {
                let guard = Guard::new(&self.slot, admission);
                ResponseFuture::called(self.inner.call(request), guard)
            }
            Ok(admission) => {
                // Built after `call`, in place, from what stayed in registers.
                let future = self.inner.call(request);
                ResponseFuture::called(future, Guard::new(&self.slot, admission))
            }
            Err(rejection) => ResponseFuture::fallback(self.fallback.respond(&rejection, request)),
        }
    }
}

pin_project! {
    /// The future of an [`HttpCircuitBreaker`] call: the inner service's future, which
    /// records its outcome when it completes, or the fallback's response to a rejected
    /// request.
    ///
    /// Dropping it before it completes (a cancelled call) records nothing and frees its
    /// half-open probe slot; an inner future that panics counts as a failure.
    pub struct ResponseFuture<Fut, C, B> {
        // Outside the enum (a rejected request gets an idle guard): written once, in place,
        // where a guard inside a variant was copied about on the way out of `call`.
        guard: Guard<C>,
        #[pin]
        kind: Kind<Fut, B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<Fut, B> {
        Called { #[pin] future: Fut },
        Fallback { response: Option<Response<B>> },
    }
}

impl<Fut, C, B> ResponseFuture<Fut, C, B> {
    fn called(future: Fut, guard: Guard<C>) -> Self {
        Self {
            guard,
            kind: Kind::Called { future },
        }
    }

    fn fallback(response: Response<B>) -> Self {
        Self {
            guard: Guard::idle(),
            kind: Kind::Fallback {
                response: Some(response),
            },
        }
    }
}

impl<Fut, C, B, E> Future for ResponseFuture<Fut, C, B>
where
    Fut: Future<Output = Result<Response<B>, E>>,
    C: Classify<Response<B>, E>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => this.guard.poll_call(future, cx),
            KindProj::Fallback { response } => Poll::Ready(Ok(response
                .take()
                .expect("http::ResponseFuture polled after it completed"))),
        }
    }
}

impl<Fut, C, B> std::fmt::Debug for ResponseFuture<Fut, C, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
