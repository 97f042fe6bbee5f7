//! [`Lock`]: acquisition with waiting, `try_acquire` and `with_lock`, over any [`Backend`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use palisade_core::Listener;
use tokio::time::Instant;

use crate::backend::{Backend, Grant};
use crate::guard::{Held, LockGuard};
use crate::watchdog::Watchdog;
use crate::{BackendError, FencingToken, InProcess, LockConfig, LockError, LockEvent};

/// A lock manager over one [`Backend`]: hands out [`LockGuard`]s on keys.
///
/// Cheap to clone: clones share the backend, the configuration, the listener and the
/// watchdog (one task that renews the leases of all of this lock's guards). Its methods
/// need a tokio runtime.
pub struct Lock<B: Backend = InProcess> {
    shared: Arc<Shared<B>>,
}

pub(crate) struct Shared<B: Backend> {
    pub(crate) backend: B,
    pub(crate) config: LockConfig,
    listener: Box<dyn Listener<LockEvent>>,
    /// Renews the leases of all guards of this lock (one task).
    pub(crate) watchdog: Watchdog<B>,
}

impl<B: Backend> Shared<B> {
    pub(crate) fn emit(&self, event: LockEvent) {
        self.listener.on_event(&event);
    }
}

impl<B: Backend> Drop for Shared<B> {
    fn drop(&mut self) {
        self.watchdog.shut_down();
    }
}

impl<B: Backend> Clone for Lock<B> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<B: Backend> fmt::Debug for Lock<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lock")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl Lock<InProcess> {
    /// A lock manager for the tasks of this process, with the default configuration.
    pub fn in_process() -> Self {
        Self::new(InProcess::new())
    }
}

impl Default for Lock<InProcess> {
    fn default() -> Self {
        Self::in_process()
    }
}

/// Builds a [`Lock`] with a configuration and a listener; made by [`Lock::builder`].
pub struct LockBuilder<B> {
    backend: B,
    config: LockConfig,
    listener: Box<dyn Listener<LockEvent>>,
}

impl<B> fmt::Debug for LockBuilder<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<B: Backend> LockBuilder<B> {
    /// How the lock waits, renews and releases (default: [`LockConfig::default`]).
    #[must_use]
    pub fn config(mut self, config: LockConfig) -> Self {
        self.config = config;
        self
    }

    /// Receives every [`LockEvent`] (default: none). Called on the lock's path: keep it cheap.
    #[must_use]
    pub fn listener(mut self, listener: impl Listener<LockEvent> + 'static) -> Self {
        self.listener = Box::new(listener);
        self
    }

    /// The lock manager.
    pub fn build(self) -> Lock<B> {
        Lock {
            shared: Arc::new(Shared {
                backend: self.backend,
                config: self.config,
                listener: self.listener,
                watchdog: Watchdog::new(),
            }),
        }
    }
}

impl<B: Backend> Lock<B> {
    /// A lock manager over `backend`, with the default configuration and no listener.
    pub fn new(backend: B) -> Self {
        Self::builder(backend).build()
    }

    /// A builder for a lock manager over `backend`.
    pub fn builder(backend: B) -> LockBuilder<B> {
        LockBuilder {
            backend,
            config: LockConfig::default(),
            listener: Box::new(()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// The configuration.
    pub fn config(&self) -> &LockConfig {
        &self.shared.config
    }

    /// Acquires `key` for `ttl`, retrying with the configured backoff while someone else
    /// holds it, for at most `wait` (a zero `wait` makes one attempt).
    ///
    /// The guard renews the lock every `ttl / 3` while it lives (unless the watchdog is off)
    /// and releases it when dropped. Cancellation-safe: dropping this future while an
    /// attempt is in flight lets the attempt finish in the background and releases the lock
    /// at once if it was granted.
    ///
    /// # Errors
    ///
    /// [`LockError::EmptyKey`], [`LockError::ZeroTtl`], [`LockError::TtlTooShort`] for bad
    /// input; [`LockError::TimedOut`] when the key stayed held; [`LockError::Unavailable`]
    /// when the backend failed (nothing was granted).
    pub async fn acquire(
        &self,
        key: &str,
        ttl: Duration,
        wait: Duration,
    ) -> Result<LockGuard<B>, LockError> {
        let drift = self.check(key, ttl)?;
        let key: Arc<str> = Arc::from(key);
        let started = Instant::now();
        let deadline = started.checked_add(wait);
        // Made when an attempt finds the key held: an uncontended acquisition needs none.
        let mut delays = None;
        let mut attempts = 0_u32;
        let mut attempt_started = started;
        loop {
            attempts = attempts.saturating_add(1);
            if let Some((guard, granted)) = self.attempt(&key, ttl, drift, attempt_started).await? {
                self.acquired(&guard, granted.duration_since(started));
                return Ok(guard);
            }
            self.shared.emit(LockEvent::Contended {
                key: Arc::clone(&key),
                attempts,
            });
            let now = Instant::now();
            let delay = delays
                .get_or_insert_with(|| self.shared.config.backoff.delays())
                .next_after(now.duration_since(started));
            let until = match (delay, deadline) {
                (_, Some(deadline)) if now >= deadline => None,
                (Some(delay), Some(deadline)) => {
                    Some(now.checked_add(delay).map_or(deadline, |t| t.min(deadline)))
                }
                (Some(delay), None) => now.checked_add(delay),
                (None, _) => None,
            };
            let Some(until) = until else {
                let waited = now.duration_since(started);
                tracing::debug!(key = %key, ?waited, attempts, "lock not acquired in time");
                self.shared.emit(LockEvent::TimedOut {
                    key: Arc::clone(&key),
                    waited,
                });
                return Err(LockError::TimedOut { key, waited });
            };
            tokio::time::sleep_until(until).await;
            attempt_started = Instant::now();
        }
    }

    /// Makes one attempt at `key`: the guard, or `None` when someone else holds it.
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), except that it never times out.
    pub async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<LockGuard<B>>, LockError> {
        let drift = self.check(key, ttl)?;
        let key: Arc<str> = Arc::from(key);
        let started = Instant::now();
        match self.attempt(&key, ttl, drift, started).await? {
            Some((guard, granted)) => {
                self.acquired(&guard, granted.duration_since(started));
                Ok(Some(guard))
            }
            None => {
                self.shared.emit(LockEvent::Contended { key, attempts: 1 });
                Ok(None)
            }
        }
    }

    /// Runs `work` under the lock on `key`: acquires it (waiting up to the configured
    /// [`wait`](LockConfig::wait)), hands `work` the fencing token, and releases the lock
    /// when `work` is done.
    ///
    /// If the lock is lost while `work` runs, `work` is dropped (cancelled at its next
    /// `.await`) and the result is [`LockError::Lost`]. Every write `work` makes to a shared
    /// resource should still carry the token: cancellation is prompt, not instantaneous.
    ///
    /// # Errors
    ///
    /// As for [`acquire`](Self::acquire), and [`LockError::Lost`].
    pub async fn with_lock<F, Fut>(
        &self,
        key: &str,
        ttl: Duration,
        work: F,
    ) -> Result<Fut::Output, LockError>
    where
        F: FnOnce(FencingToken) -> Fut,
        Fut: Future,
    {
        let guard = self.acquire(key, ttl, self.shared.config.wait).await?;
        let result = guard.run(work(guard.token())).await;
        if let Err(error) = guard.release().await {
            // The work is done; a release that fails leaves the lock to expire.
            tracing::debug!(key, %error, "release after with_lock failed");
        }
        result
    }

    /// Checks the input; the backend's drift allowance for `ttl`.
    fn check(&self, key: &str, ttl: Duration) -> Result<Duration, LockError> {
        if key.is_empty() {
            return Err(LockError::EmptyKey);
        }
        if ttl.is_zero() {
            return Err(LockError::ZeroTtl);
        }
        let drift = self.shared.backend.drift(ttl);
        if drift >= ttl {
            return Err(LockError::TtlTooShort { ttl, drift });
        }
        Ok(drift)
    }

    fn acquired(&self, guard: &LockGuard<B>, waited: Duration) {
        tracing::debug!(key = %guard.key(), token = %guard.token(), ?waited, "lock acquired");
        self.shared.emit(LockEvent::Acquired {
            key: Arc::clone(guard.key_arc()),
            token: guard.token(),
            waited,
        });
    }

    /// One attempt, started at `started`: the guard and when it was granted, or `None` when
    /// someone else holds the key. The backend's future is polled in place; if this future
    /// is dropped before it completes, it finishes in a task of its own, which releases a
    /// grant.
    async fn attempt(
        &self,
        key: &Arc<str>,
        ttl: Duration,
        drift: Duration,
        started: Instant,
    ) -> Result<Option<(LockGuard<B>, Instant)>, LockError> {
        let shared = Arc::clone(&self.shared);
        let task_key = Arc::clone(key);
        let attempt = InFlight {
            future: Some(Box::pin(async move {
                let grant = shared.backend.try_acquire(&task_key, ttl).await;
                grant.map(|grant| {
                    grant.map(|grant| Pending {
                        shared,
                        key: task_key,
                        grant: Some(grant),
                    })
                })
            })),
        };
        let Some(mut pending) = attempt.await.map_err(LockError::Unavailable)? else {
            return Ok(None);
        };
        let valid_until = started + ttl.saturating_sub(drift);
        let granted = Instant::now();
        if valid_until <= granted {
            // Granted, but too late to be of use: released by `pending`'s drop.
            tracing::debug!(key = %key, "lock granted after its validity; released");
            return Ok(None);
        }
        let Some(grant) = pending.grant.take() else {
            return Ok(None);
        };
        let held = Held::new(
            Arc::clone(&self.shared),
            Arc::clone(key),
            grant,
            ttl,
            started,
            valid_until,
        );
        Ok(Some((LockGuard::new(held), granted)))
    }
}

type AttemptFuture<B> =
    Pin<Box<dyn Future<Output = Result<Option<Pending<B>>, BackendError>> + Send>>;

/// An attempt in flight: polled by the caller, or finished in the background when the caller
/// goes away (so that a grant the store made is released at once, not at its TTL).
struct InFlight<B: Backend> {
    future: Option<AttemptFuture<B>>,
}

impl<B: Backend> Future for InFlight<B> {
    type Output = Result<Option<Pending<B>>, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(Err(BackendError::msg("attempt polled after completion")));
        };
        let output = ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(output)
    }
}

impl<B: Backend> Drop for InFlight<B> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Its output, a `Pending`, releases the grant when dropped.
            drop(runtime.spawn(future));
        }
    }
}

/// A grant on its way to the caller; released in the background if it never arrives.
struct Pending<B: Backend> {
    shared: Arc<Shared<B>>,
    key: Arc<str>,
    grant: Option<Grant<B::Lease>>,
}

impl<B: Backend> Drop for Pending<B> {
    fn drop(&mut self) {
        let Some(grant) = self.grant.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let shared = Arc::clone(&self.shared);
        let key = Arc::clone(&self.key);
        runtime.spawn(async move {
            let timeout = shared.config.release_timeout;
            let released =
                tokio::time::timeout(timeout, shared.backend.release(&key, &grant.lease)).await;
            tracing::debug!(key = %key, token = %grant.token, ?released, "released an abandoned grant");
        });
    }
}
