//! What a client reports to its [`Listener`](palisade_core::Listener).
//!
//! Each event is also logged through `tracing`; a listener is for what tracing is not
//! (metrics, alerts, tests). With core's `MetricsListener`, every event counts in
//! `palisade_events_total{component="ws", event=<kind>}`: connects, reconnects, dead peers
//! and dropped messages are those counters.

use std::fmt;
use std::time::Duration;

use palisade_core::event::{Event, Reading};

use crate::SendError;

/// Why a connection attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectFailure {
    /// The attempt did not finish within the connect timeout.
    TimedOut,
    /// The server answered the handshake with an HTTP status other than 101.
    Rejected {
        /// The HTTP status code.
        status: u16,
    },
    /// The endpoint could not produce a request (its provider failed, or the URL is invalid).
    Endpoint,
    /// TCP connect, TLS or an I/O error on the way.
    Io,
    /// The handshake broke the WebSocket protocol.
    Protocol,
}

impl ConnectFailure {
    /// The failure's snake_case name: `"timed_out"`, `"rejected"`, `"endpoint"`, `"io"`,
    /// `"protocol"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            ConnectFailure::TimedOut => "timed_out",
            ConnectFailure::Rejected { .. } => "rejected",
            ConnectFailure::Endpoint => "endpoint",
            ConnectFailure::Io => "io",
            ConnectFailure::Protocol => "protocol",
        }
    }
}

impl fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectFailure::Rejected { status } => write!(f, "rejected with HTTP {status}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Why an established connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// Nothing (no pong, no frame) arrived within the heartbeat timeout after a ping.
    DeadPeer,
    /// The peer sent a close frame with this status code (1005 when it gave none).
    PeerClosed {
        /// The close status code.
        code: u16,
    },
    /// The TCP connection ended without a close handshake.
    Abnormal,
    /// An I/O or protocol error.
    Error,
    /// The client closed it on purpose.
    Closed,
}

impl DisconnectReason {
    /// The reason's snake_case name: `"dead_peer"`, `"peer_closed"`, `"abnormal"`,
    /// `"error"`, `"closed"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            DisconnectReason::DeadPeer => "dead_peer",
            DisconnectReason::PeerClosed { .. } => "peer_closed",
            DisconnectReason::Abnormal => "abnormal",
            DisconnectReason::Error => "error",
            DisconnectReason::Closed => "closed",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::PeerClosed { code } => write!(f, "peer closed with code {code}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Something a client reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum WsEvent {
    /// A connection attempt starts.
    Connecting {
        /// Its number in the current run of attempts, from 1.
        attempt: u32,
    },
    /// A connection attempt failed.
    ConnectFailed {
        /// Its number in the current run of attempts.
        attempt: u32,
        /// Why.
        failure: ConnectFailure,
    },
    /// A connection is established.
    Connected {
        /// The attempt that made it.
        attempt: u32,
        /// Whether an earlier connection existed: this one replaces it.
        reconnect: bool,
        /// Messages waiting in the send buffer, written now (after any on-connect messages).
        buffered: usize,
    },
    /// The heartbeat found the peer silent; the connection is dropped and re-established.
    DeadPeer {
        /// How long nothing had arrived, ping timeout included.
        silent_for: Duration,
    },
    /// An established connection ended.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
        /// How long it had been up.
        connected_for: Duration,
    },
    /// The client waits before its next attempt.
    Reconnecting {
        /// The number the next attempt will have.
        attempt: u32,
        /// The wait, from the backoff.
        delay: Duration,
    },
    /// A message was queued while no connection was up; it is written after reconnecting.
    Buffered {
        /// Messages in the send buffer now.
        queued: usize,
    },
    /// A message was not written: its send future failed with `error`.
    Dropped {
        /// What its send future got.
        error: SendError,
        /// The message's length in bytes.
        len: usize,
    },
    /// The client gave up after its attempts ran out. Final.
    Failed {
        /// Attempts made in the final run.
        attempts: u32,
    },
    /// The client closed: on purpose, or the server closed normally. Final.
    Closed {
        /// Whether the close handshake finished (or there was no connection to close).
        clean: bool,
    },
}

impl Event for WsEvent {
    fn component(&self) -> &'static str {
        "ws"
    }

    fn kind(&self) -> &'static str {
        match self {
            WsEvent::Connecting { .. } => "connecting",
            WsEvent::ConnectFailed { .. } => "connect_failed",
            WsEvent::Connected {
                reconnect: false, ..
            } => "connected",
            WsEvent::Connected {
                reconnect: true, ..
            } => "reconnected",
            WsEvent::DeadPeer { .. } => "dead_peer",
            WsEvent::Disconnected { .. } => "disconnected",
            WsEvent::Reconnecting { .. } => "reconnecting",
            WsEvent::Buffered { .. } => "buffered",
            WsEvent::Dropped { .. } => "dropped",
            WsEvent::Failed { .. } => "failed",
            WsEvent::Closed { .. } => "closed",
        }
    }

    fn readings(&self, record: &mut dyn FnMut(Reading)) {
        match self {
            WsEvent::Connected { buffered, .. } => {
                record(Reading::gauge("palisade_ws_connected", 1.0));
                record(Reading::gauge(
                    "palisade_ws_buffered_messages",
                    *buffered as f64,
                ));
            }
            WsEvent::Disconnected { connected_for, .. } => {
                record(Reading::gauge("palisade_ws_connected", 0.0));
                record(Reading::histogram(
                    "palisade_ws_connection_seconds",
                    connected_for.as_secs_f64(),
                ));
            }
            WsEvent::Reconnecting { delay, .. } => record(Reading::histogram(
                "palisade_ws_reconnect_delay_seconds",
                delay.as_secs_f64(),
            )),
            WsEvent::Buffered { queued } => record(Reading::gauge(
                "palisade_ws_buffered_messages",
                *queued as f64,
            )),
            WsEvent::Failed { .. } | WsEvent::Closed { .. } => {
                record(Reading::gauge("palisade_ws_connected", 0.0));
            }
            WsEvent::Connecting { .. }
            | WsEvent::ConnectFailed { .. }
            | WsEvent::DeadPeer { .. }
            | WsEvent::Dropped { .. } => {}
        }
    }
}
