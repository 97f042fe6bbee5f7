//! The wait queue: waiters by priority level, in arrival order, with removal from anywhere.
//!
//! Waiters live in a slab (reused slots, no allocation once it has grown to the peak number
//! of waiters); each priority level is a doubly linked list through the slab, and a bitmap
//! says which levels have waiters. A waiter's slot stays its own from `push` until its
//! future lets go of it (`take_grant` or `cancel`), so an index never names another waiter.
//!
//! Everything here runs under the pool's lock.

use std::task::Waker;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Order;

const NONE: u32 = u32::MAX;
const LEVELS: usize = 256;

#[derive(Debug, Clone, Copy)]
struct Link {
    head: u32,
    tail: u32,
}

impl Link {
    const EMPTY: Self = Self {
        head: NONE,
        tail: NONE,
    };
}

#[derive(Debug)]
struct Waiting {
    waker: Option<Waker>,
    level: u8,
    /// Arrival number, for ties.
    seq: u64,
    since: Instant,
    prev: u32,
    next: u32,
}

#[derive(Debug)]
enum Slot {
    Free {
        next: u32,
    },
    Waiting(Waiting),
    /// Taken out of the queue and given a permit; its future has not seen it yet.
    Granted,
}

/// What a waiter's slot says when its future looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// Still waiting (its waker is now the one given).
    Waiting,
    /// Granted: the waiter holds a permit now; its slot is freed.
    Granted,
}

#[derive(Debug)]
pub(crate) struct Queue {
    slots: Vec<Slot>,
    free: u32,
    levels: Vec<Link>,
    nonempty: [u64; LEVELS / 64],
    len: usize,
}

/// How soon a waiter goes, lowest first: effective level, then aged before not aged, then
/// arrival (oldest first for aged waiters and FIFO, newest first for LIFO). Arrival numbers
/// are the pool's, so keys compare across the queues of a partitioned pool.
pub(crate) type Key = (u32, u8, u64);

impl Queue {
    pub(crate) fn new() -> Self {
        Self {
            slots: Vec::new(),
            free: NONE,
            levels: vec![Link::EMPTY; LEVELS],
            nonempty: [0; LEVELS / 64],
            len: 0,
        }
    }

    /// The number of waiters in the queue (granted ones not counted).
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Adds a waiter of `level`, arrival number `seq` (increasing), at the end of its level;
    /// returns its slot.
    pub(crate) fn push(&mut self, level: u8, since: Instant, seq: u64) -> u32 {
        let tail = self.levels[usize::from(level)].tail;
        let waiting = Slot::Waiting(Waiting {
            waker: None,
            level,
            seq,
            since,
            prev: tail,
            next: NONE,
        });
        let index = if self.free == NONE {
            let index = u32::try_from(self.slots.len()).unwrap_or(NONE - 1);
            self.slots.push(waiting);
            index
        } else {
            let index = self.free;
            let slot = &mut self.slots[index as usize];
            if let Slot::Free { next } = *slot {
                self.free = next;
            }
            *slot = waiting;
            index
        };
        match self.waiting_mut(tail) {
            Some(previous) => previous.next = index,
            None => self.levels[usize::from(level)].head = index,
        }
        self.levels[usize::from(level)].tail = index;
        self.nonempty[usize::from(level) / 64] |= 1 << (level % 64);
        self.len += 1;
        index
    }

    /// Looks at waiter `index` for its future: a granted slot is freed (the future holds the
    /// permit now); a waiting one gets `waker`.
    pub(crate) fn look(&mut self, index: u32, waker: &Waker) -> Look {
        match &mut self.slots[index as usize] {
            Slot::Waiting(waiting) => {
                match &mut waiting.waker {
                    Some(current) if current.will_wake(waker) => {}
                    other => *other = Some(waker.clone()),
                }
                Look::Waiting
            }
            Slot::Granted => {
                self.release_slot(index);
                Look::Granted
            }
            Slot::Free { .. } => unreachable!("a waiter's slot is its own until it lets go"),
        }
    }

    /// Takes waiter `index` out for good (its future was dropped or timed out), freeing its
    /// slot; returns what it was.
    pub(crate) fn cancel(&mut self, index: u32) -> Look {
        let look = match self.slots[index as usize] {
            Slot::Waiting(_) => {
                self.unlink(index);
                Look::Waiting
            }
            Slot::Granted => Look::Granted,
            Slot::Free { .. } => unreachable!("a waiter's slot is its own until it lets go"),
        };
        self.release_slot(index);
        look
    }

    /// Grants the next waiter: takes it out of the queue, marks it granted, and returns its
    /// waker (if its future has been polled) to wake it.
    /// `aging`: the aging step and the time now, if waiters age.
    pub(crate) fn grant_next(
        &mut self,
        order: Order,
        aging: Option<(Duration, Instant)>,
    ) -> Option<Option<Waker>> {
        let (_, index) = self.pick(order, aging)?;
        let waker = match &mut self.slots[index as usize] {
            Slot::Waiting(waiting) => waiting.waker.take(),
            _ => None,
        };
        self.unlink(index);
        self.slots[index as usize] = Slot::Granted;
        Some(waker)
    }

    /// The key of the waiter [`grant_next`](Self::grant_next) would grant, if any.
    pub(crate) fn peek(&self, order: Order, aging: Option<(Duration, Instant)>) -> Option<Key> {
        self.pick(order, aging).map(|(key, _)| key)
    }

    /// The waiter to admit next and its key: the lowest (effective) priority level; within it,
    /// by `order`.
    fn pick(&self, order: Order, aging: Option<(Duration, Instant)>) -> Option<(Key, u32)> {
        let first = self.levels().next()?;
        let natural = |level: usize| match order {
            Order::Fifo => self.levels[level].head,
            Order::Lifo => self.levels[level].tail,
        };
        // A level's head is its oldest waiter, so the one aged most; among waiters that have
        // not aged, the natural pick is the one `order` wants. At equal effective level,
        // aged waiters go first, oldest first; then the others by `order`.
        let key = |index: u32| -> Key {
            let Some(waiting) = self.waiting(index) else {
                return (u32::MAX, 1, u64::MAX);
            };
            let steps = aging.map_or(0, |(step, now)| {
                let age = now.saturating_duration_since(waiting.since);
                u8::try_from(age.as_nanos() / step.as_nanos().max(1)).unwrap_or(u8::MAX)
            });
            let effective = u32::from(waiting.level.saturating_sub(steps));
            if steps > 0 && waiting.level > 0 {
                (effective, 0, waiting.seq)
            } else {
                let tie = match order {
                    Order::Fifo => waiting.seq,
                    Order::Lifo => u64::MAX - waiting.seq,
                };
                (effective, 1, tie)
            }
        };
        if aging.is_none() {
            let index = natural(first);
            return Some((key(index), index));
        }
        let mut best: Option<(Key, u32)> = None;
        for level in self.levels() {
            let link = self.levels[level];
            for index in [natural(level), link.head] {
                let candidate = (key(index), index);
                if best.is_none_or(|best| candidate.0 < best.0) {
                    best = Some(candidate);
                }
            }
        }
        best
    }

    /// The levels that have waiters, lowest first.
    fn levels(&self) -> impl Iterator<Item = usize> + '_ {
        self.nonempty
            .iter()
            .enumerate()
            .flat_map(|(word_index, &word)| {
                let mut bits = word;
                std::iter::from_fn(move || {
                    if bits == 0 {
                        return None;
                    }
                    let bit = bits.trailing_zeros() as usize;
                    bits &= bits - 1;
                    Some(word_index * 64 + bit)
                })
            })
    }

    fn waiting(&self, index: u32) -> Option<&Waiting> {
        match self.slots.get(index as usize) {
            Some(Slot::Waiting(waiting)) => Some(waiting),
            _ => None,
        }
    }

    fn waiting_mut(&mut self, index: u32) -> Option<&mut Waiting> {
        match self.slots.get_mut(index as usize) {
            Some(Slot::Waiting(waiting)) => Some(waiting),
            _ => None,
        }
    }

    /// Takes a waiting slot out of its level's list (the slot itself is left as it is).
    fn unlink(&mut self, index: u32) {
        let Some(waiting) = self.waiting(index) else {
            return;
        };
        let (level, prev, next) = (usize::from(waiting.level), waiting.prev, waiting.next);
        match self.waiting_mut(prev) {
            Some(previous) => previous.next = next,
            None => self.levels[level].head = next,
        }
        match self.waiting_mut(next) {
            Some(following) => following.prev = prev,
            None => self.levels[level].tail = prev,
        }
        if self.levels[level].head == NONE {
            self.nonempty[level / 64] &= !(1 << (level % 64));
        }
        self.len -= 1;
    }

    fn release_slot(&mut self, index: u32) {
        self.slots[index as usize] = Slot::Free { next: self.free };
        self.free = index;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(queue: &mut Queue, order: Order, aging: Option<(Duration, Instant)>) -> Vec<u32> {
        let mut granted = Vec::new();
        while let Some((_, index)) = queue.pick(order, aging) {
            queue.grant_next(order, aging).unwrap();
            granted.push(index);
        }
        granted
    }

    #[test]
    fn lower_levels_first_then_arrival_order() {
        let now = Instant::now();
        let mut queue = Queue::new();
        let a = queue.push(5, now, 1);
        let b = queue.push(1, now, 2);
        let c = queue.push(5, now, 3);
        let d = queue.push(200, now, 4);
        let e = queue.push(1, now, 5);
        assert_eq!(queue.len(), 5);
        assert_eq!(drain(&mut queue, Order::Fifo, None), [b, e, a, c, d]);
        assert!(queue.is_empty());
    }

    #[test]
    fn lifo_takes_the_newest_of_the_lowest_level() {
        let now = Instant::now();
        let mut queue = Queue::new();
        let a = queue.push(5, now, 6);
        let b = queue.push(5, now, 7);
        let c = queue.push(3, now, 8);
        assert_eq!(drain(&mut queue, Order::Lifo, None), [c, b, a]);
    }

    #[test]
    fn aged_waiters_compete_at_their_effective_level() {
        let start = Instant::now();
        let step = Duration::from_secs(1);
        let mut queue = Queue::new();
        let old = queue.push(9, start, 9);
        let later = start + Duration::from_secs(4);
        let fresh_six = queue.push(6, later, 10);
        let fresh_five = queue.push(5, later, 11);
        // `old` has waited 4 steps: it competes as a 5 and, aged, goes before the fresh 5.
        assert_eq!(
            drain(&mut queue, Order::Fifo, Some((step, later))),
            [old, fresh_five, fresh_six]
        );
    }

    #[test]
    fn cancelled_waiters_leave_and_their_slots_are_reused() {
        let now = Instant::now();
        let mut queue = Queue::new();
        let a = queue.push(5, now, 12);
        let b = queue.push(5, now, 13);
        let c = queue.push(5, now, 14);
        assert_eq!(queue.cancel(b), Look::Waiting);
        assert_eq!(queue.len(), 2);
        let d = queue.push(5, now, 15);
        assert_eq!(d, b, "the freed slot is reused");
        assert_eq!(drain(&mut queue, Order::Fifo, None), [a, c, d]);
        assert_eq!(queue.cancel(a), Look::Granted);
    }
}
