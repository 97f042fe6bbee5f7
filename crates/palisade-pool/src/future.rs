//! The pool's response future.

use std::future::Future;
use std::mem;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use palisade_core::BoxError;
use palisade_core::classify::Outcome;
use palisade_core::reject::Overloaded;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::pool::{Enqueued, Permit, Pool, Waiter};
use crate::priority::Priority;

pin_project! {
    /// The future of a [`ConcurrencyPool`](crate::ConcurrencyPool) call.
    ///
    /// A call admitted at once holds its permit here while the inner service's future runs.
    /// A call that has to wait holds its place in the queue, the request and the ready inner
    /// service: once granted a permit it calls the service; if its queue timeout passes first
    /// it fails with [`Overloaded`]. The permit is given back when the inner future completes
    /// (with a response or an error), and when this future is dropped (a cancelled call);
    /// dropped while waiting, it leaves the queue.
    pub struct ResponseFuture<F, S, R> {
        #[pin]
        gate: Gate<F, S, R>,
    }
}

impl<F, S, R> ResponseFuture<F, S, R> {
    #[inline]
    pub(crate) fn new(gate: Gate<F, S, R>) -> Self {
        Self { gate }
    }
}

impl<F, S, R, T, E> Future for ResponseFuture<F, S, R>
where
    S: Service<R, Future = F>,
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match ready!(self.project().gate.poll_gate(cx)) {
            Ok((result, mut permit)) => {
                if let Some(permit) = &mut permit {
                    permit.set_outcome(match result {
                        Ok(_) => Outcome::Success,
                        Err(_) => Outcome::Failure,
                    });
                }
                // The permit is dropped here: the call is over.
                drop(permit);
                Poll::Ready(result.map_err(Into::into))
            }
            Err(rejection) => Poll::Ready(Err(rejection.into())),
        }
    }
}

impl<F, S, R> std::fmt::Debug for ResponseFuture<F, S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// A call's output and the permit it ran under (to drop, or to hand to a response body).
pub(crate) type Admitted<T> = (T, Option<Permit>);

pin_project! {
    /// Admission and the call, shared by the plain and the HTTP response futures.
    #[project = GateProj]
    pub(crate) enum Gate<F, S, R> {
        Called {
            #[pin]
            future: F,
            permit: Option<Permit>,
        },
        // Boxed (on the contended path only) so that the future stays small on the
        // uncontended one.
        Waiting {
            wait: Option<Box<Wait<S, R>>>,
        },
        Rejected {
            rejection: Option<Overloaded>,
        },
    }
}

/// A call waiting for its permit.
pub(crate) struct Wait<S, R> {
    waiter: Waiter,
    service: S,
    request: R,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<F, S, R> Gate<F, S, R> {
    /// A call admitted at once: `future` runs under `permit`.
    #[inline]
    pub(crate) fn called(future: F, permit: Permit) -> Self {
        Gate::Called {
            future,
            permit: Some(permit),
        }
    }

    /// A call that found no room on the uncontended path: admitted, queued or rejected under
    /// the pool's lock.
    pub(crate) fn contended(
        pool: &Arc<Pool>,
        priority: Priority,
        lane: usize,
        inner: &mut S,
        request: R,
    ) -> Self
    where
        S: Service<R, Future = F> + Clone,
    {
        match pool.enqueue(priority, lane) {
            Enqueued::Admitted(permit) => Self::called(inner.call(request), permit),
            Enqueued::Queued(waiter) => {
                // The ready service goes with the request; the service keeps a clone, which
                // its next `poll_ready` readies.
                let clone = inner.clone();
                let ready = mem::replace(inner, clone);
                // A timeout too long for the clock to reach is no timeout.
                let deadline = pool
                    .config()
                    .queue_timeout
                    .and_then(|timeout| Instant::now().checked_add(timeout));
                Gate::Waiting {
                    wait: Some(Box::new(Wait {
                        waiter,
                        service: ready,
                        request,
                        deadline,
                        timer: None,
                    })),
                }
            }
            Enqueued::Rejected(rejection) => Gate::Rejected {
                rejection: Some(rejection),
            },
        }
    }

    /// Waits for admission, then polls the call: its output and the permit it ran under, or
    /// the rejection.
    #[inline]
    pub(crate) fn poll_gate(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Admitted<F::Output>, Overloaded>>
    where
        S: Service<R, Future = F>,
        F: Future,
    {
        loop {
            match self.as_mut().project() {
                GateProj::Called { future, permit } => {
                    let output = ready!(future.poll(cx));
                    return Poll::Ready(Ok((output, permit.take())));
                }
                GateProj::Waiting { wait: slot } => {
                    let Some(wait) = slot.as_mut() else {
                        panic!("pool ResponseFuture polled after it completed");
                    };
                    let permit = match wait.waiter.poll_grant(cx) {
                        Poll::Ready(permit) => permit,
                        Poll::Pending => {
                            let Some(deadline) = wait.deadline else {
                                return Poll::Pending;
                            };
                            let timer = wait.timer.get_or_insert_with(|| {
                                Box::pin(tokio::time::sleep_until(deadline))
                            });
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            match wait.waiter.time_out() {
                                Ok(permit) => permit,
                                Err(rejection) => {
                                    *slot = None;
                                    return Poll::Ready(Err(rejection));
                                }
                            }
                        }
                    };
                    let Some(wait) = slot.take() else {
                        unreachable!("checked above");
                    };
                    let Wait {
                        mut service,
                        request,
                        ..
                    } = *wait;
                    let future = service.call(request);
                    self.set(Gate::called(future, permit));
                }
                GateProj::Rejected { rejection } => {
                    let Some(rejection) = rejection.take() else {
                        panic!("pool ResponseFuture polled after it completed");
                    };
                    return Poll::Ready(Err(rejection));
                }
            }
        }
    }
}
