//! What can go wrong between a bus and NATS.

use std::io;
use std::time::Duration;

use palisade_core::reject::Overloaded;

/// A bridge could not be configured, connect, subscribe or send.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NatsError {
    /// The server URL is not one the bridge can use.
    #[error("invalid NATS url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL, credentials hidden.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A subject (the prefix, or prefix and event name) is not a valid NATS subject to
    /// publish on: empty tokens, whitespace or wildcards (`*`, `>`).
    #[error("`{subject}` is not a valid NATS subject")]
    InvalidSubject {
        /// The subject.
        subject: String,
    },
    /// The TCP connection to the server failed.
    #[error("could not connect to NATS at {server}")]
    Connect {
        /// The server's `host:port`.
        server: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The connection or the handshake took longer than the connect timeout.
    #[error("NATS at {server} did not answer within {timeout:?}")]
    TimedOut {
        /// The server's `host:port`.
        server: String,
        /// The connect timeout.
        timeout: Duration,
    },
    /// The server refused the connection (`-ERR`), e.g. for bad credentials.
    #[error("NATS at {server} refused the connection: {message}")]
    Refused {
        /// The server's `host:port`.
        server: String,
        /// The server's error message.
        message: String,
    },
    /// The server broke the protocol, or closed the connection during the handshake.
    #[error("NATS at {server}: {reason}")]
    Protocol {
        /// The server's `host:port`.
        server: String,
        /// What happened.
        reason: String,
    },
    /// The event could not be serialized to JSON.
    #[error("`{event}` could not be serialized")]
    Serialize {
        /// The event's name.
        event: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// The serialized event is larger than the server accepts (its `max_payload`).
    #[error("`{event}` is {size} bytes serialized; the server accepts at most {max}")]
    TooLarge {
        /// The event's name.
        event: &'static str,
        /// The payload's size.
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// The send queue is full ([`try_publish`](super::NatsBridge::try_publish)). Its source
    /// is core's [`Overloaded`], so `Rejection::find` recognises it.
    #[error("NATS send queue full ({capacity} events waiting); `{event}` was not sent")]
    QueueFull {
        /// The event's name.
        event: &'static str,
        /// The queue's capacity.
        capacity: usize,
        /// The suite's rejection for a component at capacity.
        #[source]
        overloaded: Overloaded,
    },
    /// The connection was lost before the server confirmed a [`flush`](super::NatsBridge::flush):
    /// what was sent before it may not have arrived.
    #[error("the NATS connection was lost before the server confirmed the flush")]
    Disconnected,
    /// The bridge has stopped: its reconnect backoff gave up, or its runtime shut down.
    #[error("the NATS bridge has stopped")]
    Closed,
}
