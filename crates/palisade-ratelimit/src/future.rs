//! The rate-limited service's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;

use crate::decision::{Refusal, Snapshot};
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
    #[project_replace = StateReplace]
    enum State<S, Req, R>
    where
        S: Service<Req>,
        R: Respond<Req, S::Response, S::Error>,
    {
        // Admitted, for a `Respond` that does not read the snapshot.
        Passed {
            #[pin]
            future: S::Future,
        },
        Called {
            #[pin]
            future: S::Future,
            snapshot: Snapshot,
        },
        Answered {
            answer: Option<Result<S::Response, R::Error>>,
        },
        // Boxed: a timer entry, the service clone and the request are large, and only
        // waiting requests need them, so the futures of admitted requests stay small (and
        // cheap to move). One allocation per waiting request.
        Waiting {
            wait: Pin<Box<Wait<S, Req>>>,
        },
        // Admitted after waiting: readies its service clone and calls it.
        Readying {
            wait: Pin<Box<Wait<S, Req>>>,
            snapshot: Snapshot,
        },
    }
}

pin_project! {
    /// A request in the wait queue, with the service clone that will take it.
    struct Wait<S, Req> {
        #[pin]
        sleep: Sleep,
        // Its place in the queue: taken (leaving the queue) once decided.
        waiter: Option<Waiter>,
        service: S,
        request: Option<Req>,
        cost: u32,
        started: Instant,
        deadline: Instant,
    }
}

impl<S, Req, R> ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    /// Admitted, without a snapshot (the [`Respond`] does not read it).
    #[inline]
    pub(crate) fn passed(future: S::Future, respond: R) -> Self {
        Self {
            state: State::Passed { future },
            respond,
        }
    }

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
                wait: Box::pin(Wait {
                    sleep: tokio::time::sleep_until(deadline),
                    waiter: Some(Waiter::join(shared, cost)),
                    service,
                    request: Some(request),
                    cost,
                    started,
                    deadline,
                }),
            },
            respond,
        }
    }
}

impl<S, Req> Wait<S, Req> {
    /// Waits to reach the front of the queue, then for the limiter to admit the request;
    /// refuses it as soon as it is clear that cannot happen by the deadline. Either way it
    /// leaves the queue once decided.
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<Snapshot, Refusal>> {
        let this = self.project();
        let decision = ready!(Self::decide(
            this.waiter,
            this.sleep,
            *this.cost,
            *this.started,
            *this.deadline,
            cx
        ));
        // Leaves the queue, letting the next one check.
        this.waiter.take();
        Poll::Ready(decision)
    }

    fn decide(
        waiter: &Option<Waiter>,
        mut sleep: Pin<&mut Sleep>,
        cost: u32,
        started: Instant,
        deadline: Instant,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Snapshot, Refusal>> {
        let Some(waiter) = waiter else {
            unreachable!("ResponseFuture polled after its wait was decided");
        };
        let shared = waiter.shared();
        loop {
            if !waiter.poll_front(cx.waker()) {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                ready!(sleep.as_mut().poll(cx));
                // The deadline passed behind other waiters: they go first, so even with
                // capacity free now, the retry-after counts what they will take.
                let refusal = shared.limiter.behind(cost, waiter.cost_ahead());
                shared.refused(cost, &refusal, started.elapsed());
                return Poll::Ready(Err(refusal));
            }
            match shared.limiter.check(cost, true) {
                Ok(snapshot) => {
                    shared.waited(cost, started.elapsed(), &snapshot);
                    return Poll::Ready(Ok(snapshot));
                }
                Err(Refusal::Limited(limited)) => {
                    let at = Instant::now().checked_add(limited.retry_after());
                    match at {
                        Some(at) if at <= deadline => {
                            if sleep.deadline() != at {
                                sleep.as_mut().reset(at);
                            }
                            ready!(sleep.as_mut().poll(cx));
                        }
                        _ => {
                            let refusal = Refusal::Limited(limited);
                            shared.refused(cost, &refusal, started.elapsed());
                            return Poll::Ready(Err(refusal));
                        }
                    }
                }
                Err(refusal) => {
                    // The quota shrank below the cost while it waited.
                    shared.refused(cost, &refusal, started.elapsed());
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
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The admitted path first, on its own: the waiting states live in `poll_slow`, out
        // of line, so the common case stays small.
        let this = self.as_mut().project();
        match this.state.project() {
            StateProj::Passed { future } => {
                return Poll::Ready(ready!(future.poll(cx)).map_err(|e| this.respond.error(e)));
            }
            StateProj::Called { future, snapshot } => {
                return Poll::Ready(match ready!(future.poll(cx)) {
                    Ok(mut response) => {
                        this.respond.admitted(snapshot, &mut response);
                        Ok(response)
                    }
                    Err(error) => Err(this.respond.error(error)),
                });
            }
            _ => {}
        }
        self.poll_slow(cx)
    }
}

impl<S, Req, R> ResponseFuture<S, Req, R>
where
    S: Service<Req>,
    R: Respond<Req, S::Response, S::Error>,
{
    /// Every state but `Passed` and `Called`: answered, waiting, readying after a wait.
    #[inline(never)]
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<S::Response, R::Error>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Passed { future } => {
                    return Poll::Ready(ready!(future.poll(cx)).map_err(|e| this.respond.error(e)));
                }
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
                StateProj::Waiting { wait } => match ready!(wait.as_mut().poll(cx)) {
                    Ok(snapshot) => {
                        let StateReplace::Waiting { wait } = this
                            .state
                            .as_mut()
                            .project_replace(State::Answered { answer: None })
                        else {
                            unreachable!("the state was just matched as waiting");
                        };
                        this.state.set(State::Readying { wait, snapshot });
                    }
                    Err(refusal) => {
                        let request = wait
                            .as_mut()
                            .project()
                            .request
                            .take()
                            .expect("a waiting request is kept until decided");
                        this.state.set(State::Answered { answer: None });
                        return Poll::Ready(this.respond.refused(refusal, request));
                    }
                },
                StateProj::Readying { wait, snapshot } => {
                    let wait = wait.as_mut().project();
                    if let Err(error) = ready!(wait.service.poll_ready(cx)) {
                        return Poll::Ready(Err(this.respond.error(error)));
                    }
                    let request = wait
                        .request
                        .take()
                        .expect("ResponseFuture polled after it completed");
                    let future = wait.service.call(request);
                    if R::READS_SNAPSHOT {
                        let snapshot = *snapshot;
                        this.state.set(State::Called { future, snapshot });
                    } else {
                        this.state.set(State::Passed { future });
                    }
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
