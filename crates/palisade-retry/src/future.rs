//! The retry layer's response future.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::backoff::Delays;
use palisade_core::classify::{Classify, Outcome};
use palisade_core::reject::{Rejection, RetryAfter};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower_service::Service;
use tracing::Span;

use crate::error::{AttemptTimedOut, DeadlineExceeded};
use crate::event::RetryEvent;
use crate::replay::{Hint, Replay};
use crate::service::Shared;

pin_project! {
    /// The future of a [`Retry`](crate::Retry) call: a state machine that runs an attempt
    /// (and its hedge, if hedging is on), waits out a delay, waits for the inner service to
    /// be ready, and runs the next attempt, until an outcome is returned.
    ///
    /// Dropping it cancels the attempts or the wait in progress.
    pub struct ResponseFuture<S, Request, C, P>
    where
        S: Service<Request>,
    {
        // The running attempt, and its hedge once sent.
        #[pin]
        primary: Option<S::Future>,
        #[pin]
        hedge: Option<S::Future>,
        // The attempt's timeout (or the deadline) while an attempt runs; the delay between
        // attempts while waiting.
        #[pin]
        timer: Option<Sleep>,
        // When to send the hedge, while `hedge_due`.
        #[pin]
        hedge_timer: Option<Sleep>,
        phase: Phase,
        hedge_due: bool,
        service: S,
        // The copy kept to send again; `None` once no retry is possible.
        request: Option<Request>,
        shared: Arc<Shared<C, P>>,
        // Attempts sent so far, hedges included.
        attempt: u32,
        delays: Option<Delays>,
        // When the call started, if anything needs it.
        started: Option<Instant>,
        deadline: Option<Instant>,
        // When the current attempt started, if the classifier reads durations.
        attempt_started: Option<Instant>,
        span: Span,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// An attempt (and maybe its hedge) is in flight.
    Running,
    /// Waiting out the delay before the next attempt.
    Waiting,
    /// Waiting for the inner service to be ready for the next attempt.
    Readying,
}

/// Far enough to mean "never" without overflowing `Instant` (as tokio does).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

fn after(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .unwrap_or_else(|| now + FAR_FUTURE.min(delay))
}

fn arm(mut timer: Pin<&mut Option<Sleep>>, at: Instant) {
    match timer.as_mut().as_pin_mut() {
        Some(sleep) => sleep.reset(at),
        None => timer.set(Some(tokio::time::sleep_until(at))),
    }
}

impl<S, Request, C, P> ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
    C: Classify<S::Response, BoxError>,
    P: Replay<Request, S::Response>,
{
    /// Sends the first attempt on `service`, which the caller made ready.
    #[inline]
    pub(crate) fn new(mut service: S, request: Request, shared: Arc<Shared<C, P>>) -> Self {
        if let Some(budget) = &shared.budget {
            budget.deposit();
        }
        let config = &shared.config;
        let copy = if config.max_attempts.get() > 1 {
            shared.replay.replay(&request)
        } else {
            None
        };
        let timed_classify = shared.classify.uses_elapsed();
        let needs_clock = config.deadline.is_some()
            || config.attempt_timeout.is_some()
            || config.backoff.max_elapsed().is_some()
            || config.hedge.is_some()
            || timed_classify;
        let started = needs_clock.then(Instant::now);
        let deadline = match (started, config.deadline) {
            (Some(now), Some(deadline)) => Some(after(now, deadline)),
            _ => None,
        };
        let span = tracing::debug_span!("retry", attempt = 1u32);
        let future = {
            let _entered = span.enter();
            service.call(request)
        };
        let timer = started
            .and_then(|now| attempt_end(now, config.attempt_timeout, deadline))
            .map(tokio::time::sleep_until);
        let hedge_at = match (started, config.hedge) {
            (Some(now), Some(delay)) if copy.is_some() => Some(after(now, delay)),
            _ => None,
        };
        Self {
            primary: Some(future),
            hedge: None,
            timer,
            hedge_due: hedge_at.is_some(),
            hedge_timer: hedge_at.map(tokio::time::sleep_until),
            phase: Phase::Running,
            service,
            request: copy,
            attempt: 1,
            delays: None,
            started,
            deadline,
            attempt_started: started.filter(|_| timed_classify),
            span,
            shared,
        }
    }
}

/// When the attempt starting at `now` must be cut off, if ever.
fn attempt_end(
    now: Instant,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
) -> Option<Instant> {
    match (timeout.map(|t| after(now, t)), deadline) {
        (Some(end), Some(deadline)) => Some(end.min(deadline)),
        (end, deadline) => end.or(deadline),
    }
}

/// The next request to send: a fresh copy while more attempts may follow, else the kept one.
fn next_request<Request, Response, P: Replay<Request, Response>>(
    kept: &mut Option<Request>,
    replay: &P,
    more_may_follow: bool,
) -> Option<Request> {
    let fresh = if more_may_follow {
        kept.as_ref().and_then(|request| replay.replay(request))
    } else {
        None
    };
    fresh.or_else(|| kept.take())
}

impl<S, Request, C, P> Future for ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: Replay<Request, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let _entered = this.span.enter();
        let shared = &**this.shared;
        let config = &shared.config;
        let max_attempts = config.max_attempts.get();
        let timed = config.attempt_timeout.is_some() || this.deadline.is_some();
        loop {
            match *this.phase {
                Phase::Running => {
                    let mut outcome = None;
                    // The attempt and its hedge: the first outcome that is not a failure
                    // wins; a failure while the other still runs is dropped.
                    for hedge_slot in [false, true] {
                        let (mut slot, other_running) = if hedge_slot {
                            (this.hedge.as_mut(), this.primary.is_some())
                        } else {
                            (this.primary.as_mut(), this.hedge.is_some())
                        };
                        let Some(future) = slot.as_mut().as_pin_mut() else {
                            continue;
                        };
                        let Poll::Ready(result) = future.poll(cx) else {
                            continue;
                        };
                        slot.set(None);
                        let result = result.map_err(Into::into);
                        if other_running && is_failure(shared, &result, *this.attempt_started) {
                            tracing::debug!("an attempt failed while its hedge runs");
                            continue;
                        }
                        outcome = Some(result);
                        break;
                    }
                    let result = match outcome {
                        Some(result) => result,
                        None => {
                            if *this.hedge_due
                                && let Some(timer) = this.hedge_timer.as_mut().as_pin_mut()
                                && timer.poll(cx).is_ready()
                                && this
                                    .deadline
                                    .is_none_or(|deadline| Instant::now() < deadline)
                            {
                                match this.service.poll_ready(cx) {
                                    Poll::Pending => {}
                                    Poll::Ready(ready) => {
                                        *this.hedge_due = false;
                                        // A hedge is sent only if the service is ready,
                                        // and withdraws from the budget like a retry.
                                        let send = ready.is_ok()
                                            && shared
                                                .budget
                                                .as_ref()
                                                .is_none_or(|budget| budget.withdraw());
                                        if send {
                                            let more = *this.attempt + 1 < max_attempts;
                                            if let Some(request) =
                                                next_request(this.request, &shared.replay, more)
                                            {
                                                *this.attempt += 1;
                                                this.span.record("attempt", *this.attempt);
                                                tracing::debug!(attempt = *this.attempt, "hedging");
                                                shared.emit(RetryEvent::Hedged {
                                                    attempt: *this.attempt,
                                                });
                                                let future = this.service.call(request);
                                                this.hedge.set(Some(future));
                                                continue;
                                            }
                                        }
                                    }
                                }
                            }
                            let timer = this.timer.as_mut().as_pin_mut();
                            let Some(timer) = timer.filter(|_| timed) else {
                                return Poll::Pending;
                            };
                            ready!(timer.poll(cx));
                            // Cancel whatever still runs.
                            this.primary.set(None);
                            this.hedge.set(None);
                            Err(timed_out(
                                config.attempt_timeout,
                                config.deadline,
                                *this.deadline,
                            ))
                        }
                    };
                    // The loser, if any, is cancelled.
                    this.primary.set(None);
                    this.hedge.set(None);
                    *this.hedge_due = false;
                    let plan = Plan {
                        shared,
                        attempt: *this.attempt,
                        can_resend: this.request.is_some(),
                        started: *this.started,
                        deadline: *this.deadline,
                        attempt_started: *this.attempt_started,
                    };
                    match plan.next_delay::<_, Request>(&result, this.delays) {
                        None => {
                            return Poll::Ready(result.map(|mut response| {
                                shared.replay.record_attempts(&mut response, *this.attempt);
                                response
                            }));
                        }
                        Some(delay) => {
                            drop(result);
                            if delay.is_zero() {
                                if let Some(deadline) = *this.deadline {
                                    arm(this.timer.as_mut(), deadline);
                                }
                                *this.phase = Phase::Readying;
                            } else {
                                arm(this.timer.as_mut(), after(Instant::now(), delay));
                                *this.phase = Phase::Waiting;
                            }
                        }
                    }
                }
                Phase::Waiting => {
                    if let Some(timer) = this.timer.as_mut().as_pin_mut() {
                        ready!(timer.poll(cx));
                    }
                    // While waiting for readiness, the timer watches the deadline.
                    if let Some(deadline) = *this.deadline {
                        arm(this.timer.as_mut(), deadline);
                    }
                    *this.phase = Phase::Readying;
                }
                Phase::Readying => {
                    match this.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                        Poll::Pending => {
                            // The deadline passed before the inner service was ready: the
                            // retry never started.
                            if let (Some(after), Some(timer)) =
                                (config.deadline, this.timer.as_mut().as_pin_mut())
                            {
                                ready!(timer.poll(cx));
                                tracing::debug!(attempts = *this.attempt, "giving up");
                                shared.emit(RetryEvent::GaveUp {
                                    attempts: *this.attempt,
                                });
                                return Poll::Ready(Err(DeadlineExceeded::new(after).into()));
                            }
                            return Poll::Pending;
                        }
                    }
                    *this.attempt += 1;
                    this.span.record("attempt", *this.attempt);
                    let more = *this.attempt < max_attempts;
                    let request = next_request(this.request, &shared.replay, more)
                        .expect("a retry is only planned while a copy of the request is kept");
                    let now = (timed || config.hedge.is_some() || this.attempt_started.is_some())
                        .then(Instant::now);
                    if this.attempt_started.is_some() {
                        *this.attempt_started = now;
                    }
                    if let Some(end) =
                        now.and_then(|now| attempt_end(now, config.attempt_timeout, *this.deadline))
                    {
                        arm(this.timer.as_mut(), end);
                    }
                    if let (Some(now), Some(delay)) = (now, config.hedge)
                        && this.request.is_some()
                    {
                        arm(this.hedge_timer.as_mut(), after(now, delay));
                        *this.hedge_due = true;
                    }
                    let future = this.service.call(request);
                    this.primary.set(Some(future));
                    *this.phase = Phase::Running;
                }
            }
        }
    }
}

/// Whether `result` is a failure, which a hedge still running may yet replace.
fn is_failure<C, T>(
    shared: &Shared<C, impl Sized>,
    result: &Result<T, BoxError>,
    attempt_started: Option<Instant>,
) -> bool
where
    C: Classify<T, BoxError>,
{
    let elapsed = attempt_started.map_or(Duration::ZERO, |started| started.elapsed());
    shared.classify.classify(result.as_ref(), elapsed) == Outcome::Failure
}

/// The error of an attempt cut off by its timer.
fn timed_out(
    timeout: Option<Duration>,
    deadline_after: Option<Duration>,
    deadline: Option<Instant>,
) -> BoxError {
    match (deadline, deadline_after) {
        (Some(at), Some(after)) if Instant::now() >= at => DeadlineExceeded::new(after).into(),
        _ => AttemptTimedOut::new(timeout.unwrap_or_default()).into(),
    }
}

/// Decides, from a finished attempt, whether and when to retry.
struct Plan<'a, C, P> {
    shared: &'a Shared<C, P>,
    attempt: u32,
    can_resend: bool,
    started: Option<Instant>,
    deadline: Option<Instant>,
    attempt_started: Option<Instant>,
}

impl<C, P> Plan<'_, C, P> {
    /// The delay before the next attempt, or `None` to return `result`.
    fn next_delay<T, Request>(
        &self,
        result: &Result<T, BoxError>,
        delays: &mut Option<Delays>,
    ) -> Option<Duration>
    where
        C: Classify<T, BoxError>,
        P: Replay<Request, T>,
    {
        let shared = self.shared;
        let mut hint = Hint::Backoff;
        if let Err(error) = result {
            if error.is::<DeadlineExceeded>() {
                return self.give_up();
            }
            match Rejection::find(&**error) {
                // Retrying an open circuit only adds load: passed through, no budget spent.
                Some(Rejection::CircuitOpen(_)) => return None,
                Some(rejection) => {
                    if let Some(after) = rejection.retry_after() {
                        hint = Hint::After(after);
                    }
                }
                None => {}
            }
        }
        let elapsed = self
            .attempt_started
            .map_or(Duration::ZERO, |started| started.elapsed());
        if shared.classify.classify(result.as_ref(), elapsed) != Outcome::Failure {
            return None;
        }
        if let Ok(response) = result {
            hint = shared.replay.hint(response);
        }
        if hint == Hint::DoNotRetry
            || !self.can_resend
            || self.attempt >= shared.config.max_attempts.get()
        {
            return self.give_up();
        }
        let delays = delays.get_or_insert_with(|| shared.config.backoff.delays());
        let since_start = self
            .started
            .map_or(Duration::ZERO, |started| started.elapsed());
        let Some(backoff) = delays.next_after(since_start) else {
            return self.give_up();
        };
        let delay = match hint {
            Hint::After(after) => after,
            _ => backoff,
        };
        if let Some(deadline) = self.deadline {
            // A retry that could not finish before the deadline does not start.
            if Instant::now()
                .checked_add(delay)
                .is_none_or(|start| start >= deadline)
            {
                return self.give_up();
            }
        }
        if let Some(budget) = &shared.budget
            && !budget.withdraw()
        {
            tracing::debug!(attempts = self.attempt, "retry budget exhausted");
            shared.emit(RetryEvent::BudgetExhausted {
                attempts: self.attempt,
            });
            return None;
        }
        let attempt = self.attempt + 1;
        tracing::debug!(attempt, ?delay, "retrying");
        shared.emit(RetryEvent::Retrying { attempt, delay });
        Some(delay)
    }

    fn give_up(&self) -> Option<Duration> {
        tracing::debug!(attempts = self.attempt, "giving up");
        self.shared.emit(RetryEvent::GaveUp {
            attempts: self.attempt,
        });
        None
    }
}

impl<S, Request, C, P> std::fmt::Debug for ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("phase", &self.phase)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}
