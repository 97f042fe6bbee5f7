//! What travels on the bus: the [`Event`] trait, and [`AnyEvent`], an event of any type.

use std::any::{Any, TypeId};
use std::fmt;
use std::sync::Arc;

/// A type that can be sent on an [`EventBus`](crate::EventBus).
///
/// Events are plain Rust values. Each handler receives its own clone, so keep events cheap to
/// clone: small values, or an `Arc` around large ones.
///
/// `NAME` is the event's stable name, used in reports, traces and metrics, and by
/// [`on_any`](crate::EventBus::on_any) handlers to tell events apart. Give every event type
/// its own name: the bus delivers by type, never by name, but two types with one name make
/// reports ambiguous (the bus logs a warning when it sees that).
///
/// ```
/// use palisade_events::Event;
///
/// #[derive(Debug, Clone)]
/// struct OrderPlaced {
///     order_id: u64,
///     amount_cents: u64,
/// }
///
/// impl Event for OrderPlaced {
///     const NAME: &'static str = "order.placed";
/// }
/// ```
pub trait Event: Clone + Send + Sync + 'static {
    /// The stable name of this event type, such as `"order.placed"`.
    const NAME: &'static str;
}

/// An event of any type, as [`on_any`](crate::EventBus::on_any) handlers and dead letters see
/// it: its name and the value, to be downcast.
///
/// Cloning it is cheap (the value is shared).
///
/// ```
/// use palisade_events::{AnyEvent, Event};
///
/// #[derive(Debug, Clone, PartialEq)]
/// struct Ping(u32);
/// impl Event for Ping {
///     const NAME: &'static str = "ping";
/// }
///
/// let any = AnyEvent::new(Ping(7));
/// assert_eq!(any.name(), "ping");
/// assert_eq!(any.downcast_ref::<Ping>(), Some(&Ping(7)));
/// assert!(any.is::<Ping>());
/// ```
#[derive(Clone)]
pub struct AnyEvent {
    name: &'static str,
    value: Arc<dyn Any + Send + Sync>,
}

impl AnyEvent {
    /// Wraps `event`.
    pub fn new<E: Event>(event: E) -> Self {
        Self {
            name: E::NAME,
            value: Arc::new(event),
        }
    }

    /// The event's [`Event::NAME`].
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The [`TypeId`] of the event's type.
    pub fn type_id(&self) -> TypeId {
        (*self.value).type_id()
    }

    /// Whether the event is an `E`.
    pub fn is<E: Event>(&self) -> bool {
        self.value.is::<E>()
    }

    /// The event, if it is an `E`.
    pub fn downcast_ref<E: Event>(&self) -> Option<&E> {
        self.value.downcast_ref()
    }

    /// The event as an `E` (cloned if this value is shared), or `self` back if it is another
    /// type.
    ///
    /// # Errors
    ///
    /// Returns `self` unchanged when the event is not an `E`.
    pub fn downcast<E: Event>(self) -> Result<E, Self> {
        let name = self.name;
        match Arc::downcast::<E>(self.value) {
            Ok(event) => Ok(Arc::try_unwrap(event).unwrap_or_else(|shared| (*shared).clone())),
            Err(value) => Err(Self { name, value }),
        }
    }
}

impl fmt::Debug for AnyEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AnyEvent")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
