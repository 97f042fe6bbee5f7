//! The algorithms: one state type each, all deciding from the same [`Params`] and a time in
//! nanoseconds since the limiter's start.
//!
//! A state holds one limit's counters and nothing else, so a keyed store can keep one per key
//! sharing one `Params`, and a remote store can run the same decision elsewhere.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use portable_atomic::AtomicU128;

use crate::decision::{Limited, Snapshot};
use crate::limiter::{MAX_CAPACITY, Params, Span};

/// Which algorithm a limiter runs. All of them admit weighted requests.
///
/// | algorithm | state | admits | memory |
/// |---|---|---|---|
/// | [`Gcra`](Self::Gcra) (default) | one 64-bit atomic (a whole-nanosecond interval) or a 128-bit one (any other), lock-free (on x86-64 and AArch64) | `burst` at once, then one unit per `window / count` | 128 bytes (a cache-line pair of its own); a key in a keyed limiter: 8 bytes under a whole-nanosecond interval, 32 otherwise |
/// | [`TokenBucket`](Self::TokenBucket) | level + time behind a mutex | the same as GCRA | 16 bytes |
/// | [`SlidingWindowLog`](Self::SlidingWindowLog) | one timestamp per admission | `count` in any window of length `window` | up to `count` entries |
/// | [`SlidingWindowCounter`](Self::SlidingWindowCounter) | two counters | `count` by a weighted estimate over the last window | 24 bytes |
/// | [`FixedWindow`](Self::FixedWindow) | one counter | `count` per aligned window: **up to 2 × `count` across a window edge** | 16 bytes |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Algorithm {
    /// Generic cell rate algorithm: the whole state is one "theoretical arrival time" in an
    /// atomic, advanced by a compare-exchange loop: whole nanoseconds in 64 bits when the
    /// interval `window / count` is a whole number of nanoseconds, else nanoseconds and a
    /// fraction of one in 128 bits. Exact, smooth, lock-free; the default.
    #[default]
    Gcra,
    /// The classic bucket: holds up to `burst` tokens, refilled at `count` per window,
    /// continuously (fractions of a token included). Decides exactly as GCRA does.
    TokenBucket,
    /// Remembers when each admitted unit went through; admits while fewer than `count`
    /// units lie in the last `window`. Exact over every sliding window; memory grows with
    /// `count` (at most [`MAX_LOG_ENTRIES`](crate::MAX_LOG_ENTRIES)).
    SlidingWindowLog,
    /// Counts the current and the previous aligned window and weighs the previous by how
    /// much of it still overlaps the sliding window. Constant memory; assumes the previous
    /// window's traffic was even, so a sliding window can hold more than `count` when it was
    /// not.
    SlidingWindowCounter,
    /// Counts per aligned window (`[k·window, (k+1)·window)` from the limiter's start),
    /// resetting at each edge. Cheapest, but `count` at the end of one window and `count`
    /// at the start of the next go through back to back: **twice the quota** in one
    /// window's length at the edge.
    FixedWindow,
}

impl Algorithm {
    /// The algorithm's snake_case name: `"gcra"`, `"token_bucket"`, ...
    pub const fn as_str(self) -> &'static str {
        match self {
            Algorithm::Gcra => "gcra",
            Algorithm::TokenBucket => "token_bucket",
            Algorithm::SlidingWindowLog => "sliding_window_log",
            Algorithm::SlidingWindowCounter => "sliding_window_counter",
            Algorithm::FixedWindow => "fixed_window",
        }
    }

    /// Whether `burst` bounds a single check (GCRA, token bucket) rather than `count`.
    pub(crate) const fn uses_burst(self) -> bool {
        matches!(self, Algorithm::Gcra | Algorithm::TokenBucket)
    }
}

/// One limit's counters.
#[derive(Debug)]
pub(crate) enum State {
    Gcra(Gcra),
    TokenBucket(Mutex<Bucket>),
    Log(Mutex<Log>),
    Counter(Mutex<Counter>),
    Fixed(Mutex<Fixed>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The counters are consistent after every statement that can panic (none can), so a
    // poisoned lock holds valid state.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    pub(crate) fn new(algorithm: Algorithm, params: &Params) -> Self {
        match algorithm {
            Algorithm::Gcra => State::Gcra(Gcra::new(params)),
            Algorithm::TokenBucket => State::TokenBucket(Mutex::new(Bucket {
                level: params.capacity,
                last: 0,
            })),
            Algorithm::SlidingWindowLog => State::Log(Mutex::new(Log {
                entries: VecDeque::with_capacity(params.count as usize),
                used: 0,
            })),
            Algorithm::SlidingWindowCounter => State::Counter(Mutex::new(Counter::default())),
            Algorithm::FixedWindow => State::Fixed(Mutex::new(Fixed::default())),
        }
    }

    /// Decides a check of `cost` (at most the capacity) at `now`; `consume: false` only
    /// looks.
    #[inline(always)]
    pub(crate) fn check(
        &self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        match self {
            State::Gcra(gcra) => gcra.check(params, now, cost, consume),
            State::TokenBucket(bucket) => lock(bucket).check(params, now, cost, consume),
            State::Log(log) => lock(log).check(params, now, cost, consume),
            State::Counter(counter) => lock(counter).check(params, now, cost, consume),
            State::Fixed(fixed) => lock(fixed).check(params, now, cost, consume),
        }
    }

    /// Takes `cost` (at most the capacity) at `now` if the limit holds it, as `check` with
    /// `consume` does, without the snapshot: for callers that would not read it.
    #[inline(always)]
    pub(crate) fn admit(&self, params: &Params, now: u64, cost: u32) -> Result<(), Limited> {
        match self {
            State::Gcra(gcra) => gcra.admit(params, now, cost),
            _ => self.check(params, now, cost, true).map(drop),
        }
    }

    /// Makes room for a new quota (the log's entries).
    pub(crate) fn resize(&self, params: &Params) {
        if let State::Log(log) = self {
            let mut log = lock(log);
            let wanted = (params.count as usize).saturating_sub(log.entries.len());
            log.entries.reserve(wanted);
        }
    }

    /// Takes the form a new quota needs, once it is published (GCRA's exact time for a
    /// fractional interval). Callers serialise.
    pub(crate) fn requantize(&self, params: &Params) {
        if let State::Gcra(gcra) = self
            && !params.is_whole()
        {
            gcra.make_exact();
        }
    }
}

/// One limit's counters for a caller that holds them exclusively (a keyed map's entry,
/// behind its shard's lock): no atomics, no locks, and small, so a map of many keys stays
/// compact (32 bytes a limit; the sliding-window log's entries are boxed).
#[derive(Debug)]
pub(crate) enum Owned {
    /// GCRA's theoretical arrival time. Under a whole-nanosecond interval its fraction stays
    /// zero and the check runs in whole nanoseconds.
    Gcra(Span),
    TokenBucket(Bucket),
    Log(Box<Log>),
    Counter(Counter),
    Fixed(Fixed),
}

impl Owned {
    pub(crate) fn new(algorithm: Algorithm, params: &Params) -> Self {
        match algorithm {
            Algorithm::Gcra => Owned::Gcra(Span::default()),
            Algorithm::TokenBucket => Owned::TokenBucket(Bucket {
                level: params.capacity,
                last: 0,
            }),
            Algorithm::SlidingWindowLog => Owned::Log(Box::new(Log {
                entries: VecDeque::with_capacity(params.count as usize),
                used: 0,
            })),
            Algorithm::SlidingWindowCounter => Owned::Counter(Counter::default()),
            Algorithm::FixedWindow => Owned::Fixed(Fixed::default()),
        }
    }

    /// Decides a check of `cost` (at most the capacity) at `now`; `consume: false` only
    /// looks.
    #[inline]
    pub(crate) fn check(
        &mut self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        match self {
            Owned::Gcra(tat) => {
                if params.is_whole() && tat.frac == 0 {
                    let used = gcra_whole(params, tat.ns, now, cost)?;
                    if consume && cost > 0 {
                        *tat = Span::nanos(now.saturating_add(used));
                    }
                    return Ok(continuous(params, Span::nanos(used)));
                }
                let ahead = Span::unpack(tat.pack(), params);
                let used = gcra(params, ahead, now, cost)?;
                if consume && cost > 0 {
                    *tat = params.add(Span::nanos(now), used);
                }
                Ok(continuous(params, used))
            }
            Owned::TokenBucket(bucket) => bucket.check(params, now, cost, consume),
            Owned::Log(log) => log.check(params, now, cost, consume),
            Owned::Counter(counter) => counter.check(params, now, cost, consume),
            Owned::Fixed(fixed) => fixed.check(params, now, cost, consume),
        }
    }

    /// When this limit is back to its full capacity, as if it had never been used (in the
    /// limiter's nanoseconds; 0 if it already is): from then on, forgetting it changes
    /// nothing.
    pub(crate) fn idle_at(&self, params: &Params) -> u64 {
        match self {
            Owned::Gcra(tat) => Span::unpack(tat.pack(), params).ceil(),
            Owned::TokenBucket(bucket) => {
                let missing = params.sub(params.capacity, bucket.level(params));
                bucket.last.saturating_add(missing.ceil())
            }
            Owned::Log(log) => log
                .entries
                .back()
                .map_or(0, |&(at, _)| at.saturating_add(params.window)),
            Owned::Counter(counter) => {
                let windows = if counter.current > 0 {
                    2
                } else {
                    u64::from(counter.previous > 0)
                };
                (counter.index + windows).saturating_mul(params.window)
            }
            Owned::Fixed(fixed) => {
                if fixed.used > 0 {
                    (fixed.index + 1).saturating_mul(params.window)
                } else {
                    0
                }
            }
        }
    }
}

/// The snapshot of a continuous (GCRA, token bucket) limit with `used` of its capacity
/// taken.
#[inline]
fn continuous(params: &Params, used: Span) -> Snapshot {
    Snapshot {
        limit: params.policy_limit(),
        remaining: params.units(params.sub(params.capacity, used)),
        window_nanos: params.policy_window(),
        reset_nanos: used.ceil(),
    }
}

fn windowed(params: &Params, remaining: u64, reset: u64) -> Snapshot {
    Snapshot {
        limit: params.count,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        window_nanos: params.window,
        reset_nanos: reset,
    }
}

/// A refusal of a continuous limit: `used` would exceed the capacity; `held` is taken now.
#[cold]
fn over(params: &Params, used: Span, held: Span) -> Limited {
    Limited {
        // Rounded up: waiting that long admits the same check.
        retry_after_nanos: params.sub(used, params.capacity).ceil(),
        snapshot: continuous(params, held),
    }
}

/// GCRA: the theoretical arrival time of the next unit, in the limiter's nanoseconds. The
/// limit is full while it lies in the past; a unit pushes it one interval (`window / count`,
/// exactly) further; a check is refused when that would put it more than the capacity
/// (`burst` intervals) ahead.
///
/// Two forms:
///
/// - **whole** (an interval of whole nanoseconds, as `per_second(n)` has when `n` divides
///   10⁹): the time in `whole`, one 64-bit atomic, advanced by a compare-exchange loop (the
///   layout governor uses);
/// - **exact** (any other interval): the time and a fraction of a nanosecond (a [`Span`],
///   packed) in `exact`, a 128-bit atomic; `whole` then holds [`EXACT`].
///
/// A limit starts in the form its quota needs and moves from whole to exact, once, when its
/// quota changes to one with a fractional interval (and stays exact after).
///
/// Aligned to 128 bytes, so the two atomics have their cache line (and the neighbour x86
/// cores may fetch with it) to themselves: every admitted check writes the line, and the
/// quota and clock the checks read beside it would otherwise travel between cores with it.
/// Takes one unit's `span` from a whole-nanosecond arrival time `tat` at `now` if the
/// result is at most `now + capacity` (see [`Gcra::take_whole`]); the capacity then taken.
/// Also the keyed limiter's hit path, whose keys hold such a time each.
#[inline(always)]
pub(crate) fn take_whole(tat: &AtomicU64, now: u64, span: u64, capacity: u64) -> Option<u64> {
    if now >= MAX_CAPACITY {
        return None;
    }
    let bound = now + capacity;
    let mut current = tat.load(Ordering::Acquire);
    loop {
        let next = current.max(now) + span;
        if next > bound {
            return None;
        }
        match tat.compare_exchange_weak(current, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(next - now),
            Err(actual) => current = actual,
        }
    }
}

#[derive(Debug)]
#[repr(align(128))]
pub(crate) struct Gcra {
    whole: AtomicU64,
    exact: AtomicU128,
}

/// `Gcra::whole` once the time lives in `Gcra::exact`. A whole time never has this bit (it is
/// clamped below it: 292 years of nanoseconds).
pub(crate) const EXACT: u64 = 1 << 63;

/// GCRA's decision from the theoretical arrival time `tat`: the time taken after the check.
#[inline(always)]
fn gcra(params: &Params, tat: Span, now: u64, cost: u32) -> Result<Span, Limited> {
    let now = Span::nanos(now);
    // Zero when the arrival time is past: the limit is full.
    let ahead = params.sub(tat, now);
    let used = params.add(ahead, params.span(cost));
    if used > params.capacity {
        return Err(over(params, used, ahead));
    }
    Ok(used)
}

/// GCRA in whole nanoseconds: exact for a whole interval. (With a fractional quota read
/// while a quota change moves the state to its exact form, the cost is rounded up and the
/// capacity down: stricter by less than a nanosecond, for that check only.)
#[inline(always)]
fn gcra_whole(params: &Params, tat: u64, now: u64, cost: u32) -> Result<u64, Limited> {
    // Zero when the arrival time is past: the limit is full.
    let ahead = tat.saturating_sub(now);
    // Both below 2⁶³ (the span at most a little beyond `MAX_CAPACITY`): no overflow.
    let used = ahead + params.span(cost).ceil();
    if used > params.capacity.ns {
        return Err(over(params, Span::nanos(used), Span::nanos(ahead)));
    }
    Ok(used)
}

impl Gcra {
    /// A full limit, in the form `params` needs.
    pub(crate) fn new(params: &Params) -> Self {
        Self {
            whole: AtomicU64::new(if params.is_whole() { 0 } else { EXACT }),
            exact: AtomicU128::new(0),
        }
    }

    #[inline(always)]
    fn check(
        &self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        let mut tat = self.whole.load(Ordering::Acquire);
        loop {
            if tat & EXACT != 0 {
                return self.check_exact(params, now, cost, consume);
            }
            let used = gcra_whole(params, tat, now, cost)?;
            if !consume || cost == 0 {
                return Ok(continuous(params, Span::nanos(used)));
            }
            let next = now.saturating_add(used).min(EXACT - 1);
            match self
                .whole
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(continuous(params, Span::nanos(used))),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Takes one unit of `span` whole nanoseconds against a capacity of `capacity`
    /// nanoseconds at `now`, if the time is in its whole form and the limit holds it: the
    /// common case, with none of the quota's other words. The capacity then taken, in
    /// nanoseconds (what `gcra_whole` returns); `None` (having taken nothing) if refused,
    /// exact, or `now` is 146 years from the start: the caller then checks in full.
    ///
    /// `gcra_whole` and the update in `check`, rearranged so that little lies between
    /// reading the time and writing it back: the next time is `max(tat, now) + span`, admitted
    /// if it is at most `now + capacity`. With `now` and `capacity` below 2⁶² and `span`
    /// below 2⁵⁶, nothing overflows, the bound is below [`EXACT`] (so an admitted time keeps
    /// the bit clear, as the clamp in `check` does), and a time of [`EXACT`] always exceeds
    /// it.
    #[inline(always)]
    pub(crate) fn take_whole(&self, now: u64, span: u64, capacity: u64) -> Option<u64> {
        take_whole(&self.whole, now, span, capacity)
    }

    /// `check` with `consume`, without the snapshot.
    #[inline(always)]
    fn admit(&self, params: &Params, now: u64, cost: u32) -> Result<(), Limited> {
        let mut tat = self.whole.load(Ordering::Acquire);
        loop {
            if tat & EXACT != 0 {
                return self.check_exact(params, now, cost, true).map(drop);
            }
            let used = gcra_whole(params, tat, now, cost)?;
            if cost == 0 {
                return Ok(());
            }
            let next = now.saturating_add(used).min(EXACT - 1);
            match self
                .whole
                .compare_exchange_weak(tat, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(()),
                Err(actual) => tat = actual,
            }
        }
    }

    /// A limit whose time is `whole` (in its whole form, or [`EXACT`]).
    #[cfg(test)]
    pub(crate) fn with_time(whole: u64) -> Self {
        Self {
            whole: AtomicU64::new(whole),
            exact: AtomicU128::new(0),
        }
    }

    /// The time in its whole form (or [`EXACT`]).
    #[cfg(test)]
    pub(crate) fn time(&self) -> u64 {
        self.whole.load(Ordering::Acquire)
    }

    /// The exact form: a compare-exchange loop on the 128-bit time.
    #[inline(never)]
    fn check_exact(
        &self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        let mut packed = self.exact.load(Ordering::Acquire);
        loop {
            let used = gcra(params, Span::unpack(packed, params), now, cost)?;
            if !consume || cost == 0 {
                return Ok(continuous(params, used));
            }
            let tat = params.add(Span::nanos(now), used);
            match self.exact.compare_exchange_weak(
                packed,
                tat.pack(),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(continuous(params, used)),
                Err(actual) => packed = actual,
            }
        }
    }

    /// Moves the time to the exact form, if it is not there yet. Callers serialise (the
    /// quota's writer lock); checks may race: a check that updated the whole time before
    /// the move is carried over, and one after it sees [`EXACT`] and retries in the exact
    /// form.
    pub(crate) fn make_exact(&self) {
        let mut tat = self.whole.load(Ordering::Acquire);
        while tat & EXACT == 0 {
            // Only the mover writes `exact` while `whole` is not `EXACT`.
            self.exact.store(Span::nanos(tat).pack(), Ordering::Release);
            match self
                .whole
                .compare_exchange(tat, EXACT, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(actual) => tat = actual,
            }
        }
    }
}

/// Token bucket: `level`, the time's worth of units it holds (one unit per `window /
/// count`, fractions kept), refilled by the time elapsed since `last`, up to the capacity.
#[derive(Debug)]
pub(crate) struct Bucket {
    level: Span,
    last: u64,
}

impl Bucket {
    /// The level, its fraction read under the current quota.
    fn level(&self, params: &Params) -> Span {
        Span::unpack(self.level.pack(), params)
    }

    fn check(
        &mut self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        let elapsed = Span::nanos(now.saturating_sub(self.last));
        self.level = params.add(self.level(params), elapsed).min(params.capacity);
        self.last = self.last.max(now);
        let needed = params.span(cost);
        if needed > self.level {
            let missing = params.sub(params.capacity, self.level);
            let used = params.add(missing, needed);
            return Err(over(params, used, missing));
        }
        let level = params.sub(self.level, needed);
        if consume {
            self.level = level;
        }
        Ok(continuous(params, params.sub(params.capacity, level)))
    }
}

/// Sliding-window log: `(time, cost)` of each admission in the last window; `used` is their
/// sum. An entry counts while `now < time + window`.
#[derive(Debug)]
pub(crate) struct Log {
    entries: VecDeque<(u64, u32)>,
    used: u64,
}

impl Log {
    fn check(
        &mut self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        let window = params.window;
        while let Some(&(at, n)) = self.entries.front() {
            if at.saturating_add(window) > now {
                break;
            }
            self.used -= u64::from(n);
            self.entries.pop_front();
        }
        let limit = u64::from(params.count);
        let cost64 = u64::from(cost);
        if self.used + cost64 > limit {
            // Wait until enough of the oldest entries have left the window.
            let mut to_free = self.used + cost64 - limit;
            let mut retry = 0;
            for &(at, n) in &self.entries {
                retry = at + window - now;
                to_free = to_free.saturating_sub(u64::from(n));
                if to_free == 0 {
                    break;
                }
            }
            let reset = self.entries.back().map_or(0, |&(at, _)| at + window - now);
            return Err(Limited {
                retry_after_nanos: retry,
                snapshot: windowed(params, limit.saturating_sub(self.used), reset),
            });
        }
        if consume && cost > 0 {
            match self.entries.back_mut() {
                Some((at, n)) if *at == now => *n += cost,
                _ => self.entries.push_back((now, cost)),
            }
            self.used += cost64;
            return Ok(windowed(params, limit - self.used, window));
        }
        let reset = self.entries.back().map_or(0, |&(at, _)| at + window - now);
        let after = if cost > 0 { window } else { reset };
        Ok(windowed(params, limit - self.used - cost64, after))
    }
}

/// Sliding-window counter: admissions in the current aligned window (`index`) and the one
/// before. The estimate over the sliding window is
/// `previous × (window − elapsed) / window + current`.
#[derive(Debug, Default)]
pub(crate) struct Counter {
    index: u64,
    current: u64,
    previous: u64,
}

impl Counter {
    fn check(
        &mut self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        let window = params.window;
        let index = now / window;
        if index == self.index + 1 {
            self.previous = self.current;
            self.current = 0;
        } else if index > self.index + 1 {
            self.previous = 0;
            self.current = 0;
        }
        // (An earlier index only follows a longer window set at runtime: the counts carry
        // over into the new window.)
        self.index = index;
        let elapsed = now - self.index * window;
        let w = u128::from(window);
        let limit = u128::from(params.count);
        let cost = u128::from(cost);
        // Everything times `window`, to stay in integers.
        let weighted_previous = u128::from(self.previous) * (w - u128::from(elapsed));
        let current = u128::from(self.current);
        let used = weighted_previous + current * w;
        if used + cost * w > limit * w {
            let wait = if current + cost <= limit {
                // The previous window's weight must decay enough within this one.
                let room = (limit - current - cost) * w;
                let at = w - room / u128::from(self.previous);
                at - u128::from(elapsed)
            } else {
                // Only in the next window, where this one is the previous.
                let room = (limit - cost) * w;
                let at = w - room / current.max(1);
                (w - u128::from(elapsed)) + at
            };
            let remaining = (limit * w).saturating_sub(used) / w;
            return Err(Limited {
                retry_after_nanos: u64::try_from(wait).unwrap_or(u64::MAX),
                snapshot: windowed(
                    params,
                    u64::try_from(remaining).unwrap_or(u64::MAX),
                    self.reset(window, elapsed),
                ),
            });
        }
        let after = used + cost * w;
        if consume {
            self.current += u64::try_from(cost).unwrap_or(u64::MAX);
        }
        let remaining = u64::try_from((limit * w - after) / w).unwrap_or(u64::MAX);
        let reset = if consume {
            self.reset(window, elapsed)
        } else {
            0
        };
        Ok(windowed(params, remaining, reset))
    }

    /// Until both counters weigh nothing.
    fn reset(&self, window: u64, elapsed: u64) -> u64 {
        if self.current > 0 {
            2 * window - elapsed
        } else if self.previous > 0 {
            window - elapsed
        } else {
            0
        }
    }
}

/// Fixed window: admissions in the aligned window `index`.
#[derive(Debug, Default)]
pub(crate) struct Fixed {
    index: u64,
    used: u64,
}

impl Fixed {
    fn check(
        &mut self,
        params: &Params,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> Result<Snapshot, Limited> {
        let window = params.window;
        let index = now / window;
        if index > self.index {
            self.used = 0;
        }
        // (An earlier index only follows a longer window set at runtime: the count carries
        // over into the new window.)
        self.index = index;
        let end = (self.index + 1) * window - now;
        let limit = u64::from(params.count);
        let cost = u64::from(cost);
        if self.used + cost > limit {
            return Err(Limited {
                retry_after_nanos: end,
                snapshot: windowed(params, limit.saturating_sub(self.used), end),
            });
        }
        let after = self.used + cost;
        if consume {
            self.used = after;
        }
        Ok(windowed(
            params,
            limit - after,
            if after > 0 { end } else { 0 },
        ))
    }
}
