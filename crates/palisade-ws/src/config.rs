//! The client's validated configuration.

use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use palisade_core::backoff::{Backoff, Jitter};
use palisade_core::event::Listener;

use crate::endpoint::{DynEndpoint, Endpoint};
use crate::error::ConfigError;
use crate::event::WsEvent;
use crate::message::Message;

/// The reconnect delays used unless configured: exponential from 1 s, factor 2, capped at
/// 30 s, with [`Jitter::Equal`] (each delay between half and all of its nominal value), and no
/// limit of its own.
pub const DEFAULT_BACKOFF: Backoff =
    match Backoff::exponential(Duration::from_secs(1), 2.0, Duration::from_secs(30)) {
        Ok(backoff) => backoff.with_jitter(Jitter::Equal),
        Err(_) => panic!("the default backoff is valid"),
    };

/// What a full send buffer does with one more message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Refuse the new message: its send future fails at once with
    /// [`SendError::BufferFull`](crate::SendError::BufferFull). The default.
    #[default]
    RejectNew,
    /// Drop the oldest buffered messages until the new one fits: theirs fail with
    /// [`SendError::Evicted`](crate::SendError::Evicted). For feeds where only the latest
    /// values matter.
    DropOldest,
    /// Drop the most recently buffered messages until the new one fits: theirs fail with
    /// [`SendError::Evicted`](crate::SendError::Evicted). Keeps the oldest messages and the
    /// newest one.
    DropNewest,
}

/// How many messages the send buffer holds, and what happens when it is full.
///
/// The buffer holds every message not yet handed to the socket: while disconnected it keeps
/// them for the next connection; while connected it drains as fast as the socket takes
/// frames, so only a producer faster than the network meets the limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimits {
    /// At most this many messages.
    pub messages: NonZeroUsize,
    /// At most this many payload bytes, all messages together.
    pub bytes: NonZeroUsize,
    /// What a full buffer does.
    pub policy: OverflowPolicy,
}

impl Default for BufferLimits {
    /// 1,024 messages, 1 MiB, [`OverflowPolicy::RejectNew`].
    fn default() -> Self {
        Self {
            messages: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
            bytes: NonZeroUsize::new(1 << 20).unwrap_or(NonZeroUsize::MIN),
            policy: OverflowPolicy::RejectNew,
        }
    }
}

/// Dead-peer detection: a ping every `interval`; if nothing arrives within `timeout` after
/// it, the peer is declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Heartbeat {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

/// What an on-connect hook is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectInfo {
    /// The attempt that made this connection, in the current run of attempts.
    pub attempt: u32,
    /// Connections made so far, this one included (1 for the first).
    pub connection: u64,
}

impl ConnectInfo {
    /// Whether an earlier connection existed: this one replaces it.
    pub const fn is_reconnect(&self) -> bool {
        self.connection > 1
    }
}

pub(crate) type OnConnect = Arc<dyn Fn(&ConnectInfo) -> Vec<Message> + Send + Sync>;

/// A validated client configuration; build one with [`WsConfig::builder`].
///
/// | setting | default |
/// |---|---|
/// | reconnect delays | [`DEFAULT_BACKOFF`]: exponential from **1 s**, ×2, capped at **30 s**, equal jitter |
/// | attempts in a row before `Failed` | unbounded |
/// | time connected before the attempt count resets | **5 s** |
/// | connect timeout (request, TCP, TLS, handshake) | **10 s** |
/// | heartbeat | a ping every **15 s**, dead after **10 s** of silence following it |
/// | send buffer | **1,024** messages, **1 MiB**, reject new |
/// | receive buffer | **1,024** messages |
/// | close timeout | **5 s** |
/// | a server's normal close (1000) | final, not reconnected |
/// | `TCP_NODELAY` | on |
#[derive(Clone)]
pub struct WsConfig {
    pub(crate) endpoint: Arc<dyn DynEndpoint>,
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: Option<NonZeroU32>,
    pub(crate) min_connected: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) heartbeat: Option<Heartbeat>,
    pub(crate) buffer: BufferLimits,
    pub(crate) receive_capacity: NonZeroUsize,
    pub(crate) close_timeout: Duration,
    pub(crate) reconnect_on_normal_close: bool,
    pub(crate) nodelay: bool,
    pub(crate) on_connect: Option<OnConnect>,
    pub(crate) listener: Arc<dyn Listener<WsEvent>>,
    #[cfg(feature = "rustls")]
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl WsConfig {
    /// A builder for a client of `endpoint`, with the defaults in the table above.
    pub fn builder(endpoint: impl Endpoint) -> WsConfigBuilder {
        WsConfigBuilder {
            config: WsConfig {
                endpoint: Arc::new(endpoint),
                backoff: DEFAULT_BACKOFF,
                max_attempts: None,
                min_connected: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(10),
                heartbeat: Some(Heartbeat {
                    interval: Duration::from_secs(15),
                    timeout: Duration::from_secs(10),
                }),
                buffer: BufferLimits::default(),
                receive_capacity: NonZeroUsize::new(1024).unwrap_or(NonZeroUsize::MIN),
                close_timeout: Duration::from_secs(5),
                reconnect_on_normal_close: false,
                nodelay: true,
                on_connect: None,
                listener: Arc::new(()),
                #[cfg(feature = "rustls")]
                tls: None,
            },
        }
    }

    /// The reconnect delays.
    pub const fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// The attempts in a row allowed before `Failed`, if bounded.
    pub const fn max_attempts(&self) -> Option<NonZeroU32> {
        self.max_attempts
    }

    /// The send buffer's limits and policy.
    pub const fn buffer(&self) -> BufferLimits {
        self.buffer
    }

    /// The heartbeat's ping interval and timeout, if enabled.
    pub fn heartbeat(&self) -> Option<(Duration, Duration)> {
        self.heartbeat.map(|h| (h.interval, h.timeout))
    }
}

impl fmt::Debug for WsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsConfig")
            .field("backoff", &self.backoff)
            .field("max_attempts", &self.max_attempts)
            .field("min_connected", &self.min_connected)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("buffer", &self.buffer)
            .field("receive_capacity", &self.receive_capacity)
            .field("close_timeout", &self.close_timeout)
            .field("reconnect_on_normal_close", &self.reconnect_on_normal_close)
            .field("nodelay", &self.nodelay)
            .field("on_connect", &self.on_connect.is_some())
            .finish_non_exhaustive()
    }
}

/// Builds a [`WsConfig`]; made by [`WsConfig::builder`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct WsConfigBuilder {
    config: WsConfig,
}

impl WsConfigBuilder {
    /// The delays between attempts ([`DEFAULT_BACKOFF`] by default). A limit of the backoff's
    /// own (attempts, elapsed time) also ends a run of attempts in `Failed`; prefer
    /// [`max_attempts`](Self::max_attempts), which counts every attempt the same way at start
    /// and after a lost connection.
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.config.backoff = backoff;
        self
    }

    /// Gives up (`Failed`) after `attempts` connection attempts in a row that fail, or that
    /// connect but do not stay up for [`min_connected`](Self::min_connected). Unbounded by
    /// default.
    pub const fn max_attempts(mut self, attempts: NonZeroU32) -> Self {
        self.config.max_attempts = Some(attempts);
        self
    }

    /// How long a connection must stay up before the attempt count and the backoff start
    /// over (5 s by default). A server that accepts and drops at once keeps backing off.
    pub const fn min_connected(mut self, duration: Duration) -> Self {
        self.config.min_connected = duration;
        self
    }

    /// The limit on one attempt: endpoint request, TCP connect, TLS and handshake (10 s by
    /// default).
    pub const fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// A ping every `interval`; if nothing at all (pong or any other frame) arrives within
    /// `timeout` after it, the connection is declared dead, dropped and re-established. A
    /// peer that goes silent is found within `interval + timeout`. (15 s and 10 s by default.)
    pub const fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat = Some(Heartbeat { interval, timeout });
        self
    }

    /// No pings and no dead-peer detection: only the TCP connection's own errors end it.
    pub const fn no_heartbeat(mut self) -> Self {
        self.config.heartbeat = None;
        self
    }

    /// The send buffer's limits and overflow policy.
    pub const fn buffer(mut self, limits: BufferLimits) -> Self {
        self.config.buffer = limits;
        self
    }

    /// How many received messages wait for the application (1,024 by default). While it is
    /// full the client stops reading the socket (TCP pushes back on the server) and the
    /// heartbeat does not declare the peer dead.
    pub const fn receive_capacity(mut self, messages: NonZeroUsize) -> Self {
        self.config.receive_capacity = messages;
        self
    }

    /// The limit on [`WsHandle::close`](crate::WsHandle::close): flushing the send buffer and
    /// the close handshake (5 s by default).
    pub const fn close_timeout(mut self, timeout: Duration) -> Self {
        self.config.close_timeout = timeout;
        self
    }

    /// Whether a close frame with the normal code (1000) from the server is reconnected like
    /// any other loss (`false` by default: it ends the client in `Disconnected`). Other close
    /// codes (1001 going away, 1011, 1012 restart, ...) always reconnect.
    pub const fn reconnect_on_normal_close(mut self, reconnect: bool) -> Self {
        self.config.reconnect_on_normal_close = reconnect;
        self
    }

    /// Whether to set `TCP_NODELAY` (on by default: a message goes out at once rather than
    /// waiting to be coalesced).
    pub const fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Called on every established connection (the first included; see
    /// [`ConnectInfo::is_reconnect`]); the messages it returns are written first, before the
    /// send buffer is flushed. The place to (re)subscribe. They bypass the send buffer and
    /// have no send futures: if the connection is lost before they are written, the hook runs
    /// again on the next one.
    pub fn on_connect<F>(mut self, hook: F) -> Self
    where
        F: Fn(&ConnectInfo) -> Vec<Message> + Send + Sync + 'static,
    {
        self.config.on_connect = Some(Arc::new(hook));
        self
    }

    /// Receives the client's [`WsEvent`]s.
    pub fn listener<L: Listener<WsEvent> + 'static>(mut self, listener: L) -> Self {
        self.config.listener = Arc::new(listener);
        self
    }

    /// The rustls configuration for `wss://` (feature `rustls`). By default: the ring
    /// provider, safe default protocol versions and the platform's root certificates.
    #[cfg(feature = "rustls")]
    pub fn tls_config(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.config.tls = Some(config);
        self
    }

    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// [`ConfigError::ZeroDuration`] for a zero connect timeout, close timeout, heartbeat
    /// interval or timeout; [`ConfigError::TimeoutAboveInterval`] for a heartbeat timeout
    /// longer than its interval.
    pub fn build(self) -> Result<WsConfig, ConfigError> {
        let config = self.config;
        if config.connect_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("connect timeout"));
        }
        if config.close_timeout.is_zero() {
            return Err(ConfigError::ZeroDuration("close timeout"));
        }
        if let Some(Heartbeat { interval, timeout }) = config.heartbeat {
            if interval.is_zero() {
                return Err(ConfigError::ZeroDuration("heartbeat interval"));
            }
            if timeout.is_zero() {
                return Err(ConfigError::ZeroDuration("heartbeat timeout"));
            }
            if timeout > interval {
                return Err(ConfigError::TimeoutAboveInterval { interval, timeout });
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build() {
        let config = WsConfig::builder("ws://localhost:1").build().unwrap();
        assert_eq!(config.backoff(), &DEFAULT_BACKOFF);
        assert_eq!(config.max_attempts(), None);
        assert_eq!(
            config.heartbeat(),
            Some((Duration::from_secs(15), Duration::from_secs(10)))
        );
        assert_eq!(config.buffer(), BufferLimits::default());
    }

    #[test]
    fn invalid_durations_are_rejected() {
        let builder = || WsConfig::builder("ws://localhost:1");
        assert_eq!(
            builder()
                .connect_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            ConfigError::ZeroDuration("connect timeout")
        );
        assert_eq!(
            builder().close_timeout(Duration::ZERO).build().unwrap_err(),
            ConfigError::ZeroDuration("close timeout")
        );
        assert_eq!(
            builder()
                .heartbeat(Duration::ZERO, Duration::ZERO)
                .build()
                .unwrap_err(),
            ConfigError::ZeroDuration("heartbeat interval")
        );
        assert_eq!(
            builder()
                .heartbeat(Duration::from_secs(1), Duration::from_secs(2))
                .build()
                .unwrap_err(),
            ConfigError::TimeoutAboveInterval {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(2)
            }
        );
        assert!(builder().no_heartbeat().build().is_ok());
    }
}
