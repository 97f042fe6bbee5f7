//! Answering refused requests with `429 Too Many Requests` instead of an error (feature
//! `http`).
//!
//! A [`RateLimit`](crate::RateLimit) fails refused requests with a boxed
//! [`RateLimited`](crate::RateLimited), which an axum `Router` (whose services must be
//! `Infallible`) can only take behind a `HandleErrorLayer`. With
//! [`RateLimitLayer::respond_with`](crate::RateLimitLayer::respond_with)`(`[`TooManyRequests`]`)`
//! the service answers them itself, and keeps the inner service's error type:
//!
//! - `429 Too Many Requests` with an empty body;
//! - `Retry-After`: the limiter's retry-after in whole seconds, rounded up (a client that
//!   waits that long does not come back early);
//! - `RateLimit-Policy: "<policy>";q=<limit>;w=<window>` and
//!   `RateLimit: "<policy>";r=<remaining>;t=<reset>`, the fields of the IETF draft
//!   [draft-ietf-httpapi-ratelimit-headers-10](https://datatracker.ietf.org/doc/draft-ietf-httpapi-ratelimit-headers/)
//!   (structured-field lists, the `q`/`w` policy parameters and the `r`/`t` limit
//!   parameters; unchanged since draft -08);
//! - on admitted responses too, with [`TooManyRequests::on_admitted`].
//!
//! The numbers come from the check's [`Snapshot`]: `q` and `w` from its
//! [limit](Snapshot::limit) and [window](Snapshot::window) (`w` in whole seconds, rounded up;
//! a window under a second is reported as its rate per second, `w=1`), `r` from
//! [remaining](Snapshot::remaining), `t` from [reset](Snapshot::reset) (whole seconds,
//! rounded up). A request whose cost exceeds the limiter's capacity (it can never be
//! admitted) gets a bare `429`: no `Retry-After`, since waiting would not help. A keyed
//! limiter whose key map is full and refuses new keys
//! ([`AtCapacity::Refuse`](crate::AtCapacity::Refuse)) answers a bare `503 Service
//! Unavailable`: the server shed the request, the client did nothing wrong.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use std::num::NonZeroU32;
//! use http::{Request, Response, StatusCode};
//! use palisade_ratelimit::{Quota, RateLimitLayer, TooManyRequests};
//! use tower::{ServiceBuilder, ServiceExt};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let limit = RateLimitLayer::new(Quota::per_minute(NonZeroU32::new(1).unwrap()))
//!     .respond_with(TooManyRequests::new());
//! let service = ServiceBuilder::new()
//!     .layer(limit)
//!     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
//!
//! let ok = service.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(ok.status(), StatusCode::OK);
//!
//! let refused = service.clone().oneshot(Request::new(())).await.unwrap();
//! assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
//! assert_eq!(refused.headers()["retry-after"], "60");
//! assert_eq!(refused.headers()["ratelimit-policy"], "\"default\";q=1;w=60");
//! assert_eq!(refused.headers()["ratelimit"], "\"default\";r=0;t=60");
//! # }
//! ```

use ::http::header::HeaderName;
use ::http::{HeaderMap, HeaderValue, Response, StatusCode};
use palisade_core::reject::rejection_response;

use crate::decision::{Refusal, Snapshot};
use crate::respond::Respond;

/// The `RateLimit-Policy` header name.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// The `RateLimit` header name.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// Answers refused requests with `429 Too Many Requests`, `Retry-After` and the IETF
/// `RateLimit` / `RateLimit-Policy` headers (feature `http`); see the [module docs](self).
///
/// The inner service's errors pass through unchanged: an `Infallible` service stays
/// `Infallible`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRequests {
    policy: &'static str,
    on_admitted: bool,
}

/// A policy name that cannot be sent in a header: it must be non-empty printable ASCII.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a rate limit policy name must be non-empty printable ASCII, got {0:?}")]
pub struct InvalidPolicyName(pub &'static str);

impl TooManyRequests {
    /// `429` responses for refused requests, headers on them only, policy `"default"`.
    pub const fn new() -> Self {
        Self {
            policy: "default",
            on_admitted: false,
        }
    }

    /// Names the policy in the headers (default `"default"`).
    ///
    /// # Errors
    ///
    /// [`InvalidPolicyName`] unless `name` is non-empty printable ASCII.
    pub fn policy(mut self, name: &'static str) -> Result<Self, InvalidPolicyName> {
        if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(InvalidPolicyName(name));
        }
        self.policy = name;
        Ok(self)
    }

    /// Adds `RateLimit` and `RateLimit-Policy` to admitted responses as well (formatting
    /// them costs two small allocations per response).
    #[must_use]
    pub const fn on_admitted(mut self) -> Self {
        self.on_admitted = true;
        self
    }

    /// Inserts the `RateLimit-Policy` and `RateLimit` headers for `snapshot`.
    pub fn insert_headers(&self, snapshot: &Snapshot, headers: &mut HeaderMap) {
        if let Ok(value) = HeaderValue::try_from(self.policy_value(snapshot)) {
            headers.insert(RATELIMIT_POLICY, value);
        }
        let limit = format!(
            "{};r={};t={}",
            Quoted(self.policy),
            snapshot.remaining(),
            ceil_secs(snapshot.reset())
        );
        if let Ok(value) = HeaderValue::try_from(limit) {
            headers.insert(RATELIMIT, value);
        }
    }

    fn policy_value(&self, snapshot: &Snapshot) -> String {
        let window = snapshot.window();
        let (q, w) = if window.as_secs() >= 1 {
            (u64::from(snapshot.limit()), ceil_secs(window))
        } else {
            // Under a second: the rate per second.
            let per_second =
                u128::from(snapshot.limit()) * 1_000_000_000 / window.as_nanos().max(1);
            (u64::try_from(per_second).unwrap_or(u64::MAX), 1)
        };
        format!("{};q={q};w={w}", Quoted(self.policy))
    }
}

impl Default for TooManyRequests {
    fn default() -> Self {
        Self::new()
    }
}

fn ceil_secs(duration: std::time::Duration) -> u64 {
    duration
        .as_secs()
        .saturating_add(u64::from(duration.subsec_nanos() > 0))
}

/// A structured-field string: quoted, with `"` and `\` escaped.
struct Quoted(&'static str);

impl std::fmt::Display for Quoted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        f.write_char('"')?;
        for c in self.0.chars() {
            if c == '"' || c == '\\' {
                f.write_char('\\')?;
            }
            f.write_char(c)?;
        }
        f.write_char('"')
    }
}

impl<Req, B: Default, E> Respond<Req, Response<B>, E> for TooManyRequests {
    type Error = E;

    fn refused(&self, refusal: Refusal, _request: Req) -> Result<Response<B>, E> {
        let status = match refusal {
            Refusal::KeysExhausted(_) | Refusal::StoreUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            _ => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response = rejection_response(status, refusal.retry_after());
        match refusal {
            Refusal::Limited(limited) => {
                self.insert_headers(limited.snapshot(), response.headers_mut())
            }
            Refusal::InsufficientCapacity(_)
            | Refusal::KeysExhausted(_)
            | Refusal::StoreUnavailable(_) => {}
        }
        Ok(response)
    }

    #[inline]
    fn error(&self, error: E) -> E {
        error
    }

    #[inline]
    fn admitted(&self, snapshot: &Snapshot, response: &mut Response<B>) {
        if self.on_admitted {
            self.insert_headers(snapshot, response.headers_mut());
        }
    }
}
