//! [`RedisBackend`]: locks on one Redis server (feature `redis`).

use std::fmt;
use std::sync::{LazyLock, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{
    AsyncConnectionConfig, Client, Cmd, ErrorKind, FromRedisValue, RedisError, Script,
    ServerErrorKind,
};

use crate::backend::{Backend, Grant, redlock_drift};
use crate::{BackendError, FencingToken};

/// A Lua script: its source, and its SHA-1 for `EVALSHA`.
struct Lua {
    body: &'static str,
    script: LazyLock<Script>,
}

/// What a fence key adds to its lock key.
const FENCE_SUFFIX: &str = ":fence";

/// Grants the lock and increments the key's fencing counter in one step. A missing counter
/// (a new key, or a server that lost its data) starts from the server's clock in
/// microseconds, so tokens keep growing across a restart that loses the counter.
///
/// `KEYS[1]` lock, `KEYS[2]` counter; `ARGV[1]` owner, `ARGV[2]` TTL in ms. Returns the new
/// token, or 0 when the lock is held.
static ACQUIRE: Lua = Lua {
    body: ACQUIRE_LUA,
    script: LazyLock::new(|| Script::new(ACQUIRE_LUA)),
};
const ACQUIRE_LUA: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local token = redis.call('INCR', KEYS[2])
if token == 1 then
  local now = redis.call('TIME')
  token = now[1] .. string.format('%06d', tonumber(now[2]))
  redis.call('SET', KEYS[2], token)
  return redis.call('INCR', KEYS[2])
end
return token
";

/// Compare-and-extend: `KEYS[1]` lock; `ARGV[1]` owner, `ARGV[2]` TTL in ms.
static RENEW: Lua = Lua {
    body: RENEW_LUA,
    script: LazyLock::new(|| Script::new(RENEW_LUA)),
};
const RENEW_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// Compare-and-delete: `KEYS[1]` lock; `ARGV[1]` owner.
static RELEASE: Lua = Lua {
    body: RELEASE_LUA,
    script: LazyLock::new(|| Script::new(RELEASE_LUA)),
};
const RELEASE_LUA: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Redlock: raises the counter to the token chosen across the quorum, if we still hold the
/// lock here. `KEYS[1]` lock, `KEYS[2]` counter; `ARGV[1]` owner, `ARGV[2]` token.
static RAISE: Lua = Lua {
    body: RAISE_LUA,
    script: LazyLock::new(|| Script::new(RAISE_LUA)),
};
const RAISE_LUA: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
local current = redis.call('GET', KEYS[2])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
";

/// The default drift factor: 1 % of the TTL (plus 2 ms), as in the Redlock description.
pub const DEFAULT_DRIFT_FACTOR: f64 = 0.01;

/// Locks on one Redis server (feature `redis`).
///
/// A lock is a key `{prefix}{<key>}` set with `SET NX PX` to a random owner value; its fencing
/// counter is `{prefix}{<key>}:fence`, incremented in the same Lua script (the braces keep
/// both in one Redis Cluster slot). Renewal is a compare-and-`PEXPIRE` script, release a
/// compare-and-`DEL` script: only the owner extends or deletes.
///
/// **Guarantees**: while the server runs and keeps its data, at most one holder has the key
/// at any moment of the server's clock, and tokens grow with every grant of a key. A holder
/// trusts its lease for `ttl - time to acquire - drift` (drift: 1 % of the TTL + 2 ms by
/// default), so the server's clock may run up to that much faster than the holder's. If
/// the server fails over to a replica that missed the write, or restarts without
/// persistence, a key can be granted twice: the fencing token still grows (a lost counter
/// restarts from the server's clock in microseconds), so a resource that checks tokens
/// rejects the older holder's writes. Without persistence, a restarted server with a clock
/// set back can hand out lower tokens.
///
/// Connections: one multiplexed connection, opened on first use and replaced after an I/O
/// error or timeout. Every command has a response timeout (500 ms by default): an
/// unreachable server is an error, never a grant.
pub struct RedisBackend {
    client: Client,
    config: AsyncConnectionConfig,
    connection: Mutex<Option<MultiplexedConnection>>,
    connecting: tokio::sync::Mutex<()>,
    prefix: Box<str>,
    drift_factor: f64,
}

/// A [`RedisBackend`] or [`Redlock`](crate::Redlock) grant: the random owner value stored in
/// the lock key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RedisLease {
    /// 32 lowercase hex digits, kept inline: no allocation per grant.
    owner: [u8; 32],
}

impl RedisLease {
    pub(crate) fn random() -> Self {
        // 32 hex digits, written by hand: `format!` costs several times as much, per grant.
        let bits = fastrand::u128(..);
        let mut owner = [0; 32];
        for (digit, byte) in owner.iter_mut().rev().enumerate() {
            *byte = b"0123456789abcdef"[(bits >> (digit * 4)) as usize & 0xf];
        }
        Self { owner }
    }

    /// The owner value, as stored in the lock key.
    fn owner(&self) -> &[u8] {
        &self.owner
    }
}

impl fmt::Debug for RedisLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLease")
            .field("owner", &String::from_utf8_lossy(&self.owner))
            .finish()
    }
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("server", &self.client.get_connection_info().addr())
            .field("prefix", &self.prefix)
            .field("drift_factor", &self.drift_factor)
            .finish_non_exhaustive()
    }
}

/// Redis expiries are whole milliseconds: round up, so that the server never expires a key
/// before the holder's validity ends.
fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_nanos().div_ceil(1_000_000))
        .unwrap_or(u64::MAX)
        .max(1)
}

impl RedisBackend {
    /// A backend for the server `client` points at. Connects on first use.
    pub fn new(client: Client) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_millis(500)));
        Self {
            client,
            config,
            connection: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            prefix: "palisade:lock:".into(),
            drift_factor: DEFAULT_DRIFT_FACTOR,
        }
    }

    /// A backend for the server at `url` (`redis://host:port/db`).
    ///
    /// # Errors
    ///
    /// When `url` is not a valid Redis URL.
    pub fn open(url: &str) -> Result<Self, BackendError> {
        let client = Client::open(url).map_err(|e| BackendError::new("invalid redis url", e))?;
        Ok(Self::new(client))
    }

    /// Puts the lock keys under `prefix` (default `"palisade:lock:"`).
    #[must_use]
    pub fn with_prefix(mut self, prefix: &str) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The share of a TTL given up for clock drift (default 0.01): a lease is trusted for
    /// `ttl - time to acquire - (ttl * factor + 2 ms)`. Negative or NaN values count as 0.
    #[must_use]
    pub fn with_drift_factor(mut self, factor: f64) -> Self {
        self.drift_factor = drift_factor(factor);
        self
    }

    /// How long opening a connection and each command may take (defaults: 1 s and 500 ms).
    /// A command that takes longer fails, and the connection is replaced.
    #[must_use]
    pub fn with_timeouts(mut self, connect: Duration, response: Duration) -> Self {
        self.config = self
            .config
            .set_connection_timeout(Some(connect))
            .set_response_timeout(Some(response));
        self
    }

    fn lock_key(&self, key: &str) -> String {
        self.key_with(key, "")
    }

    fn fence_key(&self, key: &str) -> String {
        self.key_with(key, FENCE_SUFFIX)
    }

    /// `{prefix}{<key>}{suffix}`, in one allocation (on every command: no `format!`).
    fn key_with(&self, key: &str, suffix: &str) -> String {
        let mut out = String::with_capacity(self.prefix.len() + key.len() + 2 + suffix.len());
        out.push_str(&self.prefix);
        out.push('{');
        out.push_str(key);
        out.push('}');
        out.push_str(suffix);
        out
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    async fn connection(&self) -> Result<MultiplexedConnection, BackendError> {
        if let Some(connection) = self.cached() {
            return Ok(connection);
        }
        let _connecting = self.connecting.lock().await;
        if let Some(connection) = self.cached() {
            return Ok(connection);
        }
        // Boxed: connecting is rare, and its future is large; inline, it would make every
        // command's future (and the boxed attempt that holds one) that much larger.
        let connection = Box::pin(
            self.client
                .get_multiplexed_async_connection_with_config(&self.config),
        )
        .await
        .map_err(|e| BackendError::new("could not connect to redis", e))?;
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    fn forget_connection(&self) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Runs `script` by its hash (`EVALSHA`). A connection found broken (the server
    /// restarted, say) is replaced and the script sent once more, whole (`EVAL`: a new
    /// server may not know it); a timeout is not retried. A server that does not know the
    /// script (`NOSCRIPT`) gets it whole too, which also caches it: one round trip, not a
    /// `SCRIPT LOAD` and a second `EVALSHA`.
    async fn invoke<T: FromRedisValue>(
        &self,
        script: &Lua,
        keys: &[&str],
        owner: &[u8],
        number: Option<u64>,
    ) -> Result<T, BackendError> {
        let mut connection = self.connection().await?;
        let command = script_command(script, false, keys, owner, number);
        let error = match command.query_async(&mut connection).await {
            Ok(value) => return Ok(value),
            Err(error) => error,
        };
        let whole = script_command(script, true, keys, owner, number);
        if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) {
            return whole
                .query_async(&mut connection)
                .await
                .map_err(|error| self.failed(error));
        }
        if !broken(&error) {
            return Err(self.failed(error));
        }
        self.forget_connection();
        let mut connection = self.connection().await?;
        whole
            .query_async(&mut connection)
            .await
            .map_err(|error| self.failed(error))
    }

    /// Maps a command's error, dropping the connection when it may be broken or stuck.
    fn failed(&self, error: RedisError) -> BackendError {
        if broken(&error) || error.is_timeout() {
            self.forget_connection();
        }
        BackendError::new("redis command failed", error)
    }

    /// The acquire script: the new token, or `None` when the key is held.
    pub(crate) async fn grant(
        &self,
        key: &str,
        lease: &RedisLease,
        ttl: Duration,
    ) -> Result<Option<u64>, BackendError> {
        let fence = self.fence_key(key);
        let lock = lock_of(&fence);
        let token: u64 = self
            .invoke(
                &ACQUIRE,
                &[lock, &fence],
                lease.owner(),
                Some(ttl_millis(ttl)),
            )
            .await?;
        Ok((token > 0).then_some(token))
    }

    /// Redlock's second step: raise this server's counter to `token` while we hold the key.
    pub(crate) async fn raise(
        &self,
        key: &str,
        lease: &RedisLease,
        token: u64,
    ) -> Result<bool, BackendError> {
        let fence = self.fence_key(key);
        let lock = lock_of(&fence);
        let raised: u8 = self
            .invoke(&RAISE, &[lock, &fence], lease.owner(), Some(token))
            .await?;
        Ok(raised == 1)
    }

    pub(crate) async fn extend(
        &self,
        key: &str,
        lease: &RedisLease,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        let lock = self.lock_key(key);
        let extended: u8 = self
            .invoke(&RENEW, &[&lock], lease.owner(), Some(ttl_millis(ttl)))
            .await?;
        Ok(extended == 1)
    }

    pub(crate) async fn delete(&self, key: &str, lease: &RedisLease) -> Result<bool, BackendError> {
        let lock = self.lock_key(key);
        let deleted: u8 = self.invoke(&RELEASE, &[&lock], lease.owner(), None).await?;
        Ok(deleted == 1)
    }
}

/// `EVALSHA <hash>` (or `EVAL <body>` when `whole`) with `keys`, then `owner` and `number`
/// as `ARGV`: one command buffer, written once.
fn script_command(
    script: &Lua,
    whole: bool,
    keys: &[&str],
    owner: &[u8],
    number: Option<u64>,
) -> Cmd {
    let mut command = if whole {
        let mut command = Cmd::new();
        command.arg("EVAL").arg(script.body);
        command
    } else {
        let mut command = Cmd::with_capacity(8, 128);
        command.arg("EVALSHA").arg(script.script.get_hash());
        command
    };
    command.arg(keys.len()).arg(keys).arg(owner);
    if let Some(number) = number {
        command.arg(number);
    }
    command
}

/// The lock key inside its fence key (`{prefix}{<key>}` of `{prefix}{<key>}:fence`).
fn lock_of(fence: &str) -> &str {
    fence.strip_suffix(FENCE_SUFFIX).unwrap_or(fence)
}

/// Whether the connection is broken (rather than slow): worth one retry on a new one.
fn broken(error: &RedisError) -> bool {
    (error.is_connection_dropped() || error.is_io_error() || error.is_unrecoverable_error())
        && !error.is_timeout()
}

/// A usable drift factor: negative and NaN count as 0.
pub(crate) fn drift_factor(factor: f64) -> f64 {
    if factor.is_nan() {
        0.0
    } else {
        factor.max(0.0)
    }
}

impl Backend for RedisBackend {
    type Lease = RedisLease;

    async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Grant<RedisLease>>, BackendError> {
        let lease = RedisLease::random();
        let token = self.grant(key, &lease, ttl).await?;
        Ok(token.map(|token| Grant {
            token: FencingToken::new(token),
            lease,
        }))
    }

    async fn renew(
        &self,
        key: &str,
        lease: &RedisLease,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        self.extend(key, lease, ttl).await
    }

    async fn release(&self, key: &str, lease: &RedisLease) -> Result<bool, BackendError> {
        self.delete(key, lease).await
    }

    fn drift(&self, ttl: Duration) -> Duration {
        redlock_drift(ttl, self.drift_factor)
    }
}
