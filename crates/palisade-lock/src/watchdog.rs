//! The watchdog: one task per [`Lock`](crate::Lock) that renews every live guard's lease
//! and reports the loss of each.
//!
//! A guard registers its lease in a shared table when it is made and leaves the table when
//! it is released or dropped; nothing else happens per guard (no task, no channel, no timer).
//! The table keeps each lease's next due time in a min-heap. The task sleeps until the
//! earliest, starts the renewals that are due (they run concurrently inside the task, each
//! bounded by its lease's validity) and sleeps again; it is woken only by a lease due
//! before the time it sleeps until. Leaving the table only turns the lease's heap entry
//! stale (an entry names a slot and the slot's generation), so it wakes nobody; stale
//! entries are skipped when they come due and swept out once they outnumber the live ones.
//! So a guard that is released before its first renewal (the common case) costs two short
//! critical sections and no wake-up.
//!
//! The task starts with the lock's first guard and ends with the lock: it holds the lock's
//! state weakly, and the state wakes it when dropped. If its runtime shuts down first, the
//! next guard starts a new one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::Poll;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio::time::error::Elapsed;

use crate::backend::Backend;
use crate::guard::Held;
use crate::lock::Shared;
use crate::{BackendError, LostReason};

/// The shared renewal schedule of one [`Lock`](crate::Lock).
pub(crate) struct Watchdog<B: Backend> {
    state: Mutex<State<B>>,
    /// Wakes the task when a lease is due before the time it sleeps until.
    wake: Arc<Notify>,
}

/// Where a guard's lease sits in the table: a slot and the slot's generation, so that an
/// entry for a slot since reused is recognised as stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Ticket {
    slot: u32,
    generation: u32,
}

struct State<B: Backend> {
    slots: Vec<Slot<B>>,
    free: Vec<u32>,
    /// When each watched lease is next due; stale entries among them.
    due: BinaryHeap<Reverse<(Instant, Ticket)>>,
    live: usize,
    task: Task,
}

struct Slot<B: Backend> {
    generation: u32,
    held: Option<Arc<Held<B>>>,
    /// A renewal is on its way (the lease has no entry in `due` meanwhile).
    renewing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Task {
    /// No task runs: the next registration starts one.
    Idle,
    /// The task runs and reads the table again at this time (with `None`: only when a
    /// renewal ends or it is woken).
    Sleeping(Option<Instant>),
}

/// A renewal's end: whose, when it was sent, and the backend's answer (`Err` when the
/// lease's validity ran out first).
type Outcome = (Ticket, Instant, Result<Result<bool, BackendError>, Elapsed>);
type Renewal = Pin<Box<dyn Future<Output = Outcome> + Send>>;

impl<B: Backend> Watchdog<B> {
    pub(crate) fn new() -> Self {
        Self {
            state: Mutex::new(State {
                slots: Vec::new(),
                free: Vec::new(),
                due: BinaryHeap::new(),
                live: 0,
                task: Task::Idle,
            }),
            wake: Arc::new(Notify::new()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State<B>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Watches `held` until [`deregister`](Self::deregister): renews it every TTL/3 or, with
    /// renewal off, reports it lost when its validity ends.
    pub(crate) fn register(shared: &Arc<Shared<B>>, held: &Arc<Held<B>>) -> Ticket {
        let at = held.first_due(shared.config.watchdog);
        let this = &shared.watchdog;
        let mut state = this.state();
        let ticket = state.insert(Arc::clone(held));
        state.schedule(at, ticket);
        match state.task {
            Task::Sleeping(Some(wakes)) if wakes <= at => {}
            Task::Sleeping(_) => {
                state.task = Task::Sleeping(Some(at));
                drop(state);
                this.wake.notify_one();
            }
            Task::Idle => {
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    // Nothing can run a task: the next registration inside a runtime does.
                    return ticket;
                };
                state.task = Task::Sleeping(Some(at));
                drop(state);
                runtime.spawn(run(Arc::downgrade(shared), Arc::clone(&this.wake)));
            }
        }
        ticket
    }

    /// Ends the task (the lock is being dropped).
    pub(crate) fn shut_down(&self) {
        self.wake.notify_one();
    }

    /// Stops watching the lease registered as `ticket` (nothing if it no longer is).
    pub(crate) fn deregister(&self, ticket: Ticket) {
        let held = self.state().remove(ticket);
        // Dropped outside the lock: it may hold the last reference to the lock's state.
        drop(held);
    }
}

impl<B: Backend> State<B> {
    fn insert(&mut self, held: Arc<Held<B>>) -> Ticket {
        self.live += 1;
        if let Some(slot) = self.free.pop() {
            let entry = &mut self.slots[slot as usize];
            entry.held = Some(held);
            return Ticket {
                slot,
                generation: entry.generation,
            };
        }
        let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot {
            generation: 0,
            held: Some(held),
            renewing: false,
        });
        Ticket {
            slot,
            generation: 0,
        }
    }

    fn slot(&mut self, ticket: Ticket) -> Option<&mut Slot<B>> {
        self.slots
            .get_mut(ticket.slot as usize)
            .filter(|slot| slot.generation == ticket.generation && slot.held.is_some())
    }

    fn remove(&mut self, ticket: Ticket) -> Option<Arc<Held<B>>> {
        let slot = self.slot(ticket)?;
        let held = slot.held.take();
        slot.renewing = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(ticket.slot);
        self.live -= 1;
        held
    }

    fn schedule(&mut self, at: Instant, ticket: Ticket) {
        // Sweep out the entries of leases no longer watched once they outnumber the live
        // ones (amortized: at least as many pushes as entries swept).
        if self.due.len() >= 2 * self.live + 64 {
            let slots = &self.slots;
            self.due.retain(|Reverse((_, ticket))| {
                slots
                    .get(ticket.slot as usize)
                    .is_some_and(|slot| slot.generation == ticket.generation && slot.held.is_some())
            });
        }
        self.due.push(Reverse((at, ticket)));
    }

    /// Moves the leases due at `now` into `out` (marked as renewing) and says when the task
    /// should look again.
    ///
    /// That is when the first lease still watched is due; past entries of leases no longer
    /// watched are dropped from the top of the heap. With no lease watched, it is the due
    /// time of the last entry so dropped, if that is still to come: registrations made
    /// since the task last slept are due later than that, so they did not wake it, and it
    /// must look at them then.
    fn take_due(&mut self, now: Instant, out: &mut Vec<(Ticket, Arc<Held<B>>)>) -> Option<Instant> {
        let mut stale_until = None;
        while let Some(&Reverse((at, ticket))) = self.due.peek() {
            match self.slot(ticket) {
                None => {
                    self.due.pop();
                    stale_until = Some(at).filter(|&at| at > now);
                }
                // Its renewal is on its way (an entry left from before; never expected).
                Some(slot) if slot.renewing => {
                    self.due.pop();
                }
                Some(_) if at > now => return Some(at),
                Some(slot) => {
                    slot.renewing = true;
                    if let Some(held) = &slot.held {
                        out.push((ticket, Arc::clone(held)));
                    }
                    self.due.pop();
                }
            }
        }
        stale_until
    }
}

/// Marks the task gone when it ends, and puts the renewals it was running back in the
/// schedule: if it ends because its runtime shut down, the next registration starts a task
/// that takes them over. (When it ends because the lock is gone, there is nothing left.)
struct Running<B: Backend> {
    shared: Weak<Shared<B>>,
}

impl<B: Backend> Drop for Running<B> {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut state = shared.watchdog.state();
        state.task = Task::Idle;
        let now = Instant::now();
        let mut orphans = Vec::new();
        for (slot, entry) in (0_u32..).zip(state.slots.iter_mut()) {
            if entry.held.is_some() && entry.renewing {
                entry.renewing = false;
                orphans.push(Ticket {
                    slot,
                    generation: entry.generation,
                });
            }
        }
        for ticket in orphans {
            state.schedule(now, ticket);
        }
    }
}

/// The watchdog task of one lock.
async fn run<B: Backend>(shared: Weak<Shared<B>>, wake: Arc<Notify>) {
    let running = Running { shared };
    let mut renewals: FuturesUnordered<Renewal> = FuturesUnordered::new();
    let mut due = Vec::new();
    let mut sleep = pin!(tokio::time::sleep_until(Instant::now()));
    loop {
        let mut notified = pin!(wake.notified());
        // Interest first, then the table: a wake-up sent after the read is not missed.
        notified.as_mut().enable();
        let Some(shared) = running.shared.upgrade() else {
            return;
        };
        let now = Instant::now();
        let next = {
            let mut state = shared.watchdog.state();
            // With nothing to watch, it sleeps until a registration wakes it: a lock that
            // hands out guards one at a time keeps one task, rather than starting one each.
            let next = state.take_due(now, &mut due);
            state.task = Task::Sleeping(next);
            next
        };
        for (ticket, held) in due.drain(..) {
            if let Some(renewal) = visit(&shared, ticket, held, now) {
                renewals.push(renewal);
            }
        }
        // Held only while awake: the lock is freed once its handles and guards are gone.
        drop(shared);
        if let Some(next) = next {
            sleep.as_mut().reset(next);
        }
        let ended = poll_fn(|cx| {
            if let Poll::Ready(Some(outcome)) = renewals.poll_next_unpin(cx) {
                return Poll::Ready(Some(outcome));
            }
            if notified.as_mut().poll(cx).is_ready()
                || (next.is_some() && sleep.as_mut().poll(cx).is_ready())
            {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        if let Some(outcome) = ended {
            let Some(shared) = running.shared.upgrade() else {
                return;
            };
            renewed(&shared, outcome);
        }
    }
}

/// A lease came due at `now`: its renewal, or it is reported lost.
fn visit<B: Backend>(
    shared: &Shared<B>,
    ticket: Ticket,
    held: Arc<Held<B>>,
    now: Instant,
) -> Option<Renewal> {
    let valid_until = held.valid_until();
    if !shared.config.watchdog || now >= valid_until {
        lose(shared, ticket, &held, LostReason::Expired);
        return None;
    }
    Some(Box::pin(async move {
        let renewal = held
            .shared()
            .backend
            .renew(held.key(), held.lease(), held.ttl());
        let answer = tokio::time::timeout_at(valid_until, renewal).await;
        (ticket, now, answer)
    }))
}

/// A renewal ended: schedules the next, or reports the lease lost. The answer for a guard
/// released meanwhile is ignored: it is no longer watched.
fn renewed<B: Backend>(shared: &Shared<B>, (ticket, started, answer): Outcome) {
    let mut state = shared.watchdog.state();
    let Some(slot) = state.slot(ticket) else {
        return;
    };
    slot.renewing = false;
    let Some(held) = slot.held.clone() else {
        return;
    };
    let reason = match answer {
        Ok(Ok(true)) => {
            let valid_until = held.renewed(started);
            // The task reads the table before it sleeps again: nobody to wake.
            state.schedule(held.next_due(started, valid_until), ticket);
            drop(state);
            held.report_renewed(valid_until);
            return;
        }
        Ok(Ok(false)) => LostReason::Taken,
        Ok(Err(error)) => {
            tracing::warn!(key = %held.key(), %error, "lock renewal failed");
            LostReason::Unreachable
        }
        Err(_) => LostReason::Expired,
    };
    let removed = state.remove(ticket);
    drop(state);
    if removed.is_some() {
        held.lose(reason);
    }
}

/// Stops watching `held` and reports it lost.
fn lose<B: Backend>(shared: &Shared<B>, ticket: Ticket, held: &Held<B>, reason: LostReason) {
    let removed = shared.watchdog.state().remove(ticket);
    if removed.is_some() {
        held.lose(reason);
    }
}
