//! What a bus reports to its [`Listener`](palisade_core::Listener).

use std::sync::Arc;
use std::time::Duration;

use palisade_core::event::{Event, Reading};

use crate::report::HandlerStatus;
use crate::subscription::HandlerId;

/// Something an [`EventBus`](crate::EventBus) reports to the listener set with
/// [`EventBusBuilder::listener`](crate::EventBusBuilder::listener).
///
/// With core's `MetricsListener` (feature `metrics` of `palisade-core`) these become the
/// counter `palisade_events_total{component="events", event=<kind>}` and the histogram
/// `palisade_events_handler_seconds` (handler latency) and the gauge
/// `palisade_events_queue_depth`.
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
        /// From the start of the emit to the end of this handler's call.
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
    /// A published event was never dispatched: every handle to the bus was dropped first.
    /// (`flush` before dropping the bus delivers everything.)
    Lost {
        /// The event's name.
        event: &'static str,
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
            _ => {}
        }
    }
}
