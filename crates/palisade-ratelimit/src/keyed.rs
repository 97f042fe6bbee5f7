//! Keyed limits: one limit per key (client IP, API key, tenant), in a bounded map whose
//! idle keys are forgotten.
//!
//! The map is split into shards, each a hash table behind its own reader-writer lock, so
//! threads working on different keys rarely meet. A call hashes its key once (the hash picks
//! the shard and the slot in its table) and locks one shard, never across an inner call or
//! an `.await`. A GCRA limit under a whole-nanosecond quota (the common case) lives in one
//! atomic per key: a check of a tracked key takes the shard's *read* lock and updates that
//! atomic by compare-exchange, so threads checking keys of the same shard do not wait for
//! each other (governor's keyed limiter works the same way). Every other state, a new key
//! and a sweep take the *write* lock, under which the algorithm's arithmetic needs no
//! atomics.

use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use hashbrown::HashTable;
use palisade_core::reject::Overloaded;
use tower_layer::Layer;
use tower_service::Service;

use crate::algorithm::{Algorithm, Owned, take_whole};
use crate::config::{ConfigError, RateLimitConfig};
use crate::decision::{KeysExhausted, Limited, Refusal, Snapshot};
use crate::event::RateLimitEvent;
use crate::future::ResponseFuture;
use crate::layer::Report;
use crate::limiter::{Limiter, Params, Span, nanos};
use crate::quota::Quota;
use crate::respond::{Cost, RaiseError, Respond, UnitCost};

/// The default [`max_keys`](KeyedRateLimitLayer::max_keys): 100 000.
pub const DEFAULT_MAX_KEYS: NonZeroUsize = match NonZeroUsize::new(100_000) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};

/// The default [`sweep_every`](KeyedRateLimitLayer::sweep_every): 10 seconds.
pub const DEFAULT_SWEEP_EVERY: Duration = Duration::from_secs(10);

/// Decides which limit of a [`KeyedRateLimitLayer`] a request counts against.
///
/// Requests with equal keys share a limit. Make one from a closure with [`key_fn`]; with
/// the `http` feature, [`PeerIp`](crate::PeerIp), [`ClientIp`](crate::ClientIp) and
/// [`HeaderKey`](crate::HeaderKey) key `http::Request`s by peer address, by client address
/// behind trusted proxies, and by a header (an API key).
///
/// A key that may be missing is an `Option`: the requests without one share the `None` limit.
pub trait KeyExtractor<Request> {
    /// The key: an IP address, an API key, a tenant id.
    type Key: Hash + Eq;

    /// The key of `request`.
    fn extract(&self, request: &Request) -> Self::Key;
}

/// A key extractor made from a closure; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

/// Makes a [`KeyExtractor`] from a closure `Fn(&Request) -> Key`.
///
/// ```
/// use palisade_ratelimit::{KeyExtractor, key_fn};
///
/// struct Call {
///     tenant: u64,
/// }
///
/// let by_tenant = key_fn(|call: &Call| call.tenant);
/// assert_eq!(by_tenant.extract(&Call { tenant: 7 }), 7);
/// ```
pub const fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<F, Request, K> KeyExtractor<Request> for KeyFn<F>
where
    F: Fn(&Request) -> K,
    K: Hash + Eq,
{
    type Key = K;

    #[inline]
    fn extract(&self, request: &Request) -> K {
        (self.0)(request)
    }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyFn").finish_non_exhaustive()
    }
}

/// What a [`KeyedRateLimitLayer`] does with a request whose key is new while it already
/// tracks [`max_keys`](KeyedRateLimitLayer::max_keys) keys and none of them is idle.
///
/// Either way the outcome is typed and reported ([`RateLimitEvent::Overflowed`] or
/// [`RateLimitEvent::KeysExhausted`], and a `warn` trace with the count at the next sweep):
/// nothing is dropped silently, and no tracked key is forgotten before it is idle, so a flood
/// of new keys cannot reset anyone's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AtCapacity {
    /// The request counts against one **overflow limit** with the same quota, shared by
    /// every key that found no room (the default). A flood of new keys is limited as one
    /// client; the keys already tracked keep their own limits.
    #[default]
    Overflow,
    /// The request is refused with [`KeysExhausted`] (a `503` with
    /// [`TooManyRequests`](crate::TooManyRequests)).
    Refuse,
}

impl AtCapacity {
    const fn to_u8(self) -> u8 {
        match self {
            AtCapacity::Overflow => 0,
            AtCapacity::Refuse => 1,
        }
    }

    const fn from_u8(n: u8) -> Self {
        match n {
            1 => AtCapacity::Refuse,
            _ => AtCapacity::Overflow,
        }
    }
}

/// A key with its hash, computed once per call: it picks the shard and the slot in the
/// shard's table (which does not store it).
struct Hashed<K> {
    hash: u64,
    key: K,
}

/// Decides a check of a GCRA limit held in one atomic, its theoretical arrival time in whole
/// nanoseconds, under the shard's read lock (`params` of a whole interval): the arithmetic of
/// [`Owned::check`] on a copy, then a compare-exchange. `None` if the result would not be
/// whole (the caller rules that out).
#[inline(always)]
fn check_whole(
    tat: &AtomicU64,
    params: &Params,
    now: u64,
    cost: u32,
) -> Option<Result<Snapshot, Limited>> {
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let mut state = Owned::Gcra(Span::nanos(current));
        let decision = state.check(params, now, cost, true);
        let Owned::Gcra(next) = state else {
            return None;
        };
        if next.frac != 0 {
            return None;
        }
        if next.ns == current {
            // Refused, or took nothing.
            return Some(decision);
        }
        let exchanged =
            tat.compare_exchange_weak(current, next.ns, Ordering::AcqRel, Ordering::Acquire);
        match exchanged {
            Ok(_) => return Some(decision),
            Err(actual) => current = actual,
        }
    }
}

/// `hasher.hash_one(key)`, inlined where the hit path needs it (the same hash: `hash_one`
/// is this, but the compiler keeps it out of line).
#[inline(always)]
#[allow(
    clippy::manual_hash_one,
    reason = "`hash_one` is not inlined here; this is"
)]
fn hash_inline<K: Hash>(hasher: &RandomState, key: &K) -> u64 {
    let mut state = hasher.build_hasher();
    key.hash(&mut state);
    state.finish()
}

/// The hash of an entry's key, for a table that grows: the hasher of every lookup.
fn rehash<K: Hash, V>(hasher: &RandomState) -> impl Fn(&(K, V)) -> u64 + '_ {
    move |(key, _)| hasher.hash_one(key)
}

/// One shard, on its own cache lines.
#[repr(align(128))]
struct Shard<K> {
    inner: RwLock<ShardInner<K>>,
}

/// A shard's keys. Each key is in one of the two tables, both looked up by the hash the
/// call computed once (the tables do not store it) and grown by rehashing keys with the
/// same hasher.
struct ShardInner<K> {
    /// GCRA limits in whole nanoseconds while the quota's interval is whole (the common
    /// case): the theoretical arrival time in one atomic, checked under the read lock. Eight
    /// bytes beside the key (16 for a `u64` key, as governor): the table stays small enough
    /// for the caches.
    whole: HashTable<(K, AtomicU64)>,
    /// Every other state (other algorithms, GCRA with a fraction of a nanosecond): checked
    /// under the write lock.
    owned: HashTable<(K, Owned)>,
    /// The next periodic sweep, in the limiter's nanoseconds.
    next_sweep: u64,
    /// The last sweep.
    last_sweep: u64,
    /// No key of the shard is idle before then (a lower bound: keys only go idle later as
    /// they are used).
    first_idle: u64,
}

impl<K: Hash + Eq> ShardInner<K> {
    /// Whether a full map may sweep this shard now: once a key can be idle, and not sooner
    /// than 1/16 of the sweep period after the last sweep.
    fn may_sweep_full(&self, now: u64, every: u64) -> bool {
        now >= self
            .first_idle
            .max(self.last_sweep.saturating_add(every / 16))
    }

    fn len(&self) -> usize {
        self.whole.len() + self.owned.len()
    }

    /// Keeps the `state` of `key` (not tracked yet) in the table its form belongs to.
    fn put(&mut self, hasher: &RandomState, key: Hashed<K>, state: Owned, params: &Params) {
        let Hashed { hash, key } = key;
        match state {
            Owned::Gcra(tat) if tat.frac == 0 && params.is_whole() => {
                let entry = (key, AtomicU64::new(tat.ns));
                self.whole.insert_unique(hash, entry, rehash(hasher));
            }
            state => {
                self.owned.insert_unique(hash, (key, state), rehash(hasher));
            }
        }
    }

    /// Decides a check of a tracked key under the write lock, moving its state to the table
    /// its new form belongs to; `None` if the key is not tracked.
    fn check(
        &mut self,
        hasher: &RandomState,
        key: &Hashed<K>,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Option<Result<Snapshot, Limited>> {
        let Hashed { hash, ref key } = *key;
        if let Ok(mut entry) = self.whole.find_entry(hash, |(k, _)| k == key) {
            let tat = entry.get_mut().1.get_mut();
            let mut state = Owned::Gcra(Span::nanos(*tat));
            let decision = state.check(params, now, cost, consume);
            match state {
                Owned::Gcra(next) if next.frac == 0 && params.is_whole() => *tat = next.ns,
                state => {
                    let ((key, _), _) = entry.remove();
                    self.owned.insert_unique(hash, (key, state), rehash(hasher));
                }
            }
            return Some(decision);
        }
        let mut entry = self.owned.find_entry(hash, |(k, _)| k == key).ok()?;
        let state = &mut entry.get_mut().1;
        let decision = state.check(params, now, cost, consume);
        if let Owned::Gcra(tat) = *state
            && tat.frac == 0
            && params.is_whole()
        {
            let ((key, _), _) = entry.remove();
            let entry = (key, AtomicU64::new(tat.ns));
            self.whole.insert_unique(hash, entry, rehash(hasher));
        }
        Some(decision)
    }
}

/// What every service of one keyed layer shares.
pub(crate) struct Keyed<K> {
    /// The quota, the clock and the algorithm of every key; its own state is the overflow
    /// limit.
    limiter: Limiter,
    /// Whether checks of tracked keys may take the read lock (GCRA).
    shared: bool,
    shards: Box<[Shard<K>]>,
    hasher: RandomState,
    keys: AtomicUsize,
    max_keys: AtomicUsize,
    sweep_every: AtomicU64,
    at_capacity: AtomicU8,
    /// Requests that found the map full since the last sweep's warning.
    overflowed: AtomicU64,
    report: Report,
}

/// What one check did to the map, reported once the shard's lock is released.
#[derive(Default)]
struct Outcome {
    evicted: usize,
    keys: usize,
    overflowed: bool,
}

// Every update leaves the map consistent; a poisoned lock still holds it.
fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(PoisonError::into_inner)
}

fn shard_count() -> usize {
    let threads = std::thread::available_parallelism().map_or(4, NonZeroUsize::get);
    (threads * 4).next_power_of_two().clamp(8, 64)
}

impl<K: Hash + Eq> Keyed<K> {
    fn new(config: RateLimitConfig) -> Result<Self, ConfigError> {
        if config.max_wait.is_some() {
            return Err(ConfigError::KeyedWait);
        }
        let limiter = Limiter::new(config.quota, config.algorithm, &config.clock)?;
        let shards = (0..shard_count())
            .map(|_| Shard {
                inner: RwLock::new(ShardInner {
                    whole: HashTable::new(),
                    owned: HashTable::new(),
                    next_sweep: 0,
                    last_sweep: 0,
                    first_idle: u64::MAX,
                }),
            })
            .collect();
        Ok(Self {
            shared: limiter.algorithm() == Algorithm::Gcra,
            limiter,
            shards,
            hasher: RandomState::new(),
            keys: AtomicUsize::new(0),
            max_keys: AtomicUsize::new(DEFAULT_MAX_KEYS.get()),
            sweep_every: AtomicU64::new(nanos(DEFAULT_SWEEP_EVERY)),
            at_capacity: AtomicU8::new(AtCapacity::Overflow.to_u8()),
            overflowed: AtomicU64::new(0),
            report: Report {
                name: config.name,
                listener: config.listener,
            },
        })
    }

    #[inline]
    fn shard(&self, hash: u64) -> &RwLock<ShardInner<K>> {
        // The middle bits: the table itself uses the low ones (bucket) and the top seven
        // (tag).
        let index = (hash >> 32) as usize & (self.shards.len() - 1);
        &self.shards[index].inner
    }

    /// Checks `cost` units for `key` now.
    #[inline(always)]
    pub(crate) fn check(&self, key: K, cost: u32) -> Result<Snapshot, Refusal> {
        // The common case, one unit of a tracked key of a whole-nanosecond GCRA that is
        // admitted: the clock, four quota words, the shard's read lock and one
        // compare-exchange, the snapshot from those words. Anything else (a refusal too) is
        // decided in full out of line.
        let hash = hash_inline(&self.hasher, &key);
        if cost == 1 && self.shared {
            let now = self.limiter.now();
            if let Some(unit) = self.limiter.unit() {
                let shard = read(self.shard(hash));
                if now < shard.next_sweep
                    && let Some((_, tat)) = shard.whole.find(hash, |(k, _)| *k == key)
                    && let Some(used) = take_whole(tat, now, unit.span, unit.capacity)
                {
                    return Ok(unit.snapshot(used));
                }
            }
        }
        self.check_hashed(Hashed { hash, key }, cost)
    }

    /// `check` in full, the key hashed.
    #[inline(never)]
    fn check_hashed(&self, key: Hashed<K>, cost: u32) -> Result<Snapshot, Refusal> {
        let params = self.limiter.params();
        self.limiter.fits(&params, cost)?;
        let now = self.limiter.now();
        if self.shared && params.is_whole() {
            let shard = read(self.shard(key.hash));
            if now < shard.next_sweep
                && let Some((_, tat)) = shard.whole.find(key.hash, |(k, _)| *k == key.key)
                && let Some(decision) = check_whole(tat, &params, now, cost)
            {
                return decision.map_err(Refusal::from);
            }
        }
        self.check_exclusive(key, &params, now, cost)
    }

    /// Checks under the shard's write lock: a new key, a sweep due, a state that is not
    /// one atomic.
    fn check_exclusive(
        &self,
        key: Hashed<K>,
        params: &Params,
        now: u64,
        cost: u32,
    ) -> Result<Snapshot, Refusal> {
        let mut outcome = Outcome::default();
        let decision = {
            let mut shard = write(self.shard(key.hash));
            let shard = &mut *shard;
            if now >= shard.next_sweep {
                self.sweep(shard, params, now, &mut outcome);
            }
            if let Some(decision) = shard.check(&self.hasher, &key, params, now, cost, true) {
                decision.map_err(Refusal::from)
            } else {
                self.check_new(shard, key, params, now, cost, &mut outcome)
            }
        };
        if outcome.evicted > 0 || outcome.overflowed {
            self.after(&outcome);
        }
        decision
    }

    /// A key the map does not hold.
    #[cold]
    fn check_new(
        &self,
        shard: &mut ShardInner<K>,
        key: Hashed<K>,
        params: &Params,
        now: u64,
        cost: u32,
        outcome: &mut Outcome,
    ) -> Result<Snapshot, Refusal> {
        if cost == 0 {
            // Takes nothing: nothing to remember.
            let mut state = Owned::new(self.limiter.algorithm(), params);
            return Ok(state.check(params, now, 0, false)?);
        }
        if !self.reserve() {
            if shard.may_sweep_full(now, self.sweep_every.load(Ordering::Relaxed)) {
                self.sweep(shard, params, now, outcome);
            }
            if !self.reserve() {
                outcome.overflowed = true;
                outcome.keys = self.keys.load(Ordering::Relaxed);
                return match self.at_capacity() {
                    AtCapacity::Overflow => self.limiter.check(cost, true),
                    AtCapacity::Refuse => Err(Refusal::KeysExhausted(KeysExhausted {
                        max_keys: self.max_keys(),
                        overloaded: Overloaded::new(),
                    })),
                };
            }
        }
        let mut state = Owned::new(self.limiter.algorithm(), params);
        let decision = state.check(params, now, cost, true);
        shard.first_idle = shard.first_idle.min(state.idle_at(params));
        shard.put(&self.hasher, key, state, params);
        Ok(decision?)
    }

    /// Takes a place for a new key, if there is one.
    fn reserve(&self) -> bool {
        let max = self.max_keys();
        self.keys
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |keys| {
                (keys < max).then_some(keys + 1)
            })
            .is_ok()
    }

    /// Forgets the shard's idle keys.
    fn sweep(&self, shard: &mut ShardInner<K>, params: &Params, now: u64, outcome: &mut Outcome) {
        let before = shard.len();
        let mut first_idle = u64::MAX;
        // A whole arrival time is the time the limit is full again.
        shard.whole.retain(|(_, tat)| {
            let idle_at = *tat.get_mut();
            if idle_at <= now {
                return false;
            }
            first_idle = first_idle.min(idle_at);
            true
        });
        shard.owned.retain(|(_, state)| {
            let idle_at = state.idle_at(params);
            if idle_at <= now {
                return false;
            }
            first_idle = first_idle.min(idle_at);
            true
        });
        let evicted = before - shard.len();
        if evicted > 0 {
            self.keys.fetch_sub(evicted, Ordering::AcqRel);
        }
        let every = self.sweep_every.load(Ordering::Relaxed);
        shard.next_sweep = now.saturating_add(every);
        shard.last_sweep = now;
        shard.first_idle = first_idle;
        outcome.evicted += evicted;
        outcome.keys = self.keys.load(Ordering::Relaxed);
    }

    /// Reports what a check did to the map.
    #[cold]
    fn after(&self, outcome: &Outcome) {
        if outcome.evicted > 0 {
            let overflowed = self.overflowed.swap(0, Ordering::Relaxed);
            tracing::debug!(
                name = %self.report.name,
                evicted = outcome.evicted,
                keys = outcome.keys,
                "rate limit: idle keys forgotten"
            );
            if overflowed > 0 {
                tracing::warn!(
                    name = %self.report.name,
                    overflowed,
                    max_keys = self.max_keys(),
                    policy = ?self.at_capacity(),
                    "rate limit: key map was full; requests with new keys went to the overflow policy"
                );
            }
            self.report.event(&RateLimitEvent::Swept {
                evicted: outcome.evicted,
                keys: outcome.keys,
            });
        }
        if outcome.overflowed {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            if self.at_capacity() == AtCapacity::Overflow {
                self.report
                    .event(&RateLimitEvent::Overflowed { keys: outcome.keys });
            }
        }
    }

    fn max_keys(&self) -> usize {
        self.max_keys.load(Ordering::Relaxed)
    }

    fn at_capacity(&self) -> AtCapacity {
        AtCapacity::from_u8(self.at_capacity.load(Ordering::Relaxed))
    }

    /// Sweeps every shard now.
    fn sweep_all(&self) -> usize {
        let params = self.limiter.params();
        let now = self.limiter.now();
        let mut outcome = Outcome::default();
        for shard in &self.shards {
            self.sweep(&mut write(&shard.inner), &params, now, &mut outcome);
        }
        if outcome.evicted > 0 {
            self.after(&outcome);
        }
        outcome.evicted
    }

    fn snapshot(&self, key: K) -> Option<Snapshot> {
        let params = self.limiter.params();
        let now = self.limiter.now();
        let hash = self.hasher.hash_one(&key);
        let mut shard = write(self.shard(hash));
        Some(
            match shard.check(&self.hasher, &Hashed { hash, key }, &params, now, 0, false)? {
                Ok(snapshot) => snapshot,
                Err(limited) => limited.snapshot,
            },
        )
    }
}

/// Wraps services in a [`KeyedRateLimit`]: one limit per key, for example per client IP or
/// per API key, so one busy client does not use up the others' quota.
///
/// A [`KeyExtractor`] picks each request's key (from a closure with [`key_fn`]; with the
/// `http` feature [`PeerIp`](crate::PeerIp), [`ClientIp`](crate::ClientIp),
/// [`HeaderKey`](crate::HeaderKey)). Every key gets the configuration's quota and
/// algorithm, and behaves exactly like a [`RateLimiter`](crate::RateLimiter) of its own.
/// Refused requests are answered as by a [`RateLimitLayer`](crate::RateLimitLayer):
/// [`RaiseError`] by default, [`TooManyRequests`](crate::TooManyRequests) for `429`s.
/// Keyed limits reject; they have no wait mode.
///
/// **One layer value is one map of limits**: every service it builds, every clone of those
/// services and of the layer share it, and its settings.
///
/// # Bounded memory
///
/// - **Idle keys are forgotten.** A key whose limit is back at its full capacity (as if
///   it had never been used) is *idle*: forgetting it changes no decision. Each shard of the
///   map sweeps its idle keys every [`sweep_every`](Self::sweep_every) (default **10 s**),
///   on a call, without a background task.
/// - **At most [`max_keys`](Self::max_keys) keys** (default **100 000**), whatever
///   arrives. A new key that finds the map full first sweeps its shard for idle keys (at
///   most once per 1/16 of the sweep period, and only once one can be idle); if there is
///   still no room, [`AtCapacity`] decides: the shared overflow limit (default) or a
///   refusal. No key is forgotten before it is idle.
///
/// Each key costs its entry in a hash table: the key and the algorithm's state, 8 bytes for
/// GCRA under a quota whose interval is a whole number of nanoseconds (16 bytes in all for a
/// `u64` key), else 32 bytes; plus the table's spare room and one control byte.
///
/// # Example
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{KeyedRateLimitLayer, Quota, key_fn};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// struct Call {
///     tenant: &'static str,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let per_tenant = KeyedRateLimitLayer::new(
///     Quota::per_minute(NonZeroU32::new(1).unwrap()),
///     key_fn(|call: &Call| call.tenant),
/// );
/// let service = ServiceBuilder::new()
///     .layer(per_tenant.clone())
///     .service_fn(|call: Call| async move { Ok::<_, std::io::Error>(call.tenant) });
///
/// assert_eq!(service.clone().oneshot(Call { tenant: "a" }).await.unwrap(), "a");
/// // `a` has used its quota; `b` has its own.
/// assert!(service.clone().oneshot(Call { tenant: "a" }).await.is_err());
/// assert_eq!(service.clone().oneshot(Call { tenant: "b" }).await.unwrap(), "b");
/// assert_eq!(per_tenant.keys(), 2);
/// assert_eq!(per_tenant.snapshot("a").unwrap().remaining(), 0);
/// # }
/// ```
pub struct KeyedRateLimitLayer<K, X, C = UnitCost, R = RaiseError> {
    limiter: KeyedRateLimiter<K>,
    extractor: Arc<X>,
    cost: C,
    respond: R,
}

impl<K: Hash + Eq, X> KeyedRateLimitLayer<K, X> {
    /// One GCRA limit of `quota` per key that `extractor` picks.
    pub fn new(quota: Quota, extractor: X) -> Self {
        Self::from_limiter(KeyedRateLimiter::new(quota), extractor)
    }

    /// One limit per key that `extractor` picks, each as `config` says (quota, algorithm,
    /// clock, name, listener).
    ///
    /// # Errors
    ///
    /// [`ConfigError::KeyedWait`] if `config` is in wait mode: keyed limits reject.
    pub fn with_config(
        config: impl Into<RateLimitConfig>,
        extractor: X,
    ) -> Result<Self, ConfigError> {
        Ok(Self::from_limiter(
            KeyedRateLimiter::with_config(config)?,
            extractor,
        ))
    }

    /// Limits requests with `limiter`'s limits (shared with whoever else holds it), keyed by
    /// `extractor`.
    pub fn from_limiter(limiter: KeyedRateLimiter<K>, extractor: X) -> Self {
        Self {
            limiter,
            extractor: Arc::new(extractor),
            cost: UnitCost,
            respond: RaiseError,
        }
    }
}

impl<K: Hash + Eq, X, C, R> KeyedRateLimitLayer<K, X, C, R> {
    /// Tracks at most `max` keys (default [`DEFAULT_MAX_KEYS`], 100 000).
    #[must_use]
    pub fn max_keys(self, max: NonZeroUsize) -> Self {
        self.limiter.set_max_keys(max);
        self
    }

    /// What a new key gets when the map is full (default [`AtCapacity::Overflow`]).
    #[must_use]
    pub fn at_capacity(self, at_capacity: AtCapacity) -> Self {
        self.limiter.set_at_capacity(at_capacity);
        self
    }

    /// Sweeps idle keys every `every` (default [`DEFAULT_SWEEP_EVERY`], 10 s).
    #[must_use]
    pub fn sweep_every(self, every: Duration) -> Self {
        self.limiter.set_sweep_every(every);
        self
    }

    /// The limits, to check or read directly (a handle: the same map).
    pub fn limiter(&self) -> &KeyedRateLimiter<K> {
        &self.limiter
    }

    /// Charges each request what `cost` says, as
    /// [`RateLimitLayer::cost`](crate::RateLimitLayer::cost).
    pub fn cost<D>(self, cost: D) -> KeyedRateLimitLayer<K, X, D, R> {
        KeyedRateLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            cost,
            respond: self.respond,
        }
    }

    /// Answers refused requests with `respond`, as
    /// [`RateLimitLayer::respond_with`](crate::RateLimitLayer::respond_with).
    pub fn respond_with<Q>(self, respond: Q) -> KeyedRateLimitLayer<K, X, C, Q> {
        KeyedRateLimitLayer {
            limiter: self.limiter,
            extractor: self.extractor,
            cost: self.cost,
            respond,
        }
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.limiter.keys()
    }

    /// The state of `key`'s limit; see [`KeyedRateLimiter::snapshot`].
    pub fn snapshot(&self, key: K) -> Option<Snapshot> {
        self.limiter.snapshot(key)
    }
}

impl<K, X, C: Clone, R: Clone> Clone for KeyedRateLimitLayer<K, X, C, R> {
    /// The clone is the same map of limits.
    fn clone(&self) -> Self {
        Self {
            limiter: self.limiter.clone(),
            extractor: Arc::clone(&self.extractor),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<K, X, C, R> fmt::Debug for KeyedRateLimitLayer<K, X, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimitLayer")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl<S, K, X, C: Clone, R: Clone> Layer<S> for KeyedRateLimitLayer<K, X, C, R> {
    type Service = KeyedRateLimit<S, K, X, C, R>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedRateLimit {
            inner,
            keyed: Arc::clone(&self.limiter.keyed),
            extractor: Arc::clone(&self.extractor),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

/// A service behind keyed limits; built by [`KeyedRateLimitLayer`].
///
/// Readiness is the inner service's; each call is checked against its key's limit and
/// either called at once or answered by the [`Respond`].
pub struct KeyedRateLimit<S, K, X, C = UnitCost, R = RaiseError> {
    inner: S,
    keyed: Arc<Keyed<K>>,
    extractor: Arc<X>,
    cost: C,
    respond: R,
}

impl<S, K, X, C, R> KeyedRateLimit<S, K, X, C, R> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the rate-limited one.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, X, C: Clone, R: Clone> Clone for KeyedRateLimit<S, K, X, C, R> {
    /// The clone shares the map of limits.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            keyed: Arc::clone(&self.keyed),
            extractor: Arc::clone(&self.extractor),
            cost: self.cost.clone(),
            respond: self.respond.clone(),
        }
    }
}

impl<S: fmt::Debug, K, X, C, R> fmt::Debug for KeyedRateLimit<S, K, X, C, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimit")
            .field("inner", &self.inner)
            .field("name", &self.keyed.report.name)
            .finish_non_exhaustive()
    }
}

impl<S, K, X, C, R, Req> Service<Req> for KeyedRateLimit<S, K, X, C, R>
where
    S: Service<Req>,
    K: Hash + Eq,
    X: KeyExtractor<Req, Key = K>,
    C: Cost<Req>,
    R: Respond<Req, S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = R::Error;
    type Future = ResponseFuture<S, Req, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(|e| self.respond.error(e))
    }

    #[inline]
    fn call(&mut self, request: Req) -> Self::Future {
        let cost = self.cost.cost(&request);
        let key = self.extractor.extract(&request);
        match self.keyed.check(key, cost) {
            Ok(snapshot) => {
                self.keyed.report.admitted(cost, &snapshot);
                let future = self.inner.call(request);
                if R::READS_SNAPSHOT {
                    ResponseFuture::called(future, snapshot, self.respond.clone())
                } else {
                    ResponseFuture::passed(future, self.respond.clone())
                }
            }
            Err(refusal) => {
                self.keyed.report.refused(cost, &refusal, Duration::ZERO);
                let answer = self.respond.refused(refusal, request);
                ResponseFuture::answered(answer, self.respond.clone())
            }
        }
    }
}

/// Keyed limits to call directly, outside a tower stack: `check(key)` before doing the work.
///
/// Cheap to clone; clones are the same map of limits. Every key gets the quota and
/// algorithm of the configuration; memory stays bounded as described on
/// [`KeyedRateLimitLayer`] (idle keys are swept, at most
/// [`max_keys`](Self::set_max_keys) keys, [`AtCapacity`] beyond).
///
/// ```
/// use std::num::NonZeroU32;
/// use palisade_ratelimit::{KeyedRateLimiter, Quota};
///
/// let per_user = KeyedRateLimiter::new(Quota::per_second(NonZeroU32::new(1).unwrap()));
/// assert!(per_user.check("alice").is_ok());
/// assert!(per_user.check("alice").is_err());
/// assert!(per_user.check("bob").is_ok());
/// assert_eq!(per_user.keys(), 2);
/// ```
pub struct KeyedRateLimiter<K> {
    keyed: Arc<Keyed<K>>,
}

impl<K: Hash + Eq> KeyedRateLimiter<K> {
    /// One GCRA limit of `quota` per key.
    pub fn new(quota: Quota) -> Self {
        Self::with_config(quota).unwrap_or_else(|_| unreachable!("a quota is valid"))
    }

    /// One limit per key, each as `config` says (quota, algorithm, clock, name, listener).
    ///
    /// # Errors
    ///
    /// [`ConfigError::KeyedWait`] if `config` is in wait mode: keyed limits reject.
    pub fn with_config(config: impl Into<RateLimitConfig>) -> Result<Self, ConfigError> {
        Ok(Self {
            keyed: Arc::new(Keyed::new(config.into())?),
        })
    }

    /// Takes one unit of `key`'s limit if it allows it now.
    ///
    /// # Errors
    ///
    /// [`Refusal::Limited`] with the time until it would be admitted;
    /// [`Refusal::KeysExhausted`] for a new key when the map is full and
    /// [`AtCapacity::Refuse`] is set.
    #[inline]
    pub fn check(&self, key: K) -> Result<Snapshot, Refusal> {
        self.keyed.check(key, 1)
    }

    /// Takes `cost` units of `key`'s limit at once, or none.
    ///
    /// # Errors
    ///
    /// As [`check`](Self::check), and [`Refusal::InsufficientCapacity`] for a cost above
    /// what a limit ever holds.
    #[inline]
    pub fn check_n(&self, key: K, cost: u32) -> Result<Snapshot, Refusal> {
        self.keyed.check(key, cost)
    }

    /// The state of `key`'s limit, taking nothing; `None` if it is not tracked (it has its
    /// full quota, or found no room and counts against the overflow limit).
    pub fn snapshot(&self, key: K) -> Option<Snapshot> {
        self.keyed.snapshot(key)
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.keyed.keys.load(Ordering::Relaxed)
    }

    /// Forgets every idle key now (sweeps run on their own; this is for tests and admin
    /// endpoints). Returns how many were forgotten.
    pub fn sweep(&self) -> usize {
        self.keyed.sweep_all()
    }

    /// Tracks at most `max` keys from now on (default [`DEFAULT_MAX_KEYS`], 100 000). Keys
    /// above a lowered maximum are forgotten as they go idle.
    pub fn set_max_keys(&self, max: NonZeroUsize) {
        self.keyed.max_keys.store(max.get(), Ordering::Relaxed);
    }

    /// What a new key gets when the map is full (default [`AtCapacity::Overflow`]).
    pub fn set_at_capacity(&self, at_capacity: AtCapacity) {
        self.keyed
            .at_capacity
            .store(at_capacity.to_u8(), Ordering::Relaxed);
    }

    /// Sweeps idle keys every `every` (default [`DEFAULT_SWEEP_EVERY`], 10 s).
    pub fn set_sweep_every(&self, every: Duration) {
        self.keyed
            .sweep_every
            .store(nanos(every), Ordering::Relaxed);
    }

    /// The current quota of every key.
    pub fn quota(&self) -> Quota {
        self.keyed.limiter.quota()
    }

    /// Replaces every key's quota for their next checks; what was admitted still counts.
    ///
    /// # Errors
    ///
    /// [`ConfigError::LogTooLarge`] for a sliding-window log whose count is above
    /// [`MAX_LOG_ENTRIES`](crate::MAX_LOG_ENTRIES).
    pub fn set_quota(&self, quota: Quota) -> Result<(), ConfigError> {
        self.keyed.limiter.set_quota(quota)?;
        tracing::info!(name = %self.keyed.report.name, ?quota, "rate limit: quota changed");
        Ok(())
    }
}

impl<K> Clone for KeyedRateLimiter<K> {
    /// The clone is the same map of limits.
    fn clone(&self) -> Self {
        Self {
            keyed: Arc::clone(&self.keyed),
        }
    }
}

impl<K> fmt::Debug for KeyedRateLimiter<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedRateLimiter")
            .field("name", &self.keyed.report.name)
            .field("quota", &self.keyed.limiter.quota())
            .field("keys", &self.keyed.keys.load(Ordering::Relaxed))
            .field("max_keys", &self.keyed.max_keys.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::num::NonZeroU32;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::KeyedRateLimiter;
    use crate::Quota;

    fn quota(count: u32, window: Duration) -> Quota {
        Quota::new(NonZeroU32::new(count).unwrap(), window).unwrap()
    }

    /// Whether `key` is tracked in the compare-exchange form.
    fn is_whole(limiter: &KeyedRateLimiter<u64>, key: u64) -> bool {
        let keyed = &limiter.keyed;
        let hash = keyed.hasher.hash_one(key);
        let shard = super::read(keyed.shard(hash));
        shard.whole.find(hash, |(k, _)| *k == key).is_some()
    }

    #[test]
    fn threads_racing_on_shared_keys_take_exactly_each_burst() {
        // The clock stands still: every key admits its burst and nothing more, however the
        // threads' compare-exchanges interleave under the shards' read locks.
        const BURST: u32 = 200;
        const KEYS: u64 = 16;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let limiter = KeyedRateLimiter::new(quota(BURST, Duration::from_secs(1)));
        let admitted: Vec<AtomicU32> = (0..KEYS).map(|_| AtomicU32::new(0)).collect();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let (limiter, admitted, handle) = (&limiter, &admitted, runtime.handle());
                scope.spawn(move || {
                    let _clock = handle.enter();
                    for round in 0..BURST as u64 * 2 {
                        for key in 0..KEYS {
                            let key = (key + round) % KEYS;
                            if limiter.check(key).is_ok() {
                                admitted[key as usize].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        for (key, count) in admitted.iter().enumerate() {
            assert_eq!(count.load(Ordering::Relaxed), BURST, "key {key}");
        }
        assert!((0..KEYS).all(|key| is_whole(&limiter, key)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_changes_form_with_the_quota_and_keeps_what_it_took() {
        let ten_per_second = quota(10, Duration::from_secs(1));
        let limiter = KeyedRateLimiter::new(ten_per_second);
        assert!(limiter.check(7).is_ok());
        assert!(is_whole(&limiter, 7), "a whole interval: one atomic");
        // A third of a second per unit: the state takes a fraction of a nanosecond.
        limiter.set_quota(quota(3, Duration::from_secs(1))).unwrap();
        assert!(limiter.check(7).is_ok());
        assert!(!is_whole(&limiter, 7));
        // Back to a whole interval: 433.3 ms of the second's capacity are taken, so 5 more
        // units of 100 ms fit, and the state keeps its fraction meanwhile.
        limiter.set_quota(ten_per_second).unwrap();
        let admitted = (0..10).filter(|_| limiter.check(7).is_ok()).count();
        assert_eq!(admitted, 5);
        assert!(!is_whole(&limiter, 7));
        // Once its time is past, the state is whole again.
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(limiter.check(7).is_ok());
        assert!(is_whole(&limiter, 7));
        assert_eq!(limiter.snapshot(7).unwrap().remaining(), 9);
    }

    #[test]
    fn the_inline_hit_path_decides_as_the_full_check() {
        // Twin limiters, one checked through `check` (whose admitted unit of a tracked key
        // takes the inline path), the other through the full check; the same times, keys and
        // quotas give the same snapshots and the same refusals.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let _clock = runtime.enter();
        let quotas = [
            quota(10, Duration::from_secs(1)),
            quota(3, Duration::from_secs(1)).allow_burst(NonZeroU32::new(5).unwrap()),
            quota(1_000, Duration::from_secs(1)),
            quota(7, Duration::from_millis(700)),
            quota(4, Duration::from_secs(2)).allow_burst(NonZeroU32::new(1).unwrap()),
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut admitted = 0;
        for quota in quotas {
            let inline = KeyedRateLimiter::<u64>::new(quota);
            let full = KeyedRateLimiter::<u64>::new(quota);
            for _ in 0..2_000 {
                let step = match next() % 4 {
                    0 => Duration::ZERO,
                    1 => Duration::from_nanos(next() % 1_000),
                    2 => Duration::from_micros(next() % 200_000),
                    _ => Duration::from_millis(next() % 1_500),
                };
                runtime.block_on(tokio::time::advance(step));
                let key = next() % 3;
                let hashed = super::Hashed {
                    hash: full.keyed.hasher.hash_one(key),
                    key,
                };
                let a = inline.check(key);
                let b = full.keyed.check_hashed(hashed, 1);
                assert_eq!(format!("{a:?}"), format!("{b:?}"), "{quota:?}, key {key}");
                admitted += u32::from(a.is_ok());
            }
        }
        assert!(admitted > 1_000, "most checks are admitted: {admitted}");
    }
}
