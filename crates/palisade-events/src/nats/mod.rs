//! The same typed events across processes, over NATS (feature `nats`).
//!
//! A [`NatsBridge`] connects an [`EventBus`](crate::EventBus) to a NATS server and carries
//! the event types you choose; the rest of the bus stays in-process, so events that are not
//! serde types keep working. For an event type `E` (`Event + Serialize + DeserializeOwned`):
//!
//! - [`NatsBridge::bridge::<E>()`](NatsBridge::bridge) subscribes to `E`'s subject: every
//!   `E` published to NATS, by any process (this one included), is decoded and
//!   [published](crate::EventBus::publish) on the local bus. Local handlers subscribe with
//!   `bus.on::<E>(..)` as usual, and their failures are the local bus's dead letters.
//! - [`NatsBridge::publish`] sends an `E` to every process that bridges `E`.
//!
//! Events travel as JSON (`serde_json`), one subject per event name:
//! `<prefix>.<Event::NAME>`, the prefix `palisade.events` by default
//! ([`NatsConfig::subject_prefix`]).
//!
//! # Nothing is lost silently
//!
//! NATS core delivers at most once: a subscriber that is disconnected misses what is
//! published meanwhile. The bridge says so:
//!
//! - When the connection breaks it reports [`BusEvent::RemoteDisconnected`] (with how many
//!   events handed to it were never written) and a warning, and reconnects with core's
//!   [`Backoff`](palisade_core::backoff::Backoff) ([`NatsConfig::reconnect`]). Events
//!   published meanwhile wait in the send queue.
//! - Once back, it reports [`BusEvent::RemoteReconnected`], subscribes again, and when the
//!   server has confirmed the subscriptions reports [`BusEvent::RemoteGap`]: events of the
//!   listed types published during `gap` (from the last thing heard on the old connection
//!   to the confirmation) may have been missed. A warning says the same, and
//!   [`NatsStats::gaps`] counts it.
//! - A payload that does not decode into its event type is reported
//!   ([`BusEvent::RemoteMalformed`], a warning, [`NatsStats::malformed`], and
//!   [`NatsConfig::on_malformed`] with the raw payload), never dropped silently.
//! - A dead connection that stays open (a frozen server) is found by pings: two
//!   [`ping_interval`](NatsConfig::ping_interval)s of silence drop it.
//!
//! The bus's listener gets these [`BusEvent`](crate::BusEvent)s, so core's `MetricsListener`
//! counts them (`palisade_events_total{event="remote_gap"}`, ...) and records the gap as
//! `palisade_events_remote_gap_seconds`.
//!
//! # Scope of this first version
//!
//! Plain `nats://` only: no TLS (a `tls://` URL is refused), user/password or token
//! credentials from the URL, one server (no cluster failover list). The client is a small
//! implementation of the NATS core text protocol on tokio's TCP stream, written for the
//! bridge: the official `async-nats` crate would bring a second `syn` (through `tracing`'s
//! attribute macros) and a large TLS and URL tree. No JetStream: for events that must
//! survive a subscriber's absence, use a durable queue.
//!
//! The connection task decodes incoming events and hands them to the bus's publish queue
//! one at a time; with [`WhenFull::Wait`](crate::WhenFull) a full queue holds up the
//! connection (and, if it lasts, the server may drop it as a slow consumer, which is then
//! reported as a gap).
//!
//! # Example
//!
//! ```no_run
//! use palisade_events::nats::{NatsBridge, NatsConfig};
//! use palisade_events::{Event, EventBus};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! struct OrderPlaced { order_id: u64 }
//! impl Event for OrderPlaced { const NAME: &'static str = "order.placed"; }
//!
//! # async fn run() -> Result<(), palisade_events::nats::NatsError> {
//! // The shipping service: handles orders placed anywhere.
//! let bus = EventBus::new();
//! bus.on(|order: OrderPlaced| async move { println!("ship {}", order.order_id) })
//!     .detach();
//! let nats = NatsBridge::connect(&bus, NatsConfig::new("nats://127.0.0.1:4222")?).await?;
//! let orders = nats.bridge::<OrderPlaced>().await?; // on `palisade.events.order.placed`
//!
//! // The checkout service, in another process:
//! # let other = EventBus::new();
//! let checkout = NatsBridge::connect(&other, NatsConfig::new("nats://127.0.0.1:4222")?).await?;
//! checkout.publish(&OrderPlaced { order_id: 42 }).await?;
//! # drop(orders);
//! # Ok(())
//! # }
//! ```
//!
//! [`BusEvent::RemoteDisconnected`]: crate::BusEvent::RemoteDisconnected
//! [`BusEvent::RemoteReconnected`]: crate::BusEvent::RemoteReconnected
//! [`BusEvent::RemoteGap`]: crate::BusEvent::RemoteGap
//! [`BusEvent::RemoteMalformed`]: crate::BusEvent::RemoteMalformed

mod bridge;
mod config;
mod connection;
mod error;
mod proto;

pub use self::bridge::{Bridge, Malformed, NatsBridge, NatsStats};
pub use self::config::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PING_INTERVAL, DEFAULT_SEND_CAPACITY, DEFAULT_SUBJECT_PREFIX,
    NatsConfig,
};
pub use self::error::NatsError;
