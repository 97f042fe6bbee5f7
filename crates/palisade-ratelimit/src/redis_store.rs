//! A rate limit shared by every process through Redis (feature `redis`).

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script};
use palisade_core::backoff::{Backoff, Delays};
use palisade_core::event::Listener;
use palisade_core::reject::Overloaded;
use tokio::time::Instant;

use crate::decision::{InsufficientCapacity, Limited, Refusal, Snapshot, StoreUnavailable};
use crate::event::RateLimitEvent;
use crate::keyed::KeyedRateLimiter;
use crate::limiter::Params;
use crate::quota::Quota;

/// The Lua script a [`RedisRateLimiter`] runs: GCRA on the server's clock (`TIME`, in
/// microseconds), so every process shares one limit whatever its own clock says.
///
/// `KEYS[1]`: the key. `ARGV`: the interval, the capacity (`burst × interval`), both in
/// microseconds, and the cost. The key holds the theoretical arrival time of the next unit
/// and expires when the limit is full again, so idle keys cost Redis nothing.
///
/// Returns `{admitted, retry_after_us, used_us}`.
///
/// Public so operators can read what runs on their server (and benches can call it bare).
pub const REDIS_GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local used = tat - now + cost * interval
if used > capacity then
  return {0, used - capacity, tat - now}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%d', now + used), 'PX', math.ceil(used / 1000))
end
return {1, 0, used}
";

/// What a [`RedisRateLimiter`] does while Redis cannot be reached or fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum OnUnavailable {
    /// Decide with a limiter in this process with the same quota per key (the default):
    /// the limit holds per process, so N processes admit up to N times the quota until Redis
    /// is back.
    #[default]
    Local,
    /// Admit every request: availability over the limit.
    FailOpen,
    /// Refuse every request with [`Refusal::StoreUnavailable`]: the limit over availability.
    FailClosed,
}

impl OnUnavailable {
    /// The policy's snake_case name: `"local"`, `"fail_open"`, `"fail_closed"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OnUnavailable::Local => "local",
            OnUnavailable::FailOpen => "fail_open",
            OnUnavailable::FailClosed => "fail_closed",
        }
    }
}

/// Who decided a [`RedisRateLimiter`]'s check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecidedBy {
    /// The script on Redis: the limit shared by every process.
    Redis,
    /// Redis was unavailable: the [`OnUnavailable`] policy decided.
    Unavailable(OnUnavailable),
}

/// A [`RedisRateLimiter`]'s check: the decision and who made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    decision: Result<Snapshot, Refusal>,
    by: DecidedBy,
}

impl Checked {
    /// Admitted (with the limit's state) or refused.
    ///
    /// # Errors
    ///
    /// [`Refusal::Limited`] over the limit, [`Refusal::InsufficientCapacity`] for a cost
    /// the limit can never hold, [`Refusal::StoreUnavailable`] when Redis is unavailable
    /// and the policy is [`OnUnavailable::FailClosed`].
    pub const fn decision(&self) -> Result<Snapshot, Refusal> {
        self.decision
    }

    /// Whether it was admitted.
    pub const fn is_admitted(&self) -> bool {
        self.decision.is_ok()
    }

    /// Who decided.
    pub const fn decided_by(&self) -> DecidedBy {
        self.by
    }
}

/// Why a [`RedisRateLimiter`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisConfigError {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL: {0}")]
    Url(#[source] RedisError),
    /// The store counts in microseconds: a quota must replenish a unit every microsecond or
    /// slower (at most 1 000 000 per second).
    #[error("a Redis rate limit replenishes at most one unit per microsecond; got one every {0:?}")]
    RateTooHigh(Duration),
}

enum Connection {
    Up(MultiplexedConnection),
    /// Someone is connecting; the others decide by the policy meanwhile.
    Connecting,
    Down {
        retry_at: Instant,
        delays: Delays,
    },
}

struct Inner {
    client: Client,
    config: AsyncConnectionConfig,
    connection: Mutex<Connection>,
    backoff: Backoff,
    script: Script,
    prefix: String,
    interval_us: u64,
    capacity_us: u64,
    params: Params,
    on_unavailable: OnUnavailable,
    local: KeyedRateLimiter<String>,
    unavailable: AtomicU64,
    name: Cow<'static, str>,
    listener: Option<Arc<dyn Listener<RateLimitEvent>>>,
}

/// A GCRA rate limit kept in Redis, so every process that uses the same Redis and prefix
/// shares it (feature `redis`).
///
/// Each check runs one Lua script (`EVALSHA`) that reads the **server's** clock, so the
/// processes' clocks do not matter. The limit of `key` lives at `prefix + key` and expires
/// when it is full again.
///
/// When Redis cannot be reached, times out (250 ms by default) or fails, the
/// [`OnUnavailable`] policy decides (a limiter in this process by default): the check says
/// so ([`Checked::decided_by`]), it is traced (a `warn` when Redis goes away and when it
/// comes back), counted ([`unavailable_count`](Self::unavailable_count)) and reported
/// ([`RateLimitEvent::StoreUnavailable`]). It reconnects on its own: a check after the
/// next reconnect delay (core's default [`Backoff`]: 100 ms doubling to 10 s, jittered) tries
/// again, while the others go on deciding by the policy, never waiting for it.
///
/// Cheap to clone; clones share the connection. Needs a tokio runtime.
///
/// ```no_run
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{OnUnavailable, Quota, RedisRateLimiter};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let limiter = RedisRateLimiter::builder(
///     "redis://127.0.0.1:6379",
///     Quota::per_second(NonZeroU32::new(100).unwrap()),
/// )
/// .prefix("api:")
/// .on_unavailable(OnUnavailable::FailOpen)
/// .build()?;
/// if limiter.check("user-42").await.is_admitted() {
///     // do the work
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisRateLimiter {
    inner: Arc<Inner>,
}

/// Builds a [`RedisRateLimiter`].
#[must_use]
pub struct RedisRateLimiterBuilder {
    url: String,
    quota: Quota,
    prefix: String,
    on_unavailable: OnUnavailable,
    backoff: Backoff,
    connect_timeout: Duration,
    response_timeout: Duration,
    name: Cow<'static, str>,
    listener: Option<Arc<dyn Listener<RateLimitEvent>>>,
}

impl fmt::Debug for RedisRateLimiterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiterBuilder")
            .field("quota", &self.quota)
            .field("prefix", &self.prefix)
            .field("on_unavailable", &self.on_unavailable)
            .finish_non_exhaustive()
    }
}

impl RedisRateLimiterBuilder {
    /// Prefixes every key in Redis (default `"ratelimit:"`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// What decides while Redis is unavailable (default [`OnUnavailable::Local`]).
    pub fn on_unavailable(mut self, policy: OnUnavailable) -> Self {
        self.on_unavailable = policy;
        self
    }

    /// The delays between reconnection attempts (default: core's [`Backoff::default`]).
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a connection attempt may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a check may wait for Redis before the policy decides (default 250 ms).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Names the limiter in traces (default `"rate_limit"`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Sends [`RateLimitEvent`]s to `listener`.
    pub fn listener(mut self, listener: impl Listener<RateLimitEvent> + 'static) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// Builds the limiter; it connects on its first check.
    ///
    /// # Errors
    ///
    /// [`RedisConfigError::Url`] for a URL redis-rs cannot read,
    /// [`RedisConfigError::RateTooHigh`] for a quota faster than one unit per microsecond.
    pub fn build(self) -> Result<RedisRateLimiter, RedisConfigError> {
        let client = Client::open(self.url.as_str()).map_err(RedisConfigError::Url)?;
        let params = Params::new(&self.quota);
        if params.interval < 1_000 {
            return Err(RedisConfigError::RateTooHigh(
                self.quota.replenish_interval(),
            ));
        }
        let interval_us = params.interval / 1_000;
        let local = KeyedRateLimiter::new(self.quota);
        Ok(RedisRateLimiter {
            inner: Arc::new(Inner {
                client,
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.response_timeout)),
                connection: Mutex::new(Connection::Down {
                    retry_at: Instant::now(),
                    delays: self.backoff.delays(),
                }),
                backoff: self.backoff,
                script: Script::new(REDIS_GCRA_SCRIPT),
                prefix: self.prefix,
                interval_us,
                capacity_us: interval_us * u64::from(self.quota.burst()),
                params,
                on_unavailable: self.on_unavailable,
                local,
                unavailable: AtomicU64::new(0),
                name: self.name,
                listener: self.listener,
            }),
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RedisRateLimiter {
    /// A builder for a limiter of `quota` per key on the Redis at `url`
    /// (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>, quota: Quota) -> RedisRateLimiterBuilder {
        RedisRateLimiterBuilder {
            url: url.into(),
            quota,
            prefix: "ratelimit:".to_owned(),
            on_unavailable: OnUnavailable::default(),
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(250),
            name: Cow::Borrowed("rate_limit"),
            listener: None,
        }
    }

    /// Takes one unit of `key`'s limit if it allows it now.
    pub async fn check(&self, key: &str) -> Checked {
        self.check_n(key, 1).await
    }

    /// Takes `cost` units of `key`'s limit at once, or none.
    pub async fn check_n(&self, key: &str, cost: u32) -> Checked {
        let inner = &*self.inner;
        let burst = inner.params.burst;
        if cost > burst {
            return Checked {
                decision: Err(Refusal::InsufficientCapacity(InsufficientCapacity {
                    cost,
                    capacity: burst,
                })),
                by: DecidedBy::Redis,
            };
        }
        match self.remote(key, cost).await {
            Ok(decision) => Checked {
                decision,
                by: DecidedBy::Redis,
            },
            Err(error) => self.unavailable(key, cost, &error),
        }
    }

    /// The script's answer, or why there is none.
    async fn remote(&self, key: &str, cost: u32) -> Result<Result<Snapshot, Refusal>, Unreachable> {
        let inner = &*self.inner;
        let mut connection = self.connection().await?;
        let answer: Result<(u8, u64, u64), RedisError> = inner
            .script
            .key(format!("{}{key}", inner.prefix))
            .arg(inner.interval_us)
            .arg(inner.capacity_us)
            .arg(cost)
            .invoke_async(&mut connection)
            .await;
        match answer {
            Ok((admitted, retry_after_us, used_us)) => {
                let snapshot = self.snapshot(used_us);
                Ok(if admitted == 1 {
                    Ok(snapshot)
                } else {
                    Err(Refusal::Limited(Limited {
                        snapshot,
                        retry_after_nanos: retry_after_us.saturating_mul(1_000),
                    }))
                })
            }
            Err(error) => {
                if error.is_io_error()
                    || error.is_timeout()
                    || error.is_connection_dropped()
                    || error.is_connection_refusal()
                {
                    self.disconnected(&error);
                }
                Err(Unreachable::Failed(error))
            }
        }
    }

    fn snapshot(&self, used_us: u64) -> Snapshot {
        let inner = &*self.inner;
        let used = used_us.saturating_mul(1_000).min(inner.params.capacity);
        Snapshot {
            limit: inner.params.policy_limit(),
            remaining: inner
                .params
                .units(inner.params.capacity.saturating_sub(used)),
            window_nanos: inner.params.policy_window(),
            reset_nanos: used,
        }
    }

    /// A connection, connecting if it is time to.
    async fn connection(&self) -> Result<MultiplexedConnection, Unreachable> {
        let inner = &*self.inner;
        let mut delays = {
            let mut state = lock(&inner.connection);
            match &mut *state {
                Connection::Up(connection) => return Ok(connection.clone()),
                Connection::Connecting => return Err(Unreachable::Reconnecting),
                Connection::Down { retry_at, .. } if Instant::now() < *retry_at => {
                    return Err(Unreachable::Reconnecting);
                }
                Connection::Down { .. } => {
                    let Connection::Down { delays, .. } =
                        std::mem::replace(&mut *state, Connection::Connecting)
                    else {
                        unreachable!("just matched");
                    };
                    delays
                }
            }
        };
        // Back to `Down` if this future is dropped while connecting.
        let mut guard = ConnectingGuard {
            inner,
            delays: Some(delays.clone()),
        };
        let connected = inner
            .client
            .get_multiplexed_async_connection_with_config(&inner.config)
            .await;
        guard.delays = None;
        let mut state = lock(&inner.connection);
        match connected {
            Ok(connection) => {
                tracing::info!(name = %inner.name, "rate limit: connected to Redis");
                *state = Connection::Up(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                *state = Connection::Down {
                    retry_at: Instant::now() + delay,
                    delays,
                };
                tracing::debug!(name = %inner.name, %error, ?delay, "rate limit: Redis connection failed");
                Err(Unreachable::Failed(error))
            }
        }
    }

    /// The connection broke: reconnect after the first delay.
    fn disconnected(&self, error: &RedisError) {
        let inner = &*self.inner;
        let mut state = lock(&inner.connection);
        if matches!(*state, Connection::Up(_)) {
            tracing::warn!(
                name = %inner.name,
                %error,
                policy = inner.on_unavailable.as_str(),
                "rate limit: lost Redis; deciding by the unavailable policy until it is back"
            );
            let mut delays = inner.backoff.delays();
            let delay = delays.next().unwrap_or_default();
            *state = Connection::Down {
                retry_at: Instant::now() + delay,
                delays,
            };
        }
    }

    fn unavailable(&self, key: &str, cost: u32, error: &Unreachable) -> Checked {
        let inner = &*self.inner;
        inner.unavailable.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            name = %inner.name,
            error = %error,
            policy = inner.on_unavailable.as_str(),
            "rate limit: Redis unavailable"
        );
        if let Some(listener) = &inner.listener {
            listener.on_event(&RateLimitEvent::StoreUnavailable {
                policy: inner.on_unavailable.as_str(),
            });
        }
        let decision = match inner.on_unavailable {
            OnUnavailable::Local => inner.local.check_n(key.to_owned(), cost),
            OnUnavailable::FailOpen => Ok(self.snapshot(0)),
            OnUnavailable::FailClosed => Err(Refusal::StoreUnavailable(StoreUnavailable {
                overloaded: Overloaded::new(),
            })),
        };
        Checked {
            decision,
            by: DecidedBy::Unavailable(inner.on_unavailable),
        }
    }

    /// How many checks Redis could not decide.
    pub fn unavailable_count(&self) -> u64 {
        self.inner.unavailable.load(Ordering::Relaxed)
    }

    /// Whether it holds a live connection (as far as it knows: a broken one is noticed on
    /// the next check).
    pub fn is_connected(&self) -> bool {
        matches!(*lock(&self.inner.connection), Connection::Up(_))
    }
}

impl fmt::Debug for RedisRateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisRateLimiter")
            .field("name", &self.inner.name)
            .field("prefix", &self.inner.prefix)
            .field("on_unavailable", &self.inner.on_unavailable)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

/// Why Redis did not decide.
#[derive(Debug)]
enum Unreachable {
    /// Down, waiting for the next reconnection attempt (or another check is making it).
    Reconnecting,
    Failed(RedisError),
}

impl fmt::Display for Unreachable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unreachable::Reconnecting => f.write_str("not connected; waiting to reconnect"),
            Unreachable::Failed(error) => error.fmt(f),
        }
    }
}

/// Puts the connection state back to `Down` if a connecting check is dropped.
struct ConnectingGuard<'a> {
    inner: &'a Inner,
    delays: Option<Delays>,
}

impl Drop for ConnectingGuard<'_> {
    fn drop(&mut self) {
        if let Some(delays) = self.delays.take() {
            *lock(&self.inner.connection) = Connection::Down {
                retry_at: Instant::now(),
                delays,
            };
        }
    }
}
