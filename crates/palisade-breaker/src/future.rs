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

use crate::state::{Permit, Shared, Slot};

pin_project! {
    /// The future of a [`CircuitBreaker`](crate::CircuitBreaker) call: the inner service's
    /// future, which records its outcome when it completes, or a rejection.
    ///
    /// Dropping it before it completes (a cancelled call) records nothing and frees its
    /// half-open probe slot; an inner future that panics counts as a failure.
    pub struct ResponseFuture<F, C> {
        // Outside the enum (a rejected call gets an idle guard): written once, in place,
        // where a guard inside a variant was copied about on the way out of `call`.
        guard: Guard<C>,
        #[pin]
        kind: Kind<F>,
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
    pub(crate) fn called(future: F, guard: Guard<C>) -> Self {
        Self {
            guard,
            kind: Kind::Called { future },
        }
    }

    pub(crate) fn rejected(rejection: CircuitOpen) -> Self {
        Self {
            guard: Guard::idle(),
            kind: Kind::Rejected {
                rejection: Some(rejection),
            },
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
                let result = ready!(this.guard.poll_call(future, cx));
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

/// What admitting a call decided, before its [`Guard`] is built: two words, so that a
/// service can keep them in registers across the inner service's `call` and build the guard
/// in place afterwards (a guard built before and moved after costs a store-forwarding stall).
/// Only a probe needs its guard across that `call`, whose panic must free the probe's slot;
/// see [`Admission::is_probe`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Admission {
    /// `None` for a disabled breaker: nothing to record.
    permit: Option<Permit>,
    started: u64,
}

impl Admission {
    /// Admits a call through `shared`: what its guard needs, or the rejection. `decided` is
    /// a rejection `poll_ready` already chose (see
    /// [`Shared::fail_fast`](crate::state::Shared::fail_fast)); it is counted now.
    #[inline]
    pub(crate) fn new<C, T, E>(
        shared: &Shared<C>,
        decided: Option<CircuitOpen>,
    ) -> Result<Self, CircuitOpen>
    where
        C: Classify<T, E>,
    {
        if let Some(rejection) = decided {
            return Err(shared.rejected(rejection));
        }
        let permit = shared.acquire()?;
        let timed = permit.is_some()
            && (Classify::<T, E>::uses_elapsed(&shared.classify) || shared.times_calls());
        Ok(Self {
            permit,
            started: if timed { shared.now() } else { UNTIMED },
        })
    }

    /// Whether the call is a half-open probe: its guard must exist before the inner
    /// service's `call`, so that a panicking `call` frees the probe's slot. Any other
    /// permit records nothing when dropped unused.
    #[inline]
    pub(crate) fn is_probe(&self) -> bool {
        self.permit.is_some_and(Permit::is_probe)
    }
}

/// A call let through, in flight: records its outcome once, when it completes, is
/// cancelled, or panics.
///
/// Except for a probe's, it is built after the inner service's `call`, from an
/// [`Admission`].
pub(crate) struct Guard<C> {
    /// `None` once recorded, for a rejected call, and for a disabled breaker (nothing to
    /// record).
    held: Option<Held<C>>,
    /// When the call started, in the breaker's nanoseconds; `UNTIMED` when nothing needs
    /// the call's duration (the clock is not read at all then).
    started: u64,
    /// Set while the call's future is polled: still set in `Drop`, it panicked.
    polling: bool,
}

/// The breaker a guarded call reports to, kept alive by the guard, and the call's permit.
struct Held<C> {
    slot: Arc<Slot<C>>,
    permit: Permit,
}

const UNTIMED: u64 = u64::MAX;

impl<C> Guard<C> {
    /// Admits a call through `slot`'s breaker: the guard that records its outcome, or the
    /// rejection (see [`Admission::new`]).
    #[inline]
    pub(crate) fn admit<T, E>(
        slot: &Arc<Slot<C>>,
        decided: Option<CircuitOpen>,
    ) -> Result<Self, CircuitOpen>
    where
        C: Classify<T, E>,
    {
        let admission = Admission::new::<C, T, E>(slot, decided)?;
        Ok(Self::new(slot, admission))
    }

    /// The guard of an admitted call, which keeps `slot`'s breaker alive until it records.
    #[inline]
    pub(crate) fn new(slot: &Arc<Slot<C>>, admission: Admission) -> Self {
        Self {
            held: admission.permit.map(|permit| Held {
                slot: Arc::clone(slot),
                permit,
            }),
            started: admission.started,
            polling: false,
        }
    }

    /// A guard with nothing to record: the one of a rejected call.
    pub(crate) fn idle() -> Self {
        Self {
            held: None,
            started: UNTIMED,
            polling: false,
        }
    }

    /// Polls the guarded call's future and, once it completes, records its outcome. If the
    /// future panics, `Drop` counts the call as failed; if it is pending and then dropped,
    /// as cancelled.
    #[inline]
    pub(crate) fn poll_call<F, T, E>(
        &mut self,
        future: Pin<&mut F>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<T, E>>
    where
        F: Future<Output = Result<T, E>>,
        C: Classify<T, E>,
    {
        if self.held.is_none() {
            return future.poll(cx);
        }
        self.polling = true;
        let result = future.poll(cx);
        self.polling = false;
        let Poll::Ready(result) = result else {
            return Poll::Pending;
        };
        if let Some(held) = self.held.take() {
            Self::record(held, self.started, result.as_ref());
        }
        Poll::Ready(result)
    }

    #[inline]
    fn record<T, E>(held: Held<C>, started: u64, result: Result<&T, &E>)
    where
        C: Classify<T, E>,
    {
        let shared = &**held.slot;
        let elapsed = if started == UNTIMED {
            Duration::ZERO
        } else {
            Duration::from_nanos(shared.now().saturating_sub(started))
        };
        let outcome = shared.classify.classify(result, elapsed);
        let slow = shared.is_slow(elapsed);
        shared.record(held.permit, outcome, slow);
    }
}

impl<C> Drop for Guard<C> {
    fn drop(&mut self) {
        if let Some(Held { slot, permit }) = self.held.take() {
            let outcome = if self.polling {
                // The inner future panicked while polled.
                Outcome::Failure
            } else {
                // Cancelled: counts for nothing, frees a probe slot.
                Outcome::Ignored
            };
            slot.record(permit, outcome, false);
        }
    }
}
