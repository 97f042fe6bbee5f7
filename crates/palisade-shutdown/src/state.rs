//! The state every part of a shutdown shares.
//!
//! Requests in flight are counted by the [`Core`](crate::inflight::Core) (per-thread slots,
//! see [`inflight`](crate::inflight)); registered tasks (guards, `serve`'s connections)
//! by a counter of their own, which the drain closes when it ends, so that a guard made
//! afterwards tracks nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::task::Context;
use std::time::Duration;

use palisade_core::event::Listener as _;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::config::Config;
use crate::event::ShutdownEvent;
use crate::hook::Hook;
pub(crate) use crate::inflight::{Core, InFlight};
use crate::phase::Phase;

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
            core: Core::acquire(&cancel),
            tasks: AtomicUsize::new(0),
            phase_tx: watch::Sender::new(Phase::Running),
            triggers: watch::Sender::new(0),
            cancel,
            stop,
            started: Instant::now(),
            config,
            hooks: Mutex::new(hooks),
            running: AtomicBool::new(false),
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

    /// Moves to `to`: the atomic first (what requests read), then events (so that logs say
    /// "phase changed" before what servers do about it), then the watch.
    pub(crate) fn set_phase(&self, to: Phase) {
        let from = self.core.swap_phase(to);
        if from == to {
            return;
        }
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
        self.phase_tx.send_replace(to);
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
/// While running it costs one relaxed load per poll. Once the shutdown has been triggered, a
/// poll that finds the inner future pending registers to be woken at the deadline (one
/// allocation, then, and only for requests still pending during a shutdown).
#[derive(Default)]
pub(crate) struct Deadline {
    wait: Option<Pin<Box<WaitForCancellationFutureOwned>>>,
}

pub(crate) const CANCELLING: u8 = Phase::Cancelling as u8;
pub(crate) const RUNNING: u8 = Phase::Running as u8;

impl Deadline {
    /// Whether the deadline has passed (checked before polling the inner future).
    #[inline]
    pub(crate) fn passed(core: &Core) -> bool {
        core.phase() >= CANCELLING
    }

    /// After the inner future returned `Pending`: whether the deadline has passed, making
    /// sure `cx` is woken when it does if a shutdown is under way.
    #[inline]
    pub(crate) fn poll_passed(&mut self, core: &Core, cx: &mut Context<'_>) -> bool {
        let phase = core.phase();
        if phase == RUNNING {
            return false;
        }
        if phase >= CANCELLING {
            return true;
        }
        self.poll_wait(core, cx)
    }

    #[cold]
    fn poll_wait(&mut self, core: &Core, cx: &mut Context<'_>) -> bool {
        let wait = self
            .wait
            .get_or_insert_with(|| Box::pin(core.cancel_token().cancelled_owned()));
        wait.as_mut().poll(cx).is_ready()
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deadline")
            .field("registered", &self.wait.is_some())
            .finish()
    }
}
