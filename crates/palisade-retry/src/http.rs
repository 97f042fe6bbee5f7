//! Retrying HTTP requests (feature `http`).
//!
//! [`RetryLayer::http`] builds a layer for `http::Request<B>` → `http::Response<_>` services
//! that does what HTTP clients should:
//!
//! - **What is retried** ([`status_classify`]): `5xx` responses except `501 Not
//!   Implemented`, `429 Too Many Requests`, `408 Request Timeout`, and every error
//!   (connection errors, timeouts).
//! - **Which requests** ([`HttpReplay`]): only idempotent methods (`GET`, `HEAD`, `OPTIONS`,
//!   `PUT`, `DELETE`, `TRACE`) and requests carrying an `Idempotency-Key` header, unless the
//!   caller opts in with [`HttpReplay::retry_non_idempotent`]. Others are sent once.
//! - **Bodies**: a request is sent again by cloning it, so the body type must be `Clone`
//!   (`String`, `Bytes`, `http_body_util::Full<Bytes>`, ...), or a [`ReplayBody`]. A body
//!   larger than [`HttpReplay::max_body`] (64 KiB by default), or whose size is not known up
//!   front (its [`size_hint`](http_body::Body::size_hint) has no upper bound), is **sent once
//!   and not retried**: the request is not kept in memory for a retry. For streaming bodies
//!   (hyper's `Incoming`, a `StreamBody`), put a [`BufferBodyLayer`] in front of the retry
//!   layer: it reads bodies up to a limit into a [`ReplayBody`], which is sent again; a
//!   longer body streams through once, not retried (see [`BufferBodyLayer`]).
//! - **Server hints**: `Retry-After` on `429` and `503` responses (delta-seconds, or an
//!   HTTP-date in the IMF-fixdate form, read against the system clock; the obsolete date
//!   forms are ignored and the backoff applies), and gRPC's `grpc-retry-pushback-ms` on any
//!   failed response, replace the backoff's delay; a negative or malformed pushback means
//!   "do not retry". Pair them with a
//!   [deadline](crate::RetryConfigBuilder::deadline) to bound how long a server may make
//!   you wait.
//! - **Attempts**: the response handed back carries an [`Attempts`] extension.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response, StatusCode};
//! use palisade_core::Backoff;
//! use palisade_retry::{Attempts, RetryConfig, RetryLayer};
//! use tower::{Layer, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), palisade_core::BoxError> {
//! let config = RetryConfig::builder()
//!     .backoff(Backoff::constant(Duration::from_millis(1)))
//!     .build()?;
//! let mut first = true;
//! let upstream = tower::service_fn(move |_request: Request<String>| {
//!     let status = if std::mem::take(&mut first) { StatusCode::BAD_GATEWAY } else { StatusCode::OK };
//!     async move { Response::builder().status(status).body(String::new()) }
//! });
//! let service = RetryLayer::http(config).layer(upstream);
//!
//! let response = service.oneshot(Request::get("http://inventory/items/7").body(String::new())?).await?;
//! assert_eq!(response.status(), StatusCode::OK);
//! assert_eq!(response.extensions().get::<Attempts>(), Some(&Attempts(2)));
//! # Ok(())
//! # }
//! ```

use std::time::Duration;

use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use palisade_core::classify::{Outcome, StatusClassify};
use palisade_core::reject::parse_retry_after;

pub use crate::body::{BodyReadFailed, BufferBody, BufferBodyLayer, BufferFuture, ReplayBody};
use crate::config::RetryConfig;
use crate::layer::RetryLayer;
use crate::replay::{Attempts, Hint, Replay};

/// A [`RetryLayer`] for HTTP services: [`status_classify`] decides what is retried,
/// [`HttpReplay`] which requests and how long to wait.
pub type HttpRetryLayer = RetryLayer<StatusClassify, HttpReplay>;

/// The default largest body kept to send a request again: 64 KiB.
pub const DEFAULT_MAX_BODY: u64 = 64 * 1024;

/// gRPC's retry pushback header.
const GRPC_RETRY_PUSHBACK_MS: &str = "grpc-retry-pushback-ms";
const IDEMPOTENCY_KEY: &str = "idempotency-key";

impl RetryLayer<StatusClassify, HttpReplay> {
    /// A layer for HTTP services with [`status_classify`] and [`HttpReplay::default()`]
    /// (feature `http`).
    pub fn http(config: RetryConfig) -> Self {
        Self::with_policy(config, status_classify(), HttpReplay::default())
    }
}

/// What an HTTP client should retry: `5xx` except `501`, `429`, `408`, and every error
/// (feature `http`).
///
/// ```
/// use http::StatusCode;
/// use palisade_core::Outcome;
/// use palisade_retry::http::status_classify;
///
/// let classify = status_classify();
/// assert_eq!(classify.outcome(StatusCode::SERVICE_UNAVAILABLE), Outcome::Failure);
/// assert_eq!(classify.outcome(StatusCode::REQUEST_TIMEOUT), Outcome::Failure);
/// assert_eq!(classify.outcome(StatusCode::NOT_IMPLEMENTED), Outcome::Ignored);
/// assert_eq!(classify.outcome(StatusCode::NOT_FOUND), Outcome::Success);
/// ```
pub fn status_classify() -> StatusClassify {
    StatusClassify::default()
        .with(StatusCode::NOT_IMPLEMENTED, Outcome::Ignored)
        .with(StatusCode::REQUEST_TIMEOUT, Outcome::Failure)
}

/// Sends HTTP requests again, and reads `Retry-After` and `grpc-retry-pushback-ms`
/// (feature `http`). See the [module docs](self) for the rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpReplay {
    non_idempotent: bool,
    max_body: u64,
}

impl Default for HttpReplay {
    /// Idempotent methods only, bodies up to 64 KiB.
    fn default() -> Self {
        Self {
            non_idempotent: false,
            max_body: DEFAULT_MAX_BODY,
        }
    }
}

impl HttpReplay {
    /// Retries every method, `POST` and `PATCH` included. Only for upstreams where sending a
    /// request twice is harmless.
    #[must_use]
    pub const fn retry_non_idempotent(mut self) -> Self {
        self.non_idempotent = true;
        self
    }

    /// Keeps bodies up to `bytes` long to send again (default 64 KiB); larger ones, and
    /// bodies of unknown size, are sent once and not retried.
    #[must_use]
    pub const fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = bytes;
        self
    }

    /// Whether a request with `method` and `headers` may be sent again.
    pub fn is_replayable(&self, method: &Method, headers: &HeaderMap) -> bool {
        self.non_idempotent || is_idempotent(method) || headers.contains_key(IDEMPOTENCY_KEY)
    }
}

/// `GET`, `HEAD`, `OPTIONS`, `PUT`, `DELETE` and `TRACE` (RFC 9110, section 9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl<B, ResBody> Replay<Request<B>, Response<ResBody>> for HttpReplay
where
    B: http_body::Body + Clone,
{
    fn replay(&self, request: &Request<B>) -> Option<Request<B>> {
        if !self.is_replayable(request.method(), request.headers()) {
            return None;
        }
        let size = request.body().size_hint().upper()?;
        if !self.fits(size) {
            return None;
        }
        Some(request.clone())
    }

    fn hint(&self, response: &Response<ResBody>) -> Hint {
        hint(response)
    }

    fn record_attempts(&self, response: &mut Response<ResBody>, attempts: u32) {
        response.extensions_mut().insert(Attempts(attempts));
    }
}

/// Requests whose body [`BufferBody`] read into memory are sent again with a copy of it;
/// those it streams through are sent once.
impl<B, ResBody> Replay<Request<ReplayBody<B>>, Response<ResBody>> for HttpReplay {
    fn replay(&self, request: &Request<ReplayBody<B>>) -> Option<Request<ReplayBody<B>>> {
        if !self.is_replayable(request.method(), request.headers()) {
            return None;
        }
        if !self.fits(request.body().buffered_len()?) {
            return None;
        }
        let mut copy = Request::new(request.body().try_clone()?);
        *copy.method_mut() = request.method().clone();
        *copy.uri_mut() = request.uri().clone();
        *copy.version_mut() = request.version();
        *copy.headers_mut() = request.headers().clone();
        *copy.extensions_mut() = request.extensions().clone();
        Some(copy)
    }

    fn hint(&self, response: &Response<ResBody>) -> Hint {
        hint(response)
    }

    fn record_attempts(&self, response: &mut Response<ResBody>, attempts: u32) {
        response.extensions_mut().insert(Attempts(attempts));
    }
}

impl HttpReplay {
    /// Whether a body of `size` bytes may be kept for a retry.
    fn fits(&self, size: u64) -> bool {
        if size > self.max_body {
            tracing::debug!(
                size,
                max = self.max_body,
                "body too large to retry; sent once"
            );
            return false;
        }
        true
    }
}

/// What a failed response says about retrying: `grpc-retry-pushback-ms`, or `Retry-After`
/// on a 429 or 503.
fn hint<ResBody>(response: &Response<ResBody>) -> Hint {
    let headers = response.headers();
    if let Some(value) = headers.get(GRPC_RETRY_PUSHBACK_MS) {
        return match value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<i64>().ok())
        {
            Some(ms) if ms >= 0 => Hint::After(Duration::from_millis(ms.unsigned_abs())),
            _ => Hint::DoNotRetry,
        };
    }
    let status = response.status();
    if (status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
        && let Some(after) = headers
            .get(header::RETRY_AFTER)
            .and_then(|value| parse_retry_after(value, std::time::SystemTime::now()))
    {
        return Hint::After(after);
    }
    Hint::Backoff
}
