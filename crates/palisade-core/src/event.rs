//! The observability hook: typed events, listeners, and (feature `metrics`) a listener that
//! records them through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Each component defines its own event type (a breaker's state change, a limiter's
//! rejection, a pool's queue depth) and implements [`Event`] for it, which names the event and
//! lists the readings it carries. Users pass a [`Listener`] to the component to receive them:
//! a closure via [`listener_fn`], several at once as a tuple, or
//! [`MetricsListener`] (feature `metrics`) to feed Prometheus or OpenTelemetry
//! through whatever `metrics` recorder the application installs.
//!
//! Components emit `tracing` events themselves; listeners are for what tracing is not.
//!
//! # Example
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::sync::Arc;
//! use palisade_core::event::{listener_fn, Event, Listener, Reading};
//!
//! // What a component would define.
//! #[derive(Debug)]
//! enum PoolEvent {
//!     Admitted { in_flight: usize },
//!     Shed,
//! }
//!
//! impl Event for PoolEvent {
//!     fn component(&self) -> &'static str {
//!         "pool"
//!     }
//!     fn kind(&self) -> &'static str {
//!         match self {
//!             PoolEvent::Admitted { .. } => "admitted",
//!             PoolEvent::Shed => "shed",
//!         }
//!     }
//!     fn readings(&self, record: &mut dyn FnMut(Reading)) {
//!         if let PoolEvent::Admitted { in_flight } = self {
//!             record(Reading::gauge("palisade_pool_in_flight", *in_flight as f64));
//!         }
//!     }
//! }
//!
//! // What a user would write.
//! let shed = Arc::new(AtomicU64::new(0));
//! let counter = Arc::clone(&shed);
//! let listener = listener_fn(move |event: &PoolEvent| {
//!     if matches!(event, PoolEvent::Shed) {
//!         counter.fetch_add(1, Ordering::Relaxed);
//!     }
//! });
//!
//! listener.on_event(&PoolEvent::Admitted { in_flight: 3 });
//! listener.on_event(&PoolEvent::Shed);
//! assert_eq!(shed.load(Ordering::Relaxed), 1);
//! ```

use std::fmt;
use std::sync::Arc;

/// Something a component reports: a state change, a rejection, a retry, a depth.
pub trait Event: fmt::Debug {
    /// The emitting component, short and snake_case: `"breaker"`, `"ratelimit"`, `"pool"`.
    fn component(&self) -> &'static str;

    /// What happened, short and snake_case: `"state_changed"`, `"rejected"`.
    fn kind(&self) -> &'static str;

    /// The measurements the event carries, passed one by one to `record`. None by default.
    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        let _ = record;
    }
}

/// One measurement carried by an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    name: &'static str,
    kind: ReadingKind,
    value: f64,
}

/// Whether a [`Reading`] is a level or a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReadingKind {
    /// The current level of something (in-flight calls, queue depth, breaker state).
    Gauge,
    /// One sample of a distribution (a wait time, a batch size).
    Histogram,
}

impl Reading {
    /// The current level of `name`, a metric name such as `"palisade_pool_in_flight"`.
    pub const fn gauge(name: &'static str, value: f64) -> Self {
        Self {
            name,
            kind: ReadingKind::Gauge,
            value,
        }
    }

    /// One sample of `name`, a metric name such as `"palisade_pool_wait_seconds"`.
    pub const fn histogram(name: &'static str, value: f64) -> Self {
        Self {
            name,
            kind: ReadingKind::Histogram,
            value,
        }
    }

    /// The metric name.
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Gauge or histogram.
    pub const fn kind(&self) -> ReadingKind {
        self.kind
    }

    /// The value.
    pub const fn value(&self) -> f64 {
        self.value
    }
}

/// Receives a component's events.
///
/// Called synchronously on the component's path, sometimes per call: keep it cheap and never
/// block. `()` is the listener that ignores everything; a tuple `(A, B)` sends to both.
pub trait Listener<E: ?Sized>: Send + Sync {
    /// Handles one event.
    fn on_event(&self, event: &E);
}

impl<E: ?Sized> Listener<E> for () {
    fn on_event(&self, _event: &E) {}
}

impl<E: ?Sized, A: Listener<E>, B: Listener<E>> Listener<E> for (A, B) {
    fn on_event(&self, event: &E) {
        self.0.on_event(event);
        self.1.on_event(event);
    }
}

impl<E: ?Sized, L: Listener<E> + ?Sized> Listener<E> for Arc<L> {
    fn on_event(&self, event: &E) {
        (**self).on_event(event);
    }
}

impl<E: ?Sized, L: Listener<E> + ?Sized> Listener<E> for Box<L> {
    fn on_event(&self, event: &E) {
        (**self).on_event(event);
    }
}

/// A listener made from a closure; see [`listener_fn`].
#[derive(Clone, Copy)]
pub struct ListenerFn<F>(F);

/// Makes a [`Listener`] from a closure `Fn(&E)`.
pub const fn listener_fn<F>(f: F) -> ListenerFn<F> {
    ListenerFn(f)
}

impl<E: ?Sized, F: Fn(&E) + Send + Sync> Listener<E> for ListenerFn<F> {
    fn on_event(&self, event: &E) {
        (self.0)(event);
    }
}

impl<F> fmt::Debug for ListenerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ListenerFn").finish_non_exhaustive()
    }
}

#[cfg(feature = "metrics")]
pub use self::metrics_listener::MetricsListener;

#[cfg(feature = "metrics")]
mod metrics_listener {
    use super::{Event, Listener, Reading, ReadingKind};
    use metrics::SharedString;
    use std::sync::Arc;

    /// Records every [`Event`] through the `metrics` facade (feature `metrics`).
    ///
    /// Each event increments the counter `palisade_events_total` with the labels `component`,
    /// `event` (the [`Event::kind`]) and `instance`; each of its [`Reading`]s sets a gauge or
    /// records a histogram sample under the reading's name, labelled with `instance`. Install
    /// any `metrics` recorder (a Prometheus exporter, an OpenTelemetry bridge) to collect them.
    #[derive(Debug, Clone)]
    pub struct MetricsListener {
        instance: Arc<str>,
    }

    impl MetricsListener {
        /// A listener whose metrics carry `instance="<instance>"`, to tell apart several
        /// breakers or pools in one process.
        pub fn new(instance: impl Into<Arc<str>>) -> Self {
            Self {
                instance: instance.into(),
            }
        }

        fn instance(&self) -> SharedString {
            SharedString::from(Arc::clone(&self.instance))
        }
    }

    impl<E: Event + ?Sized> Listener<E> for MetricsListener {
        fn on_event(&self, event: &E) {
            metrics::counter!(
                "palisade_events_total",
                "component" => event.component(),
                "event" => event.kind(),
                "instance" => self.instance(),
            )
            .increment(1);
            event.readings(&mut |reading: Reading| match reading.kind() {
                ReadingKind::Gauge => {
                    metrics::gauge!(reading.name(), "instance" => self.instance())
                        .set(reading.value());
                }
                ReadingKind::Histogram => {
                    metrics::histogram!(reading.name(), "instance" => self.instance())
                        .record(reading.value());
                }
            });
        }
    }
}
