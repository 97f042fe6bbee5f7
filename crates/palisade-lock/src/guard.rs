//! [`LockGuard`]: a held lock, its watchdog, and how it reports loss.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::{
    CancellationToken, WaitForCancellationFuture, WaitForCancellationFutureOwned,
};

use crate::backend::{Backend, Grant};
use crate::lock::Shared;
use crate::watchdog::{Ticket, Watchdog};
use crate::{FencingToken, InProcess, LockError, LockEvent, LostReason};

/// A held lock. Dropping it releases the lock in the background (bounded by the configured
/// [`release_timeout`](crate::LockConfig::release_timeout)); [`release`](Self::release)
/// does it in place and says whether the lock was still held.
///
/// While it lives, the lock's watchdog renews the lease every TTL/3 (one task per
/// [`Lock`](crate::Lock) serves all its guards). When a renewal fails, or the lease's
/// validity runs out before one succeeds, the lock is *lost*:
/// [`lost`](Self::lost) fires and [`is_lost`](Self::is_lost) turns true. Writes already on
/// their way are not recalled: the resource's fencing check is what rejects them.
pub struct LockGuard<B: Backend = InProcess> {
    held: Arc<Held<B>>,
    /// Where the watchdog keeps the lease; `None` once released.
    watched: Option<Ticket>,
    released: bool,
}

pub(crate) struct Held<B: Backend> {
    shared: Arc<Shared<B>>,
    key: Arc<str>,
    token: FencingToken,
    lease: B::Lease,
    ttl: Duration,
    acquired_at: Instant,
    valid_until: Mutex<Instant>,
    /// Made when first asked for (most guards are released without anyone waiting for
    /// loss), and by the loss itself, so a token made later is cancelled as well.
    lost: OnceLock<CancellationToken>,
    reason: OnceLock<LostReason>,
}

impl<B: Backend> Held<B> {
    pub(crate) fn new(
        shared: Arc<Shared<B>>,
        key: Arc<str>,
        grant: Grant<B::Lease>,
        ttl: Duration,
        acquired_at: Instant,
        valid_until: Instant,
    ) -> Self {
        Self {
            shared,
            key,
            token: grant.token,
            lease: grant.lease,
            ttl,
            acquired_at,
            valid_until: Mutex::new(valid_until),
            lost: OnceLock::new(),
            reason: OnceLock::new(),
        }
    }

    pub(crate) fn shared(&self) -> &Shared<B> {
        &self.shared
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    pub(crate) fn lease(&self) -> &B::Lease {
        &self.lease
    }

    pub(crate) fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the watchdog first looks at the lease: to renew it, TTL/3 after the grant; with
    /// renewal off, to report it lost, when its validity ends.
    pub(crate) fn first_due(&self, renew: bool) -> Instant {
        let valid_until = self.valid_until();
        if renew {
            self.next_due(self.acquired_at, valid_until)
        } else {
            valid_until
        }
    }

    /// The next renewal: TTL/3 after the last one was sent, and within the validity.
    pub(crate) fn next_due(&self, last: Instant, valid_until: Instant) -> Instant {
        (last + self.ttl / 3).min(valid_until)
    }

    /// A renewal sent at `started` succeeded: the new validity.
    pub(crate) fn renewed(&self, started: Instant) -> Instant {
        let drift = self.shared.backend.drift(self.ttl);
        let until = started + self.ttl.saturating_sub(drift);
        self.set_valid_until(until);
        until
    }

    pub(crate) fn report_renewed(&self, valid_until: Instant) {
        let validity = valid_until.saturating_duration_since(Instant::now());
        tracing::trace!(key = %self.key, token = %self.token, ?validity, "lock renewed");
        self.shared.emit(LockEvent::Renewed {
            key: Arc::clone(&self.key),
            token: self.token,
            validity,
        });
    }

    fn lost_token(&self) -> &CancellationToken {
        self.lost.get_or_init(CancellationToken::new)
    }

    pub(crate) fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn set_valid_until(&self, until: Instant) {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = until;
    }

    pub(crate) fn lose(&self, reason: LostReason) {
        if self.reason.set(reason).is_err() {
            return;
        }
        let held_for = self.acquired_at.elapsed();
        tracing::warn!(key = %self.key, token = %self.token, %reason, ?held_for, "lock lost");
        self.shared.emit(LockEvent::Lost {
            key: Arc::clone(&self.key),
            token: self.token,
            reason,
            held_for,
        });
        self.lost_token().cancel();
    }

    /// Releases the lock at the backend: `Ok(true)` if it was still ours.
    async fn release(&self) -> Result<bool, LockError> {
        let timeout = self.shared.config.release_timeout;
        let released =
            tokio::time::timeout(timeout, self.shared.backend.release(&self.key, &self.lease))
                .await
                .unwrap_or_else(|_| Err(crate::BackendError::msg("release timed out")));
        let held_for = self.acquired_at.elapsed();
        match released {
            Ok(was_held) => {
                tracing::debug!(key = %self.key, token = %self.token, was_held, ?held_for, "lock released");
                self.shared.emit(LockEvent::Released {
                    key: Arc::clone(&self.key),
                    token: self.token,
                    held_for,
                    was_held,
                });
                Ok(was_held)
            }
            Err(error) => {
                tracing::warn!(key = %self.key, token = %self.token, %error, "lock release failed; it expires on its own");
                Err(LockError::Unavailable(error))
            }
        }
    }
}

impl<B: Backend> LockGuard<B> {
    pub(crate) fn new(held: Held<B>) -> Self {
        let held = Arc::new(held);
        let ticket = Watchdog::register(&held.shared, &held);
        Self {
            held,
            watched: Some(ticket),
            released: false,
        }
    }

    /// Takes the lease out of the watchdog's care.
    fn unwatch(&mut self) {
        if let Some(ticket) = self.watched.take() {
            self.held.shared.watchdog.deregister(ticket);
        }
    }

    /// The lock's key.
    pub fn key(&self) -> &str {
        &self.held.key
    }

    pub(crate) fn key_arc(&self) -> &Arc<str> {
        &self.held.key
    }

    /// The grant's fencing token: send it with every write to the protected resource.
    pub fn token(&self) -> FencingToken {
        self.held.token
    }

    /// The time to live the lock was acquired with.
    pub fn ttl(&self) -> Duration {
        self.held.ttl
    }

    /// The lease's age: time since the attempt that won the lock started.
    pub fn held_for(&self) -> Duration {
        self.held.acquired_at.elapsed()
    }

    /// How much longer the lock is certainly ours: the TTL from the last grant or renewal,
    /// minus the time that took, minus the backend's clock-drift allowance. Zero once lost.
    pub fn validity(&self) -> Duration {
        if self.is_lost() {
            return Duration::ZERO;
        }
        self.held
            .valid_until()
            .saturating_duration_since(Instant::now())
    }

    /// Whether the lock has been lost.
    pub fn is_lost(&self) -> bool {
        self.held.reason.get().is_some()
    }

    /// Why the lock was lost; `None` while it is held.
    pub fn lost_reason(&self) -> Option<LostReason> {
        self.held.reason.get().copied()
    }

    /// Completes when the lock is lost (at once if it already is). Never completes while
    /// the lock is held, nor after a release.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.held.lost_token().cancelled()
    }

    /// Like [`lost`](Self::lost), but owns what it needs, to move into a task.
    pub fn lost_owned(&self) -> WaitForCancellationFutureOwned {
        self.held.lost_token().clone().cancelled_owned()
    }

    /// A cancellation token cancelled when the lock is lost, to hand to code that already
    /// stops on one. Cancelling it yourself does not release the lock.
    pub fn lost_token(&self) -> CancellationToken {
        self.held.lost_token().child_token()
    }

    /// Runs `work` while the lock is held: its output, or [`LockError::Lost`] (with `work`
    /// dropped) when the lock is lost first.
    ///
    /// # Errors
    ///
    /// [`LockError::Lost`].
    pub async fn run<F: Future>(&self, work: F) -> Result<F::Output, LockError> {
        let output = Run {
            lost: self.lost(),
            work,
        }
        .await;
        output.ok_or_else(|| LockError::Lost {
            key: Arc::clone(&self.held.key),
            reason: self.lost_reason().unwrap_or(LostReason::Expired),
        })
    }

    /// Releases the lock now (compare-and-delete: only if it is still ours).
    ///
    /// # Errors
    ///
    /// [`LockError::NotHeld`] when the backend no longer knew the lock as ours (it had
    /// expired); [`LockError::Unavailable`] when the backend failed or did not answer within
    /// the release timeout (the lock then expires on its own).
    pub async fn release(mut self) -> Result<(), LockError> {
        self.released = true;
        self.unwatch();
        if self.held.release().await? {
            Ok(())
        } else {
            Err(LockError::NotHeld {
                key: Arc::clone(&self.held.key),
            })
        }
    }
}

impl<B: Backend> Drop for LockGuard<B> {
    fn drop(&mut self) {
        self.unwatch();
        if self.released {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::debug!(key = %self.held.key, "guard dropped outside a runtime; the lock expires on its own");
            return;
        };
        let held = Arc::clone(&self.held);
        runtime.spawn(async move {
            let _ = held.release().await;
        });
    }
}

impl<B: Backend> fmt::Debug for LockGuard<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.held.key)
            .field("token", &self.held.token)
            .field("ttl", &self.held.ttl)
            .field("validity", &self.validity())
            .field("lost", &self.lost_reason())
            .finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    /// `work`, unless `lost` completes first.
    struct Run<'a, F> {
        #[pin]
        lost: WaitForCancellationFuture<'a>,
        #[pin]
        work: F,
    }
}

impl<F: Future> Future for Run<'_, F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.lost.poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.work.poll(cx).map(Some)
    }
}
