//! Buffering streaming request bodies so that the retry layer can send them again
//! (feature `http`).
//!
//! See [`BufferBodyLayer`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, Request};
use http_body::{Body, Frame, SizeHint};
use palisade_core::BoxError;
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::http::DEFAULT_MAX_BODY;

/// Reading a request body to buffer it failed; the request was not sent.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body to buffer it for retries failed")]
pub struct BodyReadFailed {
    #[source]
    source: BoxError,
}

/// Wraps services in a [`BufferBody`], which buffers request bodies up to a limit so that a
/// retry layer behind it can send them again.
///
/// A request whose body is a stream (hyper's `Incoming`, a `StreamBody`, a boxed body) is not
/// `Clone`, so [`HttpReplay`](crate::http::HttpReplay) cannot keep a copy of it. Put a
/// [`BufferBodyLayer`] in front of the retry layer: it reads the body before the first
/// attempt, up to a limit (64 KiB by default), and hands the retry layer a
/// [`ReplayBody`]:
///
/// - a body that ends within the limit is kept in memory (trailers included) and sent again
///   on every retry;
/// - a body that goes past the limit is **sent once and not retried**: what was read is sent
///   first, then the rest of the stream, so nothing is lost and nothing is held in memory
///   beyond the limit. A `debug` event says so.
///
/// A body that fails while it is being read fails the call with [`BodyReadFailed`]; the
/// inner service is not called.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use bytes::Bytes;
/// use http::{Request, Response, StatusCode};
/// use http_body_util::{BodyExt, StreamBody};
/// use palisade_core::Backoff;
/// use palisade_retry::http::{BufferBodyLayer, ReplayBody};
/// use palisade_retry::{Attempts, RetryConfig, RetryLayer};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_core::BoxError> {
/// let config = RetryConfig::builder().backoff(Backoff::constant(Duration::from_millis(1))).build()?;
/// let mut first = true;
/// let client = ServiceBuilder::new()
///     .layer(BufferBodyLayer::default())
///     .layer(RetryLayer::http(config))
///     .service_fn(move |request: Request<ReplayBody<_>>| {
///         let status = if std::mem::take(&mut first) { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
///         async move {
///             // Every attempt receives the whole body.
///             let body = request.into_body().collect().await?.to_bytes();
///             assert_eq!(body, "hello, world");
///             Ok::<_, palisade_core::BoxError>(Response::builder().status(status).body(())?)
///         }
///     });
///
/// // A streaming body: not `Clone`.
/// let chunks = ["hello", ", ", "world"].map(|s| Ok::<_, std::io::Error>(http_body::Frame::data(Bytes::from(s))));
/// let body = StreamBody::new(futures_util::stream::iter(chunks));
/// let response = client.oneshot(Request::put("http://store/items/7").body(body)?).await?;
/// assert_eq!(response.status(), StatusCode::OK);
/// assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct BufferBodyLayer {
    max: u64,
}

impl BufferBodyLayer {
    /// Buffers bodies up to `max_bytes`; longer ones are streamed through and sent once.
    pub const fn new(max_bytes: u64) -> Self {
        Self { max: max_bytes }
    }
}

impl Default for BufferBodyLayer {
    /// Buffers bodies up to 64 KiB ([`DEFAULT_MAX_BODY`]).
    fn default() -> Self {
        Self::new(DEFAULT_MAX_BODY)
    }
}

impl<S> Layer<S> for BufferBodyLayer {
    type Service = BufferBody<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BufferBody {
            inner,
            max: self.max,
        }
    }
}

/// Reads each request's body (up to a limit) before calling the inner service with a
/// [`ReplayBody`]; built by [`BufferBodyLayer`].
///
/// Readiness: `poll_ready` is the inner service's; `call` moves the service it made ready
/// into the response future (leaving a clone, which must be made ready again) and calls it
/// once the body is read.
#[derive(Debug, Clone)]
pub struct BufferBody<S> {
    inner: S,
    max: u64,
}

impl<S, B> Service<Request<B>> for BufferBody<S>
where
    S: Service<Request<ReplayBody<B>>> + Clone,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BufferFuture<S, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let fresh = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, fresh);
        let (parts, body) = request.into_parts();
        // A body that cannot fit is not read at all: it streams through, sent once.
        let too_long = body.size_hint().lower() > self.max;
        let state = Reading {
            parts,
            body,
            read: BytesMut::new(),
            trailers: None,
            service,
            max: self.max,
        };
        let ended = state.body.is_end_stream();
        BufferFuture {
            state: if too_long || ended {
                State::Calling {
                    future: state.call(!ended),
                }
            } else {
                State::Reading {
                    reading: Some(state),
                }
            },
        }
    }
}

/// What is read of a request so far.
struct Reading<S, B> {
    parts: http::request::Parts,
    body: B,
    read: BytesMut,
    trailers: Option<HeaderMap>,
    service: S,
    max: u64,
}

impl<S, B> Reading<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    /// Calls the service with what was read, and the rest of the stream if `streaming`.
    fn call(self, streaming: bool) -> S::Future {
        let Self {
            parts,
            body,
            read,
            trailers,
            mut service,
            max,
        } = self;
        let read = read.freeze();
        let kind = if streaming {
            tracing::debug!(
                read = read.len(),
                max,
                "request body longer than the buffer; sent once, not retried"
            );
            Kind::Streaming {
                read: (!read.is_empty()).then_some(read),
                rest: Some(body),
            }
        } else {
            Kind::Buffered {
                data: (!read.is_empty()).then_some(read),
                trailers,
            }
        };
        service.call(Request::from_parts(parts, ReplayBody { kind }))
    }
}

pin_project! {
    /// The response future of [`BufferBody`]: reads the body, then runs the inner call.
    pub struct BufferFuture<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, B>
    where
        S: Service<Request<ReplayBody<B>>>,
    {
        Reading { reading: Option<Reading<S, B>> },
        Calling { #[pin] future: S::Future },
    }
}

impl<S, B> std::fmt::Debug for BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferFuture").finish_non_exhaustive()
    }
}

impl<S, B> Future for BufferFuture<S, B>
where
    S: Service<Request<ReplayBody<B>>>,
    S::Error: Into<BoxError>,
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            let future = match this.state.as_mut().project() {
                StateProj::Calling { future } => {
                    return future.poll(cx).map_err(Into::into);
                }
                StateProj::Reading { reading } => {
                    let state = reading.as_mut().expect("polled after completion");
                    let streaming = match ready!(poll_read(state, cx)) {
                        Ok(streaming) => streaming,
                        Err(source) => {
                            *reading = None;
                            return Poll::Ready(Err(BodyReadFailed { source }.into()));
                        }
                    };
                    let state = reading.take().expect("checked above");
                    state.call(streaming)
                }
            };
            this.state.set(State::Calling { future });
        }
    }
}

/// Reads frames until the body ends (`Ok(false)`) or goes past the limit (`Ok(true)`).
fn poll_read<S, B>(state: &mut Reading<S, B>, cx: &mut Context<'_>) -> Poll<Result<bool, BoxError>>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    loop {
        let Some(frame) = ready!(Pin::new(&mut state.body).poll_frame(cx)) else {
            return Poll::Ready(Ok(false));
        };
        let frame = frame.map_err(Into::into)?;
        match frame.into_data() {
            Ok(mut data) => {
                let len = data.remaining();
                state.read.reserve(len);
                while data.has_remaining() {
                    let chunk = data.chunk();
                    state.read.extend_from_slice(chunk);
                    let n = chunk.len();
                    data.advance(n);
                }
                if state.read.len() as u64 > state.max {
                    return Poll::Ready(Ok(true));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    match &mut state.trailers {
                        Some(kept) => kept.extend(trailers),
                        None => state.trailers = Some(trailers),
                    }
                }
            }
        }
        if state.body.is_end_stream() {
            return Poll::Ready(Ok(false));
        }
    }
}

/// A request body as [`BufferBody`] hands it on: either held in memory (and so sent again
/// on a retry) or streamed through once.
pub struct ReplayBody<B> {
    kind: Kind<B>,
}

enum Kind<B> {
    /// The whole body, in memory.
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// What was read before the limit, then the rest of the stream.
    Streaming {
        read: Option<Bytes>,
        rest: Option<B>,
    },
}

impl<B> ReplayBody<B> {
    /// Whether the whole body is in memory, so that the request can be sent again.
    pub fn is_buffered(&self) -> bool {
        matches!(self.kind, Kind::Buffered { .. })
    }

    /// A copy of a buffered body (cheap: the bytes are shared); `None` for a body that
    /// streams through.
    pub fn try_clone(&self) -> Option<Self> {
        match &self.kind {
            Kind::Buffered { data, trailers } => Some(Self {
                kind: Kind::Buffered {
                    data: data.clone(),
                    trailers: trailers.clone(),
                },
            }),
            Kind::Streaming { .. } => None,
        }
    }

    /// The length of a buffered body; `None` for a body that streams through.
    pub(crate) fn buffered_len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Buffered { data, .. } => Some(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Streaming { .. } => None,
        }
    }
}

impl<B> std::fmt::Debug for ReplayBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Buffered { data, trailers } => f
                .debug_struct("ReplayBody::Buffered")
                .field("len", &data.as_ref().map_or(0, Bytes::len))
                .field("trailers", &trailers.is_some())
                .finish(),
            Kind::Streaming { read, .. } => f
                .debug_struct("ReplayBody::Streaming")
                .field("read", &read.as_ref().map_or(0, Bytes::len))
                .finish_non_exhaustive(),
        }
    }
}

impl<B> Body for ReplayBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Buffered { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            Kind::Streaming { read, rest } => {
                if let Some(read) = read.take() {
                    return Poll::Ready(Some(Ok(Frame::data(read))));
                }
                let Some(body) = rest else {
                    return Poll::Ready(None);
                };
                let frame = ready!(Pin::new(&mut *body).poll_frame(cx));
                if frame.is_none() {
                    *rest = None;
                }
                Poll::Ready(frame.map(|frame| {
                    frame
                        .map(|frame| {
                            frame.map_data(|mut data| data.copy_to_bytes(data.remaining()))
                        })
                        .map_err(Into::into)
                }))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            Kind::Streaming { read, rest } => {
                read.is_none() && rest.as_ref().is_none_or(Body::is_end_stream)
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Streaming { read, rest } => {
                let read = read.as_ref().map_or(0, |d| d.len() as u64);
                let rest = rest
                    .as_ref()
                    .map_or_else(|| SizeHint::with_exact(0), B::size_hint);
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}
