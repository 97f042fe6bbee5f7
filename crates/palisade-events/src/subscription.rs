//! Subscribing handlers, and ending subscriptions.

use std::any::{TypeId, type_name};
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use palisade_core::BoxError;
use tower_service::Service;

use crate::bus::{EventBus, Inner};
use crate::event::{AnyEvent, Event};
use crate::handler::{FnHandler, Handler, HandlerResult, ServiceHandler};

/// Identifies a subscribed handler within its bus; handlers are numbered in registration
/// order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HandlerId(pub(crate) u64);

impl HandlerId {
    /// The number (ids grow with each subscription to a bus).
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for HandlerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// Which table a handler lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Key {
    Typed(TypeId),
    Any,
}

/// What the bus knows about a handler besides the handler itself.
#[derive(Debug, Clone)]
pub(crate) struct HandlerInfo {
    pub(crate) id: HandlerId,
    pub(crate) name: Arc<str>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) once: bool,
    pub(crate) key: Key,
}

/// Shared by a subscription and every snapshot that holds its handler.
#[derive(Debug)]
pub(crate) struct EntryState {
    active: AtomicBool,
}

impl EntryState {
    pub(crate) fn new() -> Self {
        Self {
            active: AtomicBool::new(true),
        }
    }

    pub(crate) fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// For a `once` handler: takes the one call; false if it was taken or unsubscribed.
    pub(crate) fn take_once(&self) -> bool {
        self.active.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
    }
}

/// A subscribed handler. **Dropping it unsubscribes the handler**; so does
/// [`unsubscribe`](Self::unsubscribe). [`detach`](Self::detach) keeps the handler for as
/// long as the bus lives.
///
/// Unsubscribing takes effect at once, also for emits already under way: a handler not yet
/// called is skipped (reported as [`Unsubscribed`](crate::HandlerOutcome::Unsubscribed)); a
/// call already running finishes.
#[must_use = "dropping a Subscription unsubscribes its handler; call `.detach()` to keep it"]
pub struct Subscription {
    bus: Weak<Inner>,
    id: HandlerId,
    key: Key,
    state: Arc<EntryState>,
    detached: bool,
}

impl Subscription {
    pub(crate) fn new(bus: Weak<Inner>, id: HandlerId, key: Key, state: Arc<EntryState>) -> Self {
        Self {
            bus,
            id,
            key,
            state,
            detached: false,
        }
    }

    /// The handler's id, as it appears in [`EmitReport`](crate::EmitReport)s.
    pub fn id(&self) -> HandlerId {
        self.id
    }

    /// Whether the handler is still subscribed: false once a `once` handler was called.
    pub fn is_active(&self) -> bool {
        self.state.is_active()
    }

    /// Unsubscribes the handler (the same as dropping the subscription).
    pub fn unsubscribe(self) {
        drop(self);
    }

    /// Keeps the handler subscribed for as long as the bus lives (a `once` handler until it
    /// is called).
    pub fn detach(mut self) {
        self.detached = true;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        self.state.deactivate();
        if let Some(bus) = self.bus.upgrade() {
            bus.remove(self.id, self.key);
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("active", &self.is_active())
            .finish()
    }
}

#[derive(Debug, Clone, Copy)]
enum Timeout {
    BusDefault,
    Set(Option<Duration>),
}

/// Subscribes a handler with options: a name, its own timeout, once; from
/// [`EventBus::subscribe`].
///
/// ```
/// use std::time::Duration;
/// use palisade_events::{Event, EventBus};
///
/// #[derive(Clone)]
/// struct OrderPlaced(u64);
/// impl Event for OrderPlaced {
///     const NAME: &'static str = "order.placed";
/// }
///
/// let bus = EventBus::new();
/// let subscription = bus
///     .subscribe()
///     .name("send-confirmation")
///     .timeout(Duration::from_secs(5))
///     .on(|order: OrderPlaced| async move {
///         let _ = order.0; // send the mail
///     });
/// # drop(subscription);
/// ```
#[must_use = "a Subscribe does nothing until `.on(..)`, `.on_service(..)` or `.on_any(..)`"]
#[derive(Debug)]
pub struct Subscribe<'a> {
    bus: &'a EventBus,
    name: Option<Arc<str>>,
    timeout: Timeout,
    once: bool,
}

impl<'a> Subscribe<'a> {
    pub(crate) fn new(bus: &'a EventBus) -> Self {
        Self {
            bus,
            name: None,
            timeout: Timeout::BusDefault,
            once: false,
        }
    }

    /// The handler's name in reports, traces and metrics. By default, the name of its type
    /// (for a closure, the function it is defined in, with `{{closure}}`).
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// This handler's timeout, instead of the bus's
    /// ([`handler_timeout`](crate::EventBusBuilder::handler_timeout)).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Timeout::Set(Some(timeout));
        self
    }

    /// No timeout for this handler, whatever the bus's.
    pub fn no_timeout(mut self) -> Self {
        self.timeout = Timeout::Set(None);
        self
    }

    /// Calls the handler for one event only, then unsubscribes it. With concurrent emits, it
    /// is still called exactly once.
    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }

    /// Subscribes the async closure `handler` to events of type `E`. Its future returns `()`
    /// or `Result<(), impl Into<BoxError>>` (see [`HandlerResult`]).
    pub fn on<E, F, Fut>(self, handler: F) -> Subscription
    where
        E: Event,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        let name = type_name::<F>();
        self.add::<E>(name, Arc::new(FnHandler::new(handler)))
    }

    /// Subscribes the tower `service` to events of type `E`, so that tower layers (retry,
    /// timeout, circuit breaker, ...) can wrap a handler.
    ///
    /// Each concurrent call uses its own clone of the service, made once and kept for later
    /// calls; `poll_ready` is awaited before each call. A clone that fails `poll_ready` is
    /// replaced by a fresh one, and the failure is the call's outcome.
    pub fn on_service<E, S>(self, service: S) -> Subscription
    where
        E: Event,
        S: Service<E, Response = ()> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        S::Future: Send + 'static,
    {
        let name = type_name::<S>();
        self.add::<E>(name, Arc::new(ServiceHandler::new(service)))
    }

    /// Subscribes the async closure `handler` to every event, of every type, as an
    /// [`AnyEvent`] (its name and its value, to downcast). It runs beside the typed handlers
    /// and appears in their reports.
    ///
    /// Each call wraps the event in an `Arc` (one allocation per event): typed handlers are
    /// the fast path.
    pub fn on_any<F, Fut>(self, handler: F) -> Subscription
    where
        F: Fn(AnyEvent) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        let info = self.info(type_name::<F>(), Key::Any);
        let inner = self.bus.inner();
        inner.add_any(info, Arc::new(FnHandler::new(handler)))
    }

    fn info(&self, default_name: &'static str, key: Key) -> HandlerInfo {
        HandlerInfo {
            id: HandlerId(0),
            name: self.name.clone().unwrap_or_else(|| Arc::from(default_name)),
            timeout: match self.timeout {
                Timeout::BusDefault => self.bus.inner().config.handler_timeout,
                Timeout::Set(timeout) => timeout,
            },
            once: self.once,
            key,
        }
    }

    fn add<E: Event>(
        self,
        default_name: &'static str,
        handler: Arc<dyn Handler<E>>,
    ) -> Subscription {
        let info = self.info(default_name, Key::Typed(TypeId::of::<E>()));
        self.bus.inner().add::<E>(info, handler)
    }
}
