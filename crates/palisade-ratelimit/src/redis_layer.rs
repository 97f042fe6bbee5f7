//! A tower layer over the Redis store (feature `redis`): one limit per key, shared by every
//! process that uses the same Redis and prefix.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::decision::{Refusal, Snapshot};
use crate::keyed::KeyExtractor;
use crate::redis_store::{Checked, RedisRateLimiter};
use crate::respond::{Cost, RaiseError, Respond, UnitCost};

/// How a key is written into its name in Redis, after the
/// [prefix](crate::RedisRateLimiterBuilder::prefix) (feature `redis`).
///
/// A [`RedisRateLimitLayer`] needs its [`KeyExtractor`]'s keys to implement it, so that
/// every process writes the same key the same way. Implemented for strings, integers, IP
/// and socket addresses, `http::HeaderValue` (feature `http`; bytes outside printable ASCII,
/// and `%`, as `%XX`), references, and `Option`s of these: `None` writes nothing, so the
/// requests without a key share the limit at the bare prefix (with an empty key, if there
/// is one). [`PeerIp`](crate::PeerIp), [`ClientIp`](crate::ClientIp) and
/// [`HeaderKey`](crate::HeaderKey) keys implement it.
pub trait RedisKey {
    /// Appends the key to `name`, which holds the prefix.
    fn write_key(&self, name: &mut String);
}

impl RedisKey for str {
    fn write_key(&self, name: &mut String) {
        name.push_str(self);
    }
}

impl RedisKey for String {
    fn write_key(&self, name: &mut String) {
        name.push_str(self);
    }
}

impl RedisKey for Cow<'_, str> {
    fn write_key(&self, name: &mut String) {
        name.push_str(self);
    }
}

impl RedisKey for Arc<str> {
    fn write_key(&self, name: &mut String) {
        name.push_str(self);
    }
}

impl RedisKey for Box<str> {
    fn write_key(&self, name: &mut String) {
        name.push_str(self);
    }
}

impl<T: RedisKey + ?Sized> RedisKey for &T {
    fn write_key(&self, name: &mut String) {
        (**self).write_key(name);
    }
}

impl<T: RedisKey> RedisKey for Option<T> {
    fn write_key(&self, name: &mut String) {
        if let Some(key) = self {
            key.write_key(name);
        }
    }
}

macro_rules! display_keys {
    ($($t:ty),* $(,)?) => {$(
        impl RedisKey for $t {
            fn write_key(&self, name: &mut String) {
                // Writing to a `String` cannot fail.
                let _ = write!(name, "{self}");
            }
        }
    )*};
}

display_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, char, IpAddr, Ipv4Addr,
    Ipv6Addr, SocketAddr,
);

#[cfg(feature = "http")]
impl RedisKey for ::http::HeaderValue {
    fn write_key(&self, name: &mut String) {
        for &byte in self.as_bytes() {
            if (0x20..0x7f).contains(&byte) && byte != b'%' {
                name.push(char::from(byte));
            } else {
                let _ = write!(name, "%{byte:02X}");
            }
        }
    }
}

/// Wraps services in a [`RedisRateLimit`]: one limit per key kept in Redis by a
/// [`RedisRateLimiter`], so every process (every server behind a load balancer) that uses
/// the same Redis and prefix shares it (feature `redis`).
///
/// It works like a [`KeyedRateLimitLayer`](crate::KeyedRateLimitLayer) whose map lives in
/// Redis: a [`KeyExtractor`] picks each request's key (its keys must implement
/// [`RedisKey`]; for one limit for all requests, a [`key_fn`](crate::key_fn) returning a
/// constant), a [`Cost`] what it takes ([`cost`](Self::cost)), and a [`Respond`] how a
/// refusal is answered ([`RaiseError`] by default: a boxed core
/// [`RateLimited`](palisade_core::RateLimited) with its retry-after;
/// [`TooManyRequests`](crate::TooManyRequests) for `429` + `Retry-After` + the IETF
/// `RateLimit` headers, keeping an `Infallible` router `Infallible`).
///
/// While Redis is unavailable the limiter's [`OnUnavailable`](crate::OnUnavailable) policy
/// decides, as for a direct check: a limit in this process per key (the default), admit all,
/// or refuse all ([`StoreUnavailable`](crate::StoreUnavailable): a `503` with
/// `TooManyRequests`). A call never waits for Redis longer than the limiter's timeouts
/// (250 ms for a response, 1 s for a connection, by default), never waits for a
/// reconnection, and every fallback is traced and reported as for a direct check
/// ([`RateLimitEvent::StoreUnavailable`](crate::RateLimitEvent::StoreUnavailable)). The
/// layer also reports `Admitted`, `Rejected` and `TooCostly` events to the limiter's
/// listener, like the other layers.
///
/// **One layer value is one limiter**: its services and their clones share the limiter's
/// connection. Layers over limiters with the same Redis and prefix share the limits, in one
/// process or many.
///
/// # Example
///
/// ```no_run
/// use std::convert::Infallible;
/// use std::num::NonZeroU32;
/// use http::{Request, Response};
/// use palisade_ratelimit::{
///     OnUnavailable, Quota, RedisRateLimitLayer, RedisRateLimiter, TooManyRequests, key_fn,
/// };
/// use tower::{ServiceBuilder, ServiceExt};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// // 100 requests a minute per API key, across every server.
/// let limiter = RedisRateLimiter::builder(
///     "redis://127.0.0.1:6379",
///     Quota::per_minute(NonZeroU32::new(100).unwrap()),
/// )
/// .prefix("api:")
/// .on_unavailable(OnUnavailable::Local)
/// .build()?;
/// let by_api_key = key_fn(|request: &Request<()>| {
///     request.headers().get("x-api-key").cloned()
/// });
/// let service = ServiceBuilder::new()
///     .layer(RedisRateLimitLayer::new(limiter, by_api_key).respond_with(TooManyRequests::new()))
///     .service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) });
///
/// let response = service.oneshot(Request::new(())).await?;
/// // `200`, or `429` with `Retry-After` and the `RateLimit` headers.
/// # let _ = response;
/// # Ok(())
/// # }
/// ```
pub struct RedisRateLimitLayer<X, C = UnitCost, R = RaiseError> {
    limiter: RedisRateLimiter,
    extractor: Arc<X>,
    cost: C,
    respond: R,
}

impl<X> RedisRateLimitLayer<X> {
    /// Limits requests with `limiter`'s limits, keyed by `extractor`.
    pub fn new(limiter: RedisRateLimiter, extractor: X) -> Self {
        Self {
            limiter,
            extractor: Arc::new(extractor),
            cost: UnitCost,
            respond: RaiseError,
        }
    }
}

impl<X, C, R> RedisRateLimitLayer<X, C, R> {
    /// Charges each request what `cost` says, as
    /// [`RateLimitLayer::cost`](crate::RateLimitLayer::cost).
    pub fn cost<D>(self, cost: D) -> RedisRateLimitLayer<X, D, R> {
        RedisRateLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            cost,
            respond: self.respond,
        }
    }

    /// Answers refused requests with `respond`, as
    /// [`RateLimitLayer::respond_with`](crate::RateLimitLayer::respond_with).
    pub fn respond_with<Q>(self, respond: Q) -> RedisRateLimitLayer<X, C, Q> {
        RedisRateLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            cost: self.cost,
            respond,
        }
    }

    /// The limiter (a handle: the same connection and limits).
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }
}

impl<X, C: Clone, R: Clone> Clone for RedisRateLimitLayer<X, C, R> {
    /// The clone is the same limiter.
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            extractor: Arc::clone(&self.extractor),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<X, C, R> fmt::Debug for RedisRateLimitLayer<X, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, X, C: Clone, R: Clone> Layer<S> for RedisRateLimitLayer<X, C, R> {
    type Service = RedisRateLimit<S, X, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        RedisRateLimit {
            inner,
            limiter: self.limiter.clone(),
            extractor: Arc::clone(&self.extractor),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

/// A service behind limits kept in Redis; built by [`RedisRateLimitLayer`].
///
/// **Readiness is the inner service's**: `poll_ready` takes nothing from the limit. The
/// check runs in the response future, so an idle keep-alive connection holds no capacity:
/// `call` moves the ready inner service into the future (a clone takes its place, which is
/// why the inner service must be `Clone`), and the future calls it once Redis (or, while
/// Redis is unavailable, the policy) admits the request. A refused request is answered by
/// the [`Respond`] and the inner service is not called.
pub struct RedisRateLimit<S, X, C = UnitCost, R = RaiseError> {
    inner: S,
    limiter: RedisRateLimiter,
    extractor: Arc<X>,
    cost: C,
    respond: R,
}

impl<S, X, C, R> RedisRateLimit<S, X, C, R> {
    /// The limiter (a handle: the same connection and limits).
    pub fn limiter(&self) -> &RedisRateLimiter {
        &self.limiter
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the rate-limited one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, X, C: Clone, R: Clone> Clone for RedisRateLimit<S, X, C, R> {
    /// The clone shares the limiter.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            limiter: self.limiter.clone(),
            extractor: Arc::clone(&self.extractor),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<S: fmt::Debug, X, C, R> fmt::Debug for RedisRateLimit<S, X, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, X, C, R, Req> Service<Req> for RedisRateLimit<S, X, C, R>
where
    S: Service<Req> + Clone,
    X: KeyExtractor<Req>,
    X::Key: RedisKey,
    C: Cost<Req>,
    R: Respond<Req, S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = RedisResponseFuture<S, Req, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| self.respond.error(e))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let cost = self.cost.cost(&request);
        let mut name = self.limiter.name_buffer(32);
        self.extractor.extract(&request).write_key(&mut name);
        let limiter = self.limiter.clone();
        // The service that was readied takes the request; its clone waits for the next one.
        let clone = self.inner.clone();
        let service = std::mem::replace(&mut self.inner, clone);
        RedisResponseFuture {
            state: State::Checking {
                check: Box::pin(async move {
                    let checked = limiter.check_name(&name, cost).await;
                    report(&limiter, cost, &checked);
                    checked
                }),
                service: Some(service),
                request: Some(request),
            },
            respond: self.respond.clone(),
        }
    }
}

/// Reports a check the way the other layers do; the store has already reported what the
/// unavailable policy decided.
fn report(limiter: &RedisRateLimiter, cost: u32, checked: &Checked) {
    let report = limiter.report();
    match checked.decision() {
        Ok(snapshot) => report.admitted(cost, &snapshot),
        Err(Refusal::StoreUnavailable(_)) => {}
        Err(refusal) => report.refused(cost, &refusal, Duration::ZERO),
    }
}

/// A check in flight: the store's `async fn`, which stable Rust cannot name, so boxed. A
/// Redis round trip allocates several times anyway (the command, the key, redis-rs's own
/// boxed futures); the inner service's future is not boxed.
type Check = Pin<Box<dyn Future<Output = Checked> + Send>>;

pin_project! {
    /// The future of a [`RedisRateLimit`] call: the check in Redis, then the inner
    /// service's future once admitted, or the [`Respond`]'s answer once refused.
    ///
    /// A call dropped while its check is in flight does not call the inner service, but
    /// Redis may already have counted it.
    pub struct RedisResponseFuture<S, Req, R>
    where
        S: Service<Req>,
        R: Respond<Req, S::Response, S::Error>,
    {
        #[pin]
        state: State<S, Req>,
        respond: R,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req>
    where
        S: Service<Req>,
    {
        Checking {
            check: Check,
            service: Option<S>,
            request: Option<Req>,
        },
        Called {
            #[pin]
            future: S::Future,
            snapshot: Snapshot,
        },
        Done,
    }
}

impl<S, Req, R> Future for RedisResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, R::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Checking {
                    check,
                    service,
                    request,
                } => {
                    let checked = ready!(check.as_mut().poll(cx));
                    let request = request
                        .take()
                        .expect("RedisResponseFuture polled after it completed");
                    match checked.decision() {
                        Ok(snapshot) => {
                            let mut service =
                                service.take().expect("a checking future holds its service");
                            // Ready: `call` took the service `poll_ready` readied.
                            let future = service.call(request);
                            this.state.set(State::Called { future, snapshot });
                        }
                        Err(refusal) => {
                            this.state.set(State::Done);
                            return Poll::Ready(this.respond.refused(refusal, request));
                        }
                    }
                }
                StateProj::Called { future, snapshot } => {
                    let output = ready!(future.poll(cx));
                    let snapshot = *snapshot;
                    this.state.set(State::Done);
                    return Poll::Ready(match output {
                        Ok(mut response) => {
                            if R::READS_SNAPSHOT {
                                this.respond.admitted(&snapshot, &mut response);
                            }
                            Ok(response)
                        }
                        Err(error) => Err(this.respond.error(error)),
                    });
                }
                StateProj::Done => panic!("RedisResponseFuture polled after it completed"),
            }
        }
    }
}

impl<S, Req, R> fmt::Debug for RedisResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisResponseFuture")
            .finish_non_exhaustive()
    }
}
