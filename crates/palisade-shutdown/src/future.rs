//! The shutdown service's response future.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use palisade_core::BoxError;
use palisade_core::reject::ShuttingDown;
use pin_project_lite::pin_project;

use crate::state::{Deadline, InFlight};

pin_project! {
    /// The future of a [`ShutdownService`](crate::ShutdownService) call: the inner
    /// service's future, counted as in flight until it completes or is dropped; or a
    /// rejection.
    ///
    /// Still pending at the drain deadline, it fails with [`ShuttingDown`] and drops the
    /// inner future.
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Called {
            #[pin]
            future: F,
            in_flight: InFlight,
            deadline: Deadline,
        },
        Rejected {
            rejection: ShuttingDown,
        },
        Done,
    }
}

impl<F> ResponseFuture<F> {
    #[inline]
    pub(crate) fn called(future: F, in_flight: InFlight) -> Self {
        Self {
            kind: Kind::Called {
                future,
                in_flight,
                deadline: Deadline::default(),
            },
        }
    }

    pub(crate) fn rejected(rejection: ShuttingDown) -> Self {
        Self {
            kind: Kind::Rejected { rejection },
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut kind = self.project().kind;
        let output = match kind.as_mut().project() {
            KindProj::Called {
                future,
                in_flight,
                deadline,
            } => {
                let core = in_flight.core();
                if Deadline::passed(core) {
                    Err(ShuttingDown::new().into())
                } else {
                    match future.poll(cx) {
                        Poll::Ready(result) => result.map_err(Into::into),
                        Poll::Pending if deadline.poll_passed(in_flight, cx) => {
                            Err(ShuttingDown::new().into())
                        }
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
            KindProj::Rejected { rejection } => Err((*rejection).into()),
            KindProj::Done => panic!("ResponseFuture polled after it completed"),
        };
        // Drops the inner future and the in-flight count: the call is no longer in flight.
        kind.set(Kind::Done);
        Poll::Ready(output)
    }
}

impl<F> std::fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
