//! Fire-and-forget: the bounded publish queue, its dispatcher task, and dead letters.
//!
//! `publish` puts the event on a bounded `tokio::sync::mpsc` queue; a dispatcher task,
//! spawned on the first publish, takes events off it and emits them. Nothing is dropped
//! silently: a full queue makes the publisher wait or fail (as configured), a published
//! event whose handlers fail goes to the dead-letter callback, the listener and the logs,
//! and an event still queued when the last handle to the bus is dropped is reported as lost.

use std::future::Future;
use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use palisade_core::event::Listener;
use palisade_core::reject::Overloaded;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;

use crate::bus::{EventBus, Inner};
use crate::config::WhenFull;
use crate::event::{AnyEvent, Event};
use crate::observe::BusEvent;
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
    fn event(&self) -> &'static str;
    fn dispatch(self: Box<Self>, bus: EventBus) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

struct Published<E>(E);

impl<E: Event> Job for Published<E> {
    fn event(&self) -> &'static str {
        E::NAME
    }

    fn dispatch(self: Box<Self>, bus: EventBus) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let event = self.0;
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
            inner.queue.done();
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

/// The queue of published events.
pub(crate) struct Queue {
    sender: mpsc::Sender<Box<dyn Job>>,
    // Until the dispatcher takes it.
    receiver: Mutex<Option<mpsc::Receiver<Box<dyn Job>>>>,
    started: AtomicBool,
    capacity: usize,
    // Published and not yet fully dispatched.
    depth: AtomicUsize,
    idle: Notify,
}

impl Queue {
    pub(crate) fn new(capacity: NonZeroUsize) -> Self {
        let (sender, receiver) = mpsc::channel(capacity.get());
        Self {
            sender,
            receiver: Mutex::new(Some(receiver)),
            started: AtomicBool::new(false),
            capacity: capacity.get(),
            depth: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    fn done(&self) {
        if self.depth.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
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
            runtime.spawn(dispatcher(
                Arc::downgrade(self),
                receiver,
                self.config.dispatch_concurrency.get(),
                self.config.listener.clone(),
            ));
            tracing::debug!("event dispatcher started");
        }
        Ok(())
    }

    fn enqueue<E: Event>(&self, permit: mpsc::Permit<'_, Box<dyn Job>>, event: E) {
        let queued = self.queue.depth.fetch_add(1, Ordering::AcqRel) + 1;
        permit.send(Box::new(Published(event)));
        self.config.report(|| BusEvent::Published {
            event: E::NAME,
            queued,
        });
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
    /// handlers later (one event at a time, in publish order, by default); the publisher
    /// does not wait for the handlers.
    ///
    /// When the queue is full it waits for room ([`WhenFull::Wait`], the default) or fails
    /// at once ([`WhenFull::Reject`]). The dispatcher is spawned on the current tokio runtime
    /// by the first publish. Failures of the handlers are reported to the dead-letter
    /// callback, the listener and the logs; [`flush`](Self::flush) waits until everything
    /// published has been dispatched.
    ///
    /// # Errors
    ///
    /// [`PublishError::QueueFull`] (only with [`WhenFull::Reject`]), or
    /// [`PublishError::NoRuntime`] / [`PublishError::Closed`] when there is no dispatcher to
    /// run it.
    pub async fn publish<E: Event>(&self, event: E) -> Result<(), PublishError> {
        if self.inner().config.when_full == WhenFull::Reject {
            return self.try_publish(event);
        }
        let inner = self.inner();
        if let Err(error) = inner.start_dispatcher(E::NAME) {
            return Err(inner.rejected(error));
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

    /// Waits until every event published so far has been dispatched: its handlers have
    /// finished and its failures, if any, were reported.
    ///
    /// Call it before dropping the bus to deliver everything. Do not call it from a handler
    /// of a published event: it would wait for itself.
    pub async fn flush(&self) {
        let queue = &self.inner().queue;
        loop {
            let mut idle = pin!(queue.idle.notified());
            idle.as_mut().enable();
            if queue.depth.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    /// How many published events are waiting or being dispatched.
    pub fn queued(&self) -> usize {
        self.inner().queue.depth.load(Ordering::Acquire)
    }
}

async fn dispatcher(
    bus: Weak<Inner>,
    mut receiver: mpsc::Receiver<Box<dyn Job>>,
    concurrency: usize,
    listener: Option<Arc<dyn Listener<BusEvent>>>,
) {
    let mut in_flight = JoinSet::new();
    while let Some(job) = receiver.recv().await {
        let Some(inner) = bus.upgrade() else {
            let event = job.event();
            tracing::warn!(
                event,
                "published event lost: the bus was dropped before dispatch"
            );
            if let Some(listener) = &listener {
                listener.on_event(&BusEvent::Lost { event });
            }
            continue;
        };
        let dispatch = job.dispatch(EventBus::from_inner(inner));
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
    tracing::debug!("event dispatcher stopped");
}
