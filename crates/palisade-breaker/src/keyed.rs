//! Keyed breakers: one circuit breaker per key (upstream host, route, tenant), kept in a
//! bounded map whose unused breakers are evicted.
//!
//! The map is a `Mutex<HashMap>`: a keyed call takes it once, for a hash lookup and a clock
//! stamp, and never across an inner call or an `.await`. New keys build their breaker outside
//! the lock. Eviction scans the map (O(number of keys)) at most once per idle timeout, and
//! once per new key while the map is full.

use std::borrow::{Borrow, Cow};
use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_core::BoxError;
use palisade_core::classify::{Classify, DefaultClassify};
use tokio::time::Instant;
use tower_layer::Layer;
use tower_service::Service;

use crate::config::CircuitBreakerConfig;
use crate::event::State;
use crate::future::{Guard, ResponseFuture};
use crate::handle::CircuitBreakerHandle;
use crate::state::{Shared, Slot};

const DEFAULT_MAX_KEYS: NonZeroUsize = match NonZeroUsize::new(1024) {
    Some(n) => n,
    None => NonZeroUsize::MIN,
};
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// Decides which breaker of a [`KeyedCircuitBreakerLayer`] a request goes through.
///
/// Requests with equal keys share a breaker. The key's `Debug` form names its breaker (see
/// [`KeyedCircuitBreakerLayer`]). Make a key extractor from a closure with [`key_fn`]; with
/// the `http` feature, `HostKey` keys `http::Request`s by host.
pub trait KeyExtractor<Request> {
    /// The key: an upstream host, a route, a tenant id.
    type Key: Hash + Eq + fmt::Debug;

    /// The key of `request`.
    fn extract(&self, request: &Request) -> Self::Key;
}

/// A key extractor made from a closure; see [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F>(F);

/// Makes a [`KeyExtractor`] from a closure `Fn(&Request) -> Key`.
///
/// ```
/// use palisade_breaker::{KeyExtractor, key_fn};
///
/// struct Call {
///     route: &'static str,
/// }
///
/// let by_route = key_fn(|call: &Call| call.route);
/// assert_eq!(by_route.extract(&Call { route: "/orders" }), "/orders");
/// ```
pub const fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn(f)
}

impl<F, Request, K> KeyExtractor<Request> for KeyFn<F>
where
    F: Fn(&Request) -> K,
    K: Hash + Eq + fmt::Debug,
{
    type Key = K;

    fn extract(&self, request: &Request) -> K {
        (self.0)(request)
    }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("KeyFn").finish_non_exhaustive()
    }
}

#[cfg(feature = "http")]
pub use self::host::HostKey;

#[cfg(feature = "http")]
mod host {
    use ::http::header::HOST;
    use ::http::uri::Authority;

    use super::KeyExtractor;

    /// Keys `http::Request`s by host (feature `http`): the URI's authority (a client's
    /// absolute-form request), else the `Host` header (a server's request); `None` if neither
    /// is there or the header is not a valid authority.
    ///
    /// The key keeps the port (`api.example.com:8443`) and compares the host ignoring ASCII
    /// case. Taking it from the URI costs no allocation; parsing a `Host` header copies it.
    ///
    /// ```
    /// use http::Request;
    /// use http::uri::Authority;
    /// use palisade_breaker::{HostKey, KeyExtractor};
    ///
    /// let client = Request::get("https://api.example.com/orders").body(()).unwrap();
    /// let server = Request::get("/orders").header("host", "API.example.com").body(()).unwrap();
    /// let api = Some(Authority::from_static("api.example.com"));
    /// assert_eq!(HostKey.extract(&client), api);
    /// assert_eq!(HostKey.extract(&server), api);
    /// ```
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct HostKey;

    impl<B> KeyExtractor<::http::Request<B>> for HostKey {
        type Key = Option<Authority>;

        fn extract(&self, request: &::http::Request<B>) -> Option<Authority> {
            if let Some(authority) = request.uri().authority() {
                return Some(authority.clone());
            }
            let host = request.headers().get(HOST)?;
            Authority::try_from(host.as_bytes()).ok()
        }
    }
}

/// Wraps services in a [`KeyedCircuitBreaker`]: one circuit breaker per key, for example
/// per upstream host or per route, so one failing upstream does not cut off the others.
///
/// A [`KeyExtractor`] picks each request's key (make one from a closure with [`key_fn`]).
/// The first request with a new key creates that key's breaker from the layer's
/// [`CircuitBreakerConfig`]; it then behaves exactly like a
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s breaker.
///
/// **One layer value is one map of breakers**: every service it builds, every clone of those
/// services and of the layer share it. The map's settings ([`max_keys`](Self::max_keys),
/// [`idle_timeout`](Self::idle_timeout)) belong to the map too.
///
/// # Names and events
///
/// Each key's breaker is named `"{name}/{key:?}"`, from the configuration's
/// [name](crate::CircuitBreakerConfigBuilder::name) and the key's `Debug` form (a `String` key
/// keeps its quotes: `upstream/"api.example.com"`). Traces and [`BreakerEvent`]s carry that
/// name; all keys report to the configuration's one listener.
///
/// # Bounded memory
///
/// The map holds at most [`max_keys`](Self::max_keys) breakers (default **1024**), each the
/// size of a single breaker (mostly its window: one byte per call of a count window). A key
/// whose breaker has not been called for [`idle_timeout`](Self::idle_timeout) (default
/// **5 minutes**) is *idle* and is evicted by the next sweep, which runs on a call at most
/// once per idle timeout, without a background task. A breaker is not idle while it is *in
/// use* (a call in flight, or a [`CircuitBreakerHandle`] to it is alive) or while it rejects
/// calls (open and still waiting, or forced open): evicting it would forget that the
/// upstream is down.
///
/// When a new key arrives while the map is full, idle breakers go first; if none is, one
/// breaker is evicted, chosen in this order: not in use before in use, closed before any
/// other state (an open breaker carries what it learned), least recently called first.
///
/// An evicted breaker is only forgotten: calls in flight through it finish and record into
/// it, and handles to it keep working, but new calls with its key get a new, closed breaker.
/// Evictions are traced at `debug` level.
///
/// `K` is the key type (the extractor's [`Key`](KeyExtractor::Key)), usually inferred from
/// the requests the services are called with; name it where that is not enough
/// (`KeyedCircuitBreakerLayer<String, _>`). `X` is the extractor. `C` decides what counts as
/// a failure ([`DefaultClassify`]: every `Err`); each key's breaker gets a clone.
///
/// # Example
///
/// ```
/// use std::num::{NonZeroU32, NonZeroUsize};
/// use std::time::Duration;
/// use palisade_breaker::{CircuitBreakerConfig, KeyedCircuitBreakerLayer, State, key_fn};
/// use tower::{ServiceBuilder, ServiceExt};
///
/// struct Fetch {
///     host: String,
///     fail: bool,
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), palisade_core::BoxError> {
/// let config = CircuitBreakerConfig::builder()
///     .name("upstream")
///     .consecutive_failures(NonZeroU32::new(2).unwrap())
///     .build()?;
/// let breakers = KeyedCircuitBreakerLayer::new(config, key_fn(|fetch: &Fetch| fetch.host.clone()))
///     .max_keys(NonZeroUsize::new(100).unwrap())
///     .idle_timeout(Duration::from_secs(600));
///
/// let service = ServiceBuilder::new()
///     .layer(breakers.clone())
///     .service_fn(|fetch: Fetch| async move {
///         if fetch.fail { Err("upstream unavailable") } else { Ok(fetch.host) }
///     });
/// let fetch = |host: &str, fail| Fetch { host: host.to_owned(), fail };
///
/// for _ in 0..2 {
///     assert!(service.clone().oneshot(fetch("a.example", true)).await.is_err());
/// }
/// // `a.example` is cut off; `b.example` is still served.
/// assert!(service.clone().oneshot(fetch("a.example", false)).await.is_err());
/// assert_eq!(service.clone().oneshot(fetch("b.example", false)).await?, "b.example");
///
/// let a = breakers.handle("a.example").expect("a.example has a breaker");
/// assert_eq!(a.state(), State::Open);
/// assert_eq!(a.name(), r#"upstream/"a.example""#);
/// assert_eq!(breakers.handle("b.example").map(|b| b.state()), Some(State::Closed));
/// assert_eq!(breakers.len(), 2);
/// # Ok(())
/// # }
/// ```
///
/// [`BreakerEvent`]: crate::BreakerEvent
pub struct KeyedCircuitBreakerLayer<K, X, C = DefaultClassify> {
    registry: Arc<Registry<K, X, C>>,
}

impl<K, X> KeyedCircuitBreakerLayer<K, X> {
    /// One breaker per key that `extractor` picks, each built from `config` and counting
    /// every `Err` as a failure.
    pub fn new(config: CircuitBreakerConfig, extractor: X) -> Self {
        Self::with_classifier(config, extractor, DefaultClassify)
    }
}

impl<K, X, C> KeyedCircuitBreakerLayer<K, X, C> {
    /// One breaker per key that `extractor` picks, each built from `config` with a clone of
    /// `classify` to decide its failures.
    pub fn with_classifier(config: CircuitBreakerConfig, extractor: X, classify: C) -> Self {
        Self {
            registry: Arc::new(Registry {
                extractor,
                config,
                classify,
                map: Mutex::new(Map {
                    entries: HashMap::new(),
                    max_keys: DEFAULT_MAX_KEYS,
                    idle_timeout: DEFAULT_IDLE_TIMEOUT,
                    next_sweep: Instant::now().checked_add(DEFAULT_IDLE_TIMEOUT),
                }),
            }),
        }
    }

    /// Keeps at most `max_keys` breakers (default 1024); see
    /// [bounded memory](Self#bounded-memory). Applies to the whole map, shared with every
    /// clone; if the map holds more, the next new key evicts down to the limit.
    #[must_use]
    pub fn max_keys(self, max_keys: NonZeroUsize) -> Self {
        self.registry.lock().max_keys = max_keys;
        self
    }

    /// Evicts breakers not called for `idle_timeout` (default 5 minutes); see
    /// [bounded memory](Self#bounded-memory). Applies to the whole map, shared with every
    /// clone. Keep it well above the configuration's open-state wait and the gaps between a
    /// key's calls, or keys forget what they learned; `Duration::ZERO` forgets every breaker
    /// that is not in use at each call.
    #[must_use]
    pub fn idle_timeout(self, idle_timeout: Duration) -> Self {
        let mut map = self.registry.lock();
        map.idle_timeout = idle_timeout;
        map.next_sweep = Instant::now().checked_add(idle_timeout);
        drop(map);
        self
    }

    /// How many keys have a breaker now.
    pub fn len(&self) -> usize {
        self.registry.lock().entries.len()
    }

    /// Whether no key has a breaker yet (or all were evicted).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A handle to `key`'s breaker, if the map holds one. Reading it does not count as a
    /// use, but while the handle is alive the breaker is in use: it is not evicted as idle,
    /// and is evicted last when the map is full.
    pub fn handle<Q>(&self, key: &Q) -> Option<CircuitBreakerHandle>
    where
        K: Borrow<Q> + Hash + Eq,
        Q: Hash + Eq + ?Sized,
        C: Send + Sync + 'static,
    {
        let breaker = Arc::clone(self.registry.lock().entries.get(key)?.breaker.shared());
        Some(CircuitBreakerHandle::new(breaker as _))
    }

    /// Evicts idle breakers now and returns how many; calls do this on their own at most
    /// once per idle timeout.
    pub fn evict_idle(&self) -> usize {
        let now = Instant::now();
        let mut evicted = Vec::new();
        self.registry.lock().sweep(now, &mut evicted);
        let count = evicted.len();
        trace_evictions(evicted);
        count
    }
}

impl<K, X, C> Clone for KeyedCircuitBreakerLayer<K, X, C> {
    /// The clone shares the map.
    fn clone(&self) -> Self {
        Self {
            registry: Arc::clone(&self.registry),
        }
    }
}

impl<K, X, C> fmt::Debug for KeyedCircuitBreakerLayer<K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("registry", &self.registry)
            .finish()
    }
}

impl<S, K, X, C> Layer<S> for KeyedCircuitBreakerLayer<K, X, C> {
    type Service = KeyedCircuitBreaker<S, K, X, C>;

    fn layer(&self, inner: S) -> Self::Service {
        KeyedCircuitBreaker {
            inner,
            registry: Arc::clone(&self.registry),
        }
    }
}

/// A service guarded by one circuit breaker per key; built by [`KeyedCircuitBreakerLayer`].
///
/// Errors are boxed like [`CircuitBreaker`](crate::CircuitBreaker)'s: the inner service's
/// errors as they are, a rejection as a [`CircuitOpen`](crate::CircuitOpen).
///
/// The key, and so the breaker, is only known from the request, so `poll_ready` only polls
/// the inner service: a call to an open key is rejected by `call`, which then does not call
/// the inner service (the readiness it reserved serves the next call). Half-open probe slots
/// are taken in `call`, as in the single breaker.
pub struct KeyedCircuitBreaker<S, K, X, C = DefaultClassify> {
    inner: S,
    registry: Arc<Registry<K, X, C>>,
}

impl<S, K, X, C> KeyedCircuitBreaker<S, K, X, C> {
    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service, consuming the keyed breaker service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, K, X, C> Clone for KeyedCircuitBreaker<S, K, X, C> {
    /// The clone shares the map of breakers.
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            registry: Arc::clone(&self.registry),
        }
    }
}

impl<S: fmt::Debug, K, X, C> fmt::Debug for KeyedCircuitBreaker<S, K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .field("registry", &self.registry)
            .finish()
    }
}

impl<S, K, X, C, Request> Service<Request> for KeyedCircuitBreaker<S, K, X, C>
where
    S: Service<Request>,
    S::Error: Into<BoxError>,
    X: KeyExtractor<Request, Key = K>,
    K: Hash + Eq + fmt::Debug,
    C: Classify<S::Response, S::Error> + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let key = self.registry.extractor.extract(&request);
        let breaker = self.registry.breaker(key);
        match Guard::admit::<S::Response, S::Error>(&breaker, None) {
            Ok(guard) => ResponseFuture::called(self.inner.call(request), guard),
            Err(rejection) => ResponseFuture::rejected(rejection),
        }
    }
}

/// The state shared by a keyed layer, its services and their clones.
struct Registry<K, X, C> {
    extractor: X,
    config: CircuitBreakerConfig,
    classify: C,
    map: Mutex<Map<K, C>>,
}

struct Map<K, C> {
    entries: HashMap<K, Entry<C>>,
    max_keys: NonZeroUsize,
    idle_timeout: Duration,
    /// When a call next sweeps idle entries; `None`: never (an idle timeout beyond the clock).
    next_sweep: Option<Instant>,
}

struct Entry<C> {
    breaker: Arc<Slot<C>>,
    /// When the latest call with this key started.
    last_used: Instant,
}

impl<C> Entry<C> {
    /// Whether anything besides the map holds the breaker: a call in flight (its guard holds
    /// the slot) or a handle (it holds the breaker behind the slot). Exact under the map's
    /// lock: new clones of either `Arc` are only made under it.
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.breaker) > 1 || Arc::strong_count(self.breaker.shared()) > 1
    }

    fn is_idle(&self, now: Instant, idle_timeout: Duration) -> bool {
        now.saturating_duration_since(self.last_used) >= idle_timeout
            && !self.in_use()
            && self.breaker.peek_rejection().is_none()
    }
}

impl<K, X, C> Registry<K, X, C> {
    fn lock(&self) -> MutexGuard<'_, Map<K, C>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<K: Hash + Eq + fmt::Debug, X, C: Clone> Registry<K, X, C> {
    /// `key`'s breaker, created if the map has none, and marked as used now.
    fn breaker(&self, key: K) -> Arc<Slot<C>> {
        let now = Instant::now();
        let mut evicted = Vec::new();
        let mut map = self.lock();
        if map.next_sweep.is_some_and(|at| now >= at) {
            map.sweep(now, &mut evicted);
        }
        let found = map.touch(&key, now);
        drop(map);
        trace_evictions(evicted);
        if let Some(breaker) = found {
            return breaker;
        }

        // A new key: build its breaker (which allocates its window) outside the lock.
        let mut config = self.config.clone();
        config.name = Cow::Owned(format!("{}/{key:?}", config.name));
        let breaker = Arc::new(Slot::new(Arc::new(Shared::new(
            config,
            self.classify.clone(),
        ))));

        let mut evicted = Vec::new();
        let mut map = self.lock();
        // Another call may have added the key meanwhile: use its breaker.
        if let Some(existing) = map.touch(&key, now) {
            return existing;
        }
        map.make_room(now, &mut evicted);
        map.entries.insert(
            key,
            Entry {
                breaker: Arc::clone(&breaker),
                last_used: now,
            },
        );
        drop(map);
        trace_evictions(evicted);
        breaker
    }
}

/// Breakers taken out of the map, with the reason, to trace once the lock is released.
type Evicted<C> = Vec<(Arc<Slot<C>>, &'static str)>;

impl<K: Hash + Eq, C> Map<K, C> {
    fn touch(&mut self, key: &K, now: Instant) -> Option<Arc<Slot<C>>> {
        let entry = self.entries.get_mut(key)?;
        entry.last_used = entry.last_used.max(now);
        Some(Arc::clone(&entry.breaker))
    }
}

impl<K, C> Map<K, C> {
    /// Moves idle entries' breakers to `evicted` and schedules the next sweep.
    fn sweep(&mut self, now: Instant, evicted: &mut Evicted<C>) {
        let idle_timeout = self.idle_timeout;
        self.entries.retain(|_, entry| {
            let keep = !entry.is_idle(now, idle_timeout);
            if !keep {
                evicted.push((Arc::clone(&entry.breaker), "idle"));
            }
            keep
        });
        self.next_sweep = now.checked_add(idle_timeout);
    }

    /// Frees a slot for one more key: idle entries first, then one by one the entry chosen
    /// by [`Map::victim`].
    fn make_room(&mut self, now: Instant, evicted: &mut Evicted<C>) {
        if self.entries.len() < self.max_keys.get() {
            return;
        }
        self.sweep(now, evicted);
        while self.entries.len() >= self.max_keys.get() {
            let Some(victim) = self.victim() else { break };
            // Keys need not be `Clone`: find the victim again by its breaker.
            self.entries.retain(|_, entry| {
                let keep = !Arc::ptr_eq(&entry.breaker, &victim);
                if !keep {
                    evicted.push((Arc::clone(&entry.breaker), "capacity"));
                }
                keep
            });
        }
    }

    /// The entry to evict from a full map: not in use before in use, closed before any
    /// other state, least recently used first.
    fn victim(&self) -> Option<Arc<Slot<C>>> {
        self.entries
            .values()
            .min_by_key(|entry| {
                (
                    entry.in_use(),
                    entry.breaker.state() != State::Closed,
                    entry.last_used,
                )
            })
            .map(|entry| Arc::clone(&entry.breaker))
    }
}

fn trace_evictions<C>(evicted: Evicted<C>) {
    for (breaker, reason) in evicted {
        tracing::debug!(
            breaker = %breaker.name(),
            state = %breaker.state(),
            reason,
            "keyed circuit breaker evicted"
        );
    }
}

impl<K, X, C> fmt::Debug for Registry<K, X, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.lock();
        f.debug_struct("KeyedBreakers")
            .field("name", &self.config.name())
            .field("keys", &map.entries.len())
            .field("max_keys", &map.max_keys)
            .field("idle_timeout", &map.idle_timeout)
            .finish_non_exhaustive()
    }
}
