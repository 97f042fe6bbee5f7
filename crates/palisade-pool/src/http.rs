//! HTTP services (feature `http`): shed requests answered with `503` + `Retry-After`, the
//! permit held until the response body ends, and priorities from a header or a request
//! extension.
//!
//! A [`ConcurrencyPool`](crate::ConcurrencyPool) rejects with an
//! [`Overloaded`](crate::Overloaded) error, which an axum
//! [`Router`](https://docs.rs/axum/latest/axum/struct.Router.html) (whose services must be
//! `Infallible`) only takes behind a `HandleErrorLayer`, and it gives its permit back as soon
//! as the response head is ready, while a streamed body may still be producing. The
//! [`HttpConcurrencyPoolLayer`]:
//!
//! - answers a shed request itself, with `503 Service Unavailable`, a `Retry-After` header
//!   (the pool's retry-after hint in whole seconds, rounded up) and an empty body; the inner
//!   service's errors pass through unchanged, so an `Infallible` service stays `Infallible`;
//! - wraps response bodies in a [`PoolBody`] that owns the call's permit and gives it back
//!   when the body ends (its last frame, an error) or is dropped, so a streaming download
//!   counts as in flight until it is done.
//!
//! Everything else is as for [`ConcurrencyPoolLayer`](crate::ConcurrencyPoolLayer): one layer
//! value is one pool, `poll_ready` reserves nothing, calls wait by priority.
//!
//! A request's priority can come from a header ([`PriorityHeader`]) or from a [`Priority`] an
//! earlier layer put in its extensions ([`PriorityExtension`]), for example after
//! authentication.
//!
//! # Example
//!
//! ```
//! use std::num::NonZeroU32;
//! use axum::{Router, routing::get};
//! use axum::body::Body;
//! use http::{HeaderName, Request, StatusCode};
//! use palisade_pool::PoolConfig;
//! use palisade_pool::http::{HttpConcurrencyPoolLayer, PriorityHeader};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = PoolConfig::builder(NonZeroU32::new(32).unwrap()).queue_capacity(0).build()?;
//! let pool = HttpConcurrencyPoolLayer::new(config)
//!     .prioritize(PriorityHeader::new(HeaderName::from_static("x-priority")));
//! let handle = pool.handle();
//! let app = Router::new().route("/", get(|| async { "hello" })).layer(pool);
//!
//! handle.set_limit(NonZeroU32::new(1).unwrap())?;
//! let request = || Request::builder().uri("/").body(Body::empty()).unwrap();
//! let response = app.clone().oneshot(request()).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! // Its body holds the permit until it is read or dropped.
//! assert_eq!(handle.in_flight(), 1);
//!
//! // The pool is full and nobody may wait: an answer, not an error.
//! let shed = app.clone().oneshot(request()).await?;
//! assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
//! assert_eq!(shed.headers()["retry-after"], "1");
//!
//! drop(response);
//! assert_eq!(handle.in_flight(), 0);
//! # Ok(())
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use ::http::{HeaderName, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use palisade_core::RetryAfter;
use palisade_core::classify::Outcome;
use palisade_core::reject::rejection_response;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::PoolConfig;
use crate::future::Gate;
use crate::handle::PoolHandle;
use crate::partition::{NoPartition, Partition};
use crate::pool::{Permit, Pool};
use crate::priority::{DefaultPriority, Prioritize, Priority};

/// Wraps HTTP services in an [`HttpConcurrencyPool`]: a concurrency pool that answers shed
/// requests with `503` + `Retry-After` and holds each permit until the response body ends
/// (feature `http`).
///
/// **One layer value is one pool**, shared by every service it builds, their clones, the
/// layer's clones and its [handles](Self::handle). See the [module docs](self).
pub struct HttpConcurrencyPoolLayer<P = DefaultPriority, K = NoPartition> {
    pool: Arc<Pool>,
    prioritize: P,
    partition: K,
}

impl HttpConcurrencyPoolLayer {
    /// A pool configured by `config`, every request at the default priority.
    pub fn new(config: PoolConfig) -> Self {
        Self {
            pool: Pool::new(config),
            prioritize: DefaultPriority,
            partition: NoPartition,
        }
    }
}

impl<P, K> HttpConcurrencyPoolLayer<P, K> {
    /// Takes each request's priority from `prioritize`: a [`PriorityHeader`], a
    /// [`PriorityExtension`] or a [`priority_fn`](crate::priority_fn) closure over the
    /// request. The pool stays the same.
    pub fn prioritize<Q>(self, prioritize: Q) -> HttpConcurrencyPoolLayer<Q, K> {
        HttpConcurrencyPoolLayer {
            pool: self.pool,
            prioritize,
            partition: self.partition,
        }
    }

    /// Puts each request in the partition `partition` names: a [`PartitionHeader`] or a
    /// [`partition_fn`](crate::partition_fn) closure over the request. Only pools configured
    /// with [partitions](crate::PoolConfigBuilder::partition) ask it. The pool stays the same.
    pub fn partition_by<L>(self, partition: L) -> HttpConcurrencyPoolLayer<P, L> {
        HttpConcurrencyPoolLayer {
            pool: self.pool,
            prioritize: self.prioritize,
            partition,
        }
    }

    /// A handle to read and resize this pool at runtime.
    pub fn handle(&self) -> PoolHandle {
        PoolHandle::new(Arc::clone(&self.pool))
    }
}

impl<P: Clone, K: Clone> Clone for HttpConcurrencyPoolLayer<P, K> {
    /// The clone is the same pool.
    fn clone(&self) -> Self {
        Self {
            pool: Arc::clone(&self.pool),
            prioritize: self.prioritize.clone(),
            partition: self.partition.clone(),
        }
    }
}

impl<P, K> std::fmt::Debug for HttpConcurrencyPoolLayer<P, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConcurrencyPoolLayer")
            .field("pool", &self.pool)
            .field("prioritize", &std::any::type_name::<P>())
            .field("partition", &std::any::type_name::<K>())
            .finish()
    }
}

impl<S, P: Clone, K: Clone> Layer<S> for HttpConcurrencyPoolLayer<P, K> {
    type Service = HttpConcurrencyPool<S, P, K>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpConcurrencyPool {
            inner,
            pool: Arc::clone(&self.pool),
            prioritize: self.prioritize.clone(),
            partition: self.partition.clone(),
        }
    }
}

/// An HTTP service whose calls share a pool of permits, answering shed requests with `503` +
/// `Retry-After`; built by [`HttpConcurrencyPoolLayer`] (feature `http`).
///
/// Its error type is the inner service's (an `Infallible` service stays `Infallible`); its
/// response bodies are [`PoolBody`]s, which hold the permit until they end. As for
/// [`ConcurrencyPool`](crate::ConcurrencyPool), `poll_ready` reserves nothing and a waiting
/// request carries the ready inner service, hence `S: Clone`.
pub struct HttpConcurrencyPool<S, P = DefaultPriority, K = NoPartition> {
    inner: S,
    pool: Arc<Pool>,
    prioritize: P,
    partition: K,
}

impl<S, P, K> HttpConcurrencyPool<S, P, K> {
    /// A handle to this service's pool (the one shared with its layer and clones).
    pub fn handle(&self) -> PoolHandle {
        PoolHandle::new(Arc::clone(&self.pool))
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the pool service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, P: Clone, K: Clone> Clone for HttpConcurrencyPool<S, P, K> {
    /// The clone shares the pool.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            pool: Arc::clone(&self.pool),
            prioritize: self.prioritize.clone(),
            partition: self.partition.clone(),
        }
    }
}

impl<S: std::fmt::Debug, P, K> std::fmt::Debug for HttpConcurrencyPool<S, P, K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConcurrencyPool")
            .field("inner", &self.inner)
            .field("pool", &self.pool)
            .finish_non_exhaustive()
    }
}

impl<S, P, K, ReqB, ResB> Service<Request<ReqB>> for HttpConcurrencyPool<S, P, K>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    P: Prioritize<Request<ReqB>>,
    K: Partition<Request<ReqB>>,
    ResB: Default,
{
    type Response = Response<PoolBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, S, Request<ReqB>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, request: Request<ReqB>) -> Self::Future {
        if let Some(permit) = self.pool.try_acquire() {
            return ResponseFuture {
                gate: Gate::called(self.inner.call(request), permit),
            };
        }
        let priority = self.prioritize.priority(&request);
        let lane = if self.pool.is_partitioned() {
            self.pool.lane_of(self.partition.partition(&request))
        } else {
            0
        };
        ResponseFuture {
            gate: Gate::contended(&self.pool, priority, lane, &mut self.inner, request),
        }
    }
}

pin_project! {
    /// The future of an [`HttpConcurrencyPool`] call: the inner service's response with its
    /// body wrapped in a [`PoolBody`] that holds the permit, or a `503` for a shed request.
    ///
    /// Dropped while waiting, the request leaves the queue; dropped while the inner future
    /// runs, the permit is given back.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        gate: Gate<F, S, R>,
    }
}

impl<F, S, R, B, E> Future for ResponseFuture<F, S, R>
where
    S: Service<R, Future = F>,
    F: Future<Output = Result<Response<B>, E>>,
    B: Default,
{
    type Output = Result<Response<PoolBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(match ready!(self.project().gate.poll_gate(cx)) {
            Ok((Ok(response), mut permit)) => {
                if let Some(permit) = &mut permit {
                    permit.set_outcome(outcome(response.status()));
                }
                Ok(response.map(|body| PoolBody {
                    inner: body,
                    permit,
                }))
            }
            Ok((Err(error), mut permit)) => {
                if let Some(permit) = &mut permit {
                    permit.set_outcome(Outcome::Failure);
                }
                // The permit is dropped here: the call is over.
                drop(permit);
                Err(error)
            }
            Err(rejection) => Ok(rejection_response(
                StatusCode::SERVICE_UNAVAILABLE,
                rejection.retry_after(),
            )),
        })
    }
}

/// What a response says to an adaptive limit: `429`, `503` and `504` are drops (the service or
/// something behind it is overloaded); anything else is a measured success.
fn outcome(status: StatusCode) -> Outcome {
    match status {
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Outcome::Failure,
        _ => Outcome::Success,
    }
}

impl<F, S, R> std::fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body that holds its call's permit until it ends (feature `http`).
    ///
    /// The permit is given back when the body yields its last frame or an error, reports
    /// [`is_end_stream`](Body::is_end_stream) after a frame, or is dropped: a streamed
    /// response counts as in flight until it is done. The body of a `503` for a shed request
    /// holds no permit.
    pub struct PoolBody<B> {
        #[pin]
        inner: B,
        permit: Option<Permit>,
    }
}

impl<B> PoolBody<B> {
    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.inner
    }

    /// Whether the body still holds a permit.
    pub fn holds_permit(&self) -> bool {
        self.permit.is_some()
    }
}

impl<B: Default> Default for PoolBody<B> {
    /// An empty body holding no permit.
    fn default() -> Self {
        Self {
            inner: B::default(),
            permit: None,
        }
    }
}

impl<B: Body> Body for PoolBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        let ended = match &frame {
            None | Some(Err(_)) => true,
            Some(Ok(_)) => this.inner.is_end_stream(),
        };
        if ended {
            this.permit.take();
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> std::fmt::Debug for PoolBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolBody")
            .field("holds_permit", &self.permit.is_some())
            .finish_non_exhaustive()
    }
}

/// Reads a request's priority from a header holding a number from 0 (most urgent) to 255,
/// such as `x-priority: 1`; a missing or unreadable header gives the
/// [fallback](Self::fallback) ([`Priority::DEFAULT`] unless set).
///
/// Clients can send any header: read priorities from one that a trusted proxy sets (and
/// strips from client requests), or from an extension your own middleware sets
/// ([`PriorityExtension`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriorityHeader {
    name: HeaderName,
    fallback: Priority,
}

impl PriorityHeader {
    /// Reads the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self {
            name,
            fallback: Priority::DEFAULT,
        }
    }

    /// The priority of requests without a readable header.
    #[must_use]
    pub fn fallback(mut self, priority: Priority) -> Self {
        self.fallback = priority;
        self
    }
}

impl<B> Prioritize<Request<B>> for PriorityHeader {
    fn priority(&self, request: &Request<B>) -> Priority {
        request
            .headers()
            .get(&self.name)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u8>().ok())
            .map_or(self.fallback, Priority::new)
    }
}

/// Reads a request's priority from a [`Priority`] in its extensions, put there by an earlier
/// layer (after authentication, by route); requests without one get the
/// [fallback](Self::fallback) ([`Priority::DEFAULT`] unless set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PriorityExtension {
    fallback: Priority,
}

impl PriorityExtension {
    /// Reads the `Priority` extension, with [`Priority::DEFAULT`] as the fallback.
    pub const fn new() -> Self {
        Self {
            fallback: Priority::DEFAULT,
        }
    }

    /// The priority of requests without the extension.
    #[must_use]
    pub const fn fallback(mut self, priority: Priority) -> Self {
        self.fallback = priority;
        self
    }
}

impl<B> Prioritize<Request<B>> for PriorityExtension {
    fn priority(&self, request: &Request<B>) -> Priority {
        request
            .extensions()
            .get::<Priority>()
            .copied()
            .unwrap_or(self.fallback)
    }
}

/// Puts a request in the partition its header names, such as `x-tenant-class: batch`; a
/// missing or unreadable header puts it in the rest (see [`partition`](crate::partition)).
///
/// As with [`PriorityHeader`], read a header that a trusted proxy sets, or one your own
/// middleware sets, not one any client may send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionHeader {
    name: HeaderName,
}

impl PartitionHeader {
    /// Reads the header `name`.
    pub fn new(name: HeaderName) -> Self {
        Self { name }
    }
}

impl<B> Partition<Request<B>> for PartitionHeader {
    fn partition<'r>(&self, request: &'r Request<B>) -> Option<&'r str> {
        request
            .headers()
            .get(&self.name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_extension_priorities_fall_back_when_missing_or_unreadable() {
        let header =
            PriorityHeader::new(HeaderName::from_static("x-priority")).fallback(Priority::new(7));
        let with = |value: &str| {
            Request::builder()
                .header("x-priority", value)
                .body(())
                .unwrap()
        };
        assert_eq!(header.priority(&with("1")), Priority::new(1));
        assert_eq!(header.priority(&with(" 200 ")), Priority::new(200));
        assert_eq!(header.priority(&with("300")), Priority::new(7));
        assert_eq!(header.priority(&with("high")), Priority::new(7));
        assert_eq!(header.priority(&Request::new(())), Priority::new(7));

        let extension = PriorityExtension::new();
        let mut request = Request::new(());
        assert_eq!(extension.priority(&request), Priority::DEFAULT);
        request.extensions_mut().insert(Priority::HIGHEST);
        assert_eq!(extension.priority(&request), Priority::HIGHEST);
    }

    #[test]
    fn partition_header_names_the_partition_or_nothing() {
        let header = PartitionHeader::new(HeaderName::from_static("x-class"));
        let request = Request::builder()
            .header("x-class", " batch ")
            .body(())
            .unwrap();
        assert_eq!(header.partition(&request), Some("batch"));
        assert_eq!(header.partition(&Request::new(())), None);
    }
}
