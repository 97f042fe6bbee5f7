//! Building a bus: handler timeouts, the publish queue, the listener, dead letters.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::Listener;

use crate::bus::EventBus;
use crate::observe::{BusEvent, tell};
use crate::publish::DeadLetter;

/// How long a handler may take by default: 30 seconds.
pub const DEFAULT_HANDLER_TIMEOUT: Duration = Duration::from_secs(30);

/// How many published events may wait for the dispatcher by default: 1024.
pub const DEFAULT_QUEUE_CAPACITY: NonZeroUsize = NonZeroUsize::new(1024).unwrap();

/// What [`EventBus::publish`](crate::EventBus::publish) does when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum WhenFull {
    /// Wait for room: back-pressure on the publisher. The default.
    ///
    /// Except for a handler of a published event publishing on its own bus: the room it
    /// would wait for is freed by the dispatcher, which is busy running that handler. Its
    /// event goes into an overflow instead and is dispatched in its turn (see
    /// [`EventBus::publish`](crate::EventBus::publish)).
    #[default]
    Wait,
    /// Return [`PublishError::QueueFull`](crate::PublishError::QueueFull) at once.
    Reject,
}

pub(crate) type DeadLetterFn = dyn Fn(DeadLetter) + Send + Sync;

pub(crate) struct Config {
    pub(crate) handler_timeout: Option<Duration>,
    pub(crate) queue_capacity: NonZeroUsize,
    pub(crate) when_full: WhenFull,
    pub(crate) dispatch_concurrency: NonZeroUsize,
    pub(crate) listener: Option<Arc<dyn Listener<BusEvent>>>,
    pub(crate) dead_letters: Option<Arc<DeadLetterFn>>,
}

impl Config {
    #[inline]
    pub(crate) fn report(&self, event: impl FnOnce() -> BusEvent) {
        if let Some(listener) = &self.listener {
            tell(&**listener, &event());
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            handler_timeout: Some(DEFAULT_HANDLER_TIMEOUT),
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            when_full: WhenFull::Wait,
            dispatch_concurrency: NonZeroUsize::MIN,
            listener: None,
            dead_letters: None,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("handler_timeout", &self.handler_timeout)
            .field("queue_capacity", &self.queue_capacity)
            .field("when_full", &self.when_full)
            .field("dispatch_concurrency", &self.dispatch_concurrency)
            .field("listener", &self.listener.as_ref().map(|_| ".."))
            .field("dead_letters", &self.dead_letters.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Builds an [`EventBus`]; from [`EventBus::builder`].
///
/// Every setting has a default, so `EventBus::builder().build()` equals `EventBus::new()`:
///
/// | setting | default |
/// |---|---|
/// | [`handler_timeout`](Self::handler_timeout) | 30 s per handler call ([`DEFAULT_HANDLER_TIMEOUT`]) |
/// | [`queue_capacity`](Self::queue_capacity) | 1024 published events waiting ([`DEFAULT_QUEUE_CAPACITY`]) |
/// | [`when_full`](Self::when_full) | [`WhenFull::Wait`] |
/// | [`dispatch_concurrency`](Self::dispatch_concurrency) | 1: published events are dispatched one at a time, in order |
/// | [`listener`](Self::listener) | none |
/// | [`on_dead_letter`](Self::on_dead_letter) | none (failures are still traced and reported to the listener) |
///
/// ```
/// use std::num::NonZeroUsize;
/// use std::time::Duration;
/// use palisade_events::{EventBus, WhenFull};
///
/// let bus = EventBus::builder()
///     .handler_timeout(Duration::from_secs(5))
///     .queue_capacity(NonZeroUsize::new(100).unwrap())
///     .when_full(WhenFull::Reject)
///     .on_dead_letter(|letter| eprintln!("undelivered: {:?}", letter.report()))
///     .build();
/// # let _ = bus;
/// ```
#[must_use]
#[derive(Debug, Default)]
pub struct EventBusBuilder {
    config: Config,
}

impl EventBusBuilder {
    /// How long each handler call may take before it is dropped and reported as
    /// [`TimedOut`](crate::HandlerOutcome::TimedOut); a subscription may set its own.
    /// Default 30 s.
    ///
    /// The time is measured from when the call first has to wait (returns `Pending`), on
    /// tokio's clock; a handler that never waits cannot time out. Timeouts need a tokio
    /// runtime with its time driver; an emit polled outside any tokio runtime runs its
    /// handlers without one.
    pub fn handler_timeout(mut self, timeout: Duration) -> Self {
        self.config.handler_timeout = Some(timeout);
        self
    }

    /// No default timeout: handlers may take as long as they like (a subscription may still
    /// set one).
    pub fn no_handler_timeout(mut self) -> Self {
        self.config.handler_timeout = None;
        self
    }

    /// How many published events may wait for the dispatcher (not counting those being
    /// dispatched, nor the overflow of handlers of published events, see [`WhenFull::Wait`]).
    /// Default 1024.
    pub fn queue_capacity(mut self, capacity: NonZeroUsize) -> Self {
        self.config.queue_capacity = capacity;
        self
    }

    /// What `publish` does when the queue is full. Default [`WhenFull::Wait`].
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.config.when_full = when_full;
        self
    }

    /// How many published events the dispatcher emits at once. Default 1: one at a time,
    /// in publish order. More lets a slow handler not hold up the events behind it, at the
    /// price of ordering.
    pub fn dispatch_concurrency(mut self, concurrency: NonZeroUsize) -> Self {
        self.config.dispatch_concurrency = concurrency;
        self
    }

    /// Sends the bus's [`BusEvent`]s to `listener` (core's `MetricsListener`, a closure via
    /// `palisade_core::event::listener_fn`, ...). Called synchronously, once per emit and
    /// once per handler call: keep it cheap. A panic in it is caught and logged.
    pub fn listener(mut self, listener: impl Listener<BusEvent> + 'static) -> Self {
        self.config.listener = Some(Arc::new(listener));
        self
    }

    /// Calls `f` with every published event whose handlers failed, panicked or timed out,
    /// and its report: the dead letters, to store, alert on, or publish again.
    ///
    /// Called on the dispatcher task: keep it short (hand the letter to a channel for slow
    /// work). A panic in it is caught and logged.
    pub fn on_dead_letter(mut self, f: impl Fn(DeadLetter) + Send + Sync + 'static) -> Self {
        self.config.dead_letters = Some(Arc::new(f));
        self
    }

    /// The bus.
    pub fn build(self) -> EventBus {
        EventBus::from_config(self.config)
    }
}
