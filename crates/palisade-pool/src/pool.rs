//! The pool's shared state: one atomic word for the uncontended path, a locked queue for the
//! rest.
//!
//! The word holds the calls in flight (low 32 bits), the limit (next 31 bits) and a flag
//! saying that the queue has waiters (top bit). While the flag is clear, admitting a call is
//! one compare-exchange that raises the in-flight count below the limit, and releasing it one
//! subtraction: no lock, no allocation, no clock. The flag is set and cleared only under the
//! queue's lock; while it is set, every admission goes through the lock, so nobody overtakes
//! the waiters, and every release hands its permit to the next waiter (or, if the limit was
//! lowered, retires it).
//!
//! Later (adaptive limits, partitions) only change the limit in the word and what "the next
//! waiter" is; the permit protocol stays.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::reject::Overloaded;
use tokio::time::Instant;

use crate::config::PoolConfig;
use crate::event::{PoolEvent, ShedReason};
use crate::priority::Priority;
use crate::queue::{Look, Queue};

const IN_FLIGHT: u64 = 0xFFFF_FFFF;
const LIMIT_SHIFT: u32 = 32;
const LIMIT: u64 = 0x7FFF_FFFF << LIMIT_SHIFT;
const WAITERS: u64 = 1 << 63;

#[inline]
const fn in_flight(word: u64) -> u32 {
    (word & IN_FLIGHT) as u32
}

#[inline]
const fn limit(word: u64) -> u32 {
    ((word & LIMIT) >> LIMIT_SHIFT) as u32
}

pub(crate) struct Pool {
    state: AtomicU64,
    queue: Mutex<Queue>,
    config: PoolConfig,
}

/// The outcome of a call that found no room on the uncontended path.
pub(crate) enum Enqueued {
    Admitted(Permit),
    Queued(Waiter),
    Rejected(Overloaded),
}

impl Pool {
    pub(crate) fn new(config: PoolConfig) -> Self {
        Self {
            state: AtomicU64::new(u64::from(config.limit) << LIMIT_SHIFT),
            queue: Mutex::new(Queue::new()),
            config,
        }
    }

    pub(crate) fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub(crate) fn in_flight(&self) -> u32 {
        in_flight(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn limit(&self) -> u32 {
        limit(self.state.load(Ordering::Acquire))
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is consistent between calls; a panic elsewhere does not spoil it.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: PoolEvent) {
        if let Some(listener) = &self.config.listener {
            listener.on_event(&event);
        }
    }

    fn overloaded(&self) -> Overloaded {
        Overloaded::new().with_retry_after(self.config.retry_after)
    }

    /// The uncontended path: a permit if the pool has room and nobody waits.
    #[inline]
    pub(crate) fn try_acquire(self: &Arc<Self>) -> Option<Permit> {
        let mut word = self.state.load(Ordering::Relaxed);
        loop {
            if word & WAITERS != 0 || in_flight(word) >= limit(word) {
                return None;
            }
            match self.state.compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        if self.config.listener.is_some() {
            self.emit(PoolEvent::Admitted {
                waited: Duration::ZERO,
                in_flight: in_flight(word) + 1,
            });
        }
        Some(Permit {
            pool: Arc::clone(self),
        })
    }

    /// The contended path, under the lock: admit if there is room and nobody waits, queue if
    /// the queue has room, reject otherwise.
    pub(crate) fn enqueue(self: &Arc<Self>, priority: Priority) -> Enqueued {
        let mut queue = self.lock();
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            if queue.is_empty() && in_flight(word) < limit(word) {
                match self.state.compare_exchange(
                    word,
                    word + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        drop(queue);
                        self.emit(PoolEvent::Admitted {
                            waited: Duration::ZERO,
                            in_flight: in_flight(word) + 1,
                        });
                        return Enqueued::Admitted(Permit {
                            pool: Arc::clone(self),
                        });
                    }
                    Err(actual) => {
                        word = actual;
                        continue;
                    }
                }
            }
            if queue.len() >= self.config.queue_capacity as usize {
                let queued = queue.len();
                drop(queue);
                return Enqueued::Rejected(self.shed(priority, ShedReason::QueueFull, queued));
            }
            // Calls released from now on go through the lock and so see this waiter.
            match self.state.compare_exchange(
                word,
                word | WAITERS,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        let since = Instant::now();
        let index = queue.push(priority.get(), since);
        let queued = queue.len();
        drop(queue);
        tracing::trace!(pool = %self.config.name, %priority, queued, "call waits for a permit");
        self.emit(PoolEvent::Queued { priority, queued });
        Enqueued::Queued(Waiter {
            pool: Arc::clone(self),
            index,
            priority,
            since,
            done: false,
        })
    }

    fn shed(&self, priority: Priority, reason: ShedReason, queued: usize) -> Overloaded {
        let rejection = self.overloaded();
        let retry_after = self.config.retry_after;
        tracing::debug!(
            pool = %self.config.name,
            %priority,
            %reason,
            ?retry_after,
            "call shed: overloaded"
        );
        self.emit(PoolEvent::Shed {
            priority,
            reason,
            retry_after,
            queued,
        });
        rejection
    }

    /// Gives a permit back: one subtraction, plus a hand-off under the lock if calls wait.
    #[inline]
    fn release(&self) {
        let previous = self.state.fetch_sub(1, Ordering::AcqRel);
        if previous & WAITERS != 0 {
            self.dispatch_and_wake(self.lock());
        }
        if self.config.listener.is_some() {
            self.emit(PoolEvent::Released {
                in_flight: self.in_flight(),
            });
        }
    }

    /// Sets the limit and admits waiters if it rose; returns the old one.
    pub(crate) fn set_limit(&self, new: u32) -> u32 {
        let queue = self.lock();
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            let next = (word & !LIMIT) | (u64::from(new) << LIMIT_SHIFT);
            match self
                .state
                .compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        self.dispatch_and_wake(queue);
        let old = limit(word);
        if old != new {
            tracing::info!(pool = %self.config.name, from = old, to = new, "concurrency limit changed");
            self.emit(PoolEvent::LimitChanged { from: old, to: new });
        }
        old
    }

    /// Grants permits to waiters while there is room, waking them outside the lock; clears
    /// the waiters flag once the queue is empty.
    fn dispatch_and_wake<'a>(&'a self, mut queue: MutexGuard<'a, Queue>) {
        loop {
            let mut wakers = WakeList::new();
            let more = self.dispatch(&mut queue, &mut wakers);
            drop(queue);
            wakers.wake_all();
            if !more {
                return;
            }
            queue = self.lock();
        }
    }

    /// Returns whether it stopped only because `wakers` is full.
    fn dispatch(&self, queue: &mut Queue, wakers: &mut WakeList) -> bool {
        let aging = self.config.aging.map(|step| (step, Instant::now()));
        loop {
            if queue.is_empty() {
                self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                return false;
            }
            // Only lock holders change the word while the waiters flag is set.
            let word = self.state.load(Ordering::Acquire);
            if in_flight(word) >= limit(word) {
                return false;
            }
            if wakers.is_full() {
                return true;
            }
            if let Some(waker) = queue.grant_next(self.config.order, aging) {
                self.state.fetch_add(1, Ordering::AcqRel);
                wakers.push(waker);
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = self.state.load(Ordering::Acquire);
        f.debug_struct("Pool")
            .field("name", &self.config.name)
            .field("in_flight", &in_flight(word))
            .field("limit", &limit(word))
            .field("waiters", &(word & WAITERS != 0))
            .finish()
    }
}

/// A call's right to run: given back when dropped (the call completed, failed, panicked or
/// was cancelled; with `http`, its response body ended).
pub(crate) struct Permit {
    pool: Arc<Pool>,
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        self.pool.release();
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// A call waiting in the queue. Dropped before it is granted, it leaves the queue; dropped
/// after it was granted but before it noticed, it gives the permit back.
pub(crate) struct Waiter {
    pool: Arc<Pool>,
    index: u32,
    priority: Priority,
    since: Instant,
    /// The slot was let go of (granted and seen, or timed out).
    done: bool,
}

impl Waiter {
    /// Ready with the permit once the waiter was granted; registers the waker otherwise.
    pub(crate) fn poll_grant(&mut self, cx: &mut Context<'_>) -> Poll<Permit> {
        let mut queue = self.pool.lock();
        match queue.look(self.index, cx.waker()) {
            Look::Waiting => Poll::Pending,
            Look::Granted => {
                drop(queue);
                self.done = true;
                Poll::Ready(self.granted())
            }
        }
    }

    /// The queue timeout fired: the waiter leaves and is shed, unless it was granted a permit
    /// just now, which it then takes.
    pub(crate) fn time_out(&mut self) -> Result<Permit, Overloaded> {
        let mut queue = self.pool.lock();
        self.done = true;
        match queue.cancel(self.index) {
            Look::Granted => {
                drop(queue);
                Ok(self.granted())
            }
            Look::Waiting => {
                let queued = queue.len();
                self.pool.dispatch_and_wake(queue);
                Err(self
                    .pool
                    .shed(self.priority, ShedReason::QueueTimeout, queued))
            }
        }
    }

    fn granted(&self) -> Permit {
        let waited = self.since.elapsed();
        tracing::trace!(pool = %self.pool.config.name, priority = %self.priority, ?waited, "waiting call admitted");
        self.pool.emit(PoolEvent::Admitted {
            waited,
            in_flight: self.pool.in_flight(),
        });
        Permit {
            pool: Arc::clone(&self.pool),
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut queue = self.pool.lock();
        match queue.cancel(self.index) {
            Look::Waiting => {
                let queued = queue.len();
                self.pool.dispatch_and_wake(queue);
                tracing::trace!(pool = %self.pool.config.name, priority = %self.priority, "waiting call cancelled");
                self.pool.emit(PoolEvent::LeftQueue {
                    priority: self.priority,
                    queued,
                });
            }
            Look::Granted => {
                drop(queue);
                // Granted but never seen: the permit goes to the next waiter.
                self.pool.release();
            }
        }
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter")
            .field("priority", &self.priority)
            .field("since", &self.since)
            .finish_non_exhaustive()
    }
}

/// Wakers collected under the lock, woken after it is released.
struct WakeList {
    wakers: [Option<Waker>; 16],
    len: usize,
}

impl WakeList {
    fn new() -> Self {
        Self {
            wakers: Default::default(),
            len: 0,
        }
    }

    fn is_full(&self) -> bool {
        self.len == self.wakers.len()
    }

    fn push(&mut self, waker: Option<Waker>) {
        if let Some(waker) = waker {
            self.wakers[self.len] = Some(waker);
            self.len += 1;
        }
    }

    fn wake_all(&mut self) {
        for waker in self.wakers[..self.len].iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
        self.len = 0;
    }
}
