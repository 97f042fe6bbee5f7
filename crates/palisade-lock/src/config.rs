//! [`LockConfig`]: how a [`Lock`](crate::Lock) waits, renews and releases.

use std::time::Duration;

use palisade_core::{Backoff, Jitter};

/// How a [`Lock`](crate::Lock) waits for a held key, keeps a granted one alive and lets it
/// go.
///
/// The [`Default`]:
///
/// | setting | default |
/// |---|---|
/// | [`backoff`](Self::backoff) between attempts while the key is held | exponential from 5 ms, ×2, capped at 250 ms, equal jitter |
/// | [`wait`](Self::wait) of [`with_lock`](crate::Lock::with_lock) | 10 s |
/// | [`watchdog`](Self::watchdog) renewing a held lock every TTL/3 | on |
/// | [`release_timeout`](Self::release_timeout) of a release in the background | 5 s |
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LockConfig {
    pub(crate) backoff: Backoff,
    pub(crate) wait: Duration,
    pub(crate) watchdog: bool,
    pub(crate) release_timeout: Duration,
}

const DEFAULT_BACKOFF: Backoff =
    match Backoff::exponential(Duration::from_millis(5), 2.0, Duration::from_millis(250)) {
        Ok(backoff) => backoff.with_jitter(Jitter::Equal),
        Err(_) => Backoff::constant(Duration::from_millis(50)),
    };

impl Default for LockConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl LockConfig {
    /// The defaults (see the type's docs).
    pub const fn new() -> Self {
        Self {
            backoff: DEFAULT_BACKOFF,
            wait: Duration::from_secs(10),
            watchdog: true,
            release_timeout: Duration::from_secs(5),
        }
    }

    /// The delays between attempts while the key is held by someone else. Its limits end the
    /// wait early; the acquisition's `wait` ends it in any case.
    #[must_use]
    pub const fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long [`with_lock`](crate::Lock::with_lock) waits for the key.
    #[must_use]
    pub const fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Whether a held lock is renewed every TTL/3 while its guard lives. Without it, a lock
    /// is lost (and [`lost`](crate::LockGuard::lost) fires) when its validity runs out.
    #[must_use]
    pub const fn watchdog(mut self, on: bool) -> Self {
        self.watchdog = on;
        self
    }

    /// How long the release that follows a dropped guard may take before it is abandoned
    /// (the lock then expires on its own at the end of its TTL).
    #[must_use]
    pub const fn release_timeout(mut self, timeout: Duration) -> Self {
        self.release_timeout = timeout;
        self
    }
}
