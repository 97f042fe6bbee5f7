//! Where a client is in its life: the value of its status [`watch`](tokio::sync::watch).

use std::fmt;
use std::time::Duration;

/// A client's connection status, published through a [`watch`](tokio::sync::watch) channel
/// (see [`WsHandle::status`](crate::WsHandle::status)).
///
/// A client goes `Connecting` → `Connected`; when the connection is lost it waits in
/// `Reconnecting` for a backoff delay, then tries again (`Connecting`). It ends in
/// `Disconnected` (closed on purpose, or closed normally by the server) or `Failed` (it ran
/// out of attempts). Both end states are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Status {
    /// A connection attempt is under way.
    Connecting {
        /// The attempt's number in the current run of attempts, from 1.
        attempt: u32,
    },
    /// Connected: messages flow.
    Connected,
    /// Waiting before the next attempt.
    Reconnecting {
        /// The number the next attempt will have.
        attempt: u32,
        /// How long the wait is, from when it started.
        next_in: Duration,
    },
    /// Closed on purpose ([`WsHandle::close`](crate::WsHandle::close), every handle
    /// dropped) or closed normally by the server. Final.
    Disconnected,
    /// Gave up after the configured number of attempts. Final.
    Failed {
        /// How many attempts were made in the final run.
        attempts: u32,
    },
}

impl Status {
    /// Whether the client is connected.
    pub const fn is_connected(&self) -> bool {
        matches!(self, Status::Connected)
    }

    /// Whether this status is final (`Disconnected` or `Failed`).
    pub const fn is_final(&self) -> bool {
        matches!(self, Status::Disconnected | Status::Failed { .. })
    }

    /// The status's snake_case name: `"connecting"`, `"connected"`, `"reconnecting"`,
    /// `"disconnected"`, `"failed"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Status::Connecting { .. } => "connecting",
            Status::Connected => "connected",
            Status::Reconnecting { .. } => "reconnecting",
            Status::Disconnected => "disconnected",
            Status::Failed { .. } => "failed",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Connecting { attempt } => write!(f, "connecting (attempt {attempt})"),
            Status::Connected => f.write_str("connected"),
            Status::Reconnecting { attempt, next_in } => {
                write!(f, "reconnecting (attempt {attempt} in {next_in:?})")
            }
            Status::Disconnected => f.write_str("disconnected"),
            Status::Failed { attempts } => write!(f, "failed after {attempts} attempts"),
        }
    }
}
