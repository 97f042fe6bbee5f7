//! The suite's rejections, and the "retry after" they carry.
//!
//! When a Palisade layer refuses a call it fails fast with one of four typed errors:
//!
//! | error | raised by | HTTP status |
//! |---|---|---|
//! | [`CircuitOpen`] | the circuit breaker, while open | 503 |
//! | [`RateLimited`] | the rate limiter | 429 |
//! | [`Overloaded`] | the concurrency pool, when it sheds load | 503 |
//! | [`ShuttingDown`] | the shutdown layer, while draining | 503 |
//!
//! They live here, not in the layer crates, so that any component can recognise another's
//! rejection inside a `BoxError` without depending on it: a retry layer must honour a
//! `RateLimited`'s retry-after and must never retry a `CircuitOpen`. [`Rejection::find`] walks
//! an error's source chain and finds them. The layer crates re-export their own.
//!
//! Each one implements [`RetryAfter`], the trait any error (yours included) can implement to
//! say when trying again makes sense.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use palisade_core::BoxError;
//! use palisade_core::reject::{RateLimited, Rejection, RetryAfter};
//!
//! // What a layer stack hands back: a boxed error.
//! let error: BoxError = RateLimited::new(Duration::from_millis(1500)).into();
//! assert_eq!(error.to_string(), "rate limited; retry in 1.5s");
//!
//! let rejection = Rejection::find(&*error).expect("a palisade rejection");
//! assert!(matches!(rejection, Rejection::RateLimited(_)));
//! assert_eq!(rejection.retry_after(), Some(Duration::from_millis(1500)));
//! ```

use std::error::Error;
use std::time::Duration;

/// An error that knows when trying again makes sense.
///
/// Every rejection in the suite implements it; implement it for your own errors so the retry
/// layer and the HTTP adapters can read it too.
pub trait RetryAfter {
    /// How long to wait before trying again; `None` when the error gives no hint.
    fn retry_after(&self) -> Option<Duration>;
}

impl<T: RetryAfter + ?Sized> RetryAfter for &T {
    fn retry_after(&self) -> Option<Duration> {
        (**self).retry_after()
    }
}

/// The circuit breaker is open: the call was not made.
///
/// Never retried by the retry layer: retrying an open circuit only adds load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open; retry in {retry_after:?}")]
pub struct CircuitOpen {
    retry_after: Duration,
}

impl CircuitOpen {
    /// A rejection by a breaker that will admit probe calls in `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }
}

impl RetryAfter for CircuitOpen {
    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}

/// The rate limit is spent: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited; retry in {retry_after:?}")]
pub struct RateLimited {
    retry_after: Duration,
}

impl RateLimited {
    /// A rejection by a limiter that will have capacity again in `retry_after`.
    pub const fn new(retry_after: Duration) -> Self {
        Self { retry_after }
    }
}

impl RetryAfter for RateLimited {
    fn retry_after(&self) -> Option<Duration> {
        Some(self.retry_after)
    }
}

/// The service is at capacity and shed the call: the call was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("overloaded{}", RetryIn(*.retry_after))]
pub struct Overloaded {
    retry_after: Option<Duration>,
}

impl Overloaded {
    /// A rejection with no hint of when capacity frees up.
    pub const fn new() -> Self {
        Self { retry_after: None }
    }

    /// A rejection that suggests trying again in `retry_after`.
    #[must_use]
    pub const fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

impl Default for Overloaded {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryAfter for Overloaded {
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// The service is draining for shutdown and takes no new calls: the call was not made.
///
/// Another instance can take the call at once, so by default it carries no retry-after.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutting down{}", RetryIn(*.retry_after))]
pub struct ShuttingDown {
    retry_after: Option<Duration>,
}

impl ShuttingDown {
    /// A rejection with no retry-after.
    pub const fn new() -> Self {
        Self { retry_after: None }
    }

    /// A rejection that suggests trying again in `retry_after` (after a restart, say).
    #[must_use]
    pub const fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }
}

impl Default for ShuttingDown {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryAfter for ShuttingDown {
    fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// Formats `"; retry in {d:?}"` when there is a hint, nothing otherwise.
struct RetryIn(Option<Duration>);

impl std::fmt::Display for RetryIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(d) => write!(f, "; retry in {d:?}"),
            None => Ok(()),
        }
    }
}

/// A Palisade rejection found in an error; see [`Rejection::find`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection<'a> {
    /// A [`CircuitOpen`].
    CircuitOpen(&'a CircuitOpen),
    /// A [`RateLimited`].
    RateLimited(&'a RateLimited),
    /// An [`Overloaded`].
    Overloaded(&'a Overloaded),
    /// A [`ShuttingDown`].
    ShuttingDown(&'a ShuttingDown),
}

impl<'a> Rejection<'a> {
    /// Finds the first Palisade rejection in `error` or its [`source`](Error::source) chain.
    ///
    /// Pass a `BoxError` as `&*error`.
    pub fn find(error: &'a (dyn Error + 'static)) -> Option<Self> {
        let mut current = Some(error);
        while let Some(e) = current {
            if let Some(r) = e.downcast_ref::<CircuitOpen>() {
                return Some(Rejection::CircuitOpen(r));
            }
            if let Some(r) = e.downcast_ref::<RateLimited>() {
                return Some(Rejection::RateLimited(r));
            }
            if let Some(r) = e.downcast_ref::<Overloaded>() {
                return Some(Rejection::Overloaded(r));
            }
            if let Some(r) = e.downcast_ref::<ShuttingDown>() {
                return Some(Rejection::ShuttingDown(r));
            }
            current = e.source();
        }
        None
    }

    /// The rejection as an error.
    pub fn as_error(&self) -> &'a (dyn Error + Send + Sync + 'static) {
        match *self {
            Rejection::CircuitOpen(r) => r,
            Rejection::RateLimited(r) => r,
            Rejection::Overloaded(r) => r,
            Rejection::ShuttingDown(r) => r,
        }
    }
}

impl RetryAfter for Rejection<'_> {
    fn retry_after(&self) -> Option<Duration> {
        match self {
            Rejection::CircuitOpen(r) => r.retry_after(),
            Rejection::RateLimited(r) => r.retry_after(),
            Rejection::Overloaded(r) => r.retry_after(),
            Rejection::ShuttingDown(r) => r.retry_after(),
        }
    }
}

#[cfg(feature = "http")]
mod http_response {
    use super::{Rejection, RetryAfter};
    use http::{HeaderValue, Response, StatusCode, header};
    use std::time::Duration;

    impl Rejection<'_> {
        /// The status a server answers this rejection with: `429 Too Many Requests` for
        /// [`RateLimited`](super::RateLimited), `503 Service Unavailable` for the others
        /// (feature `http`).
        pub fn status(&self) -> StatusCode {
            match self {
                Rejection::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            }
        }

        /// A response for this rejection: [`Rejection::status`], a `Retry-After` header when
        /// the rejection carries a hint, and an empty body (feature `http`).
        pub fn to_response<B: Default>(&self) -> Response<B> {
            rejection_response(self.status(), self.retry_after())
        }
    }

    /// A response with `status`, an empty body and, if given, a `Retry-After` header
    /// (feature `http`).
    ///
    /// `Retry-After` takes whole seconds, so the delay is rounded up: a client that waits
    /// what the header says never comes back early.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::StatusCode;
    /// use palisade_core::reject::rejection_response;
    ///
    /// let response = rejection_response::<()>(StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_millis(1200)));
    /// assert_eq!(response.status(), 429);
    /// assert_eq!(response.headers()["retry-after"], "2");
    /// ```
    pub fn rejection_response<B: Default>(
        status: StatusCode,
        retry_after: Option<Duration>,
    ) -> Response<B> {
        let mut response = Response::new(B::default());
        *response.status_mut() = status;
        if let Some(delay) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, retry_after_value(delay));
        }
        response
    }

    /// `delay` as a `Retry-After` value in whole seconds, rounded up (feature `http`).
    pub fn retry_after_value(delay: Duration) -> HeaderValue {
        let secs = delay
            .as_secs()
            .saturating_add(u64::from(delay.subsec_nanos() > 0));
        HeaderValue::from(secs)
    }
}

#[cfg(feature = "http")]
pub use self::http_response::{rejection_response, retry_after_value};
