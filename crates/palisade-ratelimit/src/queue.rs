//! Wait mode's FIFO queue of waiting requests.
//!
//! Only the request at the front checks the limiter; the others wait to reach the front
//! (or their deadline). Nothing is taken from the limiter until the front's check admits
//! it, so a request that leaves the queue (dropped, timed out) has taken nothing, and one
//! that is admitted has taken its cost exactly once.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Waker;

use crate::layer::Shared;

#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Entries in the queue: read without the lock by requests deciding whether to queue.
    waiting: AtomicUsize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    next_ticket: u64,
    entries: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    ticket: u64,
    cost: u32,
    waker: Option<Waker>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update leaves the queue consistent; a poisoned lock still holds it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether requests are waiting: a new request must queue behind them.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    fn join(&self, cost: u32) -> u64 {
        let mut inner = self.lock();
        let ticket = inner.next_ticket;
        inner.next_ticket += 1;
        inner.entries.push_back(Entry {
            ticket,
            cost,
            waker: None,
        });
        self.waiting.fetch_add(1, Ordering::AcqRel);
        ticket
    }

    /// Records `waker` for `ticket`; whether it is at the front.
    fn poll_front(&self, ticket: u64, waker: &Waker) -> bool {
        let mut inner = self.lock();
        let mut front = true;
        for entry in &mut inner.entries {
            if entry.ticket == ticket {
                match &mut entry.waker {
                    Some(known) if known.will_wake(waker) => {}
                    slot => *slot = Some(waker.clone()),
                }
                return front;
            }
            front = false;
        }
        debug_assert!(false, "a waiter polled after leaving the queue");
        false
    }

    /// The cost of the entries ahead of `ticket`.
    fn cost_ahead(&self, ticket: u64) -> u64 {
        self.lock()
            .entries
            .iter()
            .take_while(|entry| entry.ticket != ticket)
            .map(|entry| u64::from(entry.cost))
            .sum()
    }

    fn leave(&self, ticket: u64) {
        let next = {
            let mut inner = self.lock();
            let Some(position) = inner.entries.iter().position(|e| e.ticket == ticket) else {
                return;
            };
            inner.entries.remove(position);
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            if position == 0 {
                inner.entries.front().and_then(|e| e.waker.clone())
            } else {
                None
            }
        };
        if let Some(next) = next {
            next.wake();
        }
    }

    /// Wakes the front to check again (the quota changed).
    pub(crate) fn wake_front(&self) {
        let front = self.lock().entries.front().and_then(|e| e.waker.clone());
        if let Some(front) = front {
            front.wake();
        }
    }
}

/// A request's place in the queue; leaves it when dropped.
pub(crate) struct Waiter {
    shared: Arc<Shared>,
    ticket: u64,
}

impl Waiter {
    pub(crate) fn join(shared: &Arc<Shared>, cost: u32) -> Self {
        Self {
            ticket: shared.queue.join(cost),
            shared: Arc::clone(shared),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    /// The cost of the waiters ahead of this one.
    pub(crate) fn cost_ahead(&self) -> u64 {
        self.shared.queue.cost_ahead(self.ticket)
    }

    /// Whether this waiter is at the front; either way it is woken when that may change.
    pub(crate) fn poll_front(&self, waker: &Waker) -> bool {
        self.shared.queue.poll_front(self.ticket, waker)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.shared.queue.leave(self.ticket);
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("ticket", &self.ticket)
            .finish()
    }
}
