//! Fire-and-forget: the bounded publish queue, its dispatcher task, and dead letters.
//!
//! `publish` puts the event on a bounded `tokio::sync::mpsc` queue; a dispatcher task,
//! spawned on the first publish, takes events off it and emits them. Nothing is dropped
//! silently: a full queue makes the publisher wait or fail (as configured), a published
//! event whose handlers fail goes to the dead-letter callback, the listener and the logs,
//! and an event that is not dispatched is reported as lost, whatever the reason: the last
//! handle to the bus was dropped, the dispatcher's runtime shut down, or something outside
//! the handlers panicked while dispatching it.
//!
//! Each queued event carries a `Ticket`. Dropping the ticket, dispatched or not, takes the
//! event off the count that `flush` waits on, and reports the event lost if it was not
//! dispatched; so no path (panic, cancellation, shutdown) leaves `flush` waiting for an
//! event that is gone. A panic while dispatching is caught: the dispatcher goes on.
//!
//! Handlers of published events run on the dispatcher. One that publishes on its own bus
//! while the queue is full must not wait for room: only the dispatcher frees room, and it is
//! busy running that handler. So the dispatcher's work runs under a task-local mark, and a
//! `publish` under the mark that finds the queue full puts its event in an *overflow* list
//! instead. Every queued event gets a sequence number, and the dispatcher takes the older of
//! the queue's next event and the overflow's: events are dispatched in the order they were
//! queued, and the overflow cannot be starved by publishers that keep the queue full.

use std::collections::VecDeque;
use std::future::{Future, poll_fn};
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll};

use palisade_core::event::Listener;
use palisade_core::reject::Overloaded;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::bus::{EventBus, Inner};
use crate::config::WhenFull;
use crate::emit::panic_message;
use crate::event::{AnyEvent, Event};
use crate::observe::{BusEvent, tell};
use crate::report::EmitReport;

/// `publish` did not queue the event; the caller still has to decide what to do with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The queue is full ([`WhenFull::Reject`], or [`EventBus::try_publish`]). Its source
    /// is core's [`Overloaded`], so `Rejection::find` recognises it.
    #[error("event queue full ({capacity} events waiting); `{event}` was not published")]
    QueueFull {
        /// The event's name.
        event: &'static str,
        /// The queue's capacity.
        capacity: usize,
        /// The suite's rejection for a component at capacity.
        #[source]
        overloaded: Overloaded,
    },
    /// `publish` was called outside a tokio runtime before the dispatcher was started:
    /// there is nowhere to run it.
    #[error("no tokio runtime to run the event dispatcher; `{event}` was not published")]
    NoRuntime {
        /// The event's name.
        event: &'static str,
    },
    /// The dispatcher has stopped (the runtime it was spawned on shut down).
    #[error("the event dispatcher has stopped; `{event}` was not published")]
    Closed {
        /// The event's name.
        event: &'static str,
    },
}

/// A published event that some handlers failed, panicked or timed out on, with the report;
/// passed to the callback set with
/// [`EventBusBuilder::on_dead_letter`](crate::EventBusBuilder::on_dead_letter).
#[derive(Debug)]
pub struct DeadLetter {
    event: AnyEvent,
    report: EmitReport,
}

impl DeadLetter {
    /// The event (downcast it, or publish it again).
    pub fn event(&self) -> &AnyEvent {
        &self.event
    }

    /// Every handler's outcome.
    pub fn report(&self) -> &EmitReport {
        &self.report
    }

    /// The event and the report.
    pub fn into_parts(self) -> (AnyEvent, EmitReport) {
        (self.event, self.report)
    }
}

/// A published event, type-erased, waiting for the dispatcher.
trait Job: Send {
    fn dispatch(self: Box<Self>, bus: EventBus) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

struct Published<E> {
    event: E,
    ticket: Ticket,
}

impl<E: Event> Job for Published<E> {
    fn dispatch(self: Box<Self>, bus: EventBus) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let Published { event, ticket } = *self;
        Box::pin(async move {
            let inner = bus.inner();
            let copy = inner
                .config
                .dead_letters
                .is_some()
                .then(|| AnyEvent::new(event.clone()));
            let report = bus.emit(event).await;
            if !report.is_ok() {
                dead_letter(inner, copy, report);
            }
            ticket.dispatched();
        })
    }
}

fn dead_letter(inner: &Inner, copy: Option<AnyEvent>, report: EmitReport) {
    let failures = report.failures().count();
    tracing::warn!(
        event = report.event(),
        failures,
        "a published event's handlers failed (dead letter)"
    );
    inner.config.report(|| BusEvent::DeadLetter {
        event: report.event(),
        failures,
    });
    if let (Some(callback), Some(event)) = (&inner.config.dead_letters, copy) {
        let letter = DeadLetter { event, report };
        if catch_unwind(AssertUnwindSafe(|| callback(letter))).is_err() {
            tracing::error!("the dead-letter callback panicked");
        }
    }
}

/// A queued event: counted by `flush` until the ticket is dropped, reported lost if it is
/// dropped before the event was dispatched.
struct Ticket {
    shared: Arc<Shared>,
    event: &'static str,
    dispatched: bool,
}

impl Ticket {
    /// The event's handlers have all run and its failures were reported.
    fn dispatched(mut self) {
        self.dispatched = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.dispatched {
            let event = self.event;
            tracing::warn!(
                event,
                "published event lost: not dispatched (the bus was dropped, the dispatcher's \
                 runtime shut down, or dispatching it panicked)"
            );
            if let Some(listener) = &self.shared.listener {
                tell(&**listener, &BusEvent::Lost { event });
            }
        }
        self.shared.done();
    }
}

/// A queued event and its place in the order.
struct Queued {
    seq: u64,
    job: Box<dyn Job>,
}

/// Events that handlers of published events published while the queue was full.
#[derive(Default)]
struct Overflow {
    jobs: VecDeque<Queued>,
    // The dispatcher has stopped: nothing may be added.
    closed: bool,
}

/// What the bus, its dispatcher and every queued event share.
struct Shared {
    // Published and not yet dispatched or lost.
    depth: AtomicUsize,
    idle: Notify,
    next_seq: AtomicU64,
    overflow: Mutex<Overflow>,
    // Wakes the dispatcher for an event put in the overflow.
    overflowed: Notify,
    listener: Option<Arc<dyn Listener<BusEvent>>>,
}

impl Shared {
    /// Counts a new event in; its ticket and the new count.
    fn admit(self: &Arc<Self>, event: &'static str) -> (Ticket, usize) {
        let queued = self.depth.fetch_add(1, Ordering::AcqRel) + 1;
        let ticket = Ticket {
            shared: Arc::clone(self),
            event,
            dispatched: false,
        };
        (ticket, queued)
    }

    fn done(&self) {
        if self.depth.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }

    fn overflow(&self) -> MutexGuard<'_, Overflow> {
        // Nothing panics while holding the lock, but a poisoned list is still consistent.
        self.overflow.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The overflow's next event, if it was queued before the event numbered `before`.
    fn overflowed_before(&self, before: Option<u64>) -> Option<Queued> {
        let mut overflow = self.overflow();
        match (overflow.jobs.front(), before) {
            (Some(front), Some(before)) if front.seq > before => None,
            _ => overflow.jobs.pop_front(),
        }
    }
}

/// The queue of published events.
pub(crate) struct Queue {
    sender: mpsc::Sender<Queued>,
    // Until the dispatcher takes it.
    receiver: Mutex<Option<mpsc::Receiver<Queued>>>,
    started: AtomicBool,
    capacity: usize,
    shared: Arc<Shared>,
}

impl Queue {
    pub(crate) fn new(
        capacity: NonZeroUsize,
        listener: Option<Arc<dyn Listener<BusEvent>>>,
    ) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.get());
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            started: AtomicBool::new(false),
            capacity: capacity.get(),
            shared: Arc::new(Shared {
                depth: AtomicUsize::new(0),
                idle: Notify::new(),
                next_seq: AtomicU64::new(0),
                overflow: Mutex::new(Overflow::default()),
                overflowed: Notify::new(),
                listener,
            }),
        }
    }
}

tokio::task_local! {
    /// Set while the dispatcher of the bus at this address runs a published event.
    static DISPATCHING: usize;
}

/// Tells buses apart while they live (the address of their shared state).
fn address(inner: &Arc<Inner>) -> usize {
    Arc::as_ptr(inner).addr()
}

impl Inner {
    /// Spawns the dispatcher on the current runtime, once.
    fn start_dispatcher(self: &Arc<Self>, event: &'static str) -> Result<(), PublishError> {
        if self.queue.started.load(Ordering::Acquire) {
            return Ok(());
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(PublishError::NoRuntime { event });
        };
        let receiver = self
            .queue
            .receiver
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(receiver) = receiver {
            self.queue.started.store(true, Ordering::Release);
            let dispatcher = Dispatcher {
                bus: Arc::downgrade(self),
                address: address(self),
                receiver,
                shared: Arc::clone(&self.queue.shared),
                ahead: None,
            };
            runtime.spawn(dispatcher.run(self.config.dispatch_concurrency.get()));
            tracing::debug!("event dispatcher started");
        }
        Ok(())
    }

    /// Whether this runs in a dispatch of this bus's dispatcher.
    fn in_dispatcher(self: &Arc<Self>) -> bool {
        DISPATCHING
            .try_with(|dispatching| *dispatching == address(self))
            .unwrap_or(false)
    }

    fn enqueue<E: Event>(&self, permit: mpsc::Permit<'_, Queued>, event: E) {
        let shared = &self.queue.shared;
        let (ticket, queued) = shared.admit(E::NAME);
        let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
        permit.send(Queued {
            seq,
            job: Box::new(Published { event, ticket }),
        });
        self.config.report(|| BusEvent::Published {
            event: E::NAME,
            queued,
        });
    }

    /// `publish` from a handler of a published event: never waits for the dispatcher.
    fn publish_from_dispatcher<E: Event>(&self, event: E) -> Result<(), PublishError> {
        match self.queue.sender.try_reserve() {
            Ok(permit) => {
                self.enqueue(permit, event);
                return Ok(());
            }
            Err(mpsc::error::TrySendError::Full(())) => {}
            Err(mpsc::error::TrySendError::Closed(())) => {
                return Err(self.rejected(PublishError::Closed { event: E::NAME }));
            }
        }
        let shared = &self.queue.shared;
        let queued = {
            let mut overflow = shared.overflow();
            if overflow.closed {
                None
            } else {
                let (ticket, queued) = shared.admit(E::NAME);
                let seq = shared.next_seq.fetch_add(1, Ordering::Relaxed);
                overflow.jobs.push_back(Queued {
                    seq,
                    job: Box::new(Published { event, ticket }),
                });
                Some(queued)
            }
        };
        let Some(queued) = queued else {
            return Err(self.rejected(PublishError::Closed { event: E::NAME }));
        };
        shared.overflowed.notify_one();
        tracing::debug!(
            event = E::NAME,
            queued,
            "queue full: an event published by a handler of a published event overflows"
        );
        self.config.report(|| BusEvent::Published {
            event: E::NAME,
            queued,
        });
        Ok(())
    }

    fn rejected(&self, error: PublishError) -> PublishError {
        let event = match &error {
            PublishError::QueueFull { event, .. }
            | PublishError::NoRuntime { event }
            | PublishError::Closed { event } => *event,
        };
        tracing::warn!(event, %error, "event not published");
        self.config.report(|| BusEvent::PublishRejected { event });
        error
    }

    fn full(&self, event: &'static str) -> PublishError {
        PublishError::QueueFull {
            event,
            capacity: self.queue.capacity,
            overloaded: Overloaded::new(),
        }
    }
}

impl EventBus {
    /// Puts `event` on the bounded queue, for the background dispatcher to emit to its
    /// handlers later (one event at a time, in the order they were queued, by default); the
    /// publisher does not wait for the handlers.
    ///
    /// When the queue is full it waits for room ([`WhenFull::Wait`], the default) or fails
    /// at once ([`WhenFull::Reject`]). The dispatcher is spawned on the current tokio runtime
    /// by the first publish. Failures of the handlers are reported to the dead-letter
    /// callback, the listener and the logs; [`flush`](Self::flush) waits until everything
    /// published has been dispatched.
    ///
    /// A handler of a published event may publish follow-up events on the same bus: it never
    /// waits for room, which only the dispatcher running it could free. With
    /// [`WhenFull::Wait`] its event goes into an overflow when the queue is full (beyond the
    /// capacity, and dispatched in its turn); with [`WhenFull::Reject`] it gets
    /// [`PublishError::QueueFull`]. (A task the handler spawns is not the dispatcher: its
    /// `publish` waits as usual.)
    ///
    /// # Errors
    ///
    /// [`PublishError::QueueFull`] (only with [`WhenFull::Reject`]), or
    /// [`PublishError::NoRuntime`] / [`PublishError::Closed`] when there is no dispatcher to
    /// run it.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), PublishError> {
        let inner = self.inner();
        if inner.config.when_full == WhenFull::Reject {
            return self.try_publish(event);
        }
        if let Err(error) = inner.start_dispatcher(E::NAME) {
            return Err(inner.rejected(error));
        }
        if inner.in_dispatcher() {
            return inner.publish_from_dispatcher(event);
        }
        match inner.queue.sender.reserve().await {
            Ok(permit) => {
                inner.enqueue(permit, event);
                Ok(())
            }
            Err(_) => Err(inner.rejected(PublishError::Closed { event: E::NAME })),
        }
    }

    /// Puts `event` on the queue if there is room, without waiting, whatever the
    /// [`WhenFull`] setting.
    ///
    /// # Errors
    ///
    /// [`PublishError::QueueFull`] when the queue is full; [`PublishError::NoRuntime`] /
    /// [`PublishError::Closed`] when there is no dispatcher to run it.
    pub fn try_publish<E: Event>(&self, event: E) -> Result<(), PublishError> {
        let inner = self.inner();
        if let Err(error) = inner.start_dispatcher(E::NAME) {
            return Err(inner.rejected(error));
        }
        match inner.queue.sender.try_reserve() {
            Ok(permit) => {
                inner.enqueue(permit, event);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(())) => Err(inner.rejected(inner.full(E::NAME))),
            Err(mpsc::error::TrySendError::Closed(())) => {
                Err(inner.rejected(PublishError::Closed { event: E::NAME }))
            }
        }
    }

    /// Waits until every event published so far has been dispatched (its handlers have
    /// finished and its failures, if any, were reported) or reported lost.
    ///
    /// Call it before dropping the bus to deliver everything. Do not call it from a handler
    /// of a published event: it would wait for itself.
    pub async fn flush(&self) {
        let shared = &self.inner().queue.shared;
        loop {
            let mut idle = pin!(shared.idle.notified());
            idle.as_mut().enable();
            if shared.depth.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// How many published events are waiting or being dispatched.
    pub fn queued(&self) -> usize {
        self.inner().queue.shared.depth.load(Ordering::Acquire)
    }
}

/// The dispatcher task's state. Dropping it (the bus is gone, or the runtime shut down)
/// drops every event still queued, and their tickets report them lost.
struct Dispatcher {
    bus: Weak<Inner>,
    address: usize,
    receiver: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
    // Taken off the queue, waiting for older events in the overflow.
    ahead: Option<Queued>,
}

impl Dispatcher {
    async fn run(mut self, concurrency: usize) {
        let mut in_flight = JoinSet::new();
        while let Some(queued) = self.next().await {
            let Some(inner) = self.bus.upgrade() else {
                // The bus is gone: dropping the event reports it lost.
                continue;
            };
            let dispatch = DISPATCHING.scope(
                self.address,
                Guarded(Some(queued.job.dispatch(EventBus::from_inner(inner)))),
            );
            if concurrency == 1 {
                dispatch.await;
            } else {
                while in_flight.len() >= concurrency {
                    in_flight.join_next().await;
                }
                in_flight.spawn(dispatch);
            }
        }
        while in_flight.join_next().await.is_some() {}
    }

    /// The next event to dispatch, the oldest of the queue's and the overflow's; `None`
    /// once every handle to the bus is gone and everything was taken.
    async fn next(&mut self) -> Option<Queued> {
        loop {
            if self.ahead.is_none() {
                self.ahead = self.receiver.try_recv().ok();
            }
            let before = self.ahead.as_ref().map(|queued| queued.seq);
            if let Some(queued) = self.shared.overflowed_before(before) {
                return Some(queued);
            }
            if let Some(queued) = self.ahead.take() {
                return Some(queued);
            }
            // Nothing waiting: sleep until an event is queued or overflows.
            let (receiver, shared) = (&mut self.receiver, &*self.shared);
            let mut overflowed = pin!(shared.overflowed.notified());
            let received = poll_fn(|cx| {
                if let Poll::Ready(received) = receiver.poll_recv(cx) {
                    return Poll::Ready(Some(received));
                }
                overflowed.as_mut().poll(cx).map(|()| None)
            })
            .await;
            match received {
                Some(Some(queued)) => self.ahead = Some(queued),
                // Every sender is gone, so no handler of this bus runs: nothing more can
                // overflow.
                Some(None) => return shared.overflowed_before(None),
                None => {}
            }
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        let stranded = {
            let mut overflow = self.shared.overflow();
            overflow.closed = true;
            std::mem::take(&mut overflow.jobs)
        };
        drop(stranded);
        tracing::debug!("event dispatcher stopped");
    }
}

/// A dispatch whose panic is caught, so that the dispatcher goes on; the event's ticket,
/// dropped with the dispatch, reports the event lost.
struct Guarded(Option<Pin<Box<dyn Future<Output = ()> + Send>>>);

impl Future for Guarded {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(dispatch) = self.0.as_mut() else {
            return Poll::Ready(());
        };
        match catch_unwind(AssertUnwindSafe(|| dispatch.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => {
                self.0 = None;
                Poll::Ready(())
            }
            Err(payload) => {
                tracing::error!(
                    panic = %panic_message(&*payload),
                    "dispatching a published event panicked"
                );
                let dispatch = self.0.take();
                if catch_unwind(AssertUnwindSafe(move || drop(dispatch))).is_err() {
                    tracing::error!("a published event's dispatch panicked while being dropped");
                }
                Poll::Ready(())
            }
        }
    }
}
