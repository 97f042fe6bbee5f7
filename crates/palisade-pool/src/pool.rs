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
//! An adaptive limit changes only the limit in the word (under the lock, once per window), and
//! its permits carry their admission time, to be measured when they are given back.
//!
//! A partitioned pool keeps one queue (a "lane") per partition and counts each lane's calls in
//! flight under the lock. Its waiters flag is set for good, so every admission and every
//! release of a partitioned pool goes through the lock, and the word changes only there.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
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

const IN_FLIGHT: u64 = 0xFFFF_FFFF;
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

pub(crate) struct Pool {
    state: AtomicU64,
    lanes: Mutex<Lanes>,
    adapter: Option<Adapter>,
    partitioned: bool,
    config: PoolConfig,
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
    pub(crate) fn new(config: PoolConfig) -> Self {
        let partitioned = !config.partitions.is_empty();
        let flags = if partitioned { WAITERS } else { 0 };
        Self {
            state: AtomicU64::new(u64::from(config.limit) << LIMIT_SHIFT | flags),
            lanes: Mutex::new(Lanes::new(&config)),
            adapter: config
                .adaptive
                .map(|adaptive| Adapter::new(adaptive, config.limit)),
            partitioned,
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
        Some(Permit::new(self, in_flight(word) + 1, UNTRACKED))
    }

    /// The contended path, under the lock: admit if there is room and nobody waits (in a
    /// partitioned pool: and the call's lane is entitled to it), queue if the lane's queue has
    /// room, reject otherwise.
    pub(crate) fn enqueue(self: &Arc<Self>, priority: Priority, lane: usize) -> Enqueued {
        let mut lanes = self.lock();
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            let room = in_flight(word) < limit(word);
            if self.partitioned {
                // Only lock holders change the word of a partitioned pool; after each change
                // they grant every waiter entitled to a permit, so a call entitled to one now
                // overtakes nobody.
                if room && lanes.entitled(lane, limit(word), self.config.borrow) {
                    lanes.lanes[lane].in_flight += 1;
                    self.state.fetch_add(1, Ordering::AcqRel);
                    drop(lanes);
                    return self.admitted_at_once(in_flight(word) + 1, lane as u32);
                }
            } else if room && lanes.len() == 0 {
                match self.state.compare_exchange(
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
            let previous = self.state.fetch_sub(1, Ordering::AcqRel);
            if previous & WAITERS != 0 {
                self.dispatch_and_wake(self.lock());
            }
        } else {
            let mut lanes = self.lock();
            lanes.lanes[lane as usize].in_flight -= 1;
            self.state.fetch_sub(1, Ordering::AcqRel);
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
                    self.state.fetch_and(!WAITERS, Ordering::AcqRel);
                }
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
            let Some(lane) = lanes.next_lane(limit(word), self.config.borrow, order, aging) else {
                return false;
            };
            if let Some(waker) = lanes.lanes[lane].queue.grant_next(order, aging) {
                lanes.waiting -= 1;
                if self.partitioned {
                    lanes.lanes[lane].in_flight += 1;
                }
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
    /// The partition's lane, or `UNTRACKED`.
    lane: u32,
    /// What the adaptive limit measures; `None` without one.
    sample: Option<Sample>,
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
    #[inline]
    fn new(pool: &Arc<Pool>, in_flight: u32, lane: u32) -> Self {
        let sample = pool.adapter.as_ref().map(|_| Sample {
            admitted: Instant::now(),
            in_flight,
            outcome: Outcome::Ignored,
        });
        Self {
            pool: Arc::clone(pool),
            lane,
            sample,
        }
    }

    /// Records how the call ended, for the adaptive limit: a success, or a failure (a drop).
    #[inline]
    pub(crate) fn set_outcome(&mut self, outcome: Outcome) {
        if let Some(sample) = &mut self.sample {
            sample.outcome = outcome;
        }
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(sample) = &self.sample {
            self.pool.record(sample);
        }
        self.pool.release(self.lane);
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
