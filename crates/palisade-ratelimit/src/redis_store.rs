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
use crate::layer::Report;
use crate::limiter::{MAX_CAPACITY, Params, Span};
use crate::quota::Quota;

/// The Lua script a [`RedisRateLimiter`] runs: GCRA on the server's clock (`TIME`, in
/// microseconds), so every process shares one limit whatever its own clock says.
///
/// `KEYS[1]`: the key. `ARGV`: the interval in whole microseconds, the capacity (`burst ×
/// interval`) in whole microseconds, the cost; then, optionally (0, 0, 0 and 1 if absent), the
/// fractions that keep the rate exact, in `1 / denominator` of a microsecond: the check's
/// increment beyond `cost × interval` (as whole microseconds and a fraction), the capacity's
/// fraction and the denominator. The key holds the theoretical arrival time of the next
/// unit (`microseconds:fraction`) and expires when the limit is full again, so idle keys
/// cost Redis nothing.
///
/// Returns `{1, used_fraction, used_us}` when admitted (the time now taken, in whole
/// microseconds and a fraction: with no fractions given, `{1, 0, used_us}`), and
/// `{0, retry_after_us, used_us}` (both rounded up) when refused.
///
/// Public so operators can read what runs on their server (and benches can call it bare).
pub const REDIS_GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local extra = tonumber(ARGV[4] or '0')
local extra_frac = tonumber(ARGV[5] or '0')
local capacity_frac = tonumber(ARGV[6] or '0')
local den = tonumber(ARGV[7] or '1')
local tat, tat_frac = now, 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local t, f = string.match(stored, '^(%d+):?(%d*)$')
  t = tonumber(t) or 0
  f = math.min(tonumber(f) or 0, den - 1)
  if t > now or (t == now and f > 0) then tat, tat_frac = t, f end
end
local used = tat - now + cost * interval + extra
local used_frac = tat_frac + extra_frac
if used_frac >= den then used, used_frac = used + 1, used_frac - den end
local ahead = tat - now
if tat_frac > 0 then ahead = ahead + 1 end
if used > capacity or (used == capacity and used_frac > capacity_frac) then
  local retry, retry_frac = used - capacity, used_frac - capacity_frac
  if retry_frac < 0 then retry, retry_frac = retry - 1, retry_frac + den end
  if retry_frac > 0 then retry = retry + 1 end
  return {0, retry, ahead}
end
if cost > 0 then
  local reset = used
  if used_frac > 0 then reset = used + 1 end
  redis.call('SET', KEYS[1], string.format('%d:%d', now + used, used_frac), 'PX', math.ceil(reset / 1000))
end
return {1, used_frac, used}
";

/// The script's arguments for a quota: its rate in microseconds, exactly (see
/// [`REDIS_GCRA_SCRIPT`]).
#[derive(Debug, Clone, Copy)]
struct Rate {
    /// `window / count`, in whole microseconds.
    interval_us: u64,
    /// `window mod (1000 × count)`: the interval's fraction, in `1 / den` µs.
    remainder: u64,
    capacity_us: u64,
    capacity_frac: u64,
    /// `1000 × count`.
    den: u64,
}

impl Rate {
    fn new(params: &Params) -> Self {
        let den = 1_000 * u64::from(params.count);
        let capacity = u128::from(params.burst) * u128::from(params.window);
        let max = u128::from(MAX_CAPACITY / 1_000) * u128::from(den);
        let capacity = capacity.min(max);
        Self {
            interval_us: params.window / den,
            remainder: params.window % den,
            // At most `MAX_CAPACITY / 1000` and below `den`.
            capacity_us: (capacity / u128::from(den)) as u64,
            capacity_frac: (capacity % u128::from(den)) as u64,
            den,
        }
    }

    /// The increment of `cost` beyond `cost × interval_us`: whole microseconds and a fraction.
    fn extra(&self, cost: u32) -> (u64, u64) {
        let extra = u128::from(cost) * u128::from(self.remainder);
        let den = u128::from(self.den);
        // Below 2³² × `interval`'s fraction, far below 2⁶⁴; and below `den`.
        ((extra / den) as u64, (extra % den) as u64)
    }
}

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
    rate: Rate,
    params: Params,
    on_unavailable: OnUnavailable,
    /// Keyed by the full name in Redis (prefix and key).
    local: KeyedRateLimiter<String>,
    unavailable: AtomicU64,
    report: Report,
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
/// Cheap to clone; clones share the connection. Needs a tokio runtime. To limit a tower
/// service (an axum router) with it, wrap it in a
/// [`RedisRateLimitLayer`](crate::RedisRateLimitLayer).
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

    /// Sends [`RateLimitEvent`]s to `listener`: `StoreUnavailable` for every check Redis
    /// could not decide; through a [`RedisRateLimitLayer`](crate::RedisRateLimitLayer),
    /// `Admitted`, `Rejected` and `TooCostly` for every request as well.
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
                rate: Rate::new(&params),
                params,
                on_unavailable: self.on_unavailable,
                local,
                unavailable: AtomicU64::new(0),
                report: Report {
                    name: self.name,
                    listener: self.listener,
                },
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
        let mut name = self.name_buffer(key.len());
        name.push_str(key);
        self.check_name(&name, cost).await
    }

    /// A buffer holding the prefix, with room for a key of `len` bytes after it.
    pub(crate) fn name_buffer(&self, len: usize) -> String {
        let prefix = &self.inner.prefix;
        let mut name = String::with_capacity(prefix.len() + len);
        name.push_str(prefix);
        name
    }

    /// Takes `cost` units of the limit at `name` (the prefix and the key).
    pub(crate) async fn check_name(&self, name: &str, cost: u32) -> Checked {
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
        match self.remote(name, cost).await {
            Ok(decision) => Checked {
                decision,
                by: DecidedBy::Redis,
            },
            Err(error) => self.unavailable(name, cost, &error),
        }
    }

    /// Where the limiter reports: its name in traces, and its listener.
    pub(crate) fn report(&self) -> &Report {
        &self.inner.report
    }

    /// The script's answer, or why there is none.
    async fn remote(
        &self,
        name: &str,
        cost: u32,
    ) -> Result<Result<Snapshot, Refusal>, Unreachable> {
        let inner = &*self.inner;
        let mut connection = self.connection().await?;
        let (extra_us, extra_frac) = inner.rate.extra(cost);
        let answer: Result<(u8, u64, u64), RedisError> = inner
            .script
            .key(name)
            .arg(inner.rate.interval_us)
            .arg(inner.rate.capacity_us)
            .arg(cost)
            .arg(extra_us)
            .arg(extra_frac)
            .arg(inner.rate.capacity_frac)
            .arg(inner.rate.den)
            .invoke_async(&mut connection)
            .await;
        match answer {
            Ok((1, used_frac, used_us)) => Ok(Ok(self.snapshot(used_us, used_frac))),
            Ok((_, retry_after_us, used_us)) => Ok(Err(Refusal::Limited(Limited {
                snapshot: self.snapshot(used_us, 0),
                retry_after_nanos: retry_after_us.saturating_mul(1_000),
            }))),
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

    /// The snapshot with `used_us` and `used_frac / den` microseconds of the capacity taken.
    fn snapshot(&self, used_us: u64, used_frac: u64) -> Snapshot {
        let inner = &*self.inner;
        let params = &inner.params;
        // `den` is `1000 × count`: `used_frac / den` µs is `used_frac / count` ns.
        let count = u64::from(params.count);
        let used_frac = used_frac.min(inner.rate.den - 1);
        let used = Span {
            ns: used_us
                .saturating_mul(1_000)
                .saturating_add(used_frac / count),
            // Below `count`.
            frac: (used_frac % count) as u32,
        }
        .min(params.capacity);
        Snapshot {
            limit: params.policy_limit(),
            remaining: params.units(params.sub(params.capacity, used)),
            window_nanos: params.policy_window(),
            reset_nanos: used.ceil(),
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
                tracing::info!(name = %inner.report.name, "rate limit: connected to Redis");
                *state = Connection::Up(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                let delay = delays.next().unwrap_or(Duration::from_secs(10));
                *state = Connection::Down {
                    retry_at: Instant::now() + delay,
                    delays,
                };
                tracing::debug!(name = %inner.report.name, %error, ?delay, "rate limit: Redis connection failed");
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
                name = %inner.report.name,
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

    fn unavailable(&self, name: &str, cost: u32, error: &Unreachable) -> Checked {
        let inner = &*self.inner;
        inner.unavailable.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            name = %inner.report.name,
            error = %error,
            policy = inner.on_unavailable.as_str(),
            "rate limit: Redis unavailable"
        );
        inner.report.event(&RateLimitEvent::StoreUnavailable {
            policy: inner.on_unavailable.as_str(),
        });
        let decision = match inner.on_unavailable {
            OnUnavailable::Local => inner.local.check_n(name.to_owned(), cost),
            OnUnavailable::FailOpen => Ok(self.snapshot(0, 0)),
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
            .field("name", &self.inner.report.name)
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
