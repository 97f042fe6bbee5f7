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
use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
use tracing::{Level, Span};

use crate::config::RetryConfig;
use crate::error::{AttemptTimedOut, DeadlineExceeded};
use crate::event::RetryEvent;
use crate::latency::Latencies;
use crate::replay::{Hint, Replay};
use crate::service::Shared;

pin_project! {
    /// The future of a [`Retry`](crate::Retry) call: a state machine that runs an attempt
    /// (and its hedge, if hedging is on), waits out a delay, waits for the inner service to
    /// be ready, and runs the next attempt, until an outcome is returned.
    ///
    /// Dropping it cancels the attempts or the wait in progress.
    ///
    /// It is small (the inner future, the inner service, the request's copy and four words),
    /// and a call whose first attempt succeeds takes a fast path: no timer, no clock reading
    /// unless the configuration needs one, and no allocation; the timers, a hedge and the
    /// backoff's state are boxed together when first needed. The one exception: while a
    /// `tracing` subscriber enables `DEBUG`, the call's `retry` span is boxed with them (one
    /// small allocation per call), so that calls without it do not move its 40 bytes around.
    pub struct ResponseFuture<S, Request, C, P>
    where
        S: Service<Request>,
    {
        // The running attempt.
        #[pin]
        primary: Option<S::Future>,
        phase: Phase,
        // Whether the running attempt may still be hedged.
        hedge_due: bool,
        // Attempts sent so far, hedges included.
        attempt: u32,
        service: S,
        // The copy kept to send again; `None` once no retry is possible.
        request: Option<Request>,
        shared: Arc<Shared<C, P>>,
        // When the call started, if anything needs it (the deadline is counted from it).
        started: Started,
        // What only a call that waits (or is traced) needs; empty until then (see `Waits`).
        waits: WaitsSlot<S::Future>,
    }
}

pin_project! {
    /// The state of a call that has to wait: boxed, and made only when the first attempt
    /// has to wait while a timer runs (a timeout, the deadline, a hedge delay) or when the
    /// first retry is decided, or with the call if it has a span. A call that completes at
    /// once neither allocates it nor moves it around.
    struct Waits<F> {
        // The hedge of the running attempt, once sent.
        #[pin]
        hedge: Option<F>,
        // The attempt's timeout (or the deadline) while an attempt runs; the delay between
        // attempts while waiting.
        #[pin]
        timer: Option<Sleep>,
        // When to send the hedge, while `hedge_due`.
        #[pin]
        hedge_timer: Option<Sleep>,
        delays: Option<Delays>,
        // When the running retry started, if the clock was read; the first attempt's start
        // is the call's.
        attempt_started: Option<Instant>,
        // The call's `retry` span, if a subscriber may want it (see `tracing_debug`).
        span: Option<Span>,
    }
}

/// A call's [`Waits`], once made.
type BoxedWaits<F> = Pin<Box<Waits<F>>>;

/// The slot of a call's [`Waits`], empty until they are made.
///
/// Dropped out of line: the drop of a response future (inlined where the future is polled
/// and dropped, as `now_or_never` does) is then a test of this pointer and the `Arc`'s
/// decrement, not the drop of timers and a span that a call which completes at once never
/// has.
struct WaitsSlot<F>(Option<BoxedWaits<F>>);

impl<F> Drop for WaitsSlot<F> {
    #[inline]
    fn drop(&mut self) {
        if let Some(waits) = self.0.take() {
            drop_waits(waits);
        }
    }
}

#[cold]
#[inline(never)]
fn drop_waits<F>(waits: Pin<Box<Waits<F>>>) {
    drop(waits);
}

impl<F> std::ops::Deref for WaitsSlot<F> {
    type Target = Option<Pin<Box<Waits<F>>>>;

    #[inline]
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<F> std::ops::DerefMut for WaitsSlot<F> {
    #[inline]
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// The call's [`Waits`], made on first use.
fn ensure_waits<F>(slot: &mut Option<Pin<Box<Waits<F>>>>) -> Pin<&mut Waits<F>> {
    slot.get_or_insert_with(|| new_waits(None)).as_mut()
}

fn new_waits<F>(span: Option<Span>) -> Pin<Box<Waits<F>>> {
    Box::pin(Waits {
        hedge: None,
        timer: None,
        hedge_timer: None,
        delays: None,
        attempt_started: None,
        span,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The first attempt is in flight, and [`poll`](Future::poll)'s fast path polls it:
    /// nothing else runs, no timer is set, the call has no span and records no latency.
    Fast,
    /// The first attempt is in flight, its timers (if any) not yet set; the state machine
    /// polls it (the call has a span to enter or a latency to record).
    First,
    /// An attempt (and maybe its hedge) is in flight.
    Running,
    /// Waiting out the delay before the next attempt.
    Waiting,
    /// Waiting for the inner service to be ready for the next attempt.
    Readying,
}

/// Far enough to mean "never" without overflowing `Instant` (as tokio does).
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

#[inline]
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
        // The copy to send again is made before the first attempt, which consumes the
        // request; none if no retry may follow.
        let copy = if shared.resend {
            shared.replay.replay(&request)
        } else {
            None
        };
        // Everything but the inner future is decided before the first attempt, as a few
        // scalars that stay in registers across the inner service's `call`; the future is
        // then written once, field by field, where the caller wants it (a value assembled
        // before `call` and moved after would cost store-forwarding stalls).
        let clock = shared.needs_clock || shared.classify.uses_elapsed();
        let started = Started::new(clock.then(Instant::now), shared.base);
        // The first attempt's timers are made only if it has to wait (see `poll`).
        let hedge_due = clock && shared.hedges && copy.is_some();
        let (phase, future, waits) = if tracing_debug() {
            let (future, waits) = traced_call(&mut service, request);
            (Phase::First, future, Some(waits))
        } else {
            let phase = if shared.records_latencies {
                Phase::First
            } else {
                Phase::Fast
            };
            (phase, service.call(request), None)
        };
        Self {
            primary: Some(future),
            phase,
            hedge_due,
            attempt: 1,
            service,
            request: copy,
            shared,
            started,
            waits: WaitsSlot(waits),
        }
    }
}

/// Whether a `tracing` subscriber may want the call's `retry` span: with none, or with
/// `DEBUG` off, a call pays nothing for it (a disabled span would still cost a few `log`
/// checks per call when `tracing`'s `log` feature is on, as soon as any crate in the build
/// turns it on).
#[inline]
fn tracing_debug() -> bool {
    Level::DEBUG <= STATIC_MAX_LEVEL && Level::DEBUG <= LevelFilter::current()
}

/// Sends the first attempt inside a new `retry` span, kept in the call's [`Waits`] (out of
/// line: the span's code stays off the path of calls without one).
#[cold]
#[inline(never)]
fn traced_call<S: Service<Request>, Request>(
    service: &mut S,
    request: Request,
) -> (S::Future, BoxedWaits<S::Future>) {
    let span = tracing::debug_span!("retry", attempt = 1u32);
    let future = {
        let _entered = span.enter();
        service.call(request)
    };
    (future, new_waits(Some(span)))
}

/// Records the attempt number in the call's span, if it has one.
fn record_attempt(span: &Option<Span>, attempt: u32) {
    if let Some(span) = span {
        span.record("attempt", attempt);
    }
}

/// When a call started: nanoseconds from its layer's `base` (8 bytes in every response
/// future, not an `Option<Instant>`'s 16), or `i64::MIN` if the clock was not read.
#[derive(Clone, Copy)]
struct Started(i64);

impl Started {
    #[inline]
    fn new(at: Option<Instant>, base: Instant) -> Self {
        let Some(at) = at else {
            return Self(i64::MIN);
        };
        let nanos = |span: Duration| i64::try_from(span.as_nanos()).unwrap_or(i64::MAX);
        Self(if at >= base {
            nanos(at - base)
        } else {
            -nanos(base - at)
        })
    }

    #[inline]
    fn get(self, base: Instant) -> Option<Instant> {
        if self.0 == i64::MIN {
            return None;
        }
        let offset = Duration::from_nanos(self.0.unsigned_abs());
        Some(if self.0 >= 0 {
            base + offset
        } else {
            base - offset
        })
    }
}

/// When the call that started at `started` must end, if it has a deadline.
#[inline]
fn deadline(started: Option<Instant>, config: &RetryConfig) -> Option<Instant> {
    Some(after(started?, config.deadline?))
}

/// When the running attempt started, if the classifier reads durations (`timed_classify`).
fn attempt_started<F>(
    timed_classify: bool,
    started: Option<Instant>,
    waits: Option<&Pin<Box<Waits<F>>>>,
) -> Option<Instant> {
    if !timed_classify {
        return None;
    }
    waits.and_then(|waits| waits.attempt_started).or(started)
}

/// When the attempt starting at `now` must be cut off, if ever.
#[inline]
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

/// What the fast path of [`ResponseFuture::poll`] learned from the first attempt before
/// handing over to the full state machine: `None` if it did not poll it, else what the
/// attempt's poll returned.
type Polled<T, E> = Option<Poll<Result<T, E>>>;

impl<S, Request, C, P> Future for ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: Replay<Request, S::Response>,
{
    type Output = Result<S::Response, BoxError>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The fast path: the first attempt while nothing else runs and no timer is set (no
        // hedge, no retry yet, no span, no latency to record). Its success is returned at
        // once; anything else (pending, failed) goes to the state machine, out of line,
        // which takes over what the attempt's poll returned.
        let mut this = self.as_mut().project();
        let mut handed = None;
        if *this.phase == Phase::Fast
            && let Some(primary) = this.primary.as_mut().as_pin_mut()
        {
            match primary.poll(cx) {
                Poll::Ready(Ok(mut response))
                    if !first_fails(this.shared, &response, *this.started) =>
                {
                    this.primary.set(None);
                    this.shared.replay.record_attempts(&mut response, 1);
                    return Poll::Ready(Ok(response));
                }
                polled => handed = Some(polled),
            }
        }
        // One call site for everything else (several made the returned value go through
        // the stack in pieces, which costs more than the call).
        self.poll_slow(cx, handed)
    }
}

/// Whether the first attempt's `response` is a failure (to retry).
#[inline]
fn first_fails<C, T>(shared: &Shared<C, impl Sized>, response: &T, started: Started) -> bool
where
    C: Classify<T, BoxError>,
{
    let elapsed = if shared.classify.uses_elapsed()
        && let Some(started) = started.get(shared.base)
    {
        started.elapsed()
    } else {
        Duration::ZERO
    };
    shared.classify.classify(Ok(response), elapsed) == Outcome::Failure
}

impl<S, Request, C, P> ResponseFuture<S, Request, C, P>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response, BoxError>,
    P: Replay<Request, S::Response>,
{
    /// The state machine; `first` is what [`poll`](Future::poll)'s fast path learned.
    #[inline(never)]
    fn poll_slow(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        first: Polled<S::Response, S::Error>,
    ) -> Poll<Result<S::Response, BoxError>> {
        // `None` if the fast path did not poll the first attempt, `Some(None)` if it is
        // pending, `Some(Some(result))` once it answered.
        let mut first = first.map(|polled| match polled {
            Poll::Ready(result) => Some(result.map_err(Into::into)),
            Poll::Pending => None,
        });
        let mut this = self.project();
        // A clone, so that the state machine below may borrow the `Waits` holding it.
        let span = this.waits.as_ref().and_then(|waits| waits.span.clone());
        let _entered = span.as_ref().map(Span::enter);
        let shared = &**this.shared;
        let config = &shared.config;
        let max_attempts = config.max_attempts.get();
        let started = this.started.get(shared.base);
        let deadline = deadline(started, config);
        let timed = config.attempt_timeout.is_some() || deadline.is_some();
        let timed_classify = shared.classify.uses_elapsed();
        loop {
            match *this.phase {
                Phase::Fast | Phase::First | Phase::Running => {
                    // The attempt and its hedge: the first outcome that is not a failure
                    // wins; a failure while the other still runs is dropped.
                    let attempt_started =
                        attempt_started(timed_classify, started, this.waits.as_ref());
                    let hedge_running = this.waits.as_ref().is_some_and(|w| w.hedge.is_some());
                    let mut outcome = match first.take() {
                        // Polled by the fast path: no hedge runs.
                        Some(polled) => polled,
                        None => poll_attempt(
                            this.primary.as_mut(),
                            cx,
                            hedge_running,
                            shared,
                            attempt_started,
                        ),
                    };
                    if outcome.is_none()
                        && let Some(waits) = this.waits.as_mut()
                    {
                        outcome = poll_attempt(
                            waits.as_mut().project().hedge,
                            cx,
                            this.primary.is_some(),
                            shared,
                            attempt_started,
                        );
                    }
                    let answered = outcome.is_some();
                    let result = match outcome {
                        Some(result) => result,
                        None => {
                            let first_attempt = matches!(*this.phase, Phase::Fast | Phase::First);
                            if first_attempt && (timed || *this.hedge_due) {
                                // The first attempt has to wait: its timers start now.
                                *this.phase = Phase::Running;
                                let started = started.expect("timers are set only with a clock");
                                let waits = ensure_waits(this.waits).project();
                                if let Some(end) =
                                    attempt_end(started, config.attempt_timeout, deadline)
                                {
                                    arm(waits.timer, end);
                                }
                                if let (true, Some(delay)) = (*this.hedge_due, shared.hedge_delay())
                                {
                                    arm(waits.hedge_timer, after(started, delay));
                                }
                            }
                            let Some(waits) = this.waits.as_mut() else {
                                return Poll::Pending;
                            };
                            let mut waits = waits.as_mut().project();
                            if *this.hedge_due
                                && let Some(timer) = waits.hedge_timer.as_mut().as_pin_mut()
                                && timer.poll(cx).is_ready()
                                && deadline.is_none_or(|deadline| Instant::now() < deadline)
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
                                                record_attempt(waits.span, *this.attempt);
                                                tracing::debug!(attempt = *this.attempt, "hedging");
                                                shared.emit(RetryEvent::Hedged {
                                                    attempt: *this.attempt,
                                                });
                                                let future = this.service.call(request);
                                                waits.hedge.set(Some(future));
                                                continue;
                                            }
                                        }
                                    }
                                }
                            }
                            let timer = waits.timer.as_mut().as_pin_mut();
                            let Some(timer) = timer.filter(|_| timed) else {
                                return Poll::Pending;
                            };
                            ready!(timer.poll(cx));
                            Err(timed_out(config.attempt_timeout, config.deadline, deadline))
                        }
                    };
                    if answered && let Some(latencies) = &shared.latencies {
                        record_latency(latencies, shared, &result, started, this.waits);
                    }
                    // Whatever still runs (the loser, or both when cut off) is cancelled.
                    this.primary.set(None);
                    if let Some(waits) = this.waits.as_mut() {
                        waits.as_mut().project().hedge.set(None);
                    }
                    *this.hedge_due = false;
                    let plan = Plan {
                        shared,
                        attempt: *this.attempt,
                        can_resend: this.request.is_some(),
                        started,
                        deadline,
                        attempt_started,
                    };
                    match plan.next_delay::<_, Request, _>(&result, this.waits) {
                        None => {
                            return Poll::Ready(result.map(|mut response| {
                                shared.replay.record_attempts(&mut response, *this.attempt);
                                response
                            }));
                        }
                        Some(delay) => {
                            drop(result);
                            let timer = ensure_waits(this.waits).project().timer;
                            if delay.is_zero() {
                                if let Some(deadline) = deadline {
                                    arm(timer, deadline);
                                }
                                *this.phase = Phase::Readying;
                            } else {
                                arm(timer, after(Instant::now(), delay));
                                *this.phase = Phase::Waiting;
                            }
                        }
                    }
                }
                Phase::Waiting => {
                    let mut waits = ensure_waits(this.waits).project();
                    if let Some(timer) = waits.timer.as_mut().as_pin_mut() {
                        ready!(timer.poll(cx));
                    }
                    // While waiting for readiness, the timer watches the deadline.
                    if let Some(deadline) = deadline {
                        arm(waits.timer, deadline);
                    }
                    *this.phase = Phase::Readying;
                }
                Phase::Readying => {
                    let mut waits = ensure_waits(this.waits).project();
                    match this.service.poll_ready(cx) {
                        Poll::Ready(Ok(())) => {}
                        Poll::Ready(Err(error)) => return Poll::Ready(Err(error.into())),
                        Poll::Pending => {
                            // The deadline passed before the inner service was ready: the
                            // retry never started.
                            if let (Some(after), Some(timer)) =
                                (config.deadline, waits.timer.as_mut().as_pin_mut())
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
                    record_attempt(waits.span, *this.attempt);
                    let more = *this.attempt < max_attempts;
                    let request = next_request(this.request, &shared.replay, more)
                        .expect("a retry is only planned while a copy of the request is kept");
                    let now =
                        (timed || config.hedge.is_some() || timed_classify).then(Instant::now);
                    *waits.attempt_started = now;
                    if let Some(end) =
                        now.and_then(|now| attempt_end(now, config.attempt_timeout, deadline))
                    {
                        arm(waits.timer, end);
                    }
                    if let (Some(now), Some(delay)) = (now, shared.hedge_delay())
                        && this.request.is_some()
                    {
                        arm(waits.hedge_timer, after(now, delay));
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

/// Polls one attempt: its outcome once it has one, unless that is a failure while the
/// `other` attempt still runs (the failed attempt is then dropped and the other awaited).
fn poll_attempt<F, T, E, C>(
    mut slot: Pin<&mut Option<F>>,
    cx: &mut Context<'_>,
    other_running: bool,
    shared: &Shared<C, impl Sized>,
    attempt_started: Option<Instant>,
) -> Option<Result<T, BoxError>>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
    C: Classify<T, BoxError>,
{
    let Poll::Ready(result) = slot.as_mut().as_pin_mut()?.poll(cx) else {
        return None;
    };
    slot.set(None);
    let result = result.map_err(Into::into);
    if other_running && is_failure(shared, &result, attempt_started) {
        tracing::debug!("an attempt failed while its hedge runs");
        return None;
    }
    Some(result)
}

/// Records how long the running attempt took to answer, unless it failed (hedging at a
/// latency percentile).
fn record_latency<C, T, F>(
    latencies: &Latencies,
    shared: &Shared<C, impl Sized>,
    result: &Result<T, BoxError>,
    started: Option<Instant>,
    waits: &Option<Pin<Box<Waits<F>>>>,
) where
    C: Classify<T, BoxError>,
{
    // A retry's start, else the call's (the first attempt's).
    let Some(start) = waits
        .as_ref()
        .and_then(|waits| waits.attempt_started)
        .or(started)
    else {
        return;
    };
    if !is_failure(shared, result, Some(start)) {
        latencies.record(start.elapsed());
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
    fn next_delay<T, Request, F>(
        &self,
        result: &Result<T, BoxError>,
        waits_slot: &mut Option<Pin<Box<Waits<F>>>>,
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
        let delays = ensure_waits(waits_slot)
            .project()
            .delays
            .get_or_insert_with(|| shared.config.backoff.delays());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_start_is_kept_exactly_before_or_after_the_base() {
        let base = Instant::now();
        let offset = Duration::new(3, 141_592_653);
        for at in [base, base + offset, base - offset] {
            assert_eq!(Started::new(Some(at), base).get(base), Some(at));
        }
        assert_eq!(Started::new(None, base).get(base), None);
    }
}
