//! The shutdown service.

use std::sync::Arc;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use tower_service::Service;

use crate::future::ResponseFuture;
use crate::layer::Admission;
use crate::state::{CANCELLING, Core, State};

/// A service whose requests a [`Shutdown`](crate::Shutdown) tracks; built by
/// [`ShutdownLayer`](crate::ShutdownLayer), which describes what it does in each phase.
///
/// Readiness comes from the inner service, except when the call is going to be rejected:
/// then `poll_ready` is ready at once without polling the inner service, so a rejection
/// never holds capacity the inner service reserved.
pub struct ShutdownService<S> {
    inner: S,
    core: &'static Core,
    state: Arc<State>,
    admission: Admission,
    /// `poll_ready` decided to reject the next call.
    rejecting: bool,
}

impl<S> ShutdownService<S> {
    pub(crate) fn new(inner: S, state: Arc<State>, admission: Admission) -> Self {
        Self {
            inner,
            core: state.core,
            state,
            admission,
            rejecting: false,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming this one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for ShutdownService<S> {
    /// The clone reports to the same coordinator; readiness is per service, so it starts
    /// unready.
    fn clone(&self) -> Self {
        Self::new(self.inner.clone(), Arc::clone(&self.state), self.admission)
    }
}

impl<S: std::fmt::Debug> std::fmt::Debug for ShutdownService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShutdownService")
            .field("inner", &self.inner)
            .field("admission", &self.admission)
            .finish_non_exhaustive()
    }
}

impl<S, Request> Service<Request> for ShutdownService<S>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.core.phase() >= self.admission.reject_from {
            self.rejecting = true;
            return Poll::Ready(Ok(()));
        }
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, request: Request) -> Self::Future {
        // Once the deadline has passed nothing is tracked any more, even if `poll_ready`
        // came before it.
        if !self.rejecting && self.core.phase() < CANCELLING {
            let in_flight = self.core.start();
            return ResponseFuture::called(self.inner.call(request), in_flight);
        }
        drop(request);
        self.reject()
    }
}

impl<S> ShutdownService<S> {
    /// The rejected call's future, made out of line so that the hot path builds only the
    /// called one (merged, the two builds leave the future in pieces that cost the next
    /// reads a store-forwarding stall).
    #[cold]
    #[inline(never)]
    fn reject<F>(&mut self) -> ResponseFuture<F> {
        self.rejecting = false;
        ResponseFuture::rejected(self.admission.reject(&self.state))
    }
}
