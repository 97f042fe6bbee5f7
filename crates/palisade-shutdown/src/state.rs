//! The state every part of a shutdown shares.
//!
//! Requests in flight are counted by the [`Core`](crate::inflight::Core) (per-thread slots,
//! see [`inflight`](crate::inflight)); registered tasks (guards, `serve`'s connections)
//! by a counter of their own, which the drain closes when it ends, so that a guard made
//! afterwards tracks nothing.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::{Context, Waker};
use std::time::Duration;

use palisade_core::event::Listener as _;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::event::ShutdownEvent;
use crate::hook::Hook;
pub(crate) use crate::inflight::{Core, InFlight, Slot};
use crate::phase::Phase;
use crate::signal::Signals;

/// How often the drain adds up the in-flight counters when nothing woke it. Requests that
/// finish during a shutdown wake it at once; the tick only catches one that finished while
/// the shutdown was starting (it could not tell it had to).
const DRAIN_TICK: Duration = Duration::from_millis(10);

/// Set in `tasks` when the drain is over: no task registers any more.
const TASKS_CLOSED: usize = 1 << (usize::BITS - 1);

/// Everything one [`Shutdown`](crate::Shutdown) is: shared by its clones, its layers, its
/// guards and its health service.
pub(crate) struct State {
    pub(crate) core: &'static Core,
    /// Registered tasks alive, and [`TASKS_CLOSED`] once the drain is over.
    tasks: AtomicUsize,
    phase_tx: watch::Sender<Phase>,
    /// How many times the shutdown was triggered: 1 starts it, 2 forces it.
    pub(crate) trigger_count: AtomicU32,
    /// The trigger count as `run` sees it (at most 2): published once the trigger has
    /// reported it, so that `run`'s phases are reported after the trigger's.
    pub(crate) triggers: watch::Sender<u32>,
    /// Cancelled at the drain deadline, or at once on a forced stop.
    pub(crate) cancel: CancellationToken,
    /// Cancelled when the drain begins: long-lived work is told to stop. A child of
    /// `cancel`, so cancelling that cancels this too.
    pub(crate) stop: CancellationToken,
    pub(crate) started: Instant,
    pub(crate) config: Config,
    pub(crate) hooks: Mutex<Vec<Hook>>,
    pub(crate) running: AtomicBool,
    /// SIGTERM / SIGINT, listened to from `build` (inside a runtime) until `run` takes them.
    #[cfg_attr(not(feature = "signal"), allow(dead_code))]
    pub(crate) signals: Mutex<Option<Signals>>,
    /// How many times the health endpoint has answered `503`.
    probes: AtomicU32,
    /// Notified (with a stored permit) when `probes` reaches the configured count.
    probed: Notify,
}

impl State {
    pub(crate) fn new(config: Config, hooks: Vec<Hook>) -> std::sync::Arc<Self> {
        let cancel = CancellationToken::new();
        let stop = cancel.child_token();
        std::sync::Arc::new(State {
            core: Core::acquire(),
            tasks: AtomicUsize::new(0),
            phase_tx: watch::Sender::new(Phase::Running),
            trigger_count: AtomicU32::new(0),
            triggers: watch::Sender::new(0),
            cancel,
            stop,
            started: Instant::now(),
            config,
            hooks: Mutex::new(hooks),
            running: AtomicBool::new(false),
            signals: Mutex::new(None),
            probes: AtomicU32::new(0),
            probed: Notify::new(),
        })
    }

    pub(crate) fn phase(&self) -> Phase {
        self.core.load_phase()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<Phase> {
        self.phase_tx.subscribe()
    }

    /// Moves forward to `to`: the atomic first (what requests read), then events (so that
    /// logs say "phase changed" before what servers do about it), then the watch, then, at
    /// the deadline, the requests still waiting are woken. Phases only move forward: when
    /// the phase already is `to` or later, nothing happens.
    pub(crate) fn set_phase(&self, to: Phase) {
        if let Some(from) = self.core.advance_phase(to) {
            self.report_phase(from, to);
        }
    }

    /// Reports a move from `from` to `to` that the atomic already made.
    pub(crate) fn report_phase(&self, from: Phase, to: Phase) {
        let (in_flight, tasks) = (self.in_flight(), self.tasks());
        tracing::info!(
            from = from.as_str(),
            to = to.as_str(),
            in_flight,
            tasks,
            "shutdown phase changed"
        );
        self.emit(&ShutdownEvent::PhaseChanged {
            from,
            to,
            in_flight,
            tasks,
        });
        // Forward only, like the atomic: a report that comes late (the trigger's, racing
        // `run` on another thread) does not move the watch back.
        self.phase_tx.send_if_modified(|phase| {
            let advance = *phase < to;
            if advance {
                *phase = to;
            }
            advance
        });
        if from < Phase::Cancelling && to >= Phase::Cancelling {
            self.core.wake_waiting();
        }
    }

    pub(crate) fn emit(&self, event: &ShutdownEvent) {
        if let Some(listener) = &self.config.listener {
            listener.on_event(event);
        }
    }

    /// Requests in flight. Exact when nothing is changing.
    pub(crate) fn in_flight(&self) -> usize {
        self.core.in_flight()
    }

    pub(crate) fn tasks(&self) -> usize {
        self.tasks.load(Ordering::Acquire) & !TASKS_CLOSED
    }

    /// Counts a `503` answered by the health endpoint; the one that reaches
    /// [`grace_until_probed`](crate::ShutdownBuilder::grace_until_probed)'s count ends the
    /// grace delay.
    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub(crate) fn probed_unhealthy(&self) {
        let probes = self.probes.fetch_add(1, Ordering::AcqRel).saturating_add(1);
        if self.config.grace_probes == Some(probes) {
            self.probed.notify_one();
        }
    }

    /// The grace delay: `delay`, or less if the health endpoint has answered `503` as many
    /// times as configured.
    pub(crate) async fn grace(&self, delay: Duration) {
        let Some(target) = self.config.grace_probes else {
            return tokio::time::sleep(delay).await;
        };
        let probed = async {
            while self.probes.load(Ordering::Acquire) < target {
                self.probed.notified().await;
            }
        };
        tokio::select! {
            () = probed => tracing::info!(
                probes = target,
                "grace delay ended early: the health endpoint answered 503 as often as configured"
            ),
            () = tokio::time::sleep(delay) => {}
        }
    }

    /// Resolves once every in-flight request and task is done; from then on, no task
    /// registers. Adds up the counters when woken and on a short tick.
    pub(crate) async fn drained(&self) {
        loop {
            if self.in_flight() == 0 && self.close_tasks() {
                return;
            }
            tokio::select! {
                () = self.core.drained.notified() => {}
                () = tokio::time::sleep(DRAIN_TICK) => {}
            }
        }
    }

    /// Closes task registration if no task is alive; whether it is closed.
    fn close_tasks(&self) -> bool {
        self.tasks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tasks| {
                (tasks & !TASKS_CLOSED == 0).then_some(TASKS_CLOSED)
            })
            .is_ok()
    }

    /// Registers a task; `false` when the drain is over.
    pub(crate) fn register_task(&self) -> bool {
        self.tasks
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |tasks| {
                (tasks & TASKS_CLOSED == 0).then_some(tasks + 1)
            })
            .is_ok()
    }

    pub(crate) fn unregister_task(&self) {
        self.tasks.fetch_sub(1, Ordering::AcqRel);
        self.core.drained.notify_one();
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.core.release();
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .field("tasks", &self.tasks())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The part of a request future or body that cuts it at the deadline.
///
/// While running, a poll that finds the inner future ready costs one relaxed load. The
/// first time the inner future is pending, the request leaves its waker with its slot's
/// [`Waiters`](crate::inflight::Waiters) (one lock of that slot, which the thread that
/// started the request owns; no allocation once the slot has had as many requests waiting
/// at once), and the deadline wakes it however long it has been waiting: a request that
/// never makes progress again (an SSE stream without heartbeats, a handler stuck in a
/// database call) is still cut. Later pending polls compare the waker with the registered
/// one and take the lock again only if it changed. The registration is given back when the
/// request ends.
#[derive(Default)]
pub(crate) struct Deadline {
    registration: Option<Registration>,
}

/// A waker left with a slot's waiters.
struct Registration {
    slot: &'static Slot,
    key: usize,
    /// Which waker is registered: what [`Waker::will_wake`] compares.
    waker: WakerId,
}

/// A waker's identity, without holding a reference to it (the registered clone keeps its
/// task alive, so the address cannot be reused meanwhile).
#[derive(Clone, Copy, PartialEq, Eq)]
struct WakerId {
    data: usize,
    vtable: usize,
}

impl WakerId {
    #[inline]
    fn of(waker: &Waker) -> Self {
        Self {
            data: waker.data() as usize,
            vtable: std::ptr::from_ref(waker.vtable()) as usize,
        }
    }
}

pub(crate) const CANCELLING: u8 = Phase::Cancelling as u8;
#[cfg_attr(not(feature = "http"), allow(dead_code))]
pub(crate) const RUNNING: u8 = Phase::Running as u8;

impl Deadline {
    /// Whether the deadline has passed (checked before polling the inner future).
    #[inline]
    pub(crate) fn passed(core: &Core) -> bool {
        core.phase() >= CANCELLING
    }

    /// After the inner future returned `Pending`: whether the deadline has passed, making
    /// sure `cx` is woken when it does.
    #[inline]
    pub(crate) fn poll_passed(&mut self, in_flight: &InFlight, cx: &mut Context<'_>) -> bool {
        if Self::passed(in_flight.core()) {
            return true;
        }
        if let Some(registration) = &self.registration
            && registration.waker == WakerId::of(cx.waker())
        {
            return false;
        }
        self.register(in_flight, cx.waker())
    }

    /// Registers `waker` (or replaces the registered one), then reads the phase again: the
    /// deadline either finds the waker registered or is seen here.
    #[cold]
    #[inline(never)]
    fn register(&mut self, in_flight: &InFlight, waker: &Waker) -> bool {
        let waker = waker.clone();
        let id = WakerId::of(&waker);
        let replaced = match &mut self.registration {
            Some(registration) => {
                registration.waker = id;
                registration.slot.waiters().replace(registration.key, waker)
            }
            None => {
                let slot = in_flight.slot();
                let key = slot.waiters().insert(waker);
                self.registration = Some(Registration {
                    slot,
                    key,
                    waker: id,
                });
                None
            }
        };
        drop(replaced);
        in_flight.core().load_phase() >= Phase::Cancelling
    }

    /// Gives the registration back, if there is one: the request has ended.
    #[inline]
    pub(crate) fn release(&mut self) {
        if let Some(registration) = self.registration.take() {
            release(&registration);
        }
    }
}

#[cold]
#[inline(never)]
fn release(registration: &Registration) {
    let waker = registration.slot.waiters().remove(registration.key);
    drop(waker);
}

impl Drop for Deadline {
    #[inline]
    fn drop(&mut self) {
        self.release();
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("registered", &self.registration.is_some())
            .finish()
    }
}
