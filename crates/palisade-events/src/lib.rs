//! A typed, in-process event bus whose handlers run concurrently and whose every outcome is
//! reported.
//!
//! Events are Rust types ([`Event`]: `Clone + Send + Sync + 'static` with a stable
//! [`NAME`](Event::NAME)). Handlers subscribe by type and are async closures or tower
//! [`Service`](tower_service::Service)s, so the suite's retry, timeout and breaker layers can
//! wrap a handler.
//!
//! - [`EventBus::emit`] runs all handlers of the event's type **concurrently** in the
//!   caller's task and resolves to an [`EmitReport`] with **each handler's outcome**: ok,
//!   failed (with the error), panicked (caught, with the message), timed out (the
//!   per-handler timeout, 30 s by default, settable per subscription). Not just the first
//!   error, and no failure only logged and forgotten.
//! - [`EventBus::emit_serial`] runs them one after another, in registration order.
//! - [`EventBus::publish`] is fire-and-forget onto a **bounded** queue that a background task
//!   dispatches. A full queue makes the publisher wait, or fail with
//!   [`PublishError::QueueFull`], as configured ([`WhenFull`]). Handler failures of published
//!   events go to a dead-letter callback ([`EventBusBuilder::on_dead_letter`]), the listener
//!   and the logs: nothing is lost silently.
//! - [`Subscription`]s unsubscribe when dropped (or [`detach`](Subscription::detach) to keep
//!   the handler); [`once`](EventBus::once) handlers run exactly once; [`on_any`](EventBus::on_any)
//!   handlers see every event as an [`AnyEvent`].
//! - Handlers may emit and publish further events, subscribe and unsubscribe: no lock is held
//!   while a handler runs. Unsubscribing during an emit is safe: a handler not yet called is
//!   skipped. A handler of a published event that publishes never waits for the dispatcher
//!   that runs it. A handler that needs the bus captures a [`WeakEventBus`], so that it does
//!   not keep the bus alive.
//! - Observability: a `tracing` span per emit and warnings for failures; [`BusEvent`]s for
//!   core [`Listener`](palisade_core::Listener)s (emits, each handler's outcome and latency,
//!   the queue), such as core's `MetricsListener`.
//!
//! # Features
//!
//! - `nats`: the [`nats`] module, the same typed events across processes over NATS: a
//!   [`NatsBridge`](nats::NatsBridge) carries chosen event types (serde types, as JSON,
//!   one subject per event name), resubscribes after a reconnect and reports the window
//!   in which messages may have been missed. Plain `nats://` (no TLS yet).
//!
//! The fast path: subscribers are kept in a copy-on-write snapshot per event type, so an
//! emit takes a read lock only to clone an `Arc`; handlers run in pooled slots, so an emit
//! whose handlers finish without waiting allocates nothing. See the bench numbers in the
//! repository's `benches/README.md`.
//!
//! # Example
//!
//! The patterns document's order flow: a payment handler emits a follow-up event, one
//! handler fails, and the report says so.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use palisade_events::{Event, EventBus, HandlerStatus};
//!
//! #[derive(Debug, Clone)]
//! struct OrderPlaced { order_id: u64, amount_cents: u64 }
//! impl Event for OrderPlaced { const NAME: &'static str = "order.placed"; }
//!
//! #[derive(Debug, Clone)]
//! struct OrderCompleted { order_id: u64 }
//! impl Event for OrderCompleted { const NAME: &'static str = "order.completed"; }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let bus = EventBus::new();
//!
//! // Payment: charges, then emits the next event (handlers may emit). It holds a weak
//! // handle: a handler holding the bus itself would keep the bus alive for good.
//! let next = bus.downgrade();
//! bus.on(move |order: OrderPlaced| {
//!     let bus = next.upgrade();
//!     async move {
//!         let _ = order.amount_cents; // charge the card
//!         if let Some(bus) = bus {
//!             bus.emit(OrderCompleted { order_id: order.order_id }).await.into_result()?;
//!         }
//!         Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
//!     }
//! })
//! .detach();
//!
//! // Confirmation mail: its server is down.
//! bus.subscribe()
//!     .name("confirmation-mail")
//!     .on(|_: OrderPlaced| async { Err::<(), _>("smtp unavailable") })
//!     .detach();
//!
//! let completed = Arc::new(AtomicU64::new(0));
//! let seen = Arc::clone(&completed);
//! let subscription = bus.on(move |done: OrderCompleted| {
//!     seen.store(done.order_id, Ordering::Relaxed);
//!     async {}
//! });
//!
//! let report = bus.emit(OrderPlaced { order_id: 42, amount_cents: 5_000 }).await;
//! assert_eq!(report.len(), 2);
//! assert_eq!(report.count(HandlerStatus::Ok), 1);
//! let failure = report.failures().next().unwrap();
//! assert_eq!(failure.name(), "confirmation-mail");
//! assert_eq!(failure.outcome().to_string(), "failed: smtp unavailable");
//! assert_eq!(completed.load(Ordering::Relaxed), 42);
//!
//! drop(subscription); // unsubscribes
//! assert_eq!(bus.handler_count::<OrderCompleted>(), 0);
//! # }
//! ```
//!
//! A tower service as a handler, retried by `palisade-retry`:
//!
//! ```
//! # use palisade_events::{Event, EventBus};
//! # #[derive(Clone)] struct OrderPlaced;
//! # impl Event for OrderPlaced { const NAME: &'static str = "order.placed"; }
//! # fn demo(bus: &EventBus) {
//! use palisade_retry::{RetryConfig, RetryLayer};
//! use tower::ServiceBuilder;
//!
//! let handler = ServiceBuilder::new()
//!     .layer(RetryLayer::new(RetryConfig::default()))
//!     .service_fn(|_: OrderPlaced| async { Ok::<(), std::io::Error>(()) });
//! bus.on_service(handler).detach();
//! # }
//! ```

mod bus;
mod config;
mod emit;
mod event;
mod handler;
#[cfg(feature = "nats")]
pub mod nats;
mod observe;
mod publish;
mod report;
mod subscription;

pub use crate::bus::{EventBus, WeakEventBus};
pub use crate::config::{
    DEFAULT_HANDLER_TIMEOUT, DEFAULT_QUEUE_CAPACITY, EventBusBuilder, WhenFull,
};
pub use crate::emit::Emit;
pub use crate::event::{AnyEvent, Event};
pub use crate::handler::HandlerResult;
pub use crate::observe::BusEvent;
pub use crate::publish::{DeadLetter, PublishError};
pub use crate::report::{EmitError, EmitReport, HandlerOutcome, HandlerReport, HandlerStatus};
pub use crate::subscription::{HandlerId, Subscribe, Subscription};
pub use palisade_core::BoxError;
pub use palisade_core::reject::Overloaded;
