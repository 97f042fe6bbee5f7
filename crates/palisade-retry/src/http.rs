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
        && let Some(after) = headers.get(header::RETRY_AFTER).and_then(retry_after)
    {
        return Hint::After(after);
    }
    Hint::Backoff
}

/// A `Retry-After` value: delta-seconds, or an IMF-fixdate (RFC 9110, section 5.6.7).
fn retry_after(value: &http::HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // A delay beyond u64 seconds is "never"; saturate.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = http_date(value)?;
    // A date in the past means "now".
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(value: &str) -> Option<std::time::SystemTime> {
    let mut parts = value.split_ascii_whitespace();
    let weekday = parts.next()?;
    let (day, month, year, time, zone) = (
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
        parts.next()?,
    );
    if parts.next().is_some() || zone != "GMT" || !weekday.ends_with(',') || weekday.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as i64 + 1;
    let number = |s: &str, len: usize| -> Option<i64> {
        (s.len() == len && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
    };
    let (day, year) = (number(day, 2)?, number(year, 4)?);
    let mut hms = time.split(':');
    let (hour, minute, second) = (
        number(hms.next()?, 2)?,
        number(hms.next()?, 2)?,
        number(hms.next()?, 2)?,
    );
    if hms.next().is_some() || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3_600 + minute * 60 + second;
    let secs = u64::try_from(secs).ok()?;
    std::time::UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn http_dates_are_read_as_imf_fixdates() {
        let at = |s| http_date(s).map(|t| t.duration_since(UNIX_EPOCH).unwrap().as_secs());
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        assert_eq!(at("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(at("Tue, 29 Feb 2000 12:00:00 GMT"), Some(951_825_600));
        assert_eq!(at("Sun, 06 Nov 1994 08:49:37 UTC"), None);
        assert_eq!(
            at("Sunday, 06-Nov-94 08:49:37 GMT"),
            None,
            "RFC 850: obsolete"
        );
        assert_eq!(at("Sun Nov  6 08:49:37 1994"), None, "asctime: obsolete");
        assert_eq!(at("Sun, 06 Nov 1994 24:49:37 GMT"), None);
    }

    #[test]
    fn a_retry_after_date_in_the_past_means_now() {
        let value = http::HeaderValue::from_static("Fri, 31 Dec 1999 23:59:59 GMT");
        assert_eq!(retry_after(&value), Some(Duration::ZERO));
    }
}
