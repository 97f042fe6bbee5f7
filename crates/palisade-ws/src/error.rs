//! The client's errors.

use std::time::Duration;

/// Why a message was not written. Every message the client does not write ends with one of
/// these on its [`SendFuture`](crate::SendFuture): nothing is dropped silently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The send buffer was full and its policy is
    /// [`OverflowPolicy::RejectNew`](crate::OverflowPolicy::RejectNew).
    #[error("send buffer full; message rejected")]
    BufferFull,
    /// The message alone is larger than the send buffer's byte limit.
    #[error("message of {len} bytes is larger than the send buffer's limit of {limit} bytes")]
    TooLarge {
        /// The message's length.
        len: usize,
        /// The buffer's byte limit.
        limit: usize,
    },
    /// The message was dropped from a full send buffer to make room for a newer one
    /// ([`OverflowPolicy::DropOldest`](crate::OverflowPolicy::DropOldest) or
    /// [`OverflowPolicy::DropNewest`](crate::OverflowPolicy::DropNewest)).
    #[error("message dropped from a full send buffer")]
    Evicted,
    /// The connection was lost after the message was handed to the socket but before the
    /// write was confirmed: it may or may not have reached the peer. It is not sent again.
    #[error("connection lost while the message was being written; it may not have arrived")]
    ConnectionLost,
    /// The client was closed (or closed by the server) before the message was written.
    #[error("client closed before the message was written")]
    Closed,
    /// The client gave up reconnecting before the message was written.
    #[error("client failed (out of reconnect attempts) before the message was written")]
    Failed,
}

impl SendError {
    /// The error's snake_case name, as used in events: `"buffer_full"`, `"too_large"`,
    /// `"evicted"`, `"connection_lost"`, `"closed"`, `"failed"`.
    pub const fn as_str(&self) -> &'static str {
        match self {
            SendError::BufferFull => "buffer_full",
            SendError::TooLarge { .. } => "too_large",
            SendError::Evicted => "evicted",
            SendError::ConnectionLost => "connection_lost",
            SendError::Closed => "closed",
            SendError::Failed => "failed",
        }
    }
}

/// Why a [`WsConfig`](crate::WsConfig) could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A duration that must be above zero was zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// The heartbeat's timeout must not exceed its interval, so that a silent peer is found
    /// within `interval + timeout`.
    #[error("heartbeat timeout ({timeout:?}) must not exceed its interval ({interval:?})")]
    TimeoutAboveInterval {
        /// The ping interval given.
        interval: Duration,
        /// The timeout given.
        timeout: Duration,
    },
}

/// Why [`connect`](crate::connect) could not start a client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// `connect` must be called within a Tokio runtime: the client runs as a task on it.
    #[error("palisade-ws needs a Tokio runtime: call connect from within one")]
    NoRuntime,
}

/// Why [`WsHandle::close`](crate::WsHandle::close) did not end cleanly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloseError {
    /// The flush and close handshake did not finish within the close timeout; the socket was
    /// dropped. Messages not written by then failed with [`SendError::Closed`].
    #[error("close handshake did not finish within {0:?}; the connection was dropped")]
    TimedOut(Duration),
}
