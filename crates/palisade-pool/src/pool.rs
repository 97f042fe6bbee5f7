//! The pool's shared state: one atomic word for the uncontended path, a locked queue for the
//! rest.
//!
//! The word holds the calls in flight (low 31 bits), a flag saying that the pool is gone (bit
//! 31), the limit (next 31 bits) and a flag saying that the queue has waiters (top bit). While
//! the waiters flag is clear, admitting a call is one compare-exchange that raises the
//! in-flight count below the limit, and releasing it one compare-exchange (or subtraction)
//! that lowers it: no lock, no allocation, no clock. The flag is set and cleared only under the
//! queue's lock; while it is set, every admission goes through the lock, so nobody overtakes
//! the waiters, and every release hands its permit to the next waiter (or, if the limit was
//! lowered, retires it).
//!
//! An adaptive limit changes only the limit in the word (under the lock, once per window), and
//! its permits carry their admission time, to be measured when they are given back.
//!
//! A partitioned pool keeps one queue (a "lane") per partition and counts each lane's calls in
//! flight under the lock. Its waiters flag is set for good, so every admission and every
//! release of a partitioned pool goes through the lock, and the word changes only there.
//!
//! # Permits without a reference count
//!
//! Cloning and dropping an `Arc` per call would add two shared read-modify-writes to the one
//! compare-exchange that admits a call and the one that releases it. So the word lives in a
//! [`Core`] at a `'static` address, and a permit of a *lean* pool (no adaptive limit, no
//! partitions, no listener: nothing to do on release but give the permit back) holds only
//! `&'static Core`. The core is allocated once and, when its pool is gone and nothing is in
//! flight, kept for the next pool (in the manner of `palisade-shutdown`'s in-flight
//! counters). Which of the two comes last decides, on the word itself:
//!
//! - the pool's `Drop` (its last owner: layer, service, handle or waiter) sets the
//!   *orphaned* bit; if nothing was in flight, it recycles the core;
//! - a lean permit gives its permit back with a compare-exchange that is its last access to
//!   the core; if that took the last call of an orphaned pool, it recycles the core.
//!
//! Once orphaned, nothing raises the count (only owners admit calls or wait for a permit), so
//! exactly one of them recycles the core, and only when no permit refers to it. A lean
//! permit that finds calls waiting takes the slow path while it still counts (so the core is
//! still its pool's): it upgrades the core's weak reference to the pool and releases through
//! it; if the pool is gone, nobody waits any more, and it only gives the permit back. Permits
//! of the other pools hold an `Arc` of the pool, as their release needs it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use palisade_core::classify::Outcome;
use palisade_core::reject::Overloaded;
use tokio::time::Instant;

use crate::adaptive::{Adapter, WindowSummary};
use crate::config::PoolConfig;
use crate::config::WHOLE;
use crate::event::{PoolEvent, ShedReason};
use crate::priority::Priority;
use crate::queue::{Key, Look, Queue};

/// In flight: at most the limit, so 31 bits are enough.
const IN_FLIGHT: u64 = 0x7FFF_FFFF;
/// The pool is gone; the last permit given back recycles the core.
const ORPHANED: u64 = 1 << 31;
const LIMIT_SHIFT: u32 = 32;
const LIMIT: u64 = 0x7FFF_FFFF << LIMIT_SHIFT;
/// Admissions go through the lock: calls wait, or the pool is partitioned.
const WAITERS: u64 = 1 << 63;

/// The lane of permits whose release need not go through the lock (unpartitioned pools).
const UNTRACKED: u32 = u32::MAX;

#[inline]
const fn in_flight(word: u64) -> u32 {
    (word & IN_FLIGHT) as u32
}

#[inline]
const fn limit(word: u64) -> u32 {
    ((word & LIMIT) >> LIMIT_SHIFT) as u32
}

/// What a lean permit reaches: the pool's word, at a `'static` address (see the module docs).
#[repr(align(128))]
pub(crate) struct Core {
    state: AtomicU64,
    /// The pool, for a lean permit that finds calls waiting; dangling once the pool is gone.
    pool: Mutex<Weak<Pool>>,
    /// How many times this core was recycled (tests check it happens exactly once per pool).
    #[cfg(test)]
    recycled: std::sync::atomic::AtomicU32,
}

/// Cores whose pools are gone and that no permit refers to.
static SPARE_CORES: Mutex<Vec<&'static Core>> = Mutex::new(Vec::new());

impl Core {
    /// A core for a new pool, with the word `state`: a spare one, or a new one.
    fn acquire(state: u64, pool: Weak<Pool>) -> &'static Core {
        let spare = SPARE_CORES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match spare {
            Some(core) => {
                // Nothing refers to it any more: only its word and its pool need setting.
                core.state.store(state, Ordering::Release);
                *core.pool.lock().unwrap_or_else(PoisonError::into_inner) = pool;
                core
            }
            None => Box::leak(Box::new(Core {
                state: AtomicU64::new(state),
                pool: Mutex::new(pool),
                #[cfg(test)]
                recycled: std::sync::atomic::AtomicU32::new(0),
            })),
        }
    }

    /// Keeps the core for the next pool: its pool is gone and nothing is in flight.
    #[cold]
    fn recycle(&'static self) {
        *self.pool.lock().unwrap_or_else(PoisonError::into_inner) = Weak::new();
        #[cfg(test)]
        self.recycled.fetch_add(1, Ordering::Relaxed);
        SPARE_CORES
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self);
    }

    /// Gives a lean permit back: one compare-exchange, the permit's last access to the core,
    /// unless calls wait.
    #[inline]
    fn release(&'static self) {
        let mut word = self.state.load(Ordering::Relaxed);
        loop {
            if word & WAITERS != 0 {
                return self.release_to_waiters();
            }
            match self.state.compare_exchange_weak(
                word,
                word - 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        if word & ORPHANED != 0 && in_flight(word) == 1 {
            self.recycle();
        }
    }

    /// A lean permit found calls waiting: it still counts, so the core is still its pool's.
    #[cold]
    #[inline(never)]
    fn release_to_waiters(&'static self) {
        let pool = self
            .pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .upgrade();
        match pool {
            // The permit goes to the next waiter; dropping `pool` may orphan the core.
            Some(pool) => pool.release(UNTRACKED),
            // The pool is gone, and its waiters with it (they hold it).
            None => {
                let previous = self.state.fetch_sub(1, Ordering::AcqRel);
                if previous & ORPHANED != 0 && in_flight(previous) == 1 {
                    self.recycle();
                }
            }
        }
    }
}

pub(crate) struct Pool {
    /// The word; see the module docs.
    core: &'static Core,
    lanes: Mutex<Lanes>,
    adapter: Option<Adapter>,
    partitioned: bool,
    /// Permits need nothing but the core: no adaptive limit, no partitions, no listener.
    lean: bool,
    config: PoolConfig,
}

impl Drop for Pool {
    fn drop(&mut self) {
        // From now on the count only falls; whoever takes it to zero recycles the core.
        let previous = self.core.state.fetch_or(ORPHANED, Ordering::AcqRel);
        if in_flight(previous) == 0 {
            self.core.recycle();
        }
    }
}

/// The pool's waiters, one lane per partition (one lane in all for an unpartitioned pool; the
/// last lane of a partitioned one is the rest).
#[derive(Debug)]
pub(crate) struct Lanes {
    lanes: Vec<Lane>,
    /// Waiters in all lanes.
    waiting: usize,
    /// The last arrival number handed out.
    seq: u64,
}

#[derive(Debug)]
struct Lane {
    queue: Queue,
    /// Calls in flight in this lane (counted in partitioned pools only).
    in_flight: u32,
    /// The lane's share of the limit, in millionths.
    share: u32,
    /// A named partition (quota at least 1) or the rest (quota possibly 0).
    named: bool,
    /// How many calls may wait in this lane.
    capacity: u32,
}

impl Lane {
    fn quota(&self, limit: u32) -> u32 {
        let quota = (u64::from(limit) * u64::from(self.share) / u64::from(WHOLE)) as u32;
        if self.named { quota.max(1) } else { quota }
    }
}

impl Lanes {
    fn new(config: &PoolConfig) -> Self {
        let lane = |share: u32, named: bool, capacity: u32| Lane {
            queue: Queue::new(),
            in_flight: 0,
            share,
            named,
            capacity,
        };
        let lanes = if config.partitions.is_empty() {
            vec![lane(WHOLE, true, config.queue_capacity)]
        } else {
            let total = u64::from(config.queue_capacity);
            let mut lanes: Vec<Lane> = config
                .partitions
                .iter()
                .map(|partition| {
                    let share = u64::from(partition.millionths);
                    let capacity = (total * share).div_ceil(u64::from(WHOLE)) as u32;
                    lane(partition.millionths, true, capacity)
                })
                .collect();
            let named: u32 = config.partitions.iter().map(|p| p.millionths).sum();
            let rest = WHOLE - named;
            let capacity = (total * u64::from(rest) / u64::from(WHOLE)) as u32;
            lanes.push(lane(rest, false, capacity));
            lanes
        };
        Self {
            lanes,
            waiting: 0,
            seq: 0,
        }
    }

    /// Waiters in all lanes.
    pub(crate) fn len(&self) -> usize {
        self.waiting
    }

    /// Whether a call of `lane` may take a free permit in a partitioned pool: its lane is below
    /// its quota, or it may borrow.
    fn entitled(&self, lane: usize, limit: u32, borrow: bool) -> bool {
        let lane = &self.lanes[lane];
        borrow || lane.in_flight < lane.quota(limit)
    }

    /// The lane whose waiter gets the next free permit: of the lanes below their quota, the one
    /// whose next waiter comes first; if there are none, with `borrow`, of all lanes.
    fn next_lane(
        &self,
        limit: u32,
        borrow: bool,
        order: crate::config::Order,
        aging: Option<(Duration, Instant)>,
    ) -> Option<usize> {
        if self.lanes.len() == 1 {
            return (self.waiting > 0).then_some(0);
        }
        let best = |entitled: &dyn Fn(&Lane) -> bool| {
            let mut best: Option<(Key, usize)> = None;
            for (index, lane) in self.lanes.iter().enumerate() {
                if lane.queue.is_empty() || !entitled(lane) {
                    continue;
                }
                if let Some(key) = lane.queue.peek(order, aging)
                    && best.is_none_or(|(best, _)| key < best)
                {
                    best = Some((key, index));
                }
            }
            best.map(|(_, index)| index)
        };
        best(&|lane| lane.in_flight < lane.quota(limit))
            .or_else(|| if borrow { best(&|_| true) } else { None })
    }
}

/// The outcome of a call that found no room on the uncontended path.
pub(crate) enum Enqueued {
    Admitted(Permit),
    Queued(Waiter),
    Rejected(Overloaded),
}

impl Pool {
    pub(crate) fn new(config: PoolConfig) -> Arc<Self> {
        let partitioned = !config.partitions.is_empty();
        let flags = if partitioned { WAITERS } else { 0 };
        let state = u64::from(config.limit) << LIMIT_SHIFT | flags;
        Arc::new_cyclic(|pool| Self {
            core: Core::acquire(state, pool.clone()),
            lanes: Mutex::new(Lanes::new(&config)),
            adapter: config
                .adaptive
                .map(|adaptive| Adapter::new(adaptive, config.limit)),
            partitioned,
            lean: !partitioned && config.adaptive.is_none() && config.listener.is_none(),
            config,
        })
    }

    #[inline]
    fn state(&self) -> &AtomicU64 {
        &self.core.state
    }

    pub(crate) fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub(crate) fn in_flight(&self) -> u32 {
        in_flight(self.state().load(Ordering::Acquire))
    }

    pub(crate) fn limit(&self) -> u32 {
        limit(self.state().load(Ordering::Acquire))
    }

    pub(crate) fn queued(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // The lanes are consistent between calls; a panic elsewhere does not spoil them.
        self.lanes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the pool has partitions (and so asks requests for their partition).
    #[inline]
    pub(crate) fn is_partitioned(&self) -> bool {
        self.partitioned
    }

    /// The lane of the partition named `key`; the rest for no name or an unknown one.
    pub(crate) fn lane_of(&self, key: Option<&str>) -> usize {
        let partitions = &self.config.partitions;
        key.and_then(|key| partitions.iter().position(|share| share.name == key))
            .unwrap_or(partitions.len())
    }

    /// The in-flight calls, waiters and quota of the partition named `name`.
    pub(crate) fn partition(&self, name: &str) -> Option<(u32, usize, u32)> {
        let index = self
            .config
            .partitions
            .iter()
            .position(|share| share.name == name)?;
        let limit = self.limit();
        let lanes = self.lock();
        let lane = &lanes.lanes[index];
        Some((lane.in_flight, lane.queue.len(), lane.quota(limit)))
    }

    fn lane_name(&self, lane: usize) -> &str {
        self.config
            .partitions
            .get(lane)
            .map_or(if self.partitioned { "(rest)" } else { "" }, |share| {
                &share.name
            })
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
        let mut word = self.state().load(Ordering::Relaxed);
        loop {
            if word & WAITERS != 0 || in_flight(word) >= limit(word) {
                return None;
            }
            match self.state().compare_exchange_weak(
                word,
                word + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        if self.lean {
            return Some(Permit::lean(self.core));
        }
        Some(self.admitted_tracked(in_flight(word) + 1))
    }

    /// The uncontended admission of a pool that is not lean: the event, and a permit that
    /// holds the pool.
    #[inline(never)]
    fn admitted_tracked(self: &Arc<Self>, in_flight: u32) -> Permit {
        if self.config.listener.is_some() {
            self.emit(PoolEvent::Admitted {
                waited: Duration::ZERO,
                in_flight,
            });
        }
        Permit::new(self, in_flight, UNTRACKED)
    }

    /// The contended path, under the lock: admit if there is room and nobody waits (in a
    /// partitioned pool: and the call's lane is entitled to it), queue if the lane's queue has
    /// room, reject otherwise.
    pub(crate) fn enqueue(self: &Arc<Self>, priority: Priority, lane: usize) -> Enqueued {
        let mut lanes = self.lock();
        let mut word = self.state().load(Ordering::Acquire);
        loop {
            let room = in_flight(word) < limit(word);
            if self.partitioned {
                // Only lock holders change the word of a partitioned pool; after each change
                // they grant every waiter entitled to a permit, so a call entitled to one now
                // overtakes nobody.
                if room && lanes.entitled(lane, limit(word), self.config.borrow) {
                    lanes.lanes[lane].in_flight += 1;
                    self.state().fetch_add(1, Ordering::AcqRel);
                    drop(lanes);
                    return self.admitted_at_once(in_flight(word) + 1, lane as u32);
                }
            } else if room && lanes.len() == 0 {
                match self.state().compare_exchange(
                    word,
                    word + 1,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        drop(lanes);
                        return self.admitted_at_once(in_flight(word) + 1, UNTRACKED);
                    }
                    Err(actual) => {
                        word = actual;
                        continue;
                    }
                }
            }
            let queue = &lanes.lanes[lane].queue;
            if queue.len() >= lanes.lanes[lane].capacity as usize {
                let queued = lanes.len();
                drop(lanes);
                return Enqueued::Rejected(self.shed(
                    priority,
                    lane,
                    ShedReason::QueueFull,
                    queued,
                ));
            }
            if word & WAITERS != 0 {
                break;
            }
            // Calls released from now on go through the lock and so see this waiter.
            match self.state().compare_exchange(
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
        lanes.seq += 1;
        let seq = lanes.seq;
        let index = lanes.lanes[lane].queue.push(priority.get(), since, seq);
        lanes.waiting += 1;
        let queued = lanes.len();
        drop(lanes);
        tracing::trace!(
            pool = %self.config.name,
            partition = self.lane_name(lane),
            %priority,
            queued,
            "call waits for a permit"
        );
        self.emit(PoolEvent::Queued { priority, queued });
        Enqueued::Queued(Waiter {
            pool: Arc::clone(self),
            lane: lane as u32,
            index,
            priority,
            since,
            done: false,
        })
    }

    fn admitted_at_once(self: &Arc<Self>, in_flight: u32, lane: u32) -> Enqueued {
        self.emit(PoolEvent::Admitted {
            waited: Duration::ZERO,
            in_flight,
        });
        Enqueued::Admitted(Permit::new(self, in_flight, lane))
    }

    fn shed(
        &self,
        priority: Priority,
        lane: usize,
        reason: ShedReason,
        queued: usize,
    ) -> Overloaded {
        let rejection = self.overloaded();
        let retry_after = self.config.retry_after;
        tracing::debug!(
            pool = %self.config.name,
            partition = self.lane_name(lane),
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

    /// Gives a permit back: one subtraction, plus a hand-off under the lock if calls wait (in
    /// a partitioned pool, always under the lock).
    #[inline]
    fn release(&self, lane: u32) {
        if lane == UNTRACKED {
            let previous = self.state().fetch_sub(1, Ordering::AcqRel);
            if previous & WAITERS != 0 {
                self.dispatch_and_wake(self.lock());
            }
        } else {
            let mut lanes = self.lock();
            lanes.lanes[lane as usize].in_flight -= 1;
            self.state().fetch_sub(1, Ordering::AcqRel);
            self.dispatch_and_wake(lanes);
        }
        if self.config.listener.is_some() {
            self.emit(PoolEvent::Released {
                in_flight: self.in_flight(),
            });
        }
    }

    /// Measures a call that ended (unless it was cancelled) and, when that closes the adaptive
    /// window, moves the limit.
    fn record(&self, sample: &Sample) {
        let Some(adapter) = &self.adapter else {
            return;
        };
        let dropped = match sample.outcome {
            Outcome::Ignored => return,
            Outcome::Success => false,
            Outcome::Failure => true,
        };
        let now = Instant::now();
        let rtt = now.saturating_duration_since(sample.admitted);
        let Some((window, next)) =
            adapter.sample(rtt, sample.in_flight, dropped, now, || self.limit())
        else {
            return;
        };
        self.adapt(next, &window);
    }

    /// Sets the limit an adaptive window decided on.
    fn adapt(&self, new: u32, window: &WindowSummary) {
        let old = self.swap_limit(new);
        if old != new {
            tracing::debug!(
                pool = %self.config.name,
                from = old,
                to = new,
                rtt = ?window.rtt,
                max_in_flight = window.max_in_flight,
                dropped = window.dropped,
                "adaptive concurrency limit moved"
            );
            self.emit(PoolEvent::LimitChanged { from: old, to: new });
        }
    }

    /// Sets the limit and admits waiters if it rose; returns the old one.
    pub(crate) fn set_limit(&self, new: u32) -> u32 {
        let old = self.swap_limit(new);
        if old != new {
            tracing::info!(pool = %self.config.name, from = old, to = new, "concurrency limit changed");
            self.emit(PoolEvent::LimitChanged { from: old, to: new });
        }
        old
    }

    fn swap_limit(&self, new: u32) -> u32 {
        let lanes = self.lock();
        let mut word = self.state().load(Ordering::Acquire);
        loop {
            let next = (word & !LIMIT) | (u64::from(new) << LIMIT_SHIFT);
            match self.state().compare_exchange_weak(
                word,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(actual) => word = actual,
            }
        }
        self.dispatch_and_wake(lanes);
        limit(word)
    }

    /// Grants permits to waiters while there is room, waking them outside the lock; clears
    /// the waiters flag of an unpartitioned pool once its queue is empty.
    fn dispatch_and_wake<'a>(&'a self, mut lanes: MutexGuard<'a, Lanes>) {
        loop {
            let mut wakers = WakeList::new();
            let more = self.dispatch(&mut lanes, &mut wakers);
            drop(lanes);
            wakers.wake_all();
            if !more {
                return;
            }
            lanes = self.lock();
        }
    }

    /// Returns whether it stopped only because `wakers` is full.
    fn dispatch(&self, lanes: &mut Lanes, wakers: &mut WakeList) -> bool {
        let order = self.config.order;
        let aging = self.config.aging.map(|step| (step, Instant::now()));
        loop {
            if lanes.len() == 0 {
                if !self.partitioned {
                    self.state().fetch_and(!WAITERS, Ordering::AcqRel);
                }
                return false;
            }
            // Only lock holders change the word while the waiters flag is set.
            let word = self.state().load(Ordering::Acquire);
            if in_flight(word) >= limit(word) {
                return false;
            }
            if wakers.is_full() {
                return true;
            }
            let Some(lane) = lanes.next_lane(limit(word), self.config.borrow, order, aging) else {
                return false;
            };
            if let Some(waker) = lanes.lanes[lane].queue.grant_next(order, aging) {
                lanes.waiting -= 1;
                if self.partitioned {
                    lanes.lanes[lane].in_flight += 1;
                }
                self.state().fetch_add(1, Ordering::AcqRel);
                wakers.push(waker);
            }
        }
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let word = self.state().load(Ordering::Acquire);
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
    core: &'static Core,
    /// What the release needs beyond the core; `None` in a lean pool (see the module docs).
    tracked: Option<Tracked>,
}

/// The release of a permit of a pool that is not lean needs the pool.
struct Tracked {
    pool: Arc<Pool>,
    /// The partition's lane, or `UNTRACKED`.
    lane: u32,
    /// What the adaptive limit measures; `None` without one.
    sample: Option<Sample>,
}

impl Tracked {
    #[inline(never)]
    fn release(&self) {
        if let Some(sample) = &self.sample {
            self.pool.record(sample);
        }
        self.pool.release(self.lane);
    }
}

/// A call as the adaptive limit sees it.
#[derive(Debug, Clone, Copy)]
struct Sample {
    admitted: Instant,
    /// Calls in flight at its admission, itself included.
    in_flight: u32,
    /// How it ended; `Ignored` until it is known (a cancelled call is not measured).
    outcome: Outcome,
}

impl Permit {
    /// A permit of a lean pool: the core and nothing else.
    #[inline]
    fn lean(core: &'static Core) -> Self {
        Self {
            core,
            tracked: None,
        }
    }

    fn new(pool: &Arc<Pool>, in_flight: u32, lane: u32) -> Self {
        if pool.lean {
            return Self::lean(pool.core);
        }
        let sample = pool.adapter.as_ref().map(|_| Sample {
            admitted: Instant::now(),
            in_flight,
            outcome: Outcome::Ignored,
        });
        Self {
            core: pool.core,
            tracked: Some(Tracked {
                pool: Arc::clone(pool),
                lane,
                sample,
            }),
        }
    }

    /// Records how the call ended, for the adaptive limit: a success, or a failure (a drop).
    #[inline]
    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        if let Some(Tracked {
            sample: Some(sample),
            ..
        }) = &mut self.tracked
        {
            sample.outcome = outcome;
        }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        match &self.tracked {
            None => self.core.release(),
            Some(tracked) => tracked.release(),
        }
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
    lane: u32,
    index: u32,
    priority: Priority,
    since: Instant,
    /// The slot was let go of (granted and seen, or timed out).
    done: bool,
}

impl Waiter {
    /// Ready with the permit once the waiter was granted; registers the waker otherwise.
    pub(crate) fn poll_grant(&mut self, cx: &mut Context<'_>) -> Poll<Permit> {
        let mut lanes = self.pool.lock();
        match lanes.lanes[self.lane as usize]
            .queue
            .look(self.index, cx.waker())
        {
            Look::Waiting => Poll::Pending,
            Look::Granted => {
                drop(lanes);
                self.done = true;
                Poll::Ready(self.granted())
            }
        }
    }

    /// The queue timeout fired: the waiter leaves and is shed, unless it was granted a permit
    /// just now, which it then takes.
    pub(crate) fn time_out(&mut self) -> Result<Permit, Overloaded> {
        let mut lanes = self.pool.lock();
        self.done = true;
        match lanes.lanes[self.lane as usize].queue.cancel(self.index) {
            Look::Granted => {
                drop(lanes);
                Ok(self.granted())
            }
            Look::Waiting => {
                lanes.waiting -= 1;
                let queued = lanes.len();
                self.pool.dispatch_and_wake(lanes);
                Err(self.pool.shed(
                    self.priority,
                    self.lane as usize,
                    ShedReason::QueueTimeout,
                    queued,
                ))
            }
        }
    }

    fn granted(&self) -> Permit {
        let waited = self.since.elapsed();
        tracing::trace!(pool = %self.pool.config.name, priority = %self.priority, ?waited, "waiting call admitted");
        let in_flight = self.pool.in_flight();
        self.pool.emit(PoolEvent::Admitted { waited, in_flight });
        let lane = if self.pool.partitioned {
            self.lane
        } else {
            UNTRACKED
        };
        Permit::new(&self.pool, in_flight, lane)
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut lanes = self.pool.lock();
        match lanes.lanes[self.lane as usize].queue.cancel(self.index) {
            Look::Waiting => {
                lanes.waiting -= 1;
                let queued = lanes.len();
                self.pool.dispatch_and_wake(lanes);
                tracing::trace!(pool = %self.pool.config.name, priority = %self.priority, "waiting call cancelled");
                self.pool.emit(PoolEvent::LeftQueue {
                    priority: self.priority,
                    queued,
                });
            }
            Look::Granted => {
                drop(lanes);
                // Granted but never seen: the permit goes to the next waiter.
                let lane = if self.pool.partitioned {
                    self.lane
                } else {
                    UNTRACKED
                };
                self.pool.release(lane);
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::sync::Barrier;

    use palisade_core::event::listener_fn;

    use super::*;

    /// Serialises the tests that count recycles: a core one test recycles, another may reuse.
    static SERIAL: Mutex<()> = Mutex::new(());

    fn serial() -> MutexGuard<'static, ()> {
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lean_pool(limit: u32) -> Arc<Pool> {
        let limit = NonZeroU32::new(limit).unwrap();
        Pool::new(PoolConfig::builder(limit).build().unwrap())
    }

    fn recycled(core: &Core) -> u32 {
        core.recycled.load(Ordering::Acquire)
    }

    fn spare_cores_are_distinct() -> bool {
        let spare = SPARE_CORES.lock().unwrap_or_else(PoisonError::into_inner);
        spare
            .iter()
            .enumerate()
            .all(|(i, a)| spare[i + 1..].iter().all(|b| !std::ptr::eq(*a, *b)))
    }

    #[test]
    fn a_pool_dropped_with_nothing_in_flight_hands_its_core_to_the_next_pool() {
        let _serial = serial();
        let pool = lean_pool(2);
        let core = pool.core;
        let before = recycled(core);
        drop(pool.try_acquire().unwrap());
        drop(pool);
        assert_eq!(recycled(core), before + 1);
        let next = lean_pool(3);
        assert!(std::ptr::eq(next.core, core), "the spare core is reused");
        assert_eq!((next.in_flight(), next.limit()), (0, 3));
        assert_eq!(next.state().load(Ordering::Acquire) & ORPHANED, 0);
    }

    #[test]
    fn lean_permits_keep_the_core_until_the_last_is_given_back() {
        let _serial = serial();
        let pool = lean_pool(2);
        let core = pool.core;
        let before = recycled(core);
        let (a, b) = (pool.try_acquire().unwrap(), pool.try_acquire().unwrap());
        assert!(
            a.tracked.is_none(),
            "a lean permit holds no reference count"
        );
        drop(pool);
        assert_eq!(recycled(core), before);
        drop(a);
        assert_eq!(recycled(core), before);
        drop(b);
        assert_eq!(recycled(core), before + 1);
        assert_eq!(in_flight(core.state.load(Ordering::Acquire)), 0);
        assert!(spare_cores_are_distinct());
    }

    #[test]
    fn permits_of_a_pool_with_a_listener_hold_the_pool() {
        let _serial = serial();
        let events = Arc::new(Mutex::new(Vec::new()));
        let config = PoolConfig::builder(NonZeroU32::new(2).unwrap())
            .listener(listener_fn({
                let events = Arc::clone(&events);
                move |event: &PoolEvent| events.lock().unwrap().push(*event)
            }))
            .build()
            .unwrap();
        let pool = Pool::new(config);
        let core = pool.core;
        let before = recycled(core);
        let permit = pool.try_acquire().unwrap();
        assert!(permit.tracked.is_some());
        drop(pool);
        assert_eq!(recycled(core), before, "the permit still holds the pool");
        drop(permit);
        assert_eq!(recycled(core), before + 1);
        assert!(matches!(
            events.lock().unwrap().last(),
            Some(PoolEvent::Released { in_flight: 0 })
        ));
    }

    #[test]
    fn a_lean_permit_that_finds_the_waiters_flag_of_a_dropped_pool_only_gives_its_permit_back() {
        let _serial = serial();
        let pool = lean_pool(2);
        let core = pool.core;
        let before = recycled(core);
        let permit = pool.try_acquire().unwrap();
        drop(pool);
        // The flag as a release racing with the last waiter's departure may see it.
        core.state.fetch_or(WAITERS, Ordering::AcqRel);
        drop(permit);
        assert_eq!(recycled(core), before + 1);
        assert_eq!(in_flight(core.state.load(Ordering::Acquire)), 0);
    }

    #[test]
    fn calls_on_many_threads_as_the_pool_is_dropped_recycle_its_core_exactly_once() {
        let _serial = serial();
        for _ in 0..100 {
            let pool = lean_pool(64);
            let core = pool.core;
            let before = recycled(core);
            let barrier = Barrier::new(4);
            std::thread::scope(|scope| {
                for _ in 0..3 {
                    let (pool, barrier) = (Arc::clone(&pool), &barrier);
                    scope.spawn(move || {
                        barrier.wait();
                        let mut held = Vec::new();
                        for n in 0..200 {
                            if let Some(permit) = pool.try_acquire() {
                                held.push(permit);
                            }
                            if n % 3 == 0 {
                                held.pop();
                            }
                        }
                        // The pool may go first: its last permits outlive it.
                        drop(pool);
                        drop(held);
                    });
                }
                barrier.wait();
                drop(pool);
            });
            assert_eq!(recycled(core), before + 1);
            assert_eq!(in_flight(core.state.load(Ordering::Acquire)), 0);
        }
        assert!(spare_cores_are_distinct());
    }
}
