//! What a bus reports to its [`Listener`](palisade_core::Listener).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::{Event, Listener, Reading};

use crate::report::HandlerStatus;
use crate::subscription::HandlerId;

/// Something an [`EventBus`](crate::EventBus) reports to the listener set with
/// [`EventBusBuilder::listener`](crate::EventBusBuilder::listener).
///
/// With core's `MetricsListener` (feature `metrics` of `palisade-core`) these become the
/// counter `palisade_events_total{component="events", event=<kind>}` and the histogram
/// `palisade_events_handler_seconds` (handler latency) and the gauge
/// `palisade_events_queue_depth`; with the `nats` feature, also the histogram
/// `palisade_events_remote_gap_seconds` (the `RemoteGap` window).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BusEvent {
    /// An emit began (`emit`, `emit_serial`, or the dispatcher for a published event).
    Emitted {
        /// The event's name.
        event: &'static str,
        /// How many handlers it goes to.
        handlers: usize,
    },
    /// A handler's call ended (reported for every handler that was called).
    HandlerFinished {
        /// The event's name.
        event: &'static str,
        /// The handler.
        handler: HandlerId,
        /// The handler's name.
        name: Arc<str>,
        /// How it ended.
        status: HandlerStatus,
        /// From the start of this handler's call to its end (in a serial emit, the handlers
        /// before it are not counted).
        latency: Duration,
    },
    /// An event was put on the publish queue.
    Published {
        /// The event's name.
        event: &'static str,
        /// Events published and not yet fully dispatched, this one included.
        queued: usize,
    },
    /// `publish` refused an event (full queue with [`WhenFull::Reject`](crate::WhenFull),
    /// no runtime, dispatcher stopped); the caller got the error.
    PublishRejected {
        /// The event's name.
        event: &'static str,
    },
    /// Handlers of a published event failed, panicked or timed out; the event and its report
    /// went to the dead-letter callback if one is set.
    DeadLetter {
        /// The event's name.
        event: &'static str,
        /// How many handlers failed.
        failures: usize,
    },
    /// A published event was not dispatched, or its dispatch was cut short: every handle to
    /// the bus was dropped first (`flush` before dropping the bus delivers everything), the
    /// runtime running the dispatcher shut down, or something outside the handlers panicked
    /// while dispatching it (the event's `Clone`, say). Some of its handlers may not have run.
    Lost {
        /// The event's name.
        event: &'static str,
    },
    /// The connection of a [`NatsBridge`](crate::nats::NatsBridge) broke; it reconnects.
    #[cfg(feature = "nats")]
    RemoteDisconnected {
        /// The server's `host:port`.
        server: Arc<str>,
        /// Why: the read or write error, the server closing, or its silence.
        reason: Arc<str>,
        /// Events handed to the connection and never written: lost.
        unsent: usize,
    },
    /// A [`NatsBridge`](crate::nats::NatsBridge) has connected again.
    #[cfg(feature = "nats")]
    RemoteReconnected {
        /// From the loss to the new connection.
        downtime: Duration,
    },
    /// A [`NatsBridge`](crate::nats::NatsBridge) has its subscriptions back after a lost
    /// connection: events of these types published during `gap` may have been missed.
    #[cfg(feature = "nats")]
    RemoteGap {
        /// From the last thing heard on the lost connection to the server's confirmation of
        /// the new subscriptions.
        gap: Duration,
        /// The event names that were subscribed.
        events: Arc<[&'static str]>,
    },
    /// A message from NATS could not be decoded into its event type; it was not delivered.
    #[cfg(feature = "nats")]
    RemoteMalformed {
        /// The event's name (from the subscription).
        event: &'static str,
        /// The decoding error.
        error: Arc<str>,
    },
}

impl Event for BusEvent {
    fn component(&self) -> &'static str {
        "events"
    }

    fn kind(&self) -> &'static str {
        match self {
            BusEvent::Emitted { .. } => "emitted",
            BusEvent::HandlerFinished { status, .. } => match status {
                HandlerStatus::Ok => "handler_ok",
                HandlerStatus::Failed => "handler_failed",
                HandlerStatus::Panicked => "handler_panicked",
                HandlerStatus::TimedOut => "handler_timed_out",
                HandlerStatus::Unsubscribed => "handler_unsubscribed",
            },
            BusEvent::Published { .. } => "published",
            BusEvent::PublishRejected { .. } => "publish_rejected",
            BusEvent::DeadLetter { .. } => "dead_letter",
            BusEvent::Lost { .. } => "lost",
            #[cfg(feature = "nats")]
            BusEvent::RemoteDisconnected { .. } => "remote_disconnected",
            #[cfg(feature = "nats")]
            BusEvent::RemoteReconnected { .. } => "remote_reconnected",
            #[cfg(feature = "nats")]
            BusEvent::RemoteGap { .. } => "remote_gap",
            #[cfg(feature = "nats")]
            BusEvent::RemoteMalformed { .. } => "remote_malformed",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            BusEvent::HandlerFinished { latency, .. } => record(Reading::histogram(
                "palisade_events_handler_seconds",
                latency.as_secs_f64(),
            )),
            BusEvent::Published { queued, .. } => {
                record(Reading::gauge(
                    "palisade_events_queue_depth",
                    *queued as f64,
                ));
            }
            #[cfg(feature = "nats")]
            BusEvent::RemoteGap { gap, .. } => record(Reading::histogram(
                "palisade_events_remote_gap_seconds",
                gap.as_secs_f64(),
            )),
            _ => {}
        }
    }
}

/// Calls `listener` with `event`. A panic in it is caught and logged: a broken metrics
/// backend must not stop an emit, or the dispatcher with every event queued behind it.
pub(crate) fn tell(listener: &dyn Listener<BusEvent>, event: &BusEvent) {
    if catch_unwind(AssertUnwindSafe(|| listener.on_event(event))).is_err() {
        tracing::error!(kind = event.kind(), "the event bus's listener panicked");
    }
}
