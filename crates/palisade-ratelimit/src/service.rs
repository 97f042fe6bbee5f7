//! The rate-limited service.

use std::sync::Arc;
use std::task::{Context, Poll};

use tower_service::Service;

use crate::decision::Refusal;
use crate::future::ResponseFuture;
use crate::handle::RateLimitHandle;
use crate::layer::Shared;
use crate::respond::{Cost, RaiseError, Respond, UnitCost};

/// A service behind a rate limit; built by [`RateLimitLayer`](crate::RateLimitLayer).
///
/// **Readiness is the inner service's**: `poll_ready` takes nothing from the limiter, so a
/// connection that checks readiness and then idles (hyper does, on every keep-alive
/// connection) holds no capacity. The limiter decides in `call`:
///
/// - admitted: the inner service is called at once;
/// - over the limit, reject mode: the answer is the [`Respond`]'s (by default a boxed
///   [`RateLimited`](palisade_core::RateLimited) error) and the inner service is not called;
/// - over the limit, wait mode: the response future joins the FIFO wait queue with a clone
///   of the inner service, which it readies and calls once admitted. The service it was
///   called on stays ready for the next call.
///
/// Wait mode is why the inner service must be `Clone`.
pub struct RateLimit<S, C = UnitCost, R = RaiseError> {
    inner: S,
    shared: Arc<Shared>,
    cost: C,
    respond: R,
}

impl<S, C, R> RateLimit<S, C, R> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>, cost: C, respond: R) -> Self {
        Self {
            inner,
            shared,
            cost,
            respond,
        }
    }

    /// A handle to this service's limiter (the one shared with its layer and clones).
    pub fn handle(&self) -> RateLimitHandle {
        RateLimitHandle::new(Arc::clone(&self.shared))
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

impl<S: Clone, C: Clone, R: Clone> Clone for RateLimit<S, C, R> {
    /// The clone shares the limiter.
    fn clone(&self) -> Self {
        Self::new(
            self.inner.clone(),
            Arc::clone(&self.shared),
            self.cost.clone(),
            self.respond.clone(),
        )
    }
}

impl<S: std::fmt::Debug, C, R> std::fmt::Debug for RateLimit<S, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .field("limiter", &self.shared)
            .finish_non_exhaustive()
    }
}

impl<S, C, R, Req> Service<Req> for RateLimit<S, C, R>
where
    S: Service<Req> + Clone,
    C: Cost<Req>,
    R: Respond<Req, S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S, Req, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| self.respond.error(e))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let cost = self.cost.cost(&request);
        let shared = &self.shared;
        let waits = shared.max_wait.is_some();
        if waits && !shared.queue.is_empty() {
            // Others are waiting: first come, first served.
            return ResponseFuture::waiting(
                shared,
                self.inner.clone(),
                request,
                cost,
                self.respond.clone(),
            );
        }
        if !R::READS_SNAPSHOT && shared.report.listener.is_none() {
            // Nobody reads the snapshot: the check skips it and the future keeps none.
            return match shared.limiter.admit(cost) {
                Ok(()) => ResponseFuture::passed(self.inner.call(request), self.respond.clone()),
                Err(refusal) => self.decline(refusal, request, cost),
            };
        }
        match shared.limiter.check(cost, true) {
            Ok(snapshot) => {
                shared.admitted(cost, &snapshot);
                let future = self.inner.call(request);
                if R::READS_SNAPSHOT {
                    ResponseFuture::called(future, snapshot, self.respond.clone())
                } else {
                    ResponseFuture::passed(future, self.respond.clone())
                }
            }
            Err(refusal) => self.decline(refusal, request, cost),
        }
    }
}

impl<S, C, R> RateLimit<S, C, R> {
    /// A request the limiter did not admit: to the wait queue if it may wait that long,
    /// else answered by the `Respond`.
    #[cold]
    #[inline(never)]
    fn decline<Req>(
        &mut self,
        refusal: Refusal,
        request: Req,
        cost: u32,
    ) -> ResponseFuture<S, Req, R>
    where
        S: Service<Req> + Clone,
        R: Respond<Req, S::Response, S::Error> + Clone,
    {
        let shared = &self.shared;
        match refusal {
            Refusal::Limited(limited)
                if shared
                    .max_wait
                    .is_some_and(|max| limited.retry_after() <= max) =>
            {
                ResponseFuture::waiting(
                    shared,
                    self.inner.clone(),
                    request,
                    cost,
                    self.respond.clone(),
                )
            }
            refusal => {
                shared.refused(cost, &refusal, std::time::Duration::ZERO);
                let answer = self.respond.refused(refusal, request);
                ResponseFuture::answered(answer, self.respond.clone())
            }
        }
    }
}
