//! Counting requests in flight with no shared read-modify-write per call.
//!
//! A lock-prefixed instruction (a compare-exchange on a reference count, an atomic add on a
//! shared counter) costs more than everything else a call through the layer does, and the
//! counter's cache line bounces between the threads serving requests. So each thread that
//! runs requests gets a small **index** of its own (taken on its first request, given back
//! when it exits), and each coordinator's [`Core`] has one counter **slot** per index:
//!
//! - a request **starts** by adding one to its thread's slot, with a plain load and store:
//!   only that thread writes the slot's `local` counter, so no read-modify-write is needed;
//! - the [`InFlight`] it holds remembers the slot; when it **finishes** on the thread that
//!   owns the slot (the common case), it subtracts one the same way; on another thread (a
//!   task that moved), it adds one to the slot's `remote` counter with an atomic add;
//! - the drain adds the slots up (`local - remote`), on a short tick once draining, and is
//!   also woken by requests that finish while a shutdown is under way.
//!
//! Threads beyond the slots share one last slot, updated with atomic adds: correct, only
//! slower. A response future must reach its counters after the service that made it is
//! gone, without holding a reference count (which would bring the read-modify-write back),
//! so a [`Core`] lives at a `'static` address: it is allocated once and, when its
//! coordinator is dropped with nothing in flight, kept in a pool for the next coordinator.
//! A coordinator dropped while a response future or body of its own is still alive (or was
//! forgotten with `mem::forget`) leaves its core allocated (a few KiB), never reused.
//!
//! The drain's sum is exact for every request whose start it can see. One that starts on
//! another thread at the very instant the drain ends may be missed; it then meets the
//! cancelling phase at its first poll and fails with `ShuttingDown`, like a request that
//! came a moment later.
//!
//! A request that **waits** (its future or body returns `Pending`) must be woken at the
//! deadline even if nothing else ever wakes it, so the first time it waits it leaves its
//! waker in its slot's [`Waiters`] (see [`Deadline`](crate::state::Deadline)), under the
//! slot's own lock: the thread that started the request takes it, so it does not bounce
//! between threads. A request that completes at its first poll never takes it.

use std::cell::Cell;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::Waker;

use tokio::sync::Notify;

use crate::phase::Phase;

/// A thread's index before its first request.
const UNASSIGNED: usize = usize::MAX;
/// A thread's index once the thread is exiting: it owns no slot any more.
const RELEASED: usize = usize::MAX - 1;
/// What an [`InFlight`] records when it counted in the shared slot: beyond every slot.
const SHARED: usize = usize::MAX;

thread_local! {
    /// This thread's index; a constant initialiser and no destructor, so reading it is one
    /// load, even while the thread's other thread-locals are being destroyed.
    static INDEX: Cell<usize> = const { Cell::new(UNASSIGNED) };
    /// Gives the index back when the thread exits.
    static GIVE_BACK: GiveBack = const { GiveBack };
}

/// Indices given back by threads that exited, taken before new ones.
static FREE_INDICES: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT_INDEX: AtomicUsize = AtomicUsize::new(0);

struct GiveBack;

impl Drop for GiveBack {
    fn drop(&mut self) {
        // From now on this thread counts in the shared slot; only then may another thread
        // take the index.
        let index = INDEX.replace(RELEASED);
        if index < RELEASED {
            FREE_INDICES
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(index);
        }
    }
}

/// This thread's index, taken on first use.
#[inline]
fn thread_index() -> usize {
    let index = INDEX.get();
    if index == UNASSIGNED {
        take_index()
    } else {
        index
    }
}

#[cold]
#[inline(never)]
fn take_index() -> usize {
    // Registers the destructor that gives the index back. A thread that is already
    // exiting cannot register it: it takes no index.
    if GIVE_BACK.try_with(|_| ()).is_err() {
        INDEX.set(RELEASED);
        return RELEASED;
    }
    let freed = FREE_INDICES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop();
    let index = freed.unwrap_or_else(|| NEXT_INDEX.fetch_add(1, Ordering::Relaxed));
    INDEX.set(index);
    index
}

/// How many threads get a slot of their own: four per core, at least 32, at most 512.
fn slot_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(8, NonZeroUsize::get);
        cores.saturating_mul(4).clamp(32, 512)
    })
}

/// One thread's counters, alone on its cache lines (two: the prefetcher pulls pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Slot {
    /// Requests started on this slot less those its owner finished; written by the owner
    /// only (or, in the shared slot, with atomic adds).
    local: AtomicUsize,
    /// Requests started on this slot and finished by another thread.
    remote: AtomicUsize,
    /// The wakers of this slot's requests that are waiting.
    waiters: Mutex<Waiters>,
}

impl Slot {
    /// What this slot has in flight. `remote` is read first: a finish it shows was preceded
    /// by its start, which the later read of `local` then shows too, so the difference
    /// never counts a request twice as finished.
    fn in_flight(&self) -> usize {
        let remote = self.remote.load(Ordering::Acquire);
        self.local.load(Ordering::Acquire).wrapping_sub(remote)
    }

    /// The slot's waiting requests, locked.
    pub(crate) fn waiters(&self) -> MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The wakers of waiting requests, by key: a request registers once and keeps its key
/// until it ends, so after the first few requests no registration allocates (freed keys
/// are reused).
///
/// Wakers are cloned and dropped by the callers outside the lock: either can run arbitrary
/// code (dropping the last reference to a task drops its future, which may be a request
/// of this very slot).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    /// `None` for a free key, and for one whose waker was taken at the deadline.
    wakers: Vec<Option<Waker>>,
    /// Keys given back, taken before new ones.
    free: Vec<usize>,
}

impl Waiters {
    /// Registers `waker`; its key.
    pub(crate) fn insert(&mut self, waker: Waker) -> usize {
        if let Some(key) = self.free.pop() {
            self.wakers[key] = Some(waker);
            key
        } else {
            self.wakers.push(Some(waker));
            self.wakers.len() - 1
        }
    }

    /// Replaces the waker registered under `key`; the one it replaces, to drop unlocked.
    pub(crate) fn replace(&mut self, key: usize, waker: Waker) -> Option<Waker> {
        self.wakers
            .get_mut(key)
            .and_then(|slot| slot.replace(waker))
    }

    /// Gives `key` back; its waker, to drop unlocked.
    pub(crate) fn remove(&mut self, key: usize) -> Option<Waker> {
        let waker = self.wakers.get_mut(key).and_then(Option::take);
        self.free.push(key);
        waker
    }

    /// Takes every waker, to wake them unlocked; the keys stay registered.
    fn take_all(&mut self, into: &mut Vec<Waker>) {
        into.extend(self.wakers.iter_mut().filter_map(Option::take));
    }
}

/// What in-flight requests and their bodies need: the phase, the per-thread counters and
/// waiters, and the drain's wake-up. Lives at a `'static` address; see the module docs.
#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Core {
    /// The current [`Phase`] as its number; the source of truth for hot-path checks.
    phase: AtomicU8,
    /// Woken (with a stored permit) when a request finishes during a shutdown.
    pub(crate) drained: Notify,
    /// One slot per thread index.
    owned: Box<[Slot]>,
    /// For threads whose index is beyond `owned`, or that are exiting.
    shared: Slot,
}

/// Cores whose coordinators were dropped with nothing in flight.
static POOL: Mutex<Vec<&'static Core>> = Mutex::new(Vec::new());

impl Core {
    /// A core for a new coordinator: from the pool, or newly allocated.
    pub(crate) fn acquire() -> &'static Core {
        let pooled = POOL.lock().unwrap_or_else(PoisonError::into_inner).pop();
        if let Some(core) = pooled {
            // Nothing refers to it any more: its counters add up to zero, and only the
            // phase needs setting.
            core.phase.store(Phase::Running as u8, Ordering::Release);
            return core;
        }
        Box::leak(Box::new(Core {
            phase: AtomicU8::new(Phase::Running as u8),
            drained: Notify::new(),
            owned: (0..slot_count()).map(|_| Slot::default()).collect(),
            shared: Slot::default(),
        }))
    }

    /// Gives the core back to the pool, once its coordinator is gone (no service can start
    /// a request any more), if no request is in flight (so none can touch it again).
    pub(crate) fn release(&'static self) {
        if self.in_flight() == 0 {
            POOL.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(self);
        }
    }

    /// The current phase, read with a relaxed load (the hot path's only read).
    #[inline]
    pub(crate) fn phase(&self) -> u8 {
        self.phase.load(Ordering::Relaxed)
    }

    /// Moves forward to `to`; the phase it left, or `None` if the phase already was `to`
    /// or later (phases never move backwards).
    pub(crate) fn advance_phase(&self, to: Phase) -> Option<Phase> {
        let from = Phase::from_u8(self.phase.fetch_max(to as u8, Ordering::AcqRel));
        (from < to).then_some(from)
    }

    /// The current phase, read with an acquire load.
    pub(crate) fn load_phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Wakes every waiting request, once the phase is [`Phase::Cancelling`]: each then
    /// finds the deadline passed. Their keys stay registered until they end.
    pub(crate) fn wake_waiting(&self) {
        let mut wakers = Vec::new();
        for slot in self.owned.iter().chain(std::iter::once(&self.shared)) {
            slot.waiters().take_all(&mut wakers);
        }
        if !wakers.is_empty() {
            tracing::debug!(
                requests = wakers.len(),
                "waking the requests still waiting at the deadline"
            );
        }
        for waker in wakers {
            waker.wake();
        }
    }

    /// Requests in flight: started and not finished. Exact when nothing is changing; a
    /// request starting or finishing meanwhile may or may not be counted.
    pub(crate) fn in_flight(&self) -> usize {
        self.owned
            .iter()
            .chain(std::iter::once(&self.shared))
            .fold(0, |total: usize, slot| total.wrapping_add(slot.in_flight()))
    }

    /// Counts a request as started on this thread's slot.
    #[inline]
    pub(crate) fn start(&'static self) -> InFlight {
        let index = thread_index();
        let slot = match self.owned.get(index) {
            Some(slot) => {
                // Only this thread writes `local`: a load and a store are enough.
                let local = slot.local.load(Ordering::Relaxed);
                slot.local.store(local.wrapping_add(1), Ordering::Release);
                index
            }
            None => {
                self.shared.local.fetch_add(1, Ordering::AcqRel);
                SHARED
            }
        };
        // Two words: a bigger handle costs the response future more moves.
        InFlight { core: self, slot }
    }
}

/// One request in flight, counted on a [`Core`] slot until dropped; made by
/// [`Core::start`].
#[derive(Debug)]
pub(crate) struct InFlight {
    core: &'static Core,
    /// The slot's index in `core.owned` (the index of the thread that owns it), or
    /// [`SHARED`].
    slot: usize,
}

impl InFlight {
    #[inline]
    pub(crate) fn core(&self) -> &'static Core {
        self.core
    }

    /// The slot the request is counted on, whose waiters it joins if it waits.
    pub(crate) fn slot(&self) -> &'static Slot {
        self.core.owned.get(self.slot).unwrap_or(&self.core.shared)
    }
}

impl Drop for InFlight {
    #[inline]
    fn drop(&mut self) {
        let core = self.core;
        match core.owned.get(self.slot) {
            // The owner of the slot (the thread that started the request, or the one that
            // took its index after it exited): a load and a store.
            Some(slot) if INDEX.get() == self.slot => {
                let local = slot.local.load(Ordering::Relaxed);
                slot.local.store(local.wrapping_sub(1), Ordering::Release);
            }
            Some(slot) => {
                slot.remote.fetch_add(1, Ordering::AcqRel);
            }
            None => {
                core.shared.remote.fetch_add(1, Ordering::AcqRel);
            }
        }
        // During a shutdown, wake the drain. (A finish that reads a stale `Running` here
        // is caught by the drain's tick.)
        if core.phase() != Phase::Running as u8 {
            core.drained.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Core, SHARED, slot_count};

    #[test]
    fn requests_count_until_dropped_on_any_thread() {
        let core = Core::acquire();
        let here = core.start();
        let moved = core.start();
        assert_ne!(here.slot, SHARED);
        assert_eq!(core.in_flight(), 2);
        drop(here);
        assert_eq!(core.in_flight(), 1);
        std::thread::spawn(move || drop(moved)).join().unwrap();
        assert_eq!(core.in_flight(), 0);
        let started_elsewhere = std::thread::spawn(|| core.start()).join().unwrap();
        assert_eq!(core.in_flight(), 1);
        drop(started_elsewhere);
        assert_eq!(core.in_flight(), 0);
        core.release();
    }

    #[test]
    fn threads_beyond_the_slots_share_one() {
        let core = Core::acquire();
        let threads = slot_count() + 8;
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let barrier = std::sync::Arc::clone(&barrier);
                std::thread::spawn(move || {
                    let request = core.start();
                    // Every thread holds its index at once, so some get none of their own.
                    barrier.wait();
                    request
                })
            })
            .collect();
        let requests: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(requests.iter().any(|request| request.slot == SHARED));
        assert_eq!(core.in_flight(), threads);
        drop(requests);
        assert_eq!(core.in_flight(), 0);
        core.release();
    }
}
