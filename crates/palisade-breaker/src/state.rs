//! The breaker itself: one state word, one window, and the transitions between states.
//!
//! Admission and recording are lock-free. The state is one `AtomicU64`:
//!
//! ```text
//!  63                      31            17            3     0
//!  | generation (33 bits)   | successes  | admitted   | tag |
//! ```
//!
//! `tag` is the [`State`]; `admitted` and `successes` count the current half-open cycle's
//! probes; `generation` grows by one at every state change. A permit remembers the
//! generation it was issued in, and its outcome is dropped if the breaker has moved on since:
//! a call admitted while closed that ends after the breaker opened, or a probe of an earlier
//! cycle, never counts in the new state.
//!
//! State changes that need more than one word (open: pick the wait; close: clear the window)
//! take a mutex, so they happen one at a time; the hot path never touches it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_core::backoff::{Delays, Jitter};
use palisade_core::classify::Outcome;
use palisade_core::event::Listener;
use palisade_core::reject::CircuitOpen;
use tokio::time::Instant;

use crate::config::{CircuitBreakerConfig, TripPolicy};
use crate::event::{BreakerEvent, State};
use crate::window::{Recorder, WindowCounts};

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FORCED_OPEN: u64 = 3;
const DISABLED: u64 = 4;
const METRICS_ONLY: u64 = 5;

const TAG_BITS: u32 = 3;
const COUNT_BITS: u32 = 14;
const ADMITTED_SHIFT: u32 = TAG_BITS;
const SUCCESS_SHIFT: u32 = TAG_BITS + COUNT_BITS;
const GENERATION_SHIFT: u32 = TAG_BITS + 2 * COUNT_BITS;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const ADMITTED_ONE: u64 = 1 << ADMITTED_SHIFT;
const SUCCESS_ONE: u64 = 1 << SUCCESS_SHIFT;

const fn tag(word: u64) -> u64 {
    word & ((1 << TAG_BITS) - 1)
}

const fn admitted(word: u64) -> u64 {
    (word >> ADMITTED_SHIFT) & COUNT_MASK
}

const fn successes(word: u64) -> u64 {
    (word >> SUCCESS_SHIFT) & COUNT_MASK
}

const fn generation(word: u64) -> u64 {
    word >> GENERATION_SHIFT
}

/// The first word of state `tag` after `word`: a new generation, no probes.
const fn next_word(word: u64, tag: u64) -> u64 {
    (generation(word).wrapping_add(1) << GENERATION_SHIFT) | tag
}

const fn state_of(tag: u64) -> State {
    match tag {
        CLOSED => State::Closed,
        OPEN => State::Open,
        HALF_OPEN => State::HalfOpen,
        FORCED_OPEN => State::ForcedOpen,
        DISABLED => State::Disabled,
        _ => State::MetricsOnly,
    }
}

const fn tag_of(state: State) -> u64 {
    match state {
        State::Closed => CLOSED,
        State::Open => OPEN,
        State::HalfOpen => HALF_OPEN,
        State::ForcedOpen => FORCED_OPEN,
        State::Disabled => DISABLED,
        State::MetricsOnly => METRICS_ONLY,
    }
}

/// The right to make one call, and to record its outcome: the generation it was issued in
/// and whether it is a probe, in one non-zero word (so `Option<Permit>` is 8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Permit(std::num::NonZeroU64);

impl Permit {
    const PROBE: u64 = 1;
    const SET: u64 = 1 << 63;

    fn new(generation: u64, probe: bool) -> Self {
        let bits = Self::SET | (generation << 1) | if probe { Self::PROBE } else { 0 };
        Self(std::num::NonZeroU64::new(bits).unwrap_or(std::num::NonZeroU64::MAX))
    }

    fn generation(self) -> u64 {
        (self.0.get() & !Self::SET) >> 1
    }

    pub(crate) fn is_probe(self) -> bool {
        self.0.get() & Self::PROBE != 0
    }
}

/// What the breaker's window and counters hold at one moment; read with
/// [`CircuitBreakerHandle::metrics`](crate::CircuitBreakerHandle::metrics).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct Metrics {
    /// The state.
    pub state: State,
    /// Calls in the window (for the consecutive-failures policy: the current streak).
    pub calls: u32,
    /// Failed calls in the window (for the consecutive-failures policy: in a row).
    pub failures: u32,
    /// Slow calls in the window.
    pub slow_calls: u32,
    /// Calls rejected since the breaker was built.
    pub rejections: u64,
}

impl Metrics {
    /// Failures as a percentage of the window's calls; 0 for an empty window.
    pub fn failure_rate(&self) -> f64 {
        percent(self.failures, self.calls)
    }

    /// Slow calls as a percentage of the window's calls; 0 for an empty window.
    pub fn slow_call_rate(&self) -> f64 {
        percent(self.slow_calls, self.calls)
    }
}

fn percent(part: u32, whole: u32) -> f64 {
    if whole == 0 {
        0.0
    } else {
        f64::from(part) * 100.0 / f64::from(whole)
    }
}

/// The state shared by a layer, every service it builds, their clones and handles.
pub(crate) struct Shared<C> {
    word: AtomicU64,
    /// While open: when the wait ends, in nanoseconds since `epoch`. Written before the
    /// state word that publishes it.
    open_until: AtomicU64,
    /// The wait of the latest opening, in nanoseconds: the retry-after of rejections that
    /// have no wait of their own (half-open and full, forced open).
    hint_nanos: AtomicU64,
    rejections: AtomicU64,
    epoch: Instant,
    recorder: Recorder,
    config: CircuitBreakerConfig,
    name: Arc<str>,
    slow_threshold: Option<Duration>,
    probes: u64,
    pub(crate) classify: C,
    /// The open-wait delays of the current run of trips; reset when the breaker closes.
    delays: Mutex<Delays>,
}

impl<C> std::fmt::Debug for Shared<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

impl<C> Shared<C> {
    pub(crate) fn new(config: CircuitBreakerConfig, classify: C) -> Self {
        let first_wait = config
            .open_wait
            .with_jitter(Jitter::None)
            .delays()
            .next()
            .unwrap_or_default();
        Self {
            word: AtomicU64::new(CLOSED),
            open_until: AtomicU64::new(0),
            hint_nanos: AtomicU64::new(nanos(first_wait)),
            rejections: AtomicU64::new(0),
            epoch: Instant::now(),
            recorder: Recorder::new(&config.policy),
            name: Arc::from(config.name.as_ref()),
            slow_threshold: config.slow_threshold(),
            probes: u64::from(config.probes.get()),
            delays: Mutex::new(config.open_wait.delays()),
            classify,
            config,
        }
    }

    /// Nanoseconds since the breaker was built, on tokio's (pausable) clock.
    ///
    /// Never inlined: the clock is read off the healthy count-window path, and inlined into
    /// `poll_ready`'s open-state branch it made the callers too big to inline in turn
    /// (`ServiceExt::ready`'s future, measured: about 35 instructions per call).
    #[inline(never)]
    pub(crate) fn now(&self) -> u64 {
        nanos(Instant::now().saturating_duration_since(self.epoch))
    }

    /// Whether a call's outcome needs its start time, besides what the classifier asks for.
    pub(crate) fn times_calls(&self) -> bool {
        self.slow_threshold.is_some()
    }

    /// Whether a call that took `elapsed` counts as slow.
    pub(crate) fn is_slow(&self, elapsed: Duration) -> bool {
        self.slow_threshold
            .is_some_and(|threshold| elapsed >= threshold)
    }

    pub(crate) fn state(&self) -> State {
        state_of(tag(self.word.load(Ordering::Acquire)))
    }

    /// The rejection a call would get now, without side effects: lets `poll_ready` fail
    /// fast instead of waiting on an inner service while the breaker is open.
    #[inline]
    pub(crate) fn peek_rejection(&self) -> Option<CircuitOpen> {
        let word = self.word.load(Ordering::Acquire);
        match tag(word) {
            OPEN => {
                let (now, until) = (self.now(), self.open_until.load(Ordering::Acquire));
                (now < until).then(|| CircuitOpen::new(Duration::from_nanos(until - now)))
            }
            FORCED_OPEN => Some(CircuitOpen::new(self.hint())),
            _ => None,
        }
    }

    /// For `poll_ready`: whether to answer ready at once and fail the next call fast (the
    /// breaker rejects now), keeping the rejection in `decided` for that call. Once decided,
    /// it stays decided until the call takes it.
    #[inline]
    pub(crate) fn fail_fast(&self, decided: &mut Option<CircuitOpen>) -> bool {
        if decided.is_none() {
            *decided = self.peek_rejection();
        }
        decided.is_some()
    }

    /// Admits a call: a permit to record its outcome, `None` for a disabled breaker (nothing
    /// to record), or the rejection.
    #[inline]
    pub(crate) fn acquire(&self) -> Result<Option<Permit>, CircuitOpen> {
        let word = self.word.load(Ordering::Acquire);
        if tag(word) == CLOSED {
            return Ok(Some(Permit::new(generation(word), false)));
        }
        self.acquire_other(word)
    }

    /// [`Shared::acquire`] in any state but closed.
    #[inline(never)]
    fn acquire_other(&self, mut word: u64) -> Result<Option<Permit>, CircuitOpen> {
        loop {
            let permit = |word, probe| Permit::new(generation(word), probe);
            match tag(word) {
                CLOSED | METRICS_ONLY => return Ok(Some(permit(word, false))),
                DISABLED => return Ok(None),
                FORCED_OPEN => return Err(self.reject(State::ForcedOpen, self.hint())),
                OPEN => {
                    let (now, until) = (self.now(), self.open_until.load(Ordering::Acquire));
                    if now < until {
                        let left = Duration::from_nanos(until - now);
                        return Err(self.reject(State::Open, left));
                    }
                    // The wait is over: this call becomes the first probe.
                    let probing = next_word(word, HALF_OPEN) + ADMITTED_ONE;
                    match self.swap(word, probing) {
                        Ok(()) => {
                            self.announce(State::Open, State::HalfOpen, None);
                            return Ok(Some(permit(probing, true)));
                        }
                        Err(actual) => word = actual,
                    }
                }
                _ => {
                    if admitted(word) >= self.probes {
                        return Err(self.reject(State::HalfOpen, self.hint()));
                    }
                    match self.swap(word, word + ADMITTED_ONE) {
                        Ok(()) => return Ok(Some(permit(word, true))),
                        Err(actual) => word = actual,
                    }
                }
            }
        }
    }

    /// Records the outcome of a permitted call. `Outcome::Ignored` also stands for a call
    /// that was cancelled: it counts for nothing and frees its probe slot.
    #[inline]
    pub(crate) fn record(&self, permit: Permit, outcome: Outcome, slow: bool) {
        // The healthy closed path: a plain success into a window it cannot change (whatever
        // the state, recording it would change nothing), so read the window and stop.
        if !permit.is_probe() && outcome == Outcome::Success && !slow && self.recorder.is_quiet() {
            return;
        }
        self.record_changing(permit, outcome, slow);
    }

    /// [`Shared::record`] for an outcome that may change the window or the state.
    #[inline(never)]
    fn record_changing(&self, permit: Permit, outcome: Outcome, slow: bool) {
        if permit.is_probe() {
            self.record_probe(permit.generation(), outcome, slow);
        } else if outcome != Outcome::Ignored {
            self.record_call(permit.generation(), outcome == Outcome::Failure, slow);
        }
    }

    #[inline]
    fn record_call(&self, permit_generation: u64, failure: bool, slow: bool) {
        let word = self.word.load(Ordering::Acquire);
        let state = tag(word);
        if generation(word) != permit_generation || !(state == CLOSED || state == METRICS_ONLY) {
            return; // admitted before a state change: it says nothing about this state
        }
        let now = if self.recorder.needs_clock() {
            self.now()
        } else {
            0
        };
        let counts = self.recorder.record(failure, slow, now);
        if state == CLOSED && self.should_trip(counts) {
            self.change(|current| current == word, State::Open);
        }
    }

    fn should_trip(&self, counts: WindowCounts) -> bool {
        match self.config.policy {
            TripPolicy::Consecutive(n) => counts.failures >= n.get(),
            TripPolicy::Rate {
                min_calls,
                failure_rate,
                slow,
                ..
            } => {
                let calls = f64::from(counts.calls);
                counts.calls >= min_calls
                    && (f64::from(counts.failures) * 100.0 >= failure_rate * calls
                        || slow.is_some_and(|s| f64::from(counts.slow) * 100.0 >= s.rate * calls))
            }
        }
    }

    #[inline(never)]
    fn record_probe(&self, permit_generation: u64, outcome: Outcome, slow: bool) {
        // A slow probe says the service has not recovered.
        let outcome = match outcome {
            Outcome::Success if slow => Outcome::Failure,
            other => other,
        };
        let same_cycle =
            move |word: u64| generation(word) == permit_generation && tag(word) == HALF_OPEN;
        let mut word = self.word.load(Ordering::Acquire);
        loop {
            if !same_cycle(word) {
                return; // a probe of an earlier cycle
            }
            let next = match outcome {
                Outcome::Failure => {
                    self.change(same_cycle, State::Open);
                    return;
                }
                Outcome::Success if successes(word) + 1 >= self.probes => {
                    self.change(same_cycle, State::Closed);
                    return;
                }
                Outcome::Success => word + SUCCESS_ONE,
                Outcome::Ignored => word - ADMITTED_ONE,
            };
            match self.swap(word, next) {
                Ok(()) => return,
                Err(actual) => word = actual,
            }
        }
    }

    fn swap(&self, current: u64, new: u64) -> Result<(), u64> {
        self.word
            .compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire)
            .map(drop)
    }

    /// Moves to `to` if the state word still satisfies `expect`; `false` if it did not.
    /// Entering open picks the next wait; entering closed or metrics-only clears the window;
    /// entering closed also restarts the open-wait backoff.
    #[cold]
    pub(crate) fn change(&self, expect: impl Fn(u64) -> bool, to: State) -> bool {
        let mut delays = self.delays.lock().unwrap_or_else(PoisonError::into_inner);
        let mut word = self.word.load(Ordering::Acquire);
        if !expect(word) {
            return false;
        }
        let mut open_for = None;
        match to {
            State::Open => {
                let wait = delays.next().unwrap_or_else(|| self.hint());
                self.hint_nanos.store(nanos(wait), Ordering::Relaxed);
                let until = self.now().saturating_add(nanos(wait));
                self.open_until.store(until, Ordering::Release);
                open_for = Some(wait);
            }
            State::Closed | State::MetricsOnly => {
                self.recorder.reset();
                if to == State::Closed {
                    *delays = self.config.open_wait.delays();
                }
            }
            State::HalfOpen | State::ForcedOpen | State::Disabled => {}
        }
        // Probe admissions and outcomes change the word without the lock: retry on those.
        loop {
            match self.swap(word, next_word(word, tag_of(to))) {
                Ok(()) => break,
                Err(actual) if expect(actual) => word = actual,
                Err(_) => return false,
            }
        }
        drop(delays);
        self.announce(state_of(tag(word)), to, open_for);
        true
    }

    fn hint(&self) -> Duration {
        Duration::from_nanos(self.hint_nanos.load(Ordering::Relaxed))
    }

    #[cold]
    fn reject(&self, state: State, retry_after: Duration) -> CircuitOpen {
        self.rejections.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(breaker = %self.name, %state, ?retry_after, "call rejected: circuit open");
        if let Some(listener) = &self.config.listener {
            listener.on_event(&BreakerEvent::Rejected {
                name: Arc::clone(&self.name),
                state,
                retry_after,
            });
        }
        CircuitOpen::new(retry_after)
    }

    /// Counts a rejection decided earlier by [`Shared::peek_rejection`].
    pub(crate) fn rejected(&self, rejection: CircuitOpen) -> CircuitOpen {
        use palisade_core::RetryAfter;
        let state = self.state();
        self.reject(state, rejection.retry_after().unwrap_or_default())
    }

    fn announce(&self, from: State, to: State, open_for: Option<Duration>) {
        if to == State::Open {
            tracing::warn!(breaker = %self.name, %from, ?open_for, "circuit breaker opened");
        } else {
            tracing::info!(breaker = %self.name, %from, %to, "circuit breaker state changed");
        }
        if let Some(listener) = &self.config.listener {
            listener.on_event(&BreakerEvent::StateChanged {
                name: Arc::clone(&self.name),
                from,
                to,
                open_for,
            });
        }
    }

    pub(crate) fn metrics(&self) -> Metrics {
        let counts = self.recorder.counts(self.now());
        Metrics {
            state: self.state(),
            calls: counts.calls,
            failures: counts.failures,
            slow_calls: counts.slow,
            rejections: self.rejections.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

/// One reference to a breaker, alone on its cache line. Calls in flight hold one each.
#[repr(align(64))]
pub(crate) struct Slot<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Slot<C> {
    pub(crate) fn new(shared: Arc<Shared<C>>) -> Self {
        Self { shared }
    }

    /// The breaker, for handles.
    pub(crate) fn shared(&self) -> &Arc<Shared<C>> {
        &self.shared
    }
}

impl<C> std::ops::Deref for Slot<C> {
    type Target = Shared<C>;

    fn deref(&self) -> &Shared<C> {
        &self.shared
    }
}

/// How many [`Slot`]s a breaker shared by a layer has.
const SLOTS: usize = 8;

/// A breaker behind several reference counts, one per [`Slot`]. Each service (and each
/// clone) takes the references for its calls from the slot it was given, in turn, so
/// services on different threads sharing one breaker do not contend on one reference count
/// (and on the cache line of the state next to it) with every call.
pub(crate) struct Slots<C> {
    slots: [Arc<Slot<C>>; SLOTS],
    /// The slot [`Slots::pick`] hands out next.
    next: AtomicUsize,
}

impl<C> Slots<C> {
    pub(crate) fn new(shared: Shared<C>) -> Self {
        let shared = Arc::new(shared);
        Self {
            slots: std::array::from_fn(|_| Arc::new(Slot::new(Arc::clone(&shared)))),
            next: AtomicUsize::new(0),
        }
    }

    /// A slot for a new service, in turn: services (and clones) made one after another,
    /// typically one per connection or per thread, take their calls' references from
    /// different slots, without a thread-local lookup per call.
    pub(crate) fn pick(&self) -> Arc<Slot<C>> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % SLOTS;
        Arc::clone(&self.slots[index])
    }

    /// The breaker, for handles.
    pub(crate) fn shared(&self) -> &Arc<Shared<C>> {
        self.slots[0].shared()
    }
}

impl<C> std::fmt::Debug for Slots<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self.shared(), f)
    }
}

impl<C> std::ops::Deref for Slots<C> {
    type Target = Shared<C>;

    fn deref(&self) -> &Shared<C> {
        &self.slots[0]
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What a [`CircuitBreakerHandle`](crate::CircuitBreakerHandle) needs, without the
/// classifier's type.
pub(crate) trait Control: Send + Sync {
    fn state(&self) -> State;
    fn metrics(&self) -> Metrics;
    fn set(&self, to: State) -> bool;
    fn name(&self) -> &str;
}

impl<C: Send + Sync> Control for Shared<C> {
    fn state(&self) -> State {
        Shared::state(self)
    }

    fn metrics(&self) -> Metrics {
        Shared::metrics(self)
    }

    fn set(&self, to: State) -> bool {
        self.change(|_| true, to)
    }

    fn name(&self) -> &str {
        Shared::name(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_word_fields_do_not_overlap() {
        let word =
            (5u64 << GENERATION_SHIFT) | (7 << SUCCESS_SHIFT) | (9 << ADMITTED_SHIFT) | HALF_OPEN;
        assert_eq!(
            (tag(word), admitted(word), successes(word), generation(word)),
            (HALF_OPEN, 9, 7, 5)
        );
        let next = next_word(word, OPEN);
        assert_eq!(
            (tag(next), admitted(next), successes(next), generation(next)),
            (OPEN, 0, 0, 6)
        );
        assert!(u64::from(crate::config::MAX_PROBES) <= COUNT_MASK);
    }

    #[test]
    fn generation_wraps_instead_of_overflowing() {
        let last = !((1u64 << GENERATION_SHIFT) - 1);
        assert_eq!(generation(next_word(last, CLOSED)), 0);
    }
}
