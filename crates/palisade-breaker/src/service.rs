//! The breaker service.

use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use palisade_core::classify::{Classify, DefaultClassify};
use palisade_core::reject::CircuitOpen;
use tower_service::Service;

use crate::future::{Admission, Guard, ResponseFuture};
use crate::handle::CircuitBreakerHandle;
use crate::state::{Slot, Slots};

/// A service guarded by a circuit breaker; built by
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer).
///
/// Errors are boxed: the inner service's errors as they are, and a rejection as a
/// [`CircuitOpen`], which [`Rejection::find`](palisade_core::Rejection::find) recognises.
///
/// While the breaker is open, `poll_ready` answers at once without polling the inner service
/// (which may be stuck on the very upstream that tripped the breaker), and the next `call`
/// fails fast. Half-open probe slots are taken in `call`, never in `poll_ready`, so an idle
/// connection's readiness check cannot hoard them.
pub struct CircuitBreaker<S, C = DefaultClassify> {
    inner: S,
    shared: Arc<Slots<C>>,
    /// The slot this service's calls take their references from (see [`Slots::pick`]).
    slot: Arc<Slot<C>>,
    /// A rejection decided by `poll_ready` without polling `inner`.
    rejection: Option<CircuitOpen>,
}

impl<S, C> CircuitBreaker<S, C> {
    pub(crate) fn new(inner: S, shared: Arc<Slots<C>>) -> Self {
        Self {
            inner,
            slot: shared.pick(),
            shared,
            rejection: None,
        }
    }

    /// A handle to this service's breaker (the one shared with its layer and clones).
    pub fn handle(&self) -> CircuitBreakerHandle
    where
        C: Send + Sync + 'static,
    {
        CircuitBreakerHandle::new(Arc::clone(self.shared.shared()) as _)
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the breaker service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, C> Clone for CircuitBreaker<S, C> {
    /// The clone shares the breaker; readiness is per service, so it starts unready.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: std::fmt::Debug, C> std::fmt::Debug for CircuitBreaker<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("breaker", &self.shared)
            .finish()
    }
}

impl<S, C, Request> Service<Request> for CircuitBreaker<S, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.slot.fail_fast(&mut self.rejection) {
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        let decided = self.rejection.take();
        match Admission::new::<C, S::Response, S::Error>(&self.slot, decided) {
            Ok(admission) if admission.is_probe() => {
                let guard = Guard::new(&self.slot, admission);
                ResponseFuture::called(self.inner.call(request), guard)
            }
            Ok(admission) => {
                // Built after `call`, in place, from what stayed in registers.
                let future = self.inner.call(request);
                ResponseFuture::called(future, Guard::new(&self.slot, admission))
            }
            Err(rejection) => ResponseFuture::rejected(rejection),
        }
    }
}
