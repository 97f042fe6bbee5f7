//! The client side (feature `http`): pause every outbound call while the upstream says its
//! limit is spent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use ::http::header::RETRY_AFTER;
use ::http::{HeaderMap, HeaderName, Response, StatusCode};
use palisade_core::BoxError;
use palisade_core::reject::{RateLimited, parse_retry_after};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_layer::Layer;
use tower_service::Service;

use crate::limiter::nanos;

const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The default [`max_wait`](UpstreamLimitLayer::max_wait): 60 seconds.
pub const DEFAULT_UPSTREAM_MAX_WAIT: Duration = Duration::from_secs(60);

/// The default pause after a `429` without a usable `Retry-After`: 1 second.
pub const DEFAULT_BARE_429_PAUSE: Duration = Duration::from_secs(1);

/// How long an upstream's response asks its clients to hold off, if at all:
///
/// - `429 Too Many Requests` or `503 Service Unavailable` with `Retry-After`: that long
///   (delta-seconds, or an HTTP-date measured from the system clock's now). It takes
///   precedence over the `RateLimit` fields, as the IETF draft says: their reset is when the
///   whole quota is back, later than the next request may go;
/// - otherwise the longest of:
///   - `RateLimit: "policy";r=0;t=N` (IETF draft): `N` seconds (the longest of the spent
///     policies);
///   - `RateLimit-Remaining: 0` with `RateLimit-Reset: N` (earlier drafts): `N` seconds;
///   - for a `429`, `bare_429`.
pub fn upstream_pause<B>(response: &Response<B>, bare_429: Duration) -> Option<Duration> {
    let headers = response.headers();
    let status = response.status();
    let throttled = status == StatusCode::TOO_MANY_REQUESTS;
    if (throttled || status == StatusCode::SERVICE_UNAVAILABLE)
        && let Some(after) = headers
            .get(RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()))
    {
        return Some(after);
    }
    let remaining = headers
        .get(RATELIMIT_REMAINING)
        .and_then(|v| v.to_str().ok());
    let reset = if remaining.map(str::trim) == Some("0") {
        headers
            .get(RATELIMIT_RESET)
            .and_then(|v| seconds(v.to_str().ok()?))
    } else {
        None
    };
    let bare = throttled.then_some(bare_429);
    [spent_policies(headers), reset, bare]
        .into_iter()
        .flatten()
        .max()
}

/// Whole non-negative seconds.
fn seconds(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(Duration::from_secs(text.parse().unwrap_or(u64::MAX)))
}

/// The longest `t` of the `RateLimit` items with `r=0`.
fn spent_policies(headers: &HeaderMap) -> Option<Duration> {
    let mut longest = None;
    for value in headers.get_all(RATELIMIT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let (mut remaining, mut reset) = (None, None);
            for parameter in item.split(';').skip(1) {
                match parameter.trim().split_once('=') {
                    Some(("r", r)) => remaining = r.trim().parse::<u64>().ok(),
                    Some(("t", t)) => reset = seconds(t),
                    _ => {}
                }
            }
            if remaining == Some(0)
                && let Some(reset) = reset
            {
                longest = Some(longest.map_or(reset, |l: Duration| l.max(reset)));
            }
        }
    }
    longest
}

/// The pause every service of one layer shares.
#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Nanoseconds since `epoch` until which calls wait; 0 when none.
    paused_until: AtomicU64,
    max_wait: Duration,
    bare_429: Duration,
}

impl Shared {
    fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.epoch))
    }

    /// How long calls must still wait.
    fn pause_left(&self) -> Duration {
        let until = self.paused_until.load(Ordering::Acquire);
        Duration::from_nanos(until.saturating_sub(self.now()))
    }

    fn pause_for(&self, pause: Duration) {
        let until = self.now().saturating_add(nanos(pause));
        let before = self.paused_until.fetch_max(until, Ordering::AcqRel);
        if until > before {
            tracing::info!(
                ?pause,
                "upstream limit: pausing calls as the upstream asked"
            );
        }
    }
}

/// Pauses every call through it while the upstream says its limit is spent (feature
/// `http`): the client side of a rate limit, the patterns document's `ApiClient`.
///
/// After each response it reads what the upstream asks (see [`upstream_pause`]: `429` +
/// `Retry-After`, `RateLimit: ...;r=0;t=N`, `RateLimit-Remaining: 0`) and holds **every**
/// call of every service of this layer (and their clones) until then: a call made during a
/// pause waits, then goes. A call that would wait longer than
/// [`max_wait`](Self::max_wait) (default 60 s) fails at once with core's [`RateLimited`]
/// and the time left. The response that asked for the pause is returned as it is (retrying
/// it is a retry layer's job).
///
/// Stack it with a [`RateLimitLayer`](crate::RateLimitLayer) in wait mode to also keep to
/// your own budget. Time is tokio's clock.
///
/// ```
/// use std::convert::Infallible;
/// use std::time::Duration;
/// use http::{Request, Response, StatusCode};
/// use palisade_ratelimit::UpstreamLimitLayer;
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let upstream = tower::service_fn(|_: Request<()>| async {
///     let busy = Response::builder().status(429).header("retry-after", "2").body(());
///     Ok::<_, Infallible>(busy.unwrap())
/// });
/// let client = ServiceBuilder::new().layer(UpstreamLimitLayer::new()).service(upstream);
///
/// let first = client.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(first.status(), StatusCode::TOO_MANY_REQUESTS);
/// // The next call waits the 2 seconds out before going.
/// let start = tokio::time::Instant::now();
/// client.clone().oneshot(Request::new(())).await.unwrap();
/// assert_eq!(start.elapsed(), Duration::from_secs(2));
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct UpstreamLimitLayer {
    shared: Arc<Shared>,
}

impl UpstreamLimitLayer {
    /// Pauses for what the upstream asks, waiting at most 60 s, and 1 s after a `429`
    /// without `Retry-After`.
    pub fn new() -> Self {
        Self::with(DEFAULT_UPSTREAM_MAX_WAIT, DEFAULT_BARE_429_PAUSE)
    }

    fn with(max_wait: Duration, bare_429: Duration) -> Self {
        Self {
            shared: Arc::new(Shared {
                epoch: Instant::now(),
                paused_until: AtomicU64::new(0),
                max_wait,
                bare_429,
            }),
        }
    }

    /// Calls wait out a pause of at most `max` (default 60 s); longer, they fail at once.
    #[must_use]
    pub fn max_wait(self, max: Duration) -> Self {
        Self::with(max, self.shared.bare_429)
    }

    /// Pauses for `pause` after a `429` without a usable `Retry-After` (default 1 s).
    #[must_use]
    pub fn bare_429_pause(self, pause: Duration) -> Self {
        Self::with(self.shared.max_wait, pause)
    }

    /// How long calls must still wait (zero when they go at once).
    pub fn pause_left(&self) -> Duration {
        self.shared.pause_left()
    }
}

impl Default for UpstreamLimitLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl<S> Layer<S> for UpstreamLimitLayer {
    type Service = UpstreamLimit<S>;

    fn layer(&self, inner: S) -> UpstreamLimit<S> {
        UpstreamLimit {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// A client service that pauses while its upstream's limit is spent; built by
/// [`UpstreamLimitLayer`]. Its errors are boxed: the inner service's, or [`RateLimited`].
#[derive(Debug, Clone)]
pub struct UpstreamLimit<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S, Req, B> Service<Req> for UpstreamLimit<S>
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = UpstreamFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let left = self.shared.pause_left();
        let state = if left.is_zero() {
            State::Called {
                future: self.inner.call(request),
            }
        } else if left > self.shared.max_wait {
            State::Refused {
                error: Some(RateLimited::new(left)),
            }
        } else {
            // Waits with a clone; the service it was called on stays ready.
            State::Paused {
                wait: Box::pin(Paused {
                    sleep: tokio::time::sleep(left),
                    service: self.inner.clone(),
                    request: Some(request),
                }),
            }
        };
        UpstreamFuture {
            state,
            shared: Arc::clone(&self.shared),
        }
    }
}

pin_project! {
    /// The future of an [`UpstreamLimit`] call.
    pub struct UpstreamFuture<S, Req>
    where
        S: Service<Req>,
    {
        #[pin]
        state: State<S, Req>,
        shared: Arc<Shared>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Called { #[pin] future: S::Future },
        Paused { wait: Pin<Box<Paused<S, Req>>> },
        Refused { error: Option<RateLimited> },
    }
}

pin_project! {
    struct Paused<S, Req> {
        #[pin]
        sleep: Sleep,
        service: S,
        request: Option<Req>,
    }
}

impl<S, Req, B> Future for UpstreamFuture<S, Req>
where
    S: Service<Req, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<B>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    let response = ready!(future.poll(cx)).map_err(Into::into)?;
                    if let Some(pause) = upstream_pause(&response, this.shared.bare_429) {
                        this.shared.pause_for(pause);
                    }
                    return Poll::Ready(Ok(response));
                }
                StateProj::Refused { error } => {
                    let error = error
                        .take()
                        .expect("UpstreamFuture polled after it completed");
                    return Poll::Ready(Err(error.into()));
                }
                StateProj::Paused { wait } => {
                    let mut paused = wait.as_mut().project();
                    ready!(paused.sleep.as_mut().poll(cx));
                    // Another response may have extended the pause meanwhile.
                    let left = this.shared.pause_left();
                    if !left.is_zero() {
                        if left > this.shared.max_wait {
                            this.state.set(State::Refused {
                                error: Some(RateLimited::new(left)),
                            });
                        } else {
                            let deadline = Instant::now() + left;
                            paused.sleep.as_mut().reset(deadline);
                        }
                        continue;
                    }
                    ready!(paused.service.poll_ready(cx)).map_err(Into::into)?;
                    let request = paused
                        .request
                        .take()
                        .expect("UpstreamFuture polled after it completed");
                    let future = paused.service.call(request);
                    this.state.set(State::Called { future });
                }
            }
        }
    }
}

impl<S: Service<Req>, Req> std::fmt::Debug for UpstreamFuture<S, Req> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamFuture").finish_non_exhaustive()
    }
}
