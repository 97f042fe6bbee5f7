//! The breaker's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_core::BoxError;
use palisade_core::classify::{Classify, Outcome};
use palisade_core::reject::CircuitOpen;
use pin_project_lite::pin_project;
use std::time::Duration;

use crate::state::{Permit, Slot};

pin_project! {
    /// The future of a [`CircuitBreaker`](crate::CircuitBreaker) call: the inner service's
    /// future, which records its outcome when it completes, or a rejection.
    ///
    /// Dropping it before it completes (a cancelled call) records nothing and frees its
    /// half-open probe slot; an inner future that panics counts as a failure.
    pub struct ResponseFuture<F, C> {
        #[pin]
        kind: Kind<F>,
        guard: Option<Guard<C>>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called { #[pin] future: F },
        Rejected { rejection: Option<CircuitOpen> },
    }
}

impl<F, C> ResponseFuture<F, C> {
    #[inline]
    pub(crate) fn called(future: F, guard: Option<Guard<C>>) -> Self {
        Self {
            kind: Kind::Called { future },
            guard,
        }
    }

    pub(crate) fn rejected(rejection: CircuitOpen) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
            guard: None,
        }
    }
}

impl<F, C, T, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, E>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Called { future } => {
                let result = ready!(Guard::poll_call(this.guard, future, cx));
                Poll::Ready(result.map_err(Into::into))
            }
            KindProj::Rejected { rejection } => {
                let rejection = rejection
                    .take()
                    .expect("ResponseFuture polled after it completed");
                Poll::Ready(Err(rejection.into()))
            }
        }
    }
}

impl<F, C> std::fmt::Debug for ResponseFuture<F, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A permitted call in flight: records its outcome once, when it completes, is cancelled,
/// or panics.
pub(crate) struct Guard<C> {
    shared: Arc<Slot<C>>,
    permit: Option<Permit>,
    /// When the call started, in the breaker's nanoseconds; `UNTIMED` when nothing needs
    /// the call's duration (the clock is not read at all then).
    started: u64,
    /// Set while the call's future is polled: still set in `Drop`, it panicked.
    polling: bool,
}

const UNTIMED: u64 = u64::MAX;

impl<C> Guard<C> {
    /// Admits a call through `slot`'s breaker: the guard that records its outcome (`None`
    /// for a disabled breaker), or the rejection. `decided` is a rejection `poll_ready`
    /// already chose (see [`Shared::fail_fast`](crate::state::Shared::fail_fast)); it is
    /// counted now.
    #[inline]
    pub(crate) fn admit<T, E>(
        slot: &Arc<Slot<C>>,
        decided: Option<CircuitOpen>,
    ) -> Result<Option<Self>, CircuitOpen>
    where
        C: Classify<T, E>,
    {
        if let Some(rejection) = decided {
            return Err(slot.rejected(rejection));
        }
        let permit = slot.acquire()?;
        let timed = Classify::<T, E>::uses_elapsed(&slot.classify);
        Ok(permit.map(|permit| Self::new(Arc::clone(slot), permit, timed)))
    }

    /// `timed`: whether the outcome needs the call's duration.
    #[inline]
    fn new(shared: Arc<Slot<C>>, permit: Permit, timed: bool) -> Self {
        let started = if timed || shared.times_calls() {
            shared.now()
        } else {
            UNTIMED
        };
        Self {
            shared,
            permit: Some(permit),
            started,
            polling: false,
        }
    }

    /// Polls a permitted call's future through its guard (if any) and, once it completes,
    /// records its outcome: the part every breaker future shares.
    #[inline]
    pub(crate) fn poll_call<F, T, E>(
        guard: &mut Option<Self>,
        future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        let result = match guard {
            Some(guard) => ready!(guard.poll(future, cx)),
            None => ready!(future.poll(cx)),
        };
        if let Some(guard) = guard.take() {
            guard.finish(result.as_ref());
        }
        Poll::Ready(result)
    }

    /// Polls the guarded call's future. If it panics, `Drop` counts the call as failed; if
    /// it is pending and then dropped, as cancelled.
    #[inline]
    fn poll<F: Future>(&mut self, future: Pin<&mut F>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.polling = true;
        let poll = future.poll(cx);
        self.polling = false;
        poll
    }

    #[inline]
    fn finish<T, E>(mut self, result: Result<&T, &E>)
    where
        C: Classify<T, E>,
    {
        let Some(permit) = self.permit.take() else {
            return;
        };
        let elapsed = if self.started == UNTIMED {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.shared.now().saturating_sub(self.started))
        };
        let outcome = self.shared.classify.classify(result, elapsed);
        let slow = self.shared.is_slow(elapsed);
        self.shared.record(permit, outcome, slow);
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            let outcome = if self.polling {
                // The inner future panicked while polled.
                Outcome::Failure
            } else {
                // Cancelled: counts for nothing, frees a probe slot.
                Outcome::Ignored
            };
            self.shared.record(permit, outcome, false);
        }
    }
}
