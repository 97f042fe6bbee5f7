//! Sending a request again, and what a response says about retrying it.

use std::time::Duration;

/// What a response says about retrying it, read by [`Replay::hint`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Hint {
    /// Nothing: if the response is retried, the backoff decides the delay.
    #[default]
    Backoff,
    /// The server asked to wait this long (`Retry-After`, `grpc-retry-pushback-ms`): the
    /// delay replaces the backoff's.
    After(Duration),
    /// The server asked not to retry (a negative `grpc-retry-pushback-ms`).
    DoNotRetry,
}

/// Decides whether and how a request can be sent again, and reads server hints from
/// responses.
///
/// The retry layer asks [`replay`](Replay::replay) once per call, before the first attempt:
/// a request it returns `None` for is sent once and never retried. Implement it for requests
/// that are not `Clone`, or that must not be retried (non-idempotent ones).
pub trait Replay<Request, Response> {
    /// A copy of `request` to send again later; `None` if it must be sent only once.
    fn replay(&self, request: &Request) -> Option<Request>;

    /// What `response` (classified as a failure) says about retrying. [`Hint::Backoff`] by
    /// default.
    fn hint(&self, response: &Response) -> Hint {
        let _ = response;
        Hint::Backoff
    }

    /// Called with the response handed back to the caller and the number of attempts it
    /// took; does nothing by default (the HTTP replay stores an [`Attempts`](crate::Attempts)
    /// extension).
    fn record_attempts(&self, response: &mut Response, attempts: u32) {
        let _ = (response, attempts);
    }
}

/// Sends a `Clone` request again by cloning it; the default [`Replay`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CloneRequest;

impl<Request: Clone, Response> Replay<Request, Response> for CloneRequest {
    #[inline]
    fn replay(&self, request: &Request) -> Option<Request> {
        Some(request.clone())
    }
}

/// How many attempts a response took; stored in HTTP responses' extensions by
/// [`HttpReplay`](crate::http::HttpReplay) (feature `http`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attempts(pub u32);
