//! The bus: who is subscribed to what, as copy-on-write snapshots.
//!
//! Handlers of one event type are kept in a `TypeTable`; its current `Snapshot` is an
//! immutable list shared by every emit that starts while it is current. Subscribing or
//! unsubscribing builds a new snapshot under the write lock and swaps it in; emits already
//! under way keep theirs. An emit only takes the read lock long enough to clone the
//! snapshot's `Arc`: no lock is ever held while a handler runs, so handlers may emit,
//! subscribe and unsubscribe freely. Whatever a swap frees (old snapshots, removed
//! handlers, whose `Drop` may be user code that touches the bus) is dropped after the lock
//! is released.

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::collections::hash_map::Entry as MapEntry;
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard, Weak};

use crate::config::{Config, EventBusBuilder};
use crate::emit::{Emit, Run};
use crate::event::{AnyEvent, Event};
use crate::handler::{AnyHandler, Handler, HandlerResult};
use crate::publish::Queue;
use crate::report::HandlerList;
use crate::subscription::{EntryState, HandlerId, HandlerInfo, Key, Subscribe, Subscription};

/// A typed, in-process event bus.
///
/// Cheap to clone: every clone is the same bus. Handlers subscribe to an event type with
/// [`on`](Self::on) (async closures), [`on_service`](Self::on_service) (tower services),
/// [`once`](Self::once), or [`on_any`](Self::on_any) (every event); options through
/// [`subscribe`](Self::subscribe). Events go out with [`emit`](Self::emit) (handlers run
/// concurrently, the caller awaits the [`EmitReport`](crate::EmitReport)),
/// [`emit_serial`](Self::emit_serial) (one after another, in registration order) or
/// [`publish`](Self::publish) (onto a bounded queue, dispatched by a background task).
///
/// A handler that emits or publishes further events should capture a [`WeakEventBus`]
/// ([`downgrade`](Self::downgrade)), not a clone of the bus: the bus holds its handlers, so a
/// detached handler holding the bus would keep it (and itself) alive for good, and events
/// still queued when the program lets go of the bus would never be reported lost.
///
/// See the [crate documentation](crate) for an example.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl EventBus {
    /// A bus with the default settings (see [`EventBusBuilder`]).
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a bus.
    pub fn builder() -> EventBusBuilder {
        EventBusBuilder::default()
    }

    pub(crate) fn from_config(config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                tables: RwLock::new(Tables::default()),
                queue: Queue::new(config.queue_capacity, config.listener.clone()),
                config,
            }),
        }
    }

    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    /// A handle to this bus that does not keep it alive: what a handler should capture to
    /// emit or publish further events.
    ///
    /// ```
    /// # use palisade_events::{Event, EventBus};
    /// # #[derive(Clone)] struct OrderPlaced(u64);
    /// # impl Event for OrderPlaced { const NAME: &'static str = "order.placed"; }
    /// # #[derive(Clone)] struct OrderCompleted(u64);
    /// # impl Event for OrderCompleted { const NAME: &'static str = "order.completed"; }
    /// let bus = EventBus::new();
    /// let weak = bus.downgrade();
    /// bus.on(move |order: OrderPlaced| {
    ///     let bus = weak.upgrade();
    ///     async move {
    ///         if let Some(bus) = bus {
    ///             bus.emit(OrderCompleted(order.0)).await;
    ///         }
    ///     }
    /// })
    /// .detach();
    ///
    /// let probe = bus.downgrade();
    /// drop(bus);
    /// assert!(probe.upgrade().is_none(), "the handler did not keep the bus alive");
    /// ```
    pub fn downgrade(&self) -> WeakEventBus {
        WeakEventBus {
            inner: Arc::downgrade(&self.inner),
        }
    }

    /// Subscribes a handler with options (a name, a timeout, once).
    pub fn subscribe(&self) -> Subscribe<'_> {
        Subscribe::new(self)
    }

    /// Subscribes the async closure `handler` to events of type `E`, inferred from the
    /// closure's argument. Its future returns `()` or `Result<(), impl Into<BoxError>>`.
    ///
    /// The returned [`Subscription`] unsubscribes the handler when dropped; call
    /// [`detach`](Subscription::detach) to keep it. A handler that needs the bus captures a
    /// [`WeakEventBus`] (see [`downgrade`](Self::downgrade)).
    ///
    /// ```
    /// # use palisade_events::{Event, EventBus};
    /// # #[derive(Clone)] struct OrderPlaced(u64);
    /// # impl Event for OrderPlaced { const NAME: &'static str = "order.placed"; }
    /// let bus = EventBus::new();
    /// let subscription = bus.on(|order: OrderPlaced| async move {
    ///     println!("order {} placed", order.0);
    /// });
    /// assert_eq!(bus.handler_count::<OrderPlaced>(), 1);
    /// drop(subscription);
    /// assert_eq!(bus.handler_count::<OrderPlaced>(), 0);
    /// ```
    pub fn on<E, F, Fut>(&self, handler: F) -> Subscription
    where
        E: Event,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        self.subscribe().on(handler)
    }

    /// Subscribes `handler` for the next event of type `E` only.
    pub fn once<E, F, Fut>(&self, handler: F) -> Subscription
    where
        E: Event,
        F: Fn(E) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        self.subscribe().once().on(handler)
    }

    /// Subscribes a tower `Service<E, Response = ()>` to events of type `E`: wrap it in
    /// layers (retry, timeout, circuit breaker) first. See [`Subscribe::on_service`].
    pub fn on_service<E, S>(&self, service: S) -> Subscription
    where
        E: Event,
        S: tower_service::Service<E, Response = ()> + Clone + Send + 'static,
        S::Error: Into<palisade_core::BoxError>,
        S::Future: Send + 'static,
    {
        self.subscribe().on_service(service)
    }

    /// Subscribes `handler` to every event, of every type, as an [`AnyEvent`].
    pub fn on_any<F, Fut>(&self, handler: F) -> Subscription
    where
        F: Fn(AnyEvent) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future + Send + 'static,
        Fut::Output: HandlerResult,
    {
        self.subscribe().on_any(handler)
    }

    /// Sends `event` to every handler of its type (and every `on_any` handler), all at once:
    /// the handlers run concurrently, in the caller's task. The future resolves when every
    /// handler has finished, failed, panicked or timed out, to a report of each outcome.
    ///
    /// The handlers are those subscribed when `emit` is called. Each gets its own clone of
    /// the event (the last one gets `event` itself). Handlers that finish without waiting
    /// cost no allocation. Dropping the future cancels the handlers still running.
    pub fn emit<E: Event>(&self, event: E) -> Emit<'_, E> {
        Emit::new(self, self.inner.snapshot::<E>(), event, false)
    }

    /// Like [`emit`](Self::emit), but one handler at a time, in registration order: each
    /// starts when the one before has finished (or failed, panicked, timed out).
    pub fn emit_serial<E: Event>(&self, event: E) -> Emit<'_, E> {
        Emit::new(self, self.inner.snapshot::<E>(), event, true)
    }

    /// How many handlers an event of type `E` would go to now (`on_any` handlers included).
    pub fn handler_count<E: Event>(&self) -> usize {
        self.inner.snapshot::<E>().entries.len()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("config", &self.inner.config)
            .field("queued", &self.queued())
            .finish_non_exhaustive()
    }
}

/// A handle to an [`EventBus`] that does not keep it alive; from
/// [`EventBus::downgrade`]. Cheap to clone.
///
/// What a handler captures to emit or publish further events: holding the bus itself, a
/// detached handler would keep the bus alive for good.
#[derive(Clone)]
pub struct WeakEventBus {
    inner: Weak<Inner>,
}

impl WeakEventBus {
    /// The bus, unless every [`EventBus`] handle to it has been dropped (an event being
    /// dispatched holds one while its handlers run).
    pub fn upgrade(&self) -> Option<EventBus> {
        self.inner.upgrade().map(EventBus::from_inner)
    }
}

impl fmt::Debug for WeakEventBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WeakEventBus")
            .field("alive", &(self.inner.strong_count() > 0))
            .finish()
    }
}

pub(crate) struct Inner {
    tables: RwLock<Tables>,
    pub(crate) config: Config,
    pub(crate) queue: Queue,
}

/// Things a table swap frees, dropped once the lock is released.
type Garbage = Vec<Box<dyn Send>>;

#[derive(Default)]
struct Tables {
    by_type: HashMap<TypeId, Box<dyn Table>, BuildHasherDefault<TypeIdHasher>>,
    any: Vec<Entry<AnyEvent>>,
    names: HashMap<&'static str, TypeId>,
    next_id: u64,
}

impl Inner {
    fn read(&self) -> RwLockReadGuard<'_, Tables> {
        // Nothing panics while holding the lock, but a poisoned lock is still consistent.
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current snapshot of `E`'s handlers.
    #[inline]
    pub(crate) fn snapshot<E: Event>(&self) -> Arc<Snapshot<E>> {
        {
            let tables = self.read();
            if let Some(table) = tables.by_type.get(&TypeId::of::<E>())
                && let Some(table) = table.as_any().downcast_ref::<TypeTable<E>>()
            {
                return Arc::clone(&table.current);
            }
        }
        let mut tables = self.write();
        let Tables {
            by_type,
            any,
            names,
            ..
        } = &mut *tables;
        Arc::clone(&table_mut::<E>(by_type, any, names).current)
    }

    pub(crate) fn add<E: Event>(
        self: &Arc<Self>,
        mut info: HandlerInfo,
        handler: Arc<dyn Handler<E>>,
    ) -> Subscription {
        let state = Arc::new(EntryState::new());
        let mut garbage = Garbage::new();
        {
            let mut tables = self.write();
            tables.next_id += 1;
            info.id = HandlerId(tables.next_id);
            let Tables {
                by_type,
                any,
                names,
                ..
            } = &mut *tables;
            let table = table_mut::<E>(by_type, any, names);
            table.typed.push(Entry {
                info: info.clone(),
                state: Arc::clone(&state),
                handler,
            });
            table.rebuild(any, &mut garbage);
        }
        drop(garbage);
        tracing::debug!(event = E::NAME, handler = %info.id, name = %info.name, once = info.once, "subscribed");
        Subscription::new(Arc::downgrade(self), info.id, info.key, state)
    }

    pub(crate) fn add_any(
        self: &Arc<Self>,
        mut info: HandlerInfo,
        handler: Arc<dyn Handler<AnyEvent>>,
    ) -> Subscription {
        let state = Arc::new(EntryState::new());
        let mut garbage = Garbage::new();
        {
            let mut tables = self.write();
            tables.next_id += 1;
            info.id = HandlerId(tables.next_id);
            let Tables { by_type, any, .. } = &mut *tables;
            any.push(Entry {
                info: info.clone(),
                state: Arc::clone(&state),
                handler,
            });
            for table in by_type.values_mut() {
                table.rebuild(any, &mut garbage);
            }
        }
        drop(garbage);
        tracing::debug!(event = "*", handler = %info.id, name = %info.name, once = info.once, "subscribed");
        Subscription::new(Arc::downgrade(self), info.id, info.key, state)
    }

    /// Removes a handler; nothing if it is gone already.
    pub(crate) fn remove(&self, id: HandlerId, key: Key) {
        let mut garbage = Garbage::new();
        {
            let mut tables = self.write();
            let Tables { by_type, any, .. } = &mut *tables;
            match key {
                Key::Typed(type_id) => {
                    if let Some(table) = by_type.get_mut(&type_id)
                        && table.remove(id, &mut garbage)
                    {
                        table.rebuild(any, &mut garbage);
                    }
                }
                Key::Any => {
                    if let Some(at) = any.iter().position(|entry| entry.info.id == id) {
                        garbage.push(Box::new(any.remove(at)));
                        for table in by_type.values_mut() {
                            table.rebuild(any, &mut garbage);
                        }
                    }
                }
            }
        }
        if !garbage.is_empty() {
            tracing::debug!(handler = %id, "unsubscribed");
        }
        drop(garbage);
    }
}

fn table_mut<'t, E: Event>(
    by_type: &'t mut HashMap<TypeId, Box<dyn Table>, BuildHasherDefault<TypeIdHasher>>,
    any: &[Entry<AnyEvent>],
    names: &mut HashMap<&'static str, TypeId>,
) -> &'t mut TypeTable<E> {
    let table = by_type.entry(TypeId::of::<E>()).or_insert_with(|| {
        match names.entry(E::NAME) {
            MapEntry::Occupied(other) if *other.get() != TypeId::of::<E>() => {
                tracing::warn!(
                    event = E::NAME,
                    r#type = std::any::type_name::<E>(),
                    "two event types share one name; reports and metrics cannot tell them apart"
                );
            }
            MapEntry::Occupied(_) => {}
            MapEntry::Vacant(vacant) => {
                vacant.insert(TypeId::of::<E>());
            }
        }
        Box::new(TypeTable::<E>::new(any))
    });
    table
        .as_any_mut()
        .downcast_mut::<TypeTable<E>>()
        .expect("tables are keyed by their event's TypeId")
}

/// A subscribed handler in a table or snapshot.
pub(crate) struct Entry<E> {
    pub(crate) info: HandlerInfo,
    pub(crate) state: Arc<EntryState>,
    pub(crate) handler: Arc<dyn Handler<E>>,
}

impl<E> Clone for Entry<E> {
    fn clone(&self) -> Self {
        Self {
            info: self.info.clone(),
            state: Arc::clone(&self.state),
            handler: Arc::clone(&self.handler),
        }
    }
}

impl<E> Entry<E> {
    /// Whether the handler may be called now; takes a `once` handler's one call.
    #[inline]
    pub(crate) fn claim(&self) -> bool {
        if self.info.once {
            self.state.take_once()
        } else {
            self.state.is_active()
        }
    }
}

impl Entry<AnyEvent> {
    fn for_type<E: Event>(&self) -> Entry<E> {
        Entry {
            info: self.info.clone(),
            state: Arc::clone(&self.state),
            handler: Arc::new(AnyHandler::<E>::new(Arc::clone(&self.handler))),
        }
    }
}

/// How many idle runs a snapshot keeps for later emits.
const POOLED_RUNS: usize = 8;

/// The handlers of one event type at one moment, in registration order, and the idle runs
/// (one slot per handler) its emits reuse.
pub(crate) struct Snapshot<E> {
    pub(crate) entries: Box<[Entry<E>]>,
    runs: Mutex<Vec<Run<E>>>,
}

impl<E: Event> Snapshot<E> {
    fn new(entries: Vec<Entry<E>>) -> Self {
        Self {
            entries: entries.into_boxed_slice(),
            runs: Mutex::new(Vec::new()),
        }
    }

    /// An idle run for this snapshot's handlers.
    #[inline]
    pub(crate) fn take_run(&self) -> Run<E> {
        let pooled = self
            .runs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        pooled.unwrap_or_else(|| Run::new(self.entries.len()))
    }

    /// Gives back a run whose slots are all idle.
    #[inline]
    pub(crate) fn put_run(&self, run: Run<E>) {
        let surplus = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            if runs.len() < POOLED_RUNS {
                runs.push(run);
                None
            } else {
                Some(run)
            }
        };
        drop(surplus);
    }
}

impl<E: Event> HandlerList for Snapshot<E> {
    fn len(&self) -> usize {
        self.entries.len()
    }

    fn info(&self, index: usize) -> &HandlerInfo {
        &self.entries[index].info
    }
}

/// The handlers of one event type.
struct TypeTable<E> {
    typed: Vec<Entry<E>>,
    current: Arc<Snapshot<E>>,
}

impl<E: Event> TypeTable<E> {
    fn new(any: &[Entry<AnyEvent>]) -> Self {
        Self {
            typed: Vec::new(),
            current: Arc::new(Snapshot::new(any.iter().map(Entry::for_type).collect())),
        }
    }
}

trait Table: Send + Sync {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Swaps in a new snapshot: the typed handlers and `any`, in registration order.
    fn rebuild(&mut self, any: &[Entry<AnyEvent>], garbage: &mut Garbage);
    /// Removes a typed handler; whether it was there.
    fn remove(&mut self, id: HandlerId, garbage: &mut Garbage) -> bool;
}

impl<E: Event> Table for TypeTable<E> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn rebuild(&mut self, any: &[Entry<AnyEvent>], garbage: &mut Garbage) {
        let mut entries: Vec<Entry<E>> = self
            .typed
            .iter()
            .cloned()
            .chain(any.iter().map(Entry::for_type))
            .collect();
        entries.sort_unstable_by_key(|entry| entry.info.id);
        let old = std::mem::replace(&mut self.current, Arc::new(Snapshot::new(entries)));
        garbage.push(Box::new(old));
    }

    fn remove(&mut self, id: HandlerId, garbage: &mut Garbage) -> bool {
        match self.typed.iter().position(|entry| entry.info.id == id) {
            Some(at) => {
                garbage.push(Box::new(self.typed.remove(at)));
                true
            }
            None => false,
        }
    }
}

/// `TypeId`s are hashes already: use one as it is.
#[derive(Default)]
struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}
