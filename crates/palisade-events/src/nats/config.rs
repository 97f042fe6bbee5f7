//! Configuring a bridge: the server, subjects, reconnects, keep-alive.

use std::fmt;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::backoff::Backoff;

use super::bridge::Malformed;
use super::error::NatsError;
use super::proto;

/// The subject prefix by default: `palisade.events`, so `order.placed` travels on
/// `palisade.events.order.placed`.
pub const DEFAULT_SUBJECT_PREFIX: &str = "palisade.events";

/// How many events may wait to be sent by default (also while reconnecting): 1024.
pub const DEFAULT_SEND_CAPACITY: NonZeroUsize = NonZeroUsize::new(1024).unwrap();

/// How long opening a connection may take by default (TCP connect and handshake): 5 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the bridge pings an idle-looking server by default: every 30 s. Two pings
/// without an answer mean the connection is dead.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);

pub(crate) type MalformedFn = dyn Fn(Malformed) + Send + Sync;

/// Where and how a [`NatsBridge`](super::NatsBridge) connects; validated when built.
///
/// | setting | default |
/// |---|---|
/// | server | from the URL given to [`new`](Self::new): `nats://host:port` (port 4222 when left out), with optional `user:password@` or `token@` |
/// | [`subject_prefix`](Self::subject_prefix) | `palisade.events` ([`DEFAULT_SUBJECT_PREFIX`]) |
/// | [`reconnect`](Self::reconnect) | core's default [`Backoff`] (exponential from 100 ms, factor 2, capped at 10 s, full jitter), retrying forever |
/// | [`connect_timeout`](Self::connect_timeout) | 5 s per attempt ([`DEFAULT_CONNECT_TIMEOUT`]) |
/// | [`ping_interval`](Self::ping_interval) | 30 s; two unanswered pings drop the connection ([`DEFAULT_PING_INTERVAL`]) |
/// | [`send_capacity`](Self::send_capacity) | 1024 events waiting to be sent ([`DEFAULT_SEND_CAPACITY`]) |
/// | [`name`](Self::name) | `palisade-events` (the client name the server shows) |
/// | [`on_malformed`](Self::on_malformed) | none (malformed payloads are still traced, counted and reported to the bus's listener) |
///
/// Plain TCP only: `tls://` URLs are refused (see the [module docs](super)).
///
/// ```
/// use std::time::Duration;
/// use palisade_events::nats::NatsConfig;
///
/// # fn main() -> Result<(), palisade_events::nats::NatsError> {
/// let config = NatsConfig::new("nats://127.0.0.1:4222")?
///     .subject_prefix("shop.events")?
///     .ping_interval(Duration::from_secs(10))
///     .name("checkout");
/// # let _ = config;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use]
pub struct NatsConfig {
    pub(crate) server: ServerAddr,
    pub(crate) prefix: Arc<str>,
    pub(crate) reconnect: Backoff,
    pub(crate) connect_timeout: Duration,
    pub(crate) ping_interval: Duration,
    pub(crate) send_capacity: NonZeroUsize,
    pub(crate) name: Arc<str>,
    pub(crate) on_malformed: Option<Arc<MalformedFn>>,
}

impl NatsConfig {
    /// A configuration for the server at `url`, with the defaults above.
    ///
    /// # Errors
    ///
    /// [`NatsError::InvalidUrl`] when `url` is not `nats://[user:password@|token@]host[:port]`
    /// (also for `tls://`: TLS is not supported yet).
    pub fn new(url: &str) -> Result<Self, NatsError> {
        Ok(Self {
            server: ServerAddr::parse(url)?,
            prefix: Arc::from(DEFAULT_SUBJECT_PREFIX),
            reconnect: Backoff::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            send_capacity: DEFAULT_SEND_CAPACITY,
            name: Arc::from("palisade-events"),
            on_malformed: None,
        })
    }

    /// The prefix of every subject: an event named `order.placed` travels on
    /// `<prefix>.order.placed`. Default `palisade.events`.
    ///
    /// # Errors
    ///
    /// [`NatsError::InvalidSubject`] when `prefix` is not a valid subject (empty tokens,
    /// whitespace, wildcards).
    pub fn subject_prefix(mut self, prefix: &str) -> Result<Self, NatsError> {
        if !proto::is_valid_subject(prefix) {
            return Err(NatsError::InvalidSubject {
                subject: prefix.to_owned(),
            });
        }
        self.prefix = Arc::from(prefix);
        Ok(self)
    }

    /// The delays between reconnect attempts after the connection is lost. Default: core's
    /// default [`Backoff`], without limits (the bridge keeps trying). With a limit, the
    /// bridge gives up when it is reached: publishing then fails with
    /// [`NatsError::Closed`].
    pub fn reconnect(mut self, backoff: Backoff) -> Self {
        self.reconnect = backoff;
        self
    }

    /// How long one connection attempt (TCP connect and the NATS handshake) may take.
    /// Default 5 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How often the bridge pings the server to find a dead connection; two pings without
    /// an answer drop it (and the bridge reconnects). Default 30 s.
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How many events may wait to be sent, also while the bridge reconnects; when full,
    /// [`publish`](super::NatsBridge::publish) waits and
    /// [`try_publish`](super::NatsBridge::try_publish) fails. Default 1024.
    pub fn send_capacity(mut self, capacity: NonZeroUsize) -> Self {
        self.send_capacity = capacity;
        self
    }

    /// The client name the server shows for this connection. Default `palisade-events`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Calls `f` with every message whose payload could not be decoded into its event type
    /// (besides the warning, the counter and the bus listener's
    /// [`BusEvent::RemoteMalformed`](crate::BusEvent::RemoteMalformed)). Called on the
    /// bridge's connection task: keep it short. A panic in it is caught and logged.
    pub fn on_malformed(mut self, f: impl Fn(Malformed) + Send + Sync + 'static) -> Self {
        self.on_malformed = Some(Arc::new(f));
        self
    }

    /// The server's `host:port`.
    pub fn server(&self) -> String {
        self.server.to_string()
    }
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsConfig")
            .field("server", &self.server)
            .field("prefix", &self.prefix)
            .field("reconnect", &self.reconnect)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("send_capacity", &self.send_capacity)
            .field("name", &self.name)
            .field("on_malformed", &self.on_malformed.as_ref().map(|_| ".."))
            .finish()
    }
}

/// A server to connect to, and the credentials from its URL.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ServerAddr {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) auth: Auth,
}

#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Token(String),
    User { user: String, pass: String },
}

impl ServerAddr {
    pub(crate) fn parse(url: &str) -> Result<Self, NatsError> {
        let invalid = |reason: &'static str| NatsError::InvalidUrl {
            url: redact(url),
            reason,
        };
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("nats") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("tls") => {
                return Err(invalid(
                    "TLS is not supported yet; use a plain nats:// server",
                ));
            }
            Some(_) => return Err(invalid("the scheme must be nats://")),
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', ',']) {
            return Err(invalid(
                "expected nats://host:port, without a path, query or second server",
            ));
        }
        let (auth, hostport) = match rest.rsplit_once('@') {
            Some((creds, hostport)) => {
                let auth = match creds.split_once(':') {
                    Some((user, pass)) => Auth::User {
                        user: user.to_owned(),
                        pass: pass.to_owned(),
                    },
                    None => Auth::Token(creds.to_owned()),
                };
                (auth, hostport)
            }
            None => (Auth::None, rest),
        };
        let (host, port) = if let Some(bracketed) = hostport.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address needs its closing `]`"))?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(invalid("unexpected text after the IPv6 address")),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        let port = match port {
            Some(port) => port
                .parse()
                .map_err(|_| invalid("the port is not a number from 0 to 65535"))?,
            None => 4222,
        };
        Ok(Self {
            host: host.to_owned(),
            port,
            auth,
        })
    }
}

/// `url` without its credentials, for error messages.
fn redact(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, host))) => format!("{scheme}://***@{host}"),
        (None, Some((_, host))) => format!("***@{host}"),
        _ => url.to_owned(),
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the credentials.
        write!(f, "\"{self}\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_urls() {
        let addr = ServerAddr::parse("nats://127.0.0.1:4333").unwrap();
        assert_eq!((addr.host.as_str(), addr.port), ("127.0.0.1", 4333));
        assert!(addr.auth == Auth::None);

        let addr = ServerAddr::parse("localhost").unwrap();
        assert_eq!((addr.host.as_str(), addr.port), ("localhost", 4222));

        let addr = ServerAddr::parse("nats://[::1]:5000/").unwrap();
        assert_eq!((addr.host.as_str(), addr.port), ("::1", 5000));
        assert_eq!(addr.to_string(), "[::1]:5000");

        let addr = ServerAddr::parse("nats://alice:s3cret@host:1").unwrap();
        assert!(
            addr.auth
                == Auth::User {
                    user: "alice".into(),
                    pass: "s3cret".into()
                }
        );
        assert_eq!(format!("{addr:?}"), "\"host:1\"");

        let addr = ServerAddr::parse("nats://tok@host").unwrap();
        assert!(addr.auth == Auth::Token("tok".into()));
    }

    #[test]
    fn refuses_bad_urls_without_showing_credentials() {
        for bad in [
            "tls://host:4222",
            "http://host",
            "nats://host:port",
            "nats://host:70000",
            "nats://:4222",
            "nats://a:4222,b:4222",
            "nats://host/path",
        ] {
            assert!(
                matches!(ServerAddr::parse(bad), Err(NatsError::InvalidUrl { .. })),
                "{bad}"
            );
        }
        let error = ServerAddr::parse("tls://alice:s3cret@host").unwrap_err();
        assert!(!error.to_string().contains("s3cret"), "{error}");
        assert!(error.to_string().contains("TLS"), "{error}");
    }

    #[test]
    fn refuses_invalid_prefixes() {
        let config = NatsConfig::new("nats://h").unwrap();
        assert!(config.clone().subject_prefix("a.b").is_ok());
        assert!(matches!(
            config.subject_prefix("a.*"),
            Err(NatsError::InvalidSubject { .. })
        ));
    }
}
