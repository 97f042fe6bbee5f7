//! The emit future: runs a snapshot's handlers, concurrently or one by one, and reports.
//!
//! An emit borrows a *run* from its snapshot: one lane per handler, each holding that
//! handler's slot (where its future lives) and, while it waits, its timeout. Each handler is
//! started and polled once in place; one that finishes at once leaves its slot idle, so an
//! emit whose handlers never wait allocates nothing and boxes nothing. Those that wait stay
//! in their lanes and are polled again when the emit's task is woken. When every handler is
//! done the run goes back to the snapshot for the next emit.

use std::future::Future;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};
use tracing::Span;

use crate::bus::{Entry, EventBus, Snapshot};
use crate::event::Event;
use crate::handler::SlotBox;
use crate::observe::BusEvent;
use crate::report::{EmitReport, HandlerOutcome};

/// One handler's place in a run.
pub(crate) struct Lane<E> {
    slot: Option<SlotBox<E>>,
    timer: Option<Pin<Box<Sleep>>>,
    running: bool,
    // When the running call started; only with a listener, for its latency.
    started: Option<Instant>,
    // The handler waits with no timer to time it out (no tokio runtime, or the deadline
    // is out of range).
    untimed: bool,
}

impl<E> Lane<E> {
    fn idle() -> Self {
        Self {
            slot: None,
            timer: None,
            running: false,
            started: None,
            untimed: false,
        }
    }

    /// Back to idle after the call ended.
    #[inline]
    fn finish(&mut self) {
        self.running = false;
        self.untimed = false;
        self.timer = None;
    }

    /// Drops the slot: its state is unknown after a panic.
    fn discard(&mut self) {
        let slot = self.slot.take();
        if catch_unwind(AssertUnwindSafe(move || drop(slot))).is_err() {
            tracing::error!("a handler's future panicked while being dropped");
        }
    }

    /// Abandons the running call.
    fn stop(&mut self) {
        if let Some(slot) = self.slot.as_mut()
            && catch_unwind(AssertUnwindSafe(|| slot.as_mut().stop())).is_err()
        {
            tracing::error!("a handler's future panicked while being dropped");
            self.discard();
        }
        self.finish();
    }
}

/// One lane per handler of a snapshot.
pub(crate) struct Run<E> {
    lanes: Box<[Lane<E>]>,
}

impl<E> Run<E> {
    pub(crate) fn new(handlers: usize) -> Self {
        Self {
            lanes: (0..handlers).map(|_| Lane::idle()).collect(),
        }
    }
}

/// The future of [`EventBus::emit`] and [`EventBus::emit_serial`]; resolves to the
/// [`EmitReport`].
///
/// Handlers start when it is first polled, and run in the task that polls it. Dropping it
/// cancels (drops) the handlers still running.
#[must_use = "an emit does nothing unless awaited"]
pub struct Emit<'a, E: Event> {
    bus: &'a EventBus,
    snapshot: Option<Arc<Snapshot<E>>>,
    progress: Progress<E>,
    span: Span,
}

struct Progress<E> {
    event: Option<E>,
    run: Option<Run<E>>,
    // Every outcome but `Ok`, by handler index.
    exceptions: Vec<(usize, HandlerOutcome)>,
    // The next handler to start.
    next: usize,
    // Handlers started and not finished.
    running: usize,
    serial: bool,
    polled: bool,
    // Whether the bus has a listener: then each call's start is taken, for its latency.
    timed: bool,
    // When the waiting handlers' timeouts started; read once, when the first one waits.
    waiting_since: Option<Instant>,
}

// `Emit` never pins what it holds (the event is moved, never pinned; slots and timers are
// boxed), so it can be moved between polls whatever the event type.
impl<E: Event> Unpin for Emit<'_, E> {}

impl<'a, E: Event> Emit<'a, E> {
    pub(crate) fn new(
        bus: &'a EventBus,
        snapshot: Arc<Snapshot<E>>,
        event: E,
        serial: bool,
    ) -> Self {
        let span = tracing::debug_span!(
            "emit",
            event = E::NAME,
            handlers = snapshot.entries.len(),
            serial
        );
        Self {
            bus,
            snapshot: Some(snapshot),
            progress: Progress {
                event: Some(event),
                run: None,
                exceptions: Vec::new(),
                next: 0,
                running: 0,
                serial,
                polled: false,
                timed: false,
                waiting_since: None,
            },
            span,
        }
    }
}

impl<E: Event> std::fmt::Debug for Emit<'_, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emit")
            .field("event", &E::NAME)
            .field("serial", &self.progress.serial)
            .field("started", &self.progress.next)
            .field("running", &self.progress.running)
            .field("done", &self.snapshot.is_none())
            .finish()
    }
}

impl<E: Event> Future for Emit<'_, E> {
    type Output = EmitReport;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<EmitReport> {
        let this = self.get_mut();
        let _entered = this.span.enter();
        let snapshot = this
            .snapshot
            .as_deref()
            .expect("`Emit` polled after it completed");
        if this.progress.poll(this.bus, snapshot, cx).is_pending() {
            return Poll::Pending;
        }
        let Some(snapshot) = this.snapshot.take() else {
            unreachable!("checked above");
        };
        if let Some(run) = this.progress.run.take() {
            snapshot.put_run(run);
        }
        let exceptions = std::mem::take(&mut this.progress.exceptions);
        if !exceptions.is_empty() {
            tracing::debug!(exceptions = exceptions.len(), "not every handler succeeded");
        }
        Poll::Ready(EmitReport::new(E::NAME, snapshot, exceptions))
    }
}

impl<E: Event> Drop for Emit<'_, E> {
    fn drop(&mut self) {
        let (Some(snapshot), Some(mut run)) = (self.snapshot.take(), self.progress.run.take())
        else {
            return;
        };
        let mut cancelled = 0;
        for lane in run.lanes.iter_mut().filter(|lane| lane.running) {
            lane.stop();
            cancelled += 1;
        }
        if cancelled > 0 {
            tracing::debug!(parent: &self.span, cancelled, "emit dropped; running handlers cancelled");
        }
        snapshot.put_run(run);
    }
}

impl<E: Event> Progress<E> {
    /// Starts and drives handlers; `Ready` when all are done.
    #[inline]
    fn poll(&mut self, bus: &EventBus, snapshot: &Snapshot<E>, cx: &mut Context<'_>) -> Poll<()> {
        let entries = &snapshot.entries[..];
        let config = &bus.inner().config;
        if !self.polled {
            self.polled = true;
            if config.listener.is_some() {
                self.timed = true;
                config.report(|| BusEvent::Emitted {
                    event: E::NAME,
                    handlers: entries.len(),
                });
            }
            if entries.is_empty() {
                return Poll::Ready(());
            }
            self.run = Some(snapshot.take_run());
        }
        let Some(run) = self.run.as_mut() else {
            return Poll::Ready(());
        };
        let lanes = &mut run.lanes[..];

        if self.running > 0 {
            for (index, lane) in lanes.iter_mut().enumerate().take(self.next) {
                if !lane.running {
                    continue;
                }
                let entry = &entries[index];
                if let Poll::Ready(outcome) = poll_lane(lane, entry, &mut self.waiting_since, cx) {
                    let started = lane.started.take();
                    lane.finish();
                    self.running -= 1;
                    record(bus, entry, index, outcome, started, &mut self.exceptions);
                }
            }
        }

        while self.next < entries.len() && !(self.serial && self.running > 0) {
            let index = self.next;
            self.next += 1;
            let entry = &entries[index];
            if !entry.claim() {
                self.exceptions.push((index, HandlerOutcome::Unsubscribed));
                continue;
            }
            if entry.info.once {
                bus.inner().remove(entry.info.id, entry.info.key);
            }
            let event = if index + 1 == entries.len() {
                self.event.take()
            } else {
                self.event.clone()
            };
            let Some(event) = event else {
                unreachable!("the event is taken by the last handler only");
            };
            if self.serial {
                self.waiting_since = None;
            }
            let lane = &mut lanes[index];
            if self.timed {
                lane.started = Some(Instant::now());
            }
            match start_lane(lane, entry, event, &mut self.waiting_since, cx) {
                Poll::Ready(outcome) => {
                    let started = lane.started.take();
                    lane.finish();
                    record(bus, entry, index, outcome, started, &mut self.exceptions);
                }
                Poll::Pending => {
                    lane.running = true;
                    self.running += 1;
                }
            }
        }

        if self.running == 0 {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[inline]
fn start_lane<E: Event>(
    lane: &mut Lane<E>,
    entry: &Entry<E>,
    event: E,
    waiting_since: &mut Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<HandlerOutcome> {
    let started = catch_unwind(AssertUnwindSafe(|| {
        let slot = lane.slot.get_or_insert_with(|| entry.handler.new_slot());
        slot.as_mut().start(event);
    }));
    if let Err(payload) = started {
        lane.discard();
        return Poll::Ready(HandlerOutcome::Panicked(panic_message(&*payload)));
    }
    poll_lane(lane, entry, waiting_since, cx)
}

#[inline]
fn poll_lane<E: Event>(
    lane: &mut Lane<E>,
    entry: &Entry<E>,
    waiting_since: &mut Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<HandlerOutcome> {
    let Some(slot) = lane.slot.as_mut() else {
        return Poll::Ready(HandlerOutcome::Ok);
    };
    match catch_unwind(AssertUnwindSafe(|| slot.as_mut().poll_call(cx))) {
        Ok(Poll::Ready(Ok(()))) => Poll::Ready(HandlerOutcome::Ok),
        Ok(Poll::Ready(Err(error))) => Poll::Ready(HandlerOutcome::Failed(error)),
        Err(payload) => {
            lane.discard();
            Poll::Ready(HandlerOutcome::Panicked(panic_message(&*payload)))
        }
        Ok(Poll::Pending) => match entry.info.timeout {
            None => Poll::Pending,
            Some(timeout) => poll_timeout(lane, timeout, waiting_since, cx),
        },
    }
}

/// The handler waits: arms its timer if need be, and stops it if its time is up.
fn poll_timeout<E: Event>(
    lane: &mut Lane<E>,
    timeout: Duration,
    waiting_since: &mut Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<HandlerOutcome> {
    if lane.untimed {
        return Poll::Pending;
    }
    if lane.timer.is_none() {
        // First wait of this call.
        if tokio::runtime::Handle::try_current().is_err() {
            lane.untimed = true;
            tracing::warn!(
                ?timeout,
                "no tokio runtime: the handler's timeout is not enforced"
            );
            return Poll::Pending;
        }
        let since = *waiting_since.get_or_insert_with(Instant::now);
        let Some(deadline) = since.checked_add(timeout) else {
            lane.untimed = true;
            return Poll::Pending;
        };
        match lane.timer.as_mut() {
            Some(timer) => timer.as_mut().reset(deadline),
            None => lane.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
    let Some(timer) = lane.timer.as_mut() else {
        return Poll::Pending;
    };
    if timer.as_mut().poll(cx).is_pending() {
        return Poll::Pending;
    }
    lane.stop();
    Poll::Ready(HandlerOutcome::TimedOut(timeout))
}

/// Reports a handler's outcome to the listener and tracing, and keeps it for the report.
/// The common case (success, no listener) costs one check.
#[inline]
fn record<E: Event>(
    bus: &EventBus,
    entry: &Entry<E>,
    index: usize,
    outcome: HandlerOutcome,
    started: Option<Instant>,
    exceptions: &mut Vec<(usize, HandlerOutcome)>,
) {
    if matches!(outcome, HandlerOutcome::Ok) && bus.inner().config.listener.is_none() {
        return;
    }
    report_outcome(bus, entry, index, outcome, started, exceptions);
}

#[cold]
#[inline(never)]
fn report_outcome<E: Event>(
    bus: &EventBus,
    entry: &Entry<E>,
    index: usize,
    outcome: HandlerOutcome,
    started: Option<Instant>,
    exceptions: &mut Vec<(usize, HandlerOutcome)>,
) {
    let config = &bus.inner().config;
    config.report(|| BusEvent::HandlerFinished {
        event: E::NAME,
        handler: entry.info.id,
        name: Arc::clone(&entry.info.name),
        status: outcome.status(),
        latency: started.map(|started| started.elapsed()).unwrap_or_default(),
    });
    if let HandlerOutcome::Ok = outcome {
        return;
    }
    let (id, name) = (entry.info.id, &*entry.info.name);
    match &outcome {
        HandlerOutcome::Failed(error) => {
            tracing::warn!(event = E::NAME, handler = %id, name, %error, "event handler failed");
        }
        HandlerOutcome::Panicked(message) => {
            tracing::warn!(event = E::NAME, handler = %id, name, panic = %message, "event handler panicked");
        }
        HandlerOutcome::TimedOut(timeout) => {
            tracing::warn!(event = E::NAME, handler = %id, name, ?timeout, "event handler timed out");
        }
        _ => {}
    }
    exceptions.push((index, outcome));
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}
