//! The rate-limited service's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::decision::{Limited, Refusal, Snapshot};
use crate::layer::Shared;
use crate::queue::Waiter;
use crate::respond::Respond;

pin_project! {
    /// The future of a [`RateLimit`](crate::RateLimit) call: the inner service's future
    /// once admitted, the [`Respond`]'s answer once refused, or, in wait mode, a place in the
    /// wait queue.
    ///
    /// A waiting future that is dropped leaves the queue and takes nothing from the limiter.
    pub struct ResponseFuture<S, Req, R>
    where
        S: Service<Req>,
        R: Respond<Req, S::Response, S::Error>,
    {
        #[pin]
        state: State<S, Req, R>,
        respond: R,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S, Req, R>
    where
        S: Service<Req>,
        R: Respond<Req, S::Response, S::Error>,
    {
        Called {
            #[pin]
            future: S::Future,
            snapshot: Snapshot,
        },
        Answered {
            answer: Option<Result<S::Response, R::Error>>,
        },
        Waiting {
            wait: Wait<S, Req>,
        },
        Readying {
            service: S,
            request: Option<Req>,
            snapshot: Snapshot,
        },
    }
}

/// A request in the wait queue, with the service clone that will take it.
struct Wait<S, Req> {
    /// Boxed: a timer entry is large, and only waiting requests need one, so the futures
    /// of admitted requests stay small (and cheap to move).
    sleep: Pin<Box<Sleep>>,
    waiter: Waiter,
    service: Option<S>,
    request: Option<Req>,
    cost: u32,
    started: Instant,
    deadline: Instant,
}

impl<S, Req, R> ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    #[inline]
    pub(crate) fn called(future: S::Future, snapshot: Snapshot, respond: R) -> Self {
        Self {
            state: State::Called { future, snapshot },
            respond,
        }
    }

    pub(crate) fn answered(answer: Result<S::Response, R::Error>, respond: R) -> Self {
        Self {
            state: State::Answered {
                answer: Some(answer),
            },
            respond,
        }
    }

    pub(crate) fn waiting(
        shared: &Arc<Shared>,
        service: S,
        request: Req,
        cost: u32,
        respond: R,
    ) -> Self {
        let started = Instant::now();
        let max_wait = shared.max_wait.unwrap_or_default();
        let deadline = started
            .checked_add(max_wait)
            .unwrap_or_else(|| started + Duration::from_secs(30 * 365 * 24 * 3600));
        Self {
            state: State::Waiting {
                wait: Wait {
                    sleep: Box::pin(tokio::time::sleep_until(deadline)),
                    waiter: Waiter::join(shared),
                    service: Some(service),
                    request: Some(request),
                    cost,
                    started,
                    deadline,
                },
            },
            respond,
        }
    }
}

impl<S, Req> Wait<S, Req> {
    /// Waits to reach the front of the queue, then for the limiter to admit the request;
    /// refuses it as soon as it is clear that cannot happen by the deadline.
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<Snapshot, Refusal>> {
        let shared = self.waiter.shared();
        let sleep = &mut self.sleep;
        loop {
            if !self.waiter.poll_front(cx.waker()) {
                if sleep.deadline() != self.deadline {
                    sleep.as_mut().reset(self.deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                // The deadline passed behind other waiters.
                let refusal = match shared.limiter.check(self.cost, false) {
                    Err(refusal) => refusal,
                    Ok(snapshot) => Refusal::Limited(Limited {
                        retry_after_nanos: 0,
                        snapshot,
                    }),
                };
                shared.refused(self.cost, &refusal, self.started.elapsed());
                return Poll::Ready(Err(refusal));
            }
            match shared.limiter.check(self.cost, true) {
                Ok(snapshot) => {
                    shared.waited(self.cost, self.started.elapsed(), &snapshot);
                    return Poll::Ready(Ok(snapshot));
                }
                Err(Refusal::Limited(limited)) => {
                    let at = Instant::now().checked_add(limited.retry_after());
                    match at {
                        Some(at) if at <= self.deadline => {
                            if sleep.deadline() != at {
                                sleep.as_mut().reset(at);
                            }
                            ready!(sleep.as_mut().poll(cx));
                        }
                        _ => {
                            let refusal = Refusal::Limited(limited);
                            shared.refused(self.cost, &refusal, self.started.elapsed());
                            return Poll::Ready(Err(refusal));
                        }
                    }
                }
                Err(refusal) => {
                    // The quota shrank below the cost while it waited.
                    shared.refused(self.cost, &refusal, self.started.elapsed());
                    return Poll::Ready(Err(refusal));
                }
            }
        }
    }
}

impl<S, Req, R> Future for ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    type Output = Result<S::Response, R::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future, snapshot } => {
                    return Poll::Ready(match ready!(future.poll(cx)) {
                        Ok(mut response) => {
                            this.respond.admitted(snapshot, &mut response);
                            Ok(response)
                        }
                        Err(error) => Err(this.respond.error(error)),
                    });
                }
                StateProj::Answered { answer } => {
                    return Poll::Ready(
                        answer
                            .take()
                            .expect("ResponseFuture polled after it completed"),
                    );
                }
                StateProj::Waiting { wait } => {
                    let decision = ready!(wait.poll(cx));
                    let service = wait.service.take();
                    let request = wait.request.take();
                    match (decision, service) {
                        (Ok(snapshot), Some(service)) => {
                            // Leaves the queue (dropping the waiter), letting the next one
                            // check.
                            this.state.set(State::Readying {
                                service,
                                request,
                                snapshot,
                            });
                        }
                        (Err(refusal), _) => {
                            let request = request.expect("a waiting request is kept until decided");
                            this.state.set(State::Answered { answer: None });
                            return Poll::Ready(this.respond.refused(refusal, request));
                        }
                        (Ok(_), None) => unreachable!("a waiting service is kept until decided"),
                    }
                }
                StateProj::Readying {
                    service,
                    request,
                    snapshot,
                } => {
                    if let Err(error) = ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(this.respond.error(error)));
                    }
                    let request = request
                        .take()
                        .expect("ResponseFuture polled after it completed");
                    let future = service.call(request);
                    let snapshot = *snapshot;
                    this.state.set(State::Called { future, snapshot });
                }
            }
        }
    }
}

impl<S, Req, R> std::fmt::Debug for ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}
