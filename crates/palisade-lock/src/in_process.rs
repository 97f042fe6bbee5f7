//! [`InProcess`]: the embedded default, for tasks of one process.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::backend::{Backend, Grant};
use crate::{BackendError, FencingToken};

/// Locks for the tasks of one process: a map behind a mutex, on tokio's clock (so it works
/// under `tokio::time::pause`).
///
/// Guarantees, within the process: at most one holder per key at any instant of tokio's
/// clock; a lease ends at its TTL unless renewed; fencing tokens come from one counter for
/// all keys, so they grow with every grant of any key. Nothing survives the process.
pub struct InProcess {
    held: Mutex<HashMap<Box<str>, Entry>>,
    next: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    owner: u64,
    expires: Instant,
}

/// An [`InProcess`] grant: which grant it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InProcessLease {
    owner: u64,
}

impl Default for InProcess {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for InProcess {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InProcess")
            .field("held", &self.entries().len())
            .finish_non_exhaustive()
    }
}

impl InProcess {
    /// An empty lock table.
    pub fn new() -> Self {
        Self {
            held: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Entry>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn grant(&self, key: &str, ttl: Duration) -> Option<Grant<InProcessLease>> {
        let now = Instant::now();
        let mut held = self.entries();
        let expires = now.checked_add(ttl)?;
        let entry = held.get_mut(key);
        if entry.as_ref().is_some_and(|entry| entry.expires > now) {
            return None;
        }
        // Owner ids and tokens come from one counter: both unique, both growing.
        let owner = self.next.fetch_add(1, Ordering::Relaxed);
        let fresh = Entry { owner, expires };
        match entry {
            Some(entry) => *entry = fresh,
            None => {
                held.insert(key.into(), fresh);
            }
        }
        Some(Grant {
            token: FencingToken::new(owner),
            lease: InProcessLease { owner },
        })
    }

    fn extend(&self, key: &str, lease: InProcessLease, ttl: Duration) -> bool {
        let now = Instant::now();
        let mut held = self.entries();
        match held.get_mut(key) {
            Some(entry) if entry.owner == lease.owner && entry.expires > now => {
                entry.expires = now.checked_add(ttl).unwrap_or(entry.expires);
                true
            }
            _ => false,
        }
    }

    fn remove(&self, key: &str, lease: InProcessLease) -> bool {
        let now = Instant::now();
        let mut held = self.entries();
        match held.get(key) {
            Some(entry) if entry.owner == lease.owner => {
                let live = entry.expires > now;
                held.remove(key);
                live
            }
            _ => false,
        }
    }
}

impl Backend for InProcess {
    type Lease = InProcessLease;

    async fn try_acquire(
        &self,
        key: &str,
        ttl: Duration,
    ) -> Result<Option<Grant<InProcessLease>>, BackendError> {
        Ok(self.grant(key, ttl))
    }

    async fn renew(
        &self,
        key: &str,
        lease: &InProcessLease,
        ttl: Duration,
    ) -> Result<bool, BackendError> {
        Ok(self.extend(key, *lease, ttl))
    }

    async fn release(&self, key: &str, lease: &InProcessLease) -> Result<bool, BackendError> {
        Ok(self.remove(key, *lease))
    }
}
