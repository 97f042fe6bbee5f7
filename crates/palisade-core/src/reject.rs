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
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

    /// The delay a `Retry-After` value asks for, seen at `now` (feature `http`): either
    /// form of RFC 9110, section 10.2.3: delta-seconds, or an IMF-fixdate
    /// (`Sun, 06 Nov 1994 08:49:37 GMT`), whose distance from `now` is the delay (a date in
    /// the past means no delay). `None` for anything else, the obsolete RFC 850 and asctime
    /// dates included. A delay beyond `u64` seconds saturates.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime, UNIX_EPOCH};
    /// use http::HeaderValue;
    /// use palisade_core::reject::parse_retry_after;
    ///
    /// let now = UNIX_EPOCH + Duration::from_secs(784_111_770);
    /// let seconds = HeaderValue::from_static("120");
    /// assert_eq!(parse_retry_after(&seconds, now), Some(Duration::from_secs(120)));
    /// let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
    /// assert_eq!(parse_retry_after(&date, now), Some(Duration::from_secs(7)));
    /// assert_eq!(parse_retry_after(&HeaderValue::from_static("soon"), now), None);
    /// ```
    pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
        let value = value.to_str().ok()?.trim();
        if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
        }
        let at = http_date(value)?;
        Some(at.duration_since(now).unwrap_or(Duration::ZERO))
    }

    /// Parses an IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`.
    fn http_date(value: &str) -> Option<SystemTime> {
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let mut parts = value.split_ascii_whitespace();
        let weekday = parts.next()?;
        let (day, month, year, time, zone) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        if parts.next().is_some() || zone != "GMT" || !weekday.ends_with(',') || weekday.len() != 4
        {
            return None;
        }
        let month = i64::try_from(MONTHS.iter().position(|m| *m == month)?).ok()? + 1;
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
        if hms.next().is_some()
            || !(1..=31).contains(&day)
            || hour > 23
            || minute > 59
            || second > 60
        {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let secs = u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()?;
        UNIX_EPOCH.checked_add(Duration::from_secs(secs))
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
        fn retry_after_reads_seconds_and_dates_and_a_past_date_means_now() {
            let now = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
            let parse = |s| parse_retry_after(&HeaderValue::from_static(s), now);
            assert_eq!(parse(" 30 "), Some(Duration::from_secs(30)));
            assert_eq!(
                parse("99999999999999999999999"),
                Some(Duration::from_secs(u64::MAX))
            );
            assert_eq!(parse("Fri, 31 Dec 1999 23:59:59 GMT"), Some(Duration::ZERO));
            assert_eq!(
                parse("Sun, 09 Sep 2001 01:47:00 GMT"),
                Some(Duration::from_secs(20))
            );
            assert_eq!(parse("-5"), None);
            assert_eq!(parse("1.5"), None);
            assert_eq!(parse(""), None);
        }
    }
}

#[cfg(feature = "http")]
pub use self::http_response::{parse_retry_after, rejection_response, retry_after_value};
